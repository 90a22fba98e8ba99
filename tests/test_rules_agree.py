"""Every command decides alike: what `deploy` publishes, skips or refuses, `watch` syncs, skips or
refuses too, because both go through the one ignore list and the one publishability check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from watchfiles import Change

from mosaicsync.config import load_config, render_config
from mosaicsync.deploy import scan_project
from mosaicsync.errors import ScanError
from mosaicsync.ignore import load_ignore_rules
from mosaicsync.scan import scan_paths
from mosaicsync.watch import ChangeSorter

SKIPPED = ["notes.tmp", "4913", "report.swa", "x.crswap", "doc.kate-swp", "~$budget.xlsx",
           ".page.html.swp", "page.html~", ".#page.html", "#page.html#", "page.html___jb_tmp___",
           ".goutputstream-AB12", "sub/deep.tmp"]  # fmt: skip
PUBLISHED = ["page.html", "4913.html", "notes.txt", "a~b.js", "tmp/keep.css", "x.tmpl"]


def _project(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    public = tmp_path / "public"
    for name in names:
        (public / name).parent.mkdir(parents=True, exist_ok=True)
        (public / name).write_text(name)
    (tmp_path / "mosaic.toml").write_text(render_config("Agree"))
    return tmp_path / "mosaic.toml", Path(os.path.realpath(public))


def _watch_decision(config_path: Path, public: Path, name: str) -> str:
    """What `watch` does with a save of `name`: "published", "skipped" or "refused"."""
    config = load_config(config_path)
    rules = load_ignore_rules(config.static_root, config.project_dir, config.static_ignore)
    items = ChangeSorter(config, rules).sort(Change.modified, str(public / name))
    if ("file", name) not in items:
        return "skipped"
    try:
        files, _ = scan_paths(config.static_root, [name], rules)
    except ScanError:
        return "refused"
    return "published" if [f.path for f in files] == [name] else "skipped"


@pytest.mark.parametrize("name", SKIPPED + PUBLISHED)
def test_deploy_and_watch_decide_alike(tmp_path: Path, name: str) -> None:
    config_path, public = _project(tmp_path, [name])
    published = {f.path for f in scan_project(load_config(config_path)).files}
    deploy = "published" if name in published else "skipped"
    assert deploy == _watch_decision(config_path, public, name)
    assert deploy == ("skipped" if name in SKIPPED else "published")


def test_a_pattern_that_re_includes_an_editor_temp_counts_for_watch_too(tmp_path: Path) -> None:
    config_path, public = _project(tmp_path, ["notes.tmp"])
    (public / ".mosaicignore").write_text("!notes.tmp\n")
    assert [f.path for f in scan_project(load_config(config_path)).files] == ["notes.tmp"]
    assert _watch_decision(config_path, public, "notes.tmp") == "published"


@pytest.mark.parametrize(
    "name",
    ["mosaic-assets.json", "back\\slash.html", "tab\there.css", "x" * 1030 + ".txt"],
)
def test_an_unpublishable_name_is_refused_by_deploy_and_watch(tmp_path: Path, name: str) -> None:
    if len(name) > 255:  # longer than one file name may be: make it a deep path instead
        name = "/".join(["d" * 200] * 6) + "/x.txt"
    config_path, public = _project(tmp_path, [name])
    with pytest.raises(ScanError) as deployed:
        scan_project(load_config(config_path))
    assert _watch_decision(config_path, public, name) == "refused"
    assert "cannot be published" in deployed.value.message or "reserved" in deployed.value.message
