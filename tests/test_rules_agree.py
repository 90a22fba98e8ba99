"""Every command decides alike: what `deploy` publishes, skips or refuses, `watch` syncs, skips or
refuses too, because both go through the one ignore list and the one publishability check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from watchfiles import Change

from mosaicsync.api import MosaicClient
from mosaicsync.config import load_config, render_config
from mosaicsync.deploy import scan_project
from mosaicsync.errors import ScanError
from mosaicsync.ignore import load_ignore_rules
from mosaicsync.scan import scan_paths
from mosaicsync.watch import ChangeSorter
from tests.conftest import KEY_A, LocalServer
from tests.test_watch import PAGE, Run, cli_env, make_site, site_get

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
    published = unicodedata.normalize("NFC", name)  # the name as it is published
    if ("file", published) not in items:
        return "skipped"
    try:
        files, _ = scan_paths(config.static_root, [name], rules)
    except ScanError:
        return "refused"
    return "published" if [f.path for f in files] == [published] else "skipped"


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
    [
        "mosaic-assets.json",
        "back\\slash.html",
        "tab\there.css",
        "x" * 1030 + ".txt",
        # 245 bytes on disk; 485 once NFC turns each U+0958 into two characters: too long a name.
        "\u0958" * 80 + ".html",
        "\u0958" * 84 + "/page.html",
    ],
    ids=["reserved", "backslash", "tab", "path-too-long", "name-too-long", "folder-too-long"],
)
def test_an_unpublishable_name_is_refused_by_deploy_and_watch(tmp_path: Path, name: str) -> None:
    if len(name) > 255:  # longer than one file name may be: make it a deep path instead
        name = "/".join(["d" * 200] * 6) + "/x.txt"
    config_path, public = _project(tmp_path, [name])
    with pytest.raises(ScanError) as deployed:
        scan_project(load_config(config_path))
    assert _watch_decision(config_path, public, name) == "refused"
    assert "cannot be published" in deployed.value.message or "reserved" in deployed.value.message


@pytest.mark.integration
def test_watch_and_deploy_on_a_linked_site_agree_and_keep_the_storage_map(
    tmp_path: Path, local_server: LocalServer
) -> None:
    with MosaicClient(local_server.api, KEY_A) as client:
        site = tmp_path / "site"
        pid = make_site(site, client)
        public = site / "public"
        (public / "font.woff2").write_bytes(b"wOF2" + bytes(100))  # goes to storage
        run = Run(["watch"], site, cli_env(local_server))
        try:
            run.wait_for("watching")
            generated = site_get(local_server, pid, "mosaic-assets.json").text
            assert "font.woff2" in json.loads(generated)
            (public / "notes.tmp").write_text("scratch")
            (public / "x.crswap").write_text("swap")
            (public / "mosaic-assets.json").write_text('{"mine": true}')
            warning = run.wait_for("warning")
            assert "reserved" in warning["message"] and "mosaic-assets.json" in warning["message"]
            (public / "index.html").write_text(PAGE.format(marker="after"))
            assert run.wait_for("sync")["paths"] == ["index.html"]
        finally:
            run.stop()
        assert [e["paths"] for e in run.of("sync")] == [["index.html"]]
        rows = {r["path"] for r in client.sql(pid, "SELECT path FROM mosaicsync.files")}
        assert not rows & {"notes.tmp", "x.crswap"}
        assert site_get(local_server, pid, "mosaic-assets.json").text == generated

        deploy = subprocess.run(
            [sys.executable, "-m", "mosaicsync", "deploy", "--json"],
            cwd=site, env=cli_env(local_server), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert deploy.returncode == 2, deploy.stdout + deploy.stderr
        assert "reserved" in json.loads(deploy.stdout)["error"]["error"]
        (public / "mosaic-assets.json").unlink()
        deploy = subprocess.run(
            [sys.executable, "-m", "mosaicsync", "deploy", "--json"],
            cwd=site, env=cli_env(local_server), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert json.loads(deploy.stdout)["uploaded"] == 0  # the temp files are skipped here too
        assert {"notes.tmp", "x.crswap"} <= set(json.loads(deploy.stdout)["skipped"])
        assert site_get(local_server, pid, "mosaic-assets.json").text == generated
