"""The checks' verdicts cache, without a platform: what is kept, where, and what is trusted."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from mosaicsync import preflight
from mosaicsync.errors import AuthError
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


class _Database:
    """The project's database secrets as the platform gives them, with who asked and when."""

    def __init__(self, password: str = "pw_7f3a9c1e5b2d8f4a", fail: Exception | None = None):
        self.password = password
        self.fail = fail
        self.threads: list[str] = []
        self.parsed_before_answer = threading.Event()

    def __call__(self) -> dict[str, str]:
        self.threads.append(threading.current_thread().name)
        # The answer is held until a page has been parsed: the fetch must not make it wait.
        assert self.parsed_before_answer.wait(timeout=30)
        if self.fail is not None:
            raise self.fail
        return {"password": self.password, "database_url": f"postgres://u:{self.password}@db/x"}


def run_with(root: Path, database: _Database, monkeypatch) -> preflight.Report:
    extract = preflight._extract

    def parsed_then_release(*args):
        try:
            return extract(*args)
        finally:
            database.parsed_before_answer.set()

    monkeypatch.setattr(preflight, "_extract", parsed_then_release)
    rules = load_ignore_rules(root, root.parent)
    scanned = scan(root, rules)
    checks = Preflight(root.parent / ".cache", Secrets(key_in_use=KEY, database=database))
    return checks.check(scanned.files, scanned.skipped, rules)


def test_the_database_secrets_arrive_while_the_changed_page_is_parsed(
    tmp_path: Path, monkeypatch
) -> None:
    root = site(tmp_path)
    run(root)
    database = _Database()
    (root / "index.html").write_text(f"<p>{database.password}</p><img src=lost.png>")
    report = run_with(root, database, monkeypatch)
    assert database.threads and database.threads != [threading.current_thread().name]
    kinds = {(f.file, f.kind) for f in report.findings}
    assert ("index.html", BROKEN_REFERENCE) in kinds
    assert any(f.file == "index.html" and "database password" in f.message for f in report.findings)


def test_a_fetch_that_failed_on_its_thread_fails_the_check(tmp_path: Path, monkeypatch) -> None:
    root = site(tmp_path)
    run(root)
    (root / "index.html").write_text("<p>changed</p>")
    database = _Database(fail=AuthError("the key was revoked"))
    with pytest.raises(AuthError, match="revoked"):
        run_with(root, database, monkeypatch)


def test_a_run_with_nothing_to_search_does_not_ask_for_the_database(
    tmp_path: Path, monkeypatch
) -> None:
    root = site(tmp_path)
    run(root)
    (root / "lib3.js").unlink()  # the file set changed, but no content is new
    database = _Database()
    database.parsed_before_answer.set()
    report = run_with(root, database, monkeypatch)
    assert report.files_read == 0 and not report.reused
    assert database.threads == []


def run_fresh(root: Path, key: str = KEY) -> preflight.Report:
    """The same check with no cache at all: every file read, every verdict made again."""
    rules = load_ignore_rules(root, root.parent)
    scanned = scan(root, rules)
    checks = Preflight(root.parent / ".fresh", Secrets(key_in_use=key), use_cache=False)
    return checks.check(scanned.files, scanned.skipped, rules)


def test_an_edit_is_checked_alone_and_the_other_files_findings_are_kept(tmp_path: Path) -> None:
    root = site(tmp_path)
    (root / "lib1.js").write_text(f"const key = '{KEY}';\n")
    first = run(root)
    assert sorted({f.file for f in first.findings}) == ["index.html", "lib1.js"]
    (root / "app.js").write_text("console.log('edited');\n")
    again = run(root)
    assert again.files_read == 1 and not again.reused
    assert again.findings == first.findings  # index.html's and lib1.js's, neither read again
    assert again.findings == run_fresh(root).findings
    # The edit that fixes the link drops its warning; lib1.js's stays.
    (root / "index.html").write_text('<script src="app.js"></script>')
    fixed = run(root)
    assert fixed.files_read == 1
    assert [f.file for f in fixed.findings] == ["lib1.js"]
    assert fixed.findings == run_fresh(root).findings


@pytest.mark.parametrize("seed", range(12))
def test_checks_of_edits_find_what_a_check_of_every_file_finds(tmp_path: Path, seed: int) -> None:
    """Random edits (links made and broken, keys pasted and removed, files added and deleted,
    a file skipped by a rule): after each, the cached run's findings are a fresh run's."""
    rng = random.Random(seed)
    root = site(tmp_path)
    names = ["index.html", "app.js", "about.html", "style.css", *(f"lib{i}.js" for i in range(20))]
    linked = [*names, ".env", "moved.js"]
    bodies = [
        lambda: f'<a href="/{rng.choice(linked)}">x</a><img src="{rng.choice(linked)}">',
        lambda: f"body {{ background: url({rng.choice(linked)}) }}",
        lambda: f"export const k = '{KEY}';",
        lambda: f"export const n = {rng.randint(0, 5)};",
        lambda: f'<link href="../{rng.choice(linked)}"><p>{OTHER_KEY}</p>',
    ]
    partial = 0
    for _ in range(16):
        for _ in range(rng.choice((1, 1, 2, 3))):
            name = rng.choice(names)
            action = rng.random()
            if action < 0.7:
                (root / name).write_text(rng.choice(bodies)())
            elif action < 0.8:
                (root / name).unlink(missing_ok=True)
            elif action < 0.9 and (root / name).exists():  # as many files, other paths
                (root / name).rename(root / "moved.js")
                names[names.index(name)] = "moved.js"
            else:
                (root / ".env").write_text(f"KEY={KEY}\n")  # skipped by the default rules
        cached = run(root)
        assert cached.findings == run_fresh(root).findings
        partial += 0 < cached.files_read < len(list(root.iterdir()))
    assert partial  # some of the runs read only what changed


def test_a_rename_is_not_an_edit_the_pages_pointing_at_it_are_checked_again(
    tmp_path: Path,
) -> None:
    root = site(tmp_path)
    run(root)
    (root / "app.js").rename(root / "apx.js")  # as many files, in the same order, same bytes
    report = run(root)
    assert [(f.file, f.kind) for f in report.findings].count(("index.html", BROKEN_REFERENCE)) == 2
    assert report.findings == run_fresh(root).findings
