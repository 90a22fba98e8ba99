"""Deploy history and rollback, end to end: the real CLI against the real local platform.

A rollback must make every served byte equal to the restored deploy's: site files, storage
objects, mosaic-assets.json and the rewritten pages, from any folder (no local cache needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mosaicsync.api import MosaicClient
from mosaicsync.errors import HistoryError
from mosaicsync.history import Blob, Entry, GitState, Packer, git_state, live_entry
from mosaicsync.manifest import ROW_COLUMNS, ManifestRow
from mosaicsync.migrate import Migrator
from mosaicsync.restore import RestorePlan, choose_target, merged_ranges, plan_restore
from tests.conftest import KEY_A, LocalServer, python_against
from tests.faults import FaultProxy, Reply, Request, injected_error
from tests.test_watch import wait_until

pytestmark = pytest.mark.integration


def cli(
    args: list[str], cwd: Path, server: LocalServer, *, code: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=server.api, MOSAIC_API_KEY=KEY_A)
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        input="",
    )
    assert KEY_A not in out.stdout + out.stderr, "the API key leaked into output"
    assert out.returncode == code, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def served_site(server: LocalServer, project_id: str) -> dict[str, bytes]:
    """Every file the platform serves for the project, site and storage (history excluded)."""
    with server.client() as http:
        files = http.get(f"/{project_id}/files").json()["files"]
        objects = http.get(f"/{project_id}/storage").json()["files"]
    out = {}
    for f in files:
        out["site:" + f["filename"]] = httpx.get(
            f"{server.base_url}/sites/{project_id}/{f['filename']}"
        ).content
    for o in objects:
        if not o["filename"].startswith(".mosaicsync/"):
            out["storage:" + o["filename"]] = httpx.get(o["url"]).content
    return out


def git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(folder), *args],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        },
    )


@pytest.fixture
def site(tmp_path: Path, local_server: LocalServer) -> tuple[Path, str]:
    cli(["init", "site", "--template", "basic", "--name", "History"], tmp_path, local_server)
    folder = tmp_path / "site"
    cli(["link", "--create", "History"], folder, local_server)
    project_id = tomllib.loads((folder / "mosaic.toml").read_text())["app"]["project_id"]
    return folder, project_id


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_rollback_restores_every_served_byte(
    site: tuple[Path, str], local_server: LocalServer, tmp_path: Path
) -> None:
    folder, project_id = site
    public = folder / "public"
    git(folder, "init", "-q", "-b", "main")
    (public / "font.woff2").write_bytes(os.urandom(4000))
    css = (public / "style.css").read_text()
    (public / "style.css").write_text(
        css + '\n@font-face { font-family: F; src: url("font.woff2"); }\n'
    )
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "one")
    first = json.loads(cli(["deploy", "-m", "first", "--json"], folder, local_server).stdout)
    served_first = served_site(local_server, project_id)
    assert "storage:font.woff2" in served_first and "site:mosaic-assets.json" in served_first

    (public / "style.css").write_text((public / "style.css").read_text() + "\nbody{color:red}\n")
    (public / "app.js").unlink()
    (public / "about.html").write_text("<!doctype html><p>About</p>")
    (public / "font.woff2").write_bytes(os.urandom(5000))
    second = json.loads(cli(["deploy", "-m", "second", "--json"], folder, local_server).stdout)
    assert second["replaces"]["id"] == first["deploy_id"]
    served_second = served_site(local_server, project_id)
    assert served_second != served_first

    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)
    assert [d["message"] for d in listed["deploys"]] == ["second", "first"]
    assert listed["live"] == second["deploy_id"]
    newest, oldest = listed["deploys"]
    assert oldest["git"]["commit"] and oldest["git"]["branch"] == "main"
    assert oldest["git"]["dirty"] is False and newest["git"]["dirty"] is True
    assert newest["uploaded"] >= 3 and newest["pruned"] == 1 and newest["state"] == "complete"
    assert listed["history_bytes"] > 0

    shown = json.loads(
        cli(["deploys", "show", str(second["deploy_id"]), "--json"], folder, local_server).stdout
    )
    assert shown["added"] == ["about.html"] and shown["removed"] == ["app.js"]
    assert {"style.css", "font.woff2"} <= set(shown["changed"])

    # Without a terminal a rollback needs --yes, and the error says so.
    refused = cli(["rollback"], folder, local_server, code=2)
    assert "pass --yes" in refused.stderr
    assert served_site(local_server, project_id) == served_second

    rolled = json.loads(cli(["rollback", "--yes", "--json"], folder, local_server).stdout)
    assert rolled["rollback_to"]["id"] == first["deploy_id"]
    assert rolled["schema_rolled_back"] is False and rolled["migrations_after"] == []
    assert served_site(local_server, project_id) == served_first

    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)
    assert len(listed["deploys"]) == 3
    live = listed["deploys"][0]
    assert live["live"] and live["kind"] == "rollback" and live["rollback_of"] == first["deploy_id"]
    human = cli(["deploys"], folder, local_server).stdout
    assert f"rollback to #{first['deploy_id']}" in human

    # From a copy of the folder without its cache, the second deploy comes back exactly.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".mosaicsync", ".git"))
    cli(["rollback", str(second["deploy_id"]), "--yes"], copy, local_server)
    assert served_site(local_server, project_id) == served_second

    # No hidden pinned state: status says what is live, and the next deploy what it replaces.
    status = cli(["status"], folder, local_server).stdout
    assert f"rollback to #{second['deploy_id']}" in status
    (public / "about.html").write_text("<!doctype html><p>About us</p>")
    again = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)
    assert again["replaces"]["kind"] == "rollback"
    assert again["replaces"]["rollback_of"] == second["deploy_id"]


# The read of a deploy's whole file set: every span that held it.
WHOLE_SET = f"SELECT {ROW_COLUMNS} FROM mosaicsync.file_spans f WHERE f.first_id <= "


def sql_sent(
    args: list[str], cwd: Path, server: LocalServer
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the CLI and return, with its result, the text of every SQL query it sent."""
    code = (
        "import json, sys\n"
        "from mosaicsync import api, cli\n"
        "sent = []\n"
        "original = api.MosaicClient.sql\n"
        "def sql(self, project_id, query, **kw):\n"
        "    sent.append(query)\n"
        "    return original(self, project_id, query, **kw)\n"
        "api.MosaicClient.sql = sql\n"
        "try:\n"
        "    cli.main()\n"
        "finally:\n"
        "    sys.stderr.write('\\nSQL-SENT ' + json.dumps(sent) + '\\n')\n"
    )
    out = python_against(code, cwd, server, *args)
    return out, json.loads(out.stderr.rpartition("SQL-SENT ")[2])


def refuse_the_index_page(request: Request) -> Reply | str:
    """A fault rule: the upload of index.html is refused. Pages go last, so every other file
    of the deploy (and its manifest row) has arrived by then."""
    if request.path.endswith("/files") and b'"index.html"' in request.body:
        return injected_error(401)
    return "pass"


def stopped_by(
    rule: Callable[[Request], Reply | str], args: list[str], cwd: Path, server: LocalServer
) -> subprocess.CompletedProcess[str]:
    """Run the CLI through a fault proxy that applies `rule`; it must fail."""
    with FaultProxy(server.base_url, rules=[rule]) as proxy:
        stopped = subprocess.run(
            [sys.executable, "-m", "mosaicsync", *args],
            cwd=cwd,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")},
                "MOSAIC_API_URL": proxy.api_url,
                "MOSAIC_API_KEY": KEY_A,
            },
            capture_output=True, text=True, timeout=120, input="",
        )  # fmt: skip
    assert stopped.returncode != 0, stopped.stdout + stopped.stderr
    return stopped


def test_a_rollback_reads_the_live_manifest_from_the_copy_while_the_platform_agrees(
    site: tuple[Path, str], local_server: LocalServer, tmp_path: Path
) -> None:
    """A rollback plans against the live manifest as a deploy does: from the folder's copy when
    the platform's digest of every row agrees (one small request, not every row), and it leaves
    the copy as it left the platform, so the deploy after it reads no row either."""
    from mosaicsync.manifest import FULL_DIGEST_SQL, load_copy

    folder, project_id = site
    public = folder / "public"
    page_read = f"SELECT {ROW_COLUMNS} FROM mosaicsync.files "
    first = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)
    served_first = served_site(local_server, project_id)
    (public / "about.html").write_text("<!doctype html><p>About</p>")
    (public / "app.js").unlink()
    cli(["deploy"], folder, local_server)
    served_second = served_site(local_server, project_id)

    rolled, sent = sql_sent(["rollback", "--yes", "--json"], folder, local_server)
    assert json.loads(rolled.stdout)["rollback_to"]["id"] == first["deploy_id"]
    assert served_site(local_server, project_id) == served_first
    assert FULL_DIGEST_SQL in sent
    assert not [q for q in sent if q.startswith(page_read)], "every manifest row was read"
    # The target's set too: only the spans that differ from the live ones were read.
    assert not [q for q in sent if q.startswith(WHOLE_SET)], "every span of the target was read"
    held = load_copy(folder / ".mosaicsync" / "manifest")
    with MosaicClient(local_server.api, KEY_A) as client:
        assert held is not None and held[0] == client.sql(project_id, FULL_DIGEST_SQL)[0]["digest"]
    (public / "app.js").write_text("console.log('back')\n")
    _, sent = sql_sent(["deploy"], folder, local_server)
    assert not [q for q in sent if q.startswith(page_read)]

    # Another folder deploys: this folder's copy no longer agrees, so the rollback reads the
    # platform's rows and still restores exactly.
    other = tmp_path / "other"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns(".mosaicsync"))
    (other / "public" / "about.html").write_text("<!doctype html><p>Elsewhere</p>")
    cli(["deploy"], other, local_server)
    _, sent = sql_sent(["rollback", str(first["deploy_id"]), "--yes"], folder, local_server)
    assert [q for q in sent if q.startswith(page_read)]
    assert served_site(local_server, project_id) == served_first != served_second


def test_a_rollback_after_a_deploy_that_stopped_midway_reads_the_target_whole(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    """A deploy that stops midway leaves rows in the manifest that no span holds: the target's
    set can then not be told from the live one, and is read whole. (Taken from the manifest,
    the style.css this deploy sent would stay, though the first deploy's is the one to serve.)"""
    folder, project_id = site
    public = folder / "public"
    first = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)
    served_first = served_site(local_server, project_id)
    (public / "about.html").write_text("<!doctype html><p>About</p>")
    cli(["deploy"], folder, local_server)
    (public / "style.css").write_text((public / "style.css").read_text() + "\nb{color:red}\n")
    (public / "index.html").write_text("<!doctype html><p>New home</p>")

    stopped_by(refuse_the_index_page, ["deploy"], folder, local_server)
    halfway = served_site(local_server, project_id)
    assert halfway["site:style.css"] != served_first["site:style.css"]

    _, sent = sql_sent(["rollback", str(first["deploy_id"]), "--yes"], folder, local_server)
    assert [q for q in sent if q.startswith(WHOLE_SET)]
    assert served_site(local_server, project_id) == served_first


def test_a_deploy_after_a_complete_one_ends_and_starts_only_the_spans_of_what_it_changed(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    """After a complete, restorable deploy the live spans are the manifest: the next deploy
    looks only at the paths it wrote or removed. After one that stopped midway (its rows, no
    spans), the spans are compared whole, and the set recorded is the manifest again."""
    from mosaicsync.history import History
    from mosaicsync.manifest import Manifest

    folder, project_id = site
    public = folder / "public"
    first = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)
    served_first = served_site(local_server, project_id)
    (public / "app.js").write_text("console.log('edited')\n")
    (public / "logo.png").unlink()
    (public / "about.html").write_text("<!doctype html><p>About</p>")
    out, sent = sql_sent(["deploy", "--json"], folder, local_server)
    second = json.loads(out.stdout)["deploy_id"]
    (finish,) = [q for q in sent if "SET state = 'complete'" in q]
    assert "EXCEPT" not in finish
    ended = finish.partition("f.last_id IS NULL AND f.path IN (")[2].partition(")")[0]
    assert sorted(ended.split(", ")) == ["'about.html'", "'app.js'", "'logo.png'"]

    # Stopped midway: style.css and its row arrived, no span holds that row.
    (public / "style.css").write_text("body { margin: 3px }\n")
    (public / "index.html").write_text("<!doctype html><p>New home</p>")

    stopped_by(refuse_the_index_page, ["deploy"], folder, local_server)
    out, sent = sql_sent(["deploy", "--json"], folder, local_server)
    third = json.loads(out.stdout)["deploy_id"]
    (finish,) = [q for q in sent if "SET state = 'complete'" in q]
    assert "EXCEPT" in finish
    with MosaicClient(local_server.api, KEY_A) as client:
        history = History(client, project_id, 20)
        live = Manifest(client, project_id).fetch()[1]
        assert history.files(third) == live
        assert live["style.css"] != history.files(second)["style.css"]
        assert "logo.png" in history.files(first["deploy_id"])
    cli(["rollback", str(first["deploy_id"]), "--yes"], folder, local_server)
    assert served_site(local_server, project_id) == served_first


def test_a_deploy_after_a_watch_compares_the_spans_whole(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    """A watch publishes a sync, then finishes its entry again: a sync whose history update
    failed leaves its entry complete and rows that no span holds. The next deploy compares
    the spans whole, and the set it records is the manifest."""
    from mosaicsync.history import History
    from mosaicsync.manifest import Manifest

    folder, project_id = site
    public = folder / "public"
    cli(["deploy"], folder, local_server)
    with MosaicClient(local_server.api, KEY_A) as client:
        # The watch's sync of logo.png arrived; its history update did not.
        client.sql(project_id, "UPDATE mosaicsync.deploys SET kind = 'watch'")
        manifest = Manifest(client, project_id)
        _, rows = manifest.fetch()
        # A column no plan compares, so the next deploy leaves logo.png alone.
        manifest.upsert([rows["logo.png"]._replace(url="https://cdn.invalid/logo.png")])
    (public / "app.js").write_text("console.log('after the watch')\n")
    out, sent = sql_sent(["deploy", "--json"], folder, local_server)
    (finish,) = [q for q in sent if "SET state = 'complete'" in q]
    assert "EXCEPT" in finish
    with MosaicClient(local_server.api, KEY_A) as client:
        recorded = History(client, project_id, 20).files(json.loads(out.stdout)["deploy_id"])
        assert recorded == Manifest(client, project_id).fetch()[1]


# -- pure parts ------------------------------------------------------------------------------------


def row(path: str, sha: str, target: str = "site", **kw: object) -> ManifestRow:
    return ManifestRow(path, sha, 10, target, **kw)  # type: ignore[arg-type]


def test_plan_restore_puts_back_what_differs_and_deletes_what_the_target_lacks() -> None:
    target = {
        "a.css": row("a.css", "1"),
        "b.html": row("b.html", "2", uploaded_sha256="2r"),
        "v.mp4": row("v.mp4", "3", "storage"),
        "m.png": row("m.png", "4", "storage"),
    }
    current = {
        "a.css": row("a.css", "1"),  # the same: left alone
        "b.html": row("b.html", "2", uploaded_sha256="2s"),  # same source, other rewrite
        "v.mp4": row("v.mp4", "9", "storage"),  # changed
        "m.png": row("m.png", "4", "site"),  # moved between targets
        "new.js": row("new.js", "5"),  # not in the target
    }
    plan = plan_restore(target, current)
    assert [r.path for r in plan.puts] == ["b.html", "m.png", "v.mp4"]
    assert [(r.path, r.target) for r in plan.prune] == [("m.png", "site"), ("new.js", "site")]
    assert plan.unchanged == 1
    assert plan_restore(target, target) == RestorePlan([], [], 4)


def test_ranges_of_one_pack_are_merged_when_close() -> None:
    blobs = [Blob("a", 10, "p", 0), Blob("b", 5, "p", 10), Blob("c", 5, "p", 200_000)]
    assert merged_ranges(blobs) == [(0, 15), (200_000, 200_005)]
    assert merged_ranges(blobs, gap=10**6) == [(0, 200_005)]
    assert merged_ranges([]) == []


def test_a_packer_finds_what_it_kept_by_digest() -> None:
    packer = Packer()
    try:
        assert packer and packer.count == 0  # an empty packer is still a packer
        for data in (b"one", b"two", b"one"):
            packer.add(data, hashlib.sha256(data).digest())
        assert packer.count == 3
        for data in (b"one", b"two"):
            number = packer.find(hashlib.sha256(data).digest())
            assert number is not None and packer.read(number) == data
        assert packer.find(hashlib.sha256(b"three").digest()) is None
        # Kept after a search, and among many: each is found, and nothing else is.
        contents = [os.urandom(1 + i % 50) for i in range(500)]
        for data in contents:
            packer.add(data, hashlib.sha256(data).digest())
        for data in [b"one", *contents]:
            number = packer.find(hashlib.sha256(data).digest())
            assert number is not None and packer.read(number) == data
        for data in (b"", b"three", os.urandom(60)):
            assert packer.find(hashlib.sha256(data).digest()) is None
    finally:
        packer.close()


def test_a_packer_keeps_what_many_threads_add_at_once_each_in_its_own_place() -> None:
    packer = Packer()
    contents = [os.urandom(i % 300) + i.to_bytes(4, "big") for i in range(2000)] + [b""]
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda d: packer.add(d, hashlib.sha256(d).digest()), contents))
        assert packer.count == len(contents)
        for data in contents:
            number = packer.find(hashlib.sha256(data).digest())
            assert number is not None and packer.read(number) == data
    finally:
        packer.close()


def entry(i: int, state: str = "complete", restorable: bool = True, kind: str = "deploy") -> Entry:
    return Entry(
        i, kind, state, None, None, None, None, "u@h", "1", 0, 0, 0, 0, 0, None, None,
        restorable, "t", "t", 1.0,
    )  # fmt: skip


def test_the_default_target_is_the_restorable_deploy_before_the_live_one() -> None:
    entries = [entry(5, "failed"), entry(4), entry(3, restorable=False), entry(2), entry(1)]
    assert live_entry(entries).id == 4  # type: ignore[union-attr]
    assert choose_target(entries, None).id == 2
    assert choose_target(entries, 1).id == 1
    with pytest.raises(HistoryError, match=r"no deploy #9 .*restorable: #5, #4, #2, #1"):
        choose_target(entries, 9)
    with pytest.raises(HistoryError, match="#3 cannot be restored"):
        choose_target(entries, 3)
    with pytest.raises(HistoryError, match="no deploy before the live one"):
        choose_target([entry(1)], None)


# -- refusals, resumption, pruning ---------------------------------------------------------------


def two_deploys(folder: Path, server: LocalServer) -> tuple[dict, dict]:
    public = folder / "public"
    (public / "font.woff2").write_bytes(os.urandom(3000))
    first = json.loads(cli(["deploy", "-m", "first", "--json"], folder, server).stdout)
    (public / "style.css").write_text("body { color: blue }\n")
    (public / "about.html").write_text("<!doctype html><p>About</p>")
    (public / "font.woff2").write_bytes(os.urandom(3000))
    second = json.loads(cli(["deploy", "-m", "second", "--json"], folder, server).stdout)
    return first, second


def test_a_rollback_that_cannot_run_changes_nothing(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = site
    first, second = two_deploys(folder, local_server)
    before = served_site(local_server, project_id)

    unknown = cli(["rollback", "9999", "--yes"], folder, local_server, code=10)
    assert f"#{second['deploy_id']}, #{first['deploy_id']}" in unknown.stderr

    with MosaicClient(local_server.api, KEY_A) as client:
        with Migrator(client, project_id, folder / "migrations").lease():
            held = cli(["rollback", "--yes", "--lock-timeout", "0.5"], folder, local_server, code=7)
        assert "lock" in held.stderr.lower() or "lease" in held.stderr.lower()
        assert served_site(local_server, project_id) == before

        packs = [
            o["filename"]
            for o in client.list_storage(project_id)["files"]
            if o["filename"].startswith(".mosaicsync/history/packs/")
        ]
        assert len(packs) == 2  # one pack per deploy that added site files
        for name in packs:
            client.delete_object(project_id, name)
    gone = cli(["rollback", "--yes"], folder, local_server, code=10)
    assert "style.css" in gone.stderr and "nothing was changed" in gone.stderr
    assert served_site(local_server, project_id) == before

    toml = folder / "mosaic.toml"
    toml.write_text(toml.read_text() + "\n[history]\nkeep = 0\n")
    off = cli(["rollback", "--yes"], folder, local_server, code=2)
    assert "keep" in off.stderr
    assert served_site(local_server, project_id) == before


def test_a_stopped_rollback_finishes_when_run_again(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = site
    first, _ = two_deploys(folder, local_server)
    served_first: dict[str, bytes] = {}
    # The first deploy's bytes, as the history holds them: read through a rollback's dry run.
    plan = json.loads(cli(["rollback", "--dry-run", "--json"], folder, local_server).stdout)
    assert plan["rollback_to"]["id"] == first["deploy_id"] and plan["dry_run"]
    assert {r["path"] for r in plan["plan"]["restore"]} >= {"style.css", "font.woff2"}
    assert [p["path"] for p in plan["plan"]["prune"]] == ["about.html"]

    sent: list[int] = []

    def first_site_upload(request: Request) -> Reply | str:
        # The storage object is back by then (storage goes first); the page is refused.
        if request.method == "POST" and request.path.endswith("/files"):
            sent.append(1)
            if len(sent) == 1:
                return injected_error(401)
        return "pass"

    with FaultProxy(local_server.base_url, rules=[first_site_upload]) as proxy:
        env_url = proxy.api_url
        stopped = subprocess.run(
            [sys.executable, "-m", "mosaicsync", "rollback", "--yes", "--json"],
            cwd=folder,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")},
                "MOSAIC_API_URL": env_url,
                "MOSAIC_API_KEY": KEY_A,
            },
            capture_output=True,
            text=True,
            timeout=120,
            input="",
        )
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    halfway = served_site(local_server, project_id)
    assert "site:about.html" in halfway  # prune comes last: not reached
    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)
    assert listed["deploys"][0]["state"] == "failed"
    assert listed["deploys"][0]["rollback_of"] == first["deploy_id"]

    cli(["rollback", str(first["deploy_id"]), "--yes"], folder, local_server)
    served_first = served_site(local_server, project_id)
    again = cli(["rollback", str(first["deploy_id"]), "--yes"], folder, local_server)
    assert "nothing changed" in again.stdout
    assert served_site(local_server, project_id) == served_first
    assert "site:about.html" not in served_first
    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)
    states = [(d["kind"], d["state"]) for d in listed["deploys"]]
    assert states == [
        ("rollback", "complete"),
        ("rollback", "failed"),
        *[("deploy", "complete")] * 2,
    ]


def test_keep_bounds_rows_and_storage(site: tuple[Path, str], local_server: LocalServer) -> None:
    folder, project_id = site
    toml = folder / "mosaic.toml"
    toml.write_text(toml.read_text() + "\n[history]\nkeep = 2\n")
    public = folder / "public"
    ids = []
    for i in range(4):
        (public / "style.css").write_text(f"body {{ margin: {i}px }}\n" + "x" * 5000)
        (public / "clip.mp4").write_bytes(os.urandom(2000 + i))
        ids.append(json.loads(cli(["deploy", "--json"], folder, local_server).stdout)["deploy_id"])
    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)
    assert [d["id"] for d in listed["deploys"]] == [ids[3], ids[2]]
    with MosaicClient(local_server.api, KEY_A) as client:
        history = [
            o
            for o in client.list_storage(project_id)["files"]
            if o["filename"].startswith(".mosaicsync/history/")
        ]
    # What the two retained deploys need: the first deploy's pack (it holds the files they
    # still share), the packs of both (their style.css), and the clip the older one served,
    # kept when the newer replaced it. The second deploy's pack and the first two clips are gone.
    packs = [o for o in history if "/packs/" in o["filename"]]
    objects = [o for o in history if "/objects/" in o["filename"]]
    assert len(packs) == 3 and len(objects) == 1 and objects[0]["size"] == 2002
    assert listed["history_bytes"] == sum(o["size"] for o in history)
    pruned = cli(["rollback", str(ids[0]), "--yes"], folder, local_server, code=10)
    assert f"#{ids[3]}, #{ids[2]}" in pruned.stderr
    cli(["rollback", "--yes"], folder, local_server)
    with MosaicClient(local_server.api, KEY_A) as client:
        clip = next(
            o for o in client.list_storage(project_id)["files"] if o["filename"] == "clip.mp4"
        )
    assert clip["size"] == 2002


def test_prune_drops_packs_left_without_live_blobs_and_keeps_partly_live_ones(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    """Each branch of the prune: a pack with no blob rows at all, a pack whose blobs all went
    (object and row deleted), a pack still partly needed (only its dead blob rows deleted)."""
    folder, project_id = site
    toml = folder / "mosaic.toml"
    toml.write_text(toml.read_text() + "\n[history]\nkeep = 1\n")
    public = folder / "public"
    a, b = public / "a.css", public / "b.css"

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def state(client: MosaicClient) -> tuple[dict[str, set[str]], set[str]]:
        rows = client.sql(
            project_id,
            "SELECT p.name, b.sha256 FROM mosaicsync.packs p "
            "LEFT JOIN mosaicsync.blobs b ON b.pack = p.name",
        )
        packs: dict[str, set[str]] = {}
        for r in rows:
            packs.setdefault(r["name"], set()).update([r["sha256"]] if r["sha256"] else [])
        objects = {
            o["filename"]
            for o in client.list_storage(project_id)["files"]
            if "/packs/" in o["filename"]
        }
        return packs, objects

    a.write_text("a { color: red }\n")
    b.write_text("b { color: red }\n")
    a1, b1 = sha(a), sha(b)
    cli(["deploy", "--json"], folder, local_server)
    with MosaicClient(local_server.api, KEY_A) as client:
        (first,) = state(client)[0]
        client.sql(
            project_id,
            "INSERT INTO mosaicsync.packs (name, size) "
            "VALUES ('.mosaicsync/history/packs/0.pack', 0)",
        )
        a.write_text("a { color: green }\n")
        a2 = sha(a)
        cli(["deploy", "--json"], folder, local_server)
        packs, objects = state(client)
        # The first deploy is pruned: its a.css is dead, its b.css and the template's files live.
        assert set(packs) == objects and len(packs) == 2 and first in packs
        (second,) = set(packs) - {first}
        assert packs[second] == {a2} and b1 in packs[first] and a1 not in packs[first]
        a.write_text("a { color: blue }\n")
        b.write_text("b { color: blue }\n")
        cli(["deploy", "--json"], folder, local_server)
        packs, objects = state(client)
        # The second pack held only a.css: gone, object and row; the first keeps the template.
        assert set(packs) == objects and len(packs) == 2 and first in packs
        assert second not in packs and a2 not in set().union(*packs.values())
        assert packs[first] and not packs[first] & {a1, b1}


def test_a_deploy_lists_its_pack_completes_and_prunes_in_one_request(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    """After the pack's PUT, a deploy sends one request (its rows, the file set, the entry
    completed, the prune) and then gives the lease back: each was a round trip of its own.
    Only a prune that finds dead blobs sends one more, to delete them."""
    folder, project_id = site
    style = folder / "public" / "style.css"

    def deploy(margin: int) -> tuple[dict[str, int], list[str]]:
        style.write_text(f"body {{ margin: {margin}px }}\n")
        out, sent = sql_sent(["deploy", "--json"], folder, local_server)
        done = [i for i, q in enumerate(sent) if "SET state = 'complete'" in q]
        assert len(done) == 1, sent
        parts = ["INSERT INTO mosaicsync.blobs", "INSERT INTO mosaicsync.file_spans"]
        parts += ["DELETE FROM mosaicsync.deploys", "set_config('mosaicsync.pruned'"]
        for part in parts:
            assert part in sent[done[0]], part
        after = sent[done[0] + 1 :]
        assert after[-1].startswith("UPDATE mosaicsync.lock SET holder = NULL"), after
        history = json.loads(out.stdout)["history"]
        with MosaicClient(local_server.api, KEY_A) as client:
            used = client.sql(
                project_id, "SELECT coalesce(sum(size), 0) AS u FROM mosaicsync.packs"
            )
        assert history["used_bytes"] == int(used[0]["u"]) > 0
        return history, after[:-1]

    cli(["deploy", "--json"], folder, local_server)
    history, between = deploy(1)
    assert history["pruned_deploys"] == 0 and history["packed_files"] == 1 and not between
    toml = folder / "mosaic.toml"
    toml.write_text(toml.read_text() + "\n[history]\nkeep = 1\n")
    history, between = deploy(2)
    # keep = 1: the two deploys before went, and the blob rows only they needed with them.
    assert history["pruned_deploys"] == 2 and len(between) == 1
    assert between[0].startswith("DELETE FROM mosaicsync.blobs")


def test_a_deploy_stopped_while_its_entry_opens_beside_the_manifest_read_ends_it_failed(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    """The entry is opened while the manifest is read; when that read fails, the entry is
    ended failed, not left running, and nothing is sent."""
    folder, project_id = site
    cli(["deploy"], folder, local_server)
    (folder / "public" / "style.css").write_text("body { margin: 7px }\n")
    (folder / ".mosaicsync" / "manifest").unlink()  # the rows are read, not the copy

    def refuse_the_rows(request: Request) -> Reply | str:
        if request.path.endswith("/sql") and b"FROM mosaicsync.files ORDER BY path" in request.body:
            return injected_error(401)
        return "pass"

    stopped_by(refuse_the_rows, ["deploy"], folder, local_server)
    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)["deploys"]
    assert [d["state"] for d in listed] == ["failed", "complete"]
    assert b"margin: 7px" not in served_site(local_server, project_id)["site:style.css"]


def test_history_turned_on_packs_the_files_deployed_without_it(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    """Files deployed while history was off have no blob: the first deploy with it on packs
    them too (read beside its uploads, not after), so a rollback to it is exact."""
    folder, project_id = site
    toml = folder / "mosaic.toml"
    plain = toml.read_text()
    public = folder / "public"
    toml.write_text(plain + "\n[history]\nkeep = 0\n")
    cli(["deploy"], folder, local_server)
    toml.write_text(plain)
    (public / "about.html").write_text("<!doctype html><p>About</p>")
    on = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)
    served = served_site(local_server, project_id)
    site_files = [p for p in served if p.startswith("site:")]
    assert on["history"]["packed_files"] == len(site_files) and not on["history"]["not_kept"]
    (public / "index.html").write_text("<!doctype html><p>Changed</p>")
    (public / "style.css").unlink()
    cli(["deploy"], folder, local_server)
    cli(["rollback", str(on["deploy_id"]), "--yes"], folder, local_server)
    assert served_site(local_server, project_id) == served


def test_failed_deploys_never_push_the_live_one_out_of_the_history(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = site
    toml = folder / "mosaic.toml"
    toml.write_text(toml.read_text() + "\n[history]\nkeep = 2\n")
    style = folder / "public" / "style.css"
    first = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)["deploy_id"]
    style.write_text("body { margin: 1px }\n")
    second = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)["deploy_id"]
    # Three deploys that failed midway, as a broken network would leave them.
    with MosaicClient(local_server.api, KEY_A) as client:
        for _ in range(3):
            client.sql(
                project_id,
                "INSERT INTO mosaicsync.deploys (started_at, finished_at, uploaded, pruned, "
                "bytes, files, duration_ms, state, kind, deployed_by, tool_version, run_id) "
                "SELECT now(), now(), 0, 0, 0, 0, 0, 'failed', 'deploy', deployed_by, "
                "tool_version, gen_random_uuid() FROM mosaicsync.deploys ORDER BY id DESC LIMIT 1",
            )
    style.write_text("body { margin: 2px }\n")
    third = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)["deploy_id"]
    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)["deploys"]
    complete = [d["id"] for d in listed if d["state"] == "complete"]
    failed = [d["id"] for d in listed if d["state"] == "failed"]
    # keep = 2 counts complete deploys; failures are kept beside them, up to as many again.
    assert complete == [third, second] and len(failed) == 2 and first not in complete
    cli(["rollback", "--yes"], folder, local_server)
    assert served_site(local_server, project_id)["site:style.css"] == b"body { margin: 1px }\n"


def test_a_rollback_names_the_migrations_it_leaves_applied(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = site
    first = json.loads(cli(["deploy", "-m", "first", "--json"], folder, local_server).stdout)
    migrations = folder / "migrations"
    migrations.mkdir(exist_ok=True)
    (migrations / "0001_notes.sql").write_text("CREATE TABLE notes (body text);\n")
    (folder / "public" / "style.css").write_text("body { margin: 3px }\n")
    cli(["deploy", "-m", "second"], folder, local_server)

    shown = cli(["rollback", "--dry-run"], folder, local_server)
    assert "The schema was not rolled back" in shown.stdout and "1 notes" in shown.stdout
    rolled = json.loads(cli(["rollback", "--yes", "--json"], folder, local_server).stdout)
    assert rolled["rollback_to"]["id"] == first["deploy_id"]
    assert rolled["schema_rolled_back"] is False
    assert [(m["version"], m["name"]) for m in rolled["migrations_after"]] == [("1", "notes")]
    newest = json.loads(cli(["deploys", "--limit", "1", "--json"], folder, local_server).stdout)
    assert [d["id"] for d in newest["deploys"]] == [rolled["deploy_id"]]
    unknown = cli(["deploys", "show", "999"], folder, local_server, code=10)
    assert f"recorded: #{rolled['deploy_id']}" in unknown.stderr
    with MosaicClient(local_server.api, KEY_A) as client:
        assert client.sql(project_id, "SELECT to_regclass('notes') IS NOT NULL AS t") == [
            {"t": True}
        ]


def test_a_storage_object_changed_by_hand_makes_the_deploys_that_served_it_unrestorable(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = site
    clip = folder / "public" / "clip.mp4"
    clip.write_bytes(os.urandom(3000))
    first = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)["deploy_id"]
    with MosaicClient(local_server.api, KEY_A) as client:  # someone replaces it in storage
        signed = client.upload_url(project_id, "clip.mp4", 10)
        httpx.put(signed["upload_url"], content=b"by hand!!!").raise_for_status()
    clip.write_bytes(os.urandom(3001))
    cli(["deploy"], folder, local_server)
    listed = json.loads(cli(["deploys", "--json"], folder, local_server).stdout)["deploys"]
    assert [(d["id"], d["restorable"]) for d in listed][-1] == (first, False)
    refused = cli(["rollback", str(first), "--yes"], folder, local_server, code=10)
    assert "changed or deleted by hand" in refused.stderr
    assert (
        "no deploy before the live one"
        in cli(["rollback", "--yes"], folder, local_server, code=10).stderr
    )


def test_storage_objects_answer_range_requests(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    _, project_id = site
    data = os.urandom(1000)
    with MosaicClient(local_server.api, KEY_A) as client:
        signed = client.upload_url(project_id, "r/blob.bin", len(data))
        httpx.put(signed["upload_url"], content=data).raise_for_status()
        url = next(
            o["url"]
            for o in client.list_storage(project_id)["files"]
            if o["filename"] == "r/blob.bin"
        )
        assert client.read_object(url, 100, 300) == data[100:300]
        assert client.read_object(url) == data
    ranged = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    assert ranged.headers["content-range"] == "bytes 10-19/1000"
    assert httpx.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert httpx.get(url, headers={"Range": "bytes=2000-"}).status_code == 416


def test_a_watch_run_is_one_entry_that_rollback_can_restore(
    tmp_path: Path, local_server: LocalServer
) -> None:
    import queue
    import threading

    from mosaicsync.config import load_config
    from mosaicsync.events import Synced, Watching
    from mosaicsync.history import History
    from mosaicsync.watch import Watcher
    from tests.test_watch import PAGE, make_site, served

    site = tmp_path / "site"
    with MosaicClient(local_server.api, KEY_A) as client:
        pid = make_site(site, client)
        config = load_config(site / "mosaic.toml")
        history = History(client, pid, config.history_keep)
        seen: queue.Queue = queue.Queue()

        def next_of(kind: type) -> object:
            while not isinstance(event := seen.get(timeout=30), kind):
                pass
            return event

        watcher = Watcher(config, client, pid, on_event=seen.put)
        watching = threading.Thread(target=watcher.run)
        watching.start()
        try:
            next_of(Watching)
            for marker in ("two", "three"):
                (site / "public" / "index.html").write_text(PAGE.format(marker=marker))
                next_of(Synced)
            # The entry is brought up to date right after each sync is reported.
            page = PAGE.format(marker="three").encode()

            def entry_holds_the_last_save() -> bool:
                newest = history.entries()[0]
                return (
                    newest.kind == "watch"
                    and newest.uploaded == 2
                    and (
                        history.files(newest.id)["index.html"].sha256
                        == hashlib.sha256(page).hexdigest()
                    )
                )

            wait_until(entry_holds_the_last_save, what="the watch entry")
        finally:
            watcher.stop()
            watching.join(timeout=30)
        kinds = [(e.kind, e.state) for e in history.entries()]
        assert kinds == [("watch", "complete"), ("deploy", "complete")]
    cli(["rollback", "--yes"], site, local_server)
    assert served(local_server, pid, "index.html", PAGE.format(marker="v1"))


def test_a_rollback_runs_the_deploys_secret_search_on_what_it_restores(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = site
    app = folder / "public" / "app.js"
    # Reviewed once (a documented sample key), published with --allow-secret...
    app.write_text('const sample = "mk_Ab12Cd34Ef56Gh78Ij90Kl12";\n')
    cli(["deploy", "--allow-secret", "public/app.js"], folder, local_server)
    app.write_text("const sample = null;\n")
    cli(["deploy"], folder, local_server)
    before = served_site(local_server, project_id)
    # ...a rollback does not bring it back silently: the same search, the same way out.
    refused = cli(["rollback", "--yes"], folder, local_server, code=9)
    assert "app.js:1:" in refused.stderr and "nothing was restored" in refused.stderr
    assert "mk_Ab12Cd34Ef56Gh78Ij90Kl12" not in refused.stderr
    assert served_site(local_server, project_id) == before
    cli(["rollback", "--yes", "--allow-secret", "public/app.js"], folder, local_server)
    assert b"mk_Ab12" in served_site(local_server, project_id)["site:app.js"]


def test_a_deploy_writes_only_what_it_changed_and_copies_are_converted_once(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    # File sets are spans (a row per version of a file), so a deploy of one change writes a
    # row or two, not a copy of the site; a project recorded with a copy per deploy (the first
    # layout) is read and restored the same once converted.
    from mosaicsync.history import History

    folder, project_id = site
    public = folder / "public"
    ids, served = [], []
    for i in range(3):
        (public / "style.css").write_text(f"body {{ margin: {i}px }}\n")
        if i == 1:
            (public / "about.html").write_text("<!doctype html><p>About</p>")
        if i == 2:
            (public / "app.js").unlink()
        ids.append(json.loads(cli(["deploy", "--json"], folder, local_server).stdout)["deploy_id"])
        served.append(served_site(local_server, project_id))
    with MosaicClient(local_server.api, KEY_A) as client:
        history = History(client, project_id, 20)
        sets = {k: history.files(k) for k in ids}
        assert "about.html" not in sets[ids[0]] and "about.html" in sets[ids[1]]
        assert "app.js" in sets[ids[1]] and "app.js" not in sets[ids[2]]
        assert len({row.sha256 for row in (sets[k]["style.css"] for k in ids)}) == 3
        count = "SELECT count(*) AS n FROM mosaicsync.file_spans"
        spans = client.sql(project_id, count)[0]["n"]
        # The first deploy's files, then per later deploy its style.css and mosaic-assets.json
        # at most, and about.html once: far fewer than a copy of every file per deploy.
        assert spans < sum(len(s) for s in sets.values()) - len(sets[ids[0]])

        # The first layout: every deploy's whole file set in `deploy_files`.
        client.sql(
            project_id,
            "CREATE TABLE mosaicsync.deploy_files (deploy_id bigint NOT NULL, path text NOT NULL, "
            "sha256 text NOT NULL, size bigint NOT NULL, target text NOT NULL, url text, "
            "uploaded_sha256 text, generated boolean NOT NULL DEFAULT false, "
            "PRIMARY KEY (deploy_id, path));\n"
            "INSERT INTO mosaicsync.deploy_files SELECT d.id, f.path, f.sha256, f.size, f.target, "
            "f.url, f.uploaded_sha256, f.generated FROM mosaicsync.deploys d JOIN "
            "mosaicsync.file_spans f ON f.first_id <= d.id AND (f.last_id IS NULL OR "
            "f.last_id > d.id);\n"
            "DROP TABLE mosaicsync.file_spans",
        )
        converted = History(client, project_id, 20)
        assert [e.id for e in converted.entries()] == ids[::-1]  # what every command reads first
        assert {k: history.files(k) for k in ids} == sets
        gone = "SELECT to_regclass('mosaicsync.deploy_files') IS NULL AS yes"
        assert client.sql(project_id, gone)[0]["yes"] is True
    cli(["rollback", str(ids[0]), "--yes"], folder, local_server)
    assert served_site(local_server, project_id) == served[0]
    (public / "style.css").write_text("body { margin: 9px }\n")
    cli(["deploy"], folder, local_server)
    cli(["rollback", str(ids[1]), "--yes"], folder, local_server)
    assert served_site(local_server, project_id) == served[1]


def test_equal_contents_are_packed_once_and_restored_at_every_path(
    site: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = site
    public = folder / "public"
    same = ("/* shared */\n" + os.urandom(3000).hex() + "\n").encode()
    (public / "a.css").write_bytes(same)
    (public / "b.css").write_bytes(same)
    first = json.loads(cli(["deploy", "--json"], folder, local_server).stdout)["deploy_id"]
    served_first = served_site(local_server, project_id)
    with MosaicClient(local_server.api, KEY_A) as client:
        blobs = client.sql(
            project_id,
            "SELECT size FROM mosaicsync.blobs "
            f"WHERE sha256 = '{hashlib.sha256(same).hexdigest()}'",
        )
        packs = client.sql(project_id, "SELECT size FROM mosaicsync.packs")
    assert [int(b["size"]) for b in blobs] == [len(same)]
    # The one pack holds each distinct content of the site once.
    site_contents = {data for name, data in served_first.items() if name.startswith("site:")}
    assert [int(p["size"]) for p in packs] == [sum(map(len, site_contents))]
    (public / "a.css").write_text("a { color: red }\n")
    (public / "b.css").write_text("b { color: blue }\n")
    cli(["deploy", "--json"], folder, local_server)
    cli(["rollback", str(first), "--yes"], folder, local_server)
    assert served_site(local_server, project_id) == served_first


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_git_state_is_commit_branch_and_dirty_read_in_one_status(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    assert git_state(folder) is None  # not a work tree
    git(folder, "init", "-q", "-b", "main")
    (folder / "index.html").write_text("<p>hi</p>")
    assert git_state(folder) is None  # no commit yet
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "first")
    head = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert git_state(folder) == GitState(head, "main", False)
    (folder / "new.css").write_text("a{}")
    assert git_state(folder) == GitState(head, "main", True)  # untracked counts as dirty
    (folder / "new.css").unlink()
    (folder / "index.html").write_text("<p>edited</p>")
    assert git_state(folder) == GitState(head, "main", True)
    git(folder, "checkout", "-q", "--", "index.html")
    git(folder, "checkout", "-q", "--detach")
    assert git_state(folder) == GitState(head, None, False)
