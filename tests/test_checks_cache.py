"""The checks' verdicts cache, without a platform: what is kept, where, and what is trusted."""

from __future__ import annotations

from pathlib import Path

from mosaicsync import preflight
from mosaicsync.findings import BROKEN_REFERENCE
from mosaicsync.ignore import load_ignore_rules
from mosaicsync.preflight import Preflight, Secrets
from mosaicsync.scan import scan

KEY = "mk_checkscachekey0123456789abcdef"
OTHER_KEY = "mk_anotherkey9876543210zyxwvutsrq"


def site(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    root.mkdir()
    (root / "index.html").write_text('<a href="/missing.html">gone</a><script src="app.js">')
    (root / "app.js").write_text("console.log(1);\n")
    for i in range(20):
        (root / f"lib{i}.js").write_text(f"export const n = {i};\n")
    return root


def run(root: Path, key: str = KEY, *, only: set[str] | None = None) -> preflight.Report:
    rules = load_ignore_rules(root, root.parent)
    scanned = scan(root, rules)
    checks = Preflight(root.parent / ".cache", Secrets(key_in_use=key))
    return checks.check(scanned.files, scanned.skipped, rules, only=only)


def test_an_edit_appends_its_verdict_and_a_later_run_trusts_it(tmp_path: Path) -> None:
    root = site(tmp_path)
    verdicts = tmp_path / ".cache" / preflight.CACHE_NAME
    log = verdicts.with_name(verdicts.name + "-new")
    assert run(root).files_read == 22
    whole = verdicts.read_bytes()
    assert not log.exists()

    (root / "app.js").write_text("console.log(2);\n")
    assert run(root).files_read == 1
    assert verdicts.read_bytes() == whole  # the 22 verdicts are not written again
    assert log.stat().st_size < 300

    # A run that asks about that file alone (as a watch does) finds its verdict in the log.
    assert run(root, only={"app.js"}).files_read == 0


def test_a_log_line_cut_short_costs_only_its_own_verdicts(tmp_path: Path) -> None:
    root = site(tmp_path)
    run(root)
    (root / "app.js").write_text("console.log(2);\n")
    run(root)
    log = tmp_path / ".cache" / (preflight.CACHE_NAME + "-new")
    with log.open("ab") as f:
        f.write(b'\n{"version":1,"salt":"')  # a run stopped while appending
    (root / "lib0.js").write_text("export const n = 100;\n")
    assert run(root).files_read == 1  # lib0.js only: app.js's verdict is still trusted
    assert run(root, only={"app.js", "lib0.js"}).files_read == 0


def test_another_key_drops_every_verdict_and_the_log(tmp_path: Path) -> None:
    root = site(tmp_path)
    run(root)
    (root / "app.js").write_text("console.log(2);\n")
    run(root)
    log = tmp_path / ".cache" / (preflight.CACHE_NAME + "-new")
    assert log.exists()
    assert run(root, OTHER_KEY).files_read == 22
    assert not log.exists()
    assert run(root, OTHER_KEY, only={"app.js"}).files_read == 0


def test_the_log_is_folded_into_the_file_once_it_grows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(preflight, "_LOG_LIMIT", 200)
    root = site(tmp_path)
    run(root)
    log = tmp_path / ".cache" / (preflight.CACHE_NAME + "-new")
    for i in range(4):
        (root / "app.js").write_text(f"console.log({i + 10});\n")
        run(root)
    assert not log.exists() or log.stat().st_size < 200 + 200
    assert run(root, only={"app.js"}).files_read == 0


def test_a_page_judged_for_references_but_not_for_secrets_keeps_its_warnings(
    tmp_path: Path,
) -> None:
    """After a key change, every secret verdict is dropped but the parsed references are kept:
    the page is searched again, and its broken links are still reported."""
    root = site(tmp_path)
    first = run(root)
    assert [f.file for f in first.findings if f.kind == BROKEN_REFERENCE] == ["index.html"]
    again = run(root, OTHER_KEY)
    assert [f.file for f in again.findings if f.kind == BROKEN_REFERENCE] == ["index.html"]
