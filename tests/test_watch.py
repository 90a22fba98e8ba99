"""`mosaicsync watch` and `mosaicsync dev`: the pure parts, then the real CLI against a real local
platform and real files, then live reload over SSE and in a headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from watchfiles import Change

from mosaicsync.api import MosaicClient
from mosaicsync.config import load_config, render_config
from mosaicsync.ignore import is_editor_temp, load_ignore_rules
from mosaicsync.local.reload import ReloadHub, inject_script
from mosaicsync.retry import Backoff
from mosaicsync.watch import ChangeSorter, Coalescer, _affected
from tests.browser import chromium_page, needs_chromium
from tests.conftest import KEY_A, LocalServer, make_traversable

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>t</title>
<link rel="stylesheet" href="style.css"></head>
<body><p id="marker">{marker}</p></body></html>
"""


# -- pure parts ------------------------------------------------------------------------------------


def test_coalescer_waits_for_quiet_and_caps_the_wait() -> None:
    c = Coalescer(quiet=0.03, max_wait=1.0, burst_quiet=0.1, burst_gap=0.15, burst_size=50)
    assert c.due_at() is None
    c.add(10.0, ["a"])
    assert c.due_at() == pytest.approx(10.03)
    c.add(10.02, ["b", "a"])  # still coming: wait on; a path seen twice is kept once
    assert c.due_at() == pytest.approx(10.05)
    assert c.take() == ["a", "b"] and c.due_at() is None and len(c) == 0
    c.flushed(10.1)
    c.add(20.0, [])
    assert c.due_at() is None

    c.add(11.0, ["lone save"])  # long after the last sync: the short window
    assert c.due_at() == pytest.approx(11.03)
    c.take()
    c.flushed(11.05)
    c.add(11.1, ["right after a sync"])  # a burst: the longer window
    assert c.due_at() == pytest.approx(11.2)
    c.take()
    c.flushed(12.0)
    c.add(13.0, [f"f{i}" for i in range(51)])  # a burst by its size
    assert c.due_at() == pytest.approx(13.1)
    for i in range(100):  # a never-ending stream still flushes at max_wait
        c.add(13.0 + i * 0.05, [f"g{i}"])
    assert c.due_at() == pytest.approx(14.0)


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    b = Backoff(0.25, 5.0, jitter=0.2)
    delays = [b.next_delay() for _ in range(8)]
    for got, nominal in zip(delays, [0.25, 0.5, 1, 2, 4, 5, 5, 5], strict=True):
        assert nominal * 0.8 <= got <= nominal * 1.2
    b.reset()
    assert b.next_delay() <= 0.3


@pytest.mark.parametrize(
    "name",
    ["4913", ".page.html.swp", ".page.html.swx", "page.html~", ".#page.html", "#page.html#",
     "page.html___jb_tmp___", "page.html___jb_old___", ".page.html.tmp",
     ".goutputstream-X1Y2", "page.html.crswap", "~$report.docx"],
)  # fmt: skip
def test_editor_temp_names(name: str) -> None:
    assert is_editor_temp(name)


@pytest.mark.parametrize("name", ["page.html", "style.css", "4913.html", "notes.txt", "a~b.js"])
def test_real_names_are_not_editor_temp(name: str) -> None:
    assert not is_editor_temp(name)


def _sorter(tmp_path: Path) -> tuple[ChangeSorter, Path]:
    (tmp_path / "public" / "drafts").mkdir(parents=True)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "mosaic.toml").write_text(render_config("Sort"))
    config = load_config(tmp_path / "mosaic.toml")
    rules = load_ignore_rules(config.static_root, config.project_dir, ["drafts/"])
    return ChangeSorter(config, rules), Path(os.path.realpath(tmp_path))


SAVE_PATTERNS = {
    # Raw watchfiles batches (research notes, section 1.3), relative to public/.
    "atomic": [(Change.added, ".page.html.tmp"), (Change.deleted, ".page.html.tmp"),
               (Change.added, "page.html")],
    "vim": [(Change.added, "4913"), (Change.deleted, "4913"), (Change.added, "page.html~"),
            (Change.deleted, "page.html"), (Change.added, "page.html"),
            (Change.deleted, "page.html~")],
    "jetbrains": [(Change.added, "page.html___jb_tmp___"), (Change.added, "page.html___jb_old___"),
                  (Change.deleted, "page.html"), (Change.added, "page.html"),
                  (Change.deleted, "page.html___jb_tmp___"),
                  (Change.deleted, "page.html___jb_old___")],
}  # fmt: skip


@pytest.mark.parametrize("pattern", sorted(SAVE_PATTERNS))
def test_each_save_pattern_leaves_one_path(tmp_path: Path, pattern: str) -> None:
    sorter, root = _sorter(tmp_path)
    items = set()
    for change, rel in SAVE_PATTERNS[pattern]:
        items.update(sorter.sort(change, str(root / "public" / rel)))
    assert items == {("file", "page.html")}


def test_sorter_routes_config_migrations_and_ignores(tmp_path: Path) -> None:
    sorter, root = _sorter(tmp_path)
    assert sorter.sort(Change.modified, str(root / "mosaic.toml")) == [("config", "")]
    assert sorter.sort(Change.modified, str(root / "public" / ".mosaicignore")) == [("config", "")]
    assert sorter.sort(Change.added, str(root / "migrations" / "0002_x.sql")) == [
        ("migrations", "")
    ]
    assert sorter.sort(Change.added, str(root / "migrations" / "notes.md")) == []
    assert sorter.sort(Change.added, str(root / "public" / ".env")) == []  # a secret
    assert sorter.sort(Change.added, str(root / "public" / "drafts" / "x.html")) == []
    assert sorter.sort(Change.modified, str(root / "public" / "drafts")) == []
    # A directory's own `modified` is noise; its `added` (a rename) is not.
    (root / "public" / "sub").mkdir()
    assert sorter.sort(Change.modified, str(root / "public" / "sub")) == []
    assert sorter.sort(Change.added, str(root / "public" / "sub")) == [("file", "sub")]
    assert sorter.sort(Change.added, str(root / "elsewhere.html")) == []


def test_affected_walks_only_directory_like_paths() -> None:
    paths = ["a.html", "docs/a.html", "docs/sub/b.html", "docs2/c.html", "x/y.css"]
    assert _affected(paths, {"a.html"}, set()) == {"a.html"}
    assert _affected(paths, {"docs"}, {"docs"}) == {"docs/a.html", "docs/sub/b.html"}
    assert _affected(paths, {"docs/sub", "a.html"}, {"docs/sub"}) == {"a.html", "docs/sub/b.html"}


def test_script_goes_before_head_end_else_body_end_else_at_the_end() -> None:
    head = inject_script(b"<html><head><title>x</title></HEAD><body></body></html>", "p-abc", 3)
    assert head.index(b"data-mosaic-reload") < head.index(b"</HEAD>")
    assert b'"p-abc"' in head and b"version = 3" in head
    body = inject_script(b"<body>a</body><!-- </body> --></body>", "p-abc", 0)
    assert body.rindex(b"data-mosaic-reload") < body.rindex(b"</body>")
    assert body.index(b"data-mosaic-reload") > body.index(b"<!--")
    bare = inject_script(b"<p>fragment</p>", "p-abc", 0)
    assert bare.startswith(b"<p>fragment</p>") and bare.rstrip().endswith(b"</script>")


def test_reload_hub_gathers_a_burst_and_ends_streams_on_close() -> None:
    async def scenario() -> list[bytes]:
        hub = ReloadHub(quiet=0.02, max_wait=0.5)
        stream = hub.stream("p-abc")
        chunks = [await anext(stream)]
        hub.changed("p-abc", "style.css")
        hub.changed("p-abc", "index.html")
        hub.changed("p-other", "x.html")
        chunks.append(await asyncio.wait_for(anext(stream), 1))
        assert hub.version("p-abc") == 1
        hub.close()
        chunks += [chunk async for chunk in stream]
        return chunks

    hello, reload, *rest = asyncio.run(scenario())
    assert b"event: hello" in hello and b"retry: 500" in hello
    data = json.loads(reload.split(b"data: ", 1)[1])
    assert data["paths"] == ["index.html", "style.css"] and data["version"] == 1
    assert rest == []


# -- the CLI against a real platform ---------------------------------------------------------------


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


class Run:
    """A `mosaicsync` command in a subprocess whose `--json` lines are read on a thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / f".{args[0]}-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mosaicsync", *args, "--json"],
                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log,
                stdin=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._pump)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.lock:
                self.events.append(json.loads(line))

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("event") == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 15.0) -> dict[str, Any]:
        def seen() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None and len(self.of(kind)) < count:
                raise AssertionError(
                    f"exited {self.proc.returncode}: {self.events}\n{self.log.read_text()}"
                )
            found = self.of(kind)
            return found if len(found) >= count else None

        return wait_until(seen, timeout, f"{count} {kind!r} event(s)")[count - 1]

    def stop(self) -> float:
        """Ctrl-C; the seconds until the process was gone."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        took = time.monotonic() - started
        self.thread.join()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return took


def cli_env(server: LocalServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=server.api, MOSAIC_API_KEY=KEY_A, MOSAIC_LOCAL_FAST_DB="1")
    return env


def make_site(root: Path, client: MosaicClient | None, project_id: str | None = None) -> str:
    if client is not None:
        project_id = client.create_project("Watch Test")["project_id"]
        client.wait_until_running(project_id)
    root.mkdir(parents=True, exist_ok=True)
    (root / "mosaic.toml").write_text(render_config("Watch Test", project_id=project_id))
    public = root / "public"
    public.mkdir()
    (public / "index.html").write_text(PAGE.format(marker="v1"))
    (public / "style.css").write_text("body { color: rgb(1, 2, 3); }\n")
    (public / "app.js").write_text("console.log('app');\n")
    (public / "docs").mkdir()
    (public / "docs" / "guide.html").write_text("<p>guide</p>\n")
    return project_id or ""


def site_get(server: LocalServer | str, project_id: str, path: str) -> httpx.Response:
    base = server if isinstance(server, str) else server.base_url
    return httpx.get(f"{base}/sites/{project_id}/{path}")


def served(server: LocalServer, project_id: str, path: str, text: str | None) -> bool:
    """True when `path` serves exactly `text` (None: when it is gone)."""
    response = site_get(server, project_id, path)
    if text is None:
        return response.status_code == 404
    return response.status_code == 200 and response.text == text


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[MosaicClient]:
    with MosaicClient(local_server.api, KEY_A) as c:
        yield c


@pytest.fixture
def watched(
    tmp_path: Path, local_server: LocalServer, client: MosaicClient
) -> Iterator[tuple[Path, str, Run]]:
    site = tmp_path / "site"
    project_id = make_site(site, client)
    run = Run(["watch"], site, cli_env(local_server))
    run.wait_for("watching")
    yield site, project_id, run
    # The one-second promise is checked mid-burst below; here only that it stops promptly.
    assert run.stop() < 2.0, "Ctrl-C took two seconds or more"


@pytest.mark.integration
def test_save_delete_and_renames_are_served(
    watched: tuple[Path, str, Run], local_server: LocalServer
) -> None:
    site, pid, run = watched
    public = site / "public"
    deployed = run.of("deployed")[0]
    assert deployed["uploaded"] == 4
    page = site_get(local_server, pid, "")
    assert "data-mosaic-reload" not in page.text  # not in dev mode, no script

    new_page = PAGE.format(marker="v2")
    (public / "index.html").write_text(new_page)
    wait_until(lambda: served(local_server, pid, "", new_page), what="the save")
    sync = run.wait_for("sync")  # printed once the manifest has it, just after the upload
    assert sync["paths"] == ["index.html"] and sync["files"] == 1 and sync["bytes"] > 0
    assert sync["ms"] > 0 and sync["time"].endswith("Z")

    (public / "app.js").unlink()
    wait_until(lambda: served(local_server, pid, "app.js", None), what="the delete")

    (public / "style.css").rename(public / "main.css")
    wait_until(lambda: served(local_server, pid, "main.css", "body { color: rgb(1, 2, 3); }\n"))
    wait_until(lambda: served(local_server, pid, "style.css", None), what="the file rename")

    # A font goes to storage; the stylesheet that uses it is rewritten to its URL.
    (public / "font.woff2").write_bytes(os.urandom(3000))
    (public / "style.css").write_text("@font-face { src: url(font.woff2); }\n")

    def rewritten() -> bool:
        assets = site_get(local_server, pid, "mosaic-assets.json")
        if assets.status_code != 200 or "font.woff2" not in assets.json():
            return False
        return assets.json()["font.woff2"] in site_get(local_server, pid, "style.css").text

    wait_until(rewritten, what="the storage URL in style.css")
    (public / "font.woff2").unlink()
    wait_until(lambda: site_get(local_server, pid, "mosaic-assets.json").status_code == 404)
    wait_until(
        lambda: served(local_server, pid, "style.css", "@font-face { src: url(font.woff2); }\n")
    )
    (public / "style.css").unlink()

    # A directory rename reports only the directory: its files are found by walking it.
    (public / "docs").rename(public / "guide")
    wait_until(lambda: served(local_server, pid, "guide/guide.html", "<p>guide</p>\n"))
    wait_until(lambda: served(local_server, pid, "docs/guide.html", None), what="the dir rename")
    with MosaicClient(local_server.api, KEY_A) as c:
        rows = {r["path"] for r in c.sql(pid, "SELECT path FROM mosaicsync.files")}
    assert rows == {"index.html", "main.css", "guide/guide.html"}


@pytest.mark.integration
def test_a_burst_of_500_files_lands_in_a_few_syncs(
    watched: tuple[Path, str, Run], local_server: LocalServer, client: MosaicClient
) -> None:
    site, pid, run = watched
    burst = site / "public" / "burst"
    burst.mkdir()
    for i in range(500):
        (burst / f"f{i:03}.txt").write_text(f"file {i}\n")

    def all_there() -> bool:
        return sum(e["uploaded"] for e in run.of("sync")) >= 500

    wait_until(all_there, timeout=30, what="500 uploads")
    names = {f["filename"] for f in client.list_files(pid)}
    assert {f"burst/f{i:03}.txt" for i in range(500)} <= names
    syncs = run.of("sync")
    assert 1 <= len(syncs) <= 5, [len(e["paths"]) for e in syncs]
    assert served(local_server, pid, "burst/f499.txt", "file 499\n")


@pytest.mark.integration
def test_editor_saves_upload_once_and_never_the_temp_file(
    watched: tuple[Path, str, Run], local_server: LocalServer, client: MosaicClient
) -> None:
    site, pid, run = watched
    public = site / "public"
    page = public / "page.html"
    page.write_text("<p>0</p>")
    wait_until(lambda: served(local_server, pid, "page.html", "<p>0</p>"))
    time.sleep(0.2)

    def atomic(text: str) -> None:
        temp = public / ".page.html.tmp"
        temp.write_text(text)
        os.replace(temp, page)

    def vim(text: str) -> None:
        probe = public / "4913"
        probe.write_text("")
        probe.unlink()
        page.rename(public / "page.html~")
        page.write_text(text)
        (public / "page.html~").unlink()

    def jetbrains(text: str) -> None:
        temp = public / "page.html___jb_tmp___"
        temp.write_text(text)
        page.rename(public / "page.html___jb_old___")
        temp.rename(page)
        (public / "page.html___jb_old___").unlink()

    for n, save in enumerate([atomic, vim, jetbrains], start=1):
        before = len(run.of("sync"))
        text = f"<p>{n}</p>"
        save(text)
        wait_until(lambda text=text: served(local_server, pid, "page.html", text), what=save)
        time.sleep(0.25)  # long enough for a stray second sync to show up
        syncs = run.of("sync")[before:]
        assert [e["paths"] for e in syncs] == [["page.html"]], save.__name__
        assert sum(e["uploaded"] for e in syncs) == 1
    rows = {r["path"] for r in client.sql(pid, "SELECT path FROM mosaicsync.files")}
    stored = {f["filename"] for f in client.list_files(pid)}
    stored |= {f["filename"] for f in client.list_storage(pid)["files"]}
    for name in rows | stored:
        assert not is_editor_temp(name.rsplit("/", 1)[-1]), name


@pytest.mark.integration
def test_migrations_during_watch(
    tmp_path: Path, local_server: LocalServer, client: MosaicClient
) -> None:
    site = tmp_path / "site"
    pid = make_site(site, client)
    migrations = site / "migrations"
    migrations.mkdir()
    (migrations / "0001_notes.sql").write_text("CREATE TABLE notes (id int);\n")
    run = Run(["watch"], site, cli_env(local_server))
    try:
        assert run.wait_for("migrations")["applied"][0]["version"] == 1
        run.wait_for("watching")

        (migrations / "0002_tags.sql").write_text("CREATE TABLE tags (name text);\n")
        assert run.wait_for("migrations", 2)["applied"] == [
            {"version": 2, "name": "tags", "ms": run.of("migrations")[1]["applied"][0]["ms"]}
        ]
        assert client.sql(pid, "SELECT count(*) AS n FROM tags") == [{"n": 0}]

        # An applied migration edited: a loud warning, and nothing runs.
        (migrations / "0001_notes.sql").write_text("CREATE TABLE notes (id int, x int);\n")
        warning = run.wait_for("warning")
        assert warning["kind"] == "migration-edited" and "0001_notes.sql" in warning["message"]

        # A failing migration pauses migrations, not files.
        (migrations / "0003_bad.sql").write_text("CREATE TABLE broken (id int;\n")
        failed = wait_until(
            lambda: [w for w in run.of("warning") if w["kind"] == "migration-failed"]
        )[0]
        assert "0003_bad.sql" in failed["message"]
        (site / "public" / "app.js").write_text("console.log('still syncing');\n")
        wait_until(lambda: served(local_server, pid, "app.js", "console.log('still syncing');\n"))
        (migrations / "0003_bad.sql").write_text("CREATE TABLE fixed (id int);\n")
        assert run.wait_for("migrations", 3)["applied"][0]["version"] == 3
        columns = client.sql(
            pid, "SELECT count(*) AS n FROM information_schema.columns WHERE table_name = 'notes'"
        )
        assert columns == [{"n": 1}]  # the edit of 0001 never ran
    finally:
        assert run.stop() < 2.0


@pytest.mark.integration
def test_config_reload_and_ctrl_c_mid_burst_keeps_the_manifest_true(
    watched: tuple[Path, str, Run], local_server: LocalServer, client: MosaicClient
) -> None:
    site, pid, run = watched
    toml = site / "mosaic.toml"
    toml.write_text(toml.read_text().replace("ignore = []", 'ignore = ["drafts/"]'))
    assert "reloaded" in run.wait_for("config")["message"]
    (site / "public" / "drafts").mkdir()
    (site / "public" / "drafts" / "wip.html").write_text("wip")
    good = toml.read_text()
    toml.write_text(good + "\n[broken\n")
    assert run.wait_for("warning")["kind"] == "config"
    time.sleep(0.2)
    assert all("drafts/wip.html" not in e["paths"] for e in run.of("sync"))
    toml.write_text(good)
    run.wait_for("config", 2)

    for i in range(300):
        (site / "public" / f"p{i:03}.txt").write_text(f"{i}\n" * 400)

    def uploading() -> bool:
        return any(f["filename"].startswith("p") for f in client.list_files(pid))

    wait_until(uploading, what="the burst to start arriving")
    took = run.stop()  # most likely in the middle of that sync
    assert took < 1.0, f"Ctrl-C took {took:.2f} s"
    # Every row says what the platform holds: a row is written only after its file arrived.
    rows = client.sql(pid, "SELECT path, sha256, uploaded_sha256 FROM mosaicsync.files")
    on_site = {f["filename"]: f["sha256"] for f in client.list_files(pid)}
    for row in rows:
        assert on_site.get(row["path"]) == (row["uploaded_sha256"] or row["sha256"]), row["path"]
    # And the next run sends only what had not been recorded.
    recorded = sum(1 for row in rows if row["path"].startswith("p"))
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", "deploy", "--json"],
        cwd=site, env=cli_env(local_server), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(out.stdout)["uploaded"] == 300 - recorded, (out.stdout, out.stderr)


@pytest.mark.integration
def test_polling_sees_two_saves_within_one_second(
    tmp_path: Path, local_server: LocalServer, client: MosaicClient
) -> None:
    site = tmp_path / "site"
    pid = make_site(site, client)
    run = Run(["watch", "--poll"], site, cli_env(local_server))
    try:
        assert run.wait_for("watching")["polling"] is True
        page = site / "public" / "index.html"
        for marker in ("p1", "p2", "p3"):  # a poller compares whole-second mtimes
            text = PAGE.format(marker=marker)
            page.write_text(text)
            wait_until(lambda text=text: served(local_server, pid, "", text), what=marker)
    finally:
        assert run.stop() < 2.0


@pytest.mark.integration
def test_platform_down_then_up_catches_up(tmp_path: Path) -> None:
    server = LocalServer(tmp_path / "platform", ["--api-key", KEY_A, "--rate-limit", "0"])
    server.start()
    run = None
    try:
        with MosaicClient(server.api, KEY_A) as c:
            pid = make_site(tmp_path / "site", c)
        site = tmp_path / "site"
        run = Run(["watch"], site, cli_env(server))
        run.wait_for("watching")
        port = server.port
        server.stop()

        (site / "public" / "index.html").write_text("<p>written while down</p>")
        (site / "public" / "new.html").write_text("<p>new</p>")
        (site / "public" / "app.js").unlink()
        retry = run.wait_for("retry")
        assert retry["pending"] >= 1 and retry["retry_in"] > 0
        run.wait_for("retry", 2)  # it keeps trying while the platform is away

        server.listen_port = port
        server.start()
        wait_until(lambda: served(server, pid, "", "<p>written while down</p>"), timeout=20)
        wait_until(lambda: served(server, pid, "new.html", "<p>new</p>"))
        wait_until(lambda: served(server, pid, "app.js", None))
    finally:
        if run is not None:
            assert run.stop() < 2.0
        server.stop()


# -- dev: the local platform with live reload ------------------------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`mosaicsync dev` on a free port, with its own data dir, for a folder linked to production."""
    root = tmp_path_factory.mktemp("dev")
    make_traversable(root)
    site = root / "site"
    make_site(site, None, "prod-abc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(
        MOSAIC_LOCAL_FAST_DB="1",
        XDG_CONFIG_HOME=str(root / "xdg-config"),
        XDG_DATA_HOME=str(root / "xdg-data"),
    )
    run = Run(["dev", "--port", "0", "--data", str(root / "data")], site, env)
    try:
        info = run.wait_for("dev", timeout=60)
        run.wait_for("watching")
        base = info["api_url"].removesuffix("/v1/project")
        yield {**info, "site": site, "run": run, "base": base}
    finally:
        assert run.stop() < 5.0


@pytest.mark.integration
def test_dev_records_the_local_project_apart_from_production(dev: dict[str, Any]) -> None:
    doc = tomllib.loads((dev["site"] / "mosaic.toml").read_text())
    assert doc["app"]["project_id"] == "prod-abc"
    assert doc["targets"]["local"]["project_id"] == dev["project_id"] != "prod-abc"
    assert dev["url"] == f"http://{dev['project_id']}.localhost:{dev['base'].rsplit(':', 1)[1]}/"
    page = site_get(dev["base"], dev["project_id"], "")
    assert page.headers["cache-control"] == "no-store" and "etag" not in page.headers
    assert page.text.count("data-mosaic-reload") == 1
    assert "data-mosaic-reload" not in site_get(dev["base"], dev["project_id"], "style.css").text


@pytest.mark.integration
def test_dev_sse_announces_a_save(dev: dict[str, Any]) -> None:
    url = f"{dev['base']}/_local/reload?project={dev['project_id']}"
    with httpx.stream("GET", url, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "retry: 500" and next(lines) == "event: hello"
        hello = json.loads(next(lines).removeprefix("data: "))
        saved = time.perf_counter()
        (dev["site"] / "public" / "app.js").write_text(f"console.log({saved});\n")
        for line in lines:
            if line == "event: reload":
                data = json.loads(next(lines).removeprefix("data: "))
                break
        took = time.perf_counter() - saved
    assert data["paths"] == ["app.js"] and data["version"] > hello["version"]
    assert took < 1.0, f"reload announced {took * 1000:.0f} ms after the save"


# Counts, in the page, the `hello` of each EventSource it opens (the reload script's stream).
COUNT_HELLOS = """
window.__hellos = 0;
const NativeEventSource = window.EventSource;
window.EventSource = function (url, init) {
  const source = new NativeEventSource(url, init);
  source.addEventListener("hello", () => { window.__hellos += 1; });
  return source;
};
"""


@pytest.mark.integration
@needs_chromium
def test_browser_reloads_on_save_and_swaps_css_without_reload(dev: dict[str, Any]) -> None:
    public = dev["site"] / "public"
    with chromium_page() as page:
        loads: list[float] = []
        page.on("load", lambda _: loads.append(time.perf_counter()))
        page.add_init_script(COUNT_HELLOS)
        page.goto(dev["url"])
        # The page is live: its stream said hello before we save.
        page.wait_for_function("window.__hellos >= 1")
        reloads = len(loads)

        with page.expect_event("load"):
            saved = time.perf_counter()
            (public / "index.html").write_text(PAGE.format(marker="v-browser"))
        took = loads[reloads] - saved
        page.wait_for_function("document.getElementById('marker').textContent === 'v-browser'")
        print(f"save to reloaded page: {took * 1000:.0f} ms")
        assert took < 2.0, f"the page reloaded {took * 1000:.0f} ms after the save"

        # CSS only: the stylesheet is swapped in place, the page is not reloaded.
        page.wait_for_function("window.__hellos >= 1")  # the reloaded page's own stream
        page.evaluate("window.__sameDocument = true")
        reloads = len(loads)
        color = "getComputedStyle(document.body).color"
        assert page.evaluate(color) == "rgb(1, 2, 3)"
        (public / "style.css").write_text("body { color: rgb(40, 50, 60); }\n")
        page.wait_for_function(f"{color} === 'rgb(40, 50, 60)'")
        assert page.evaluate("window.__sameDocument") is True
        assert len(loads) == reloads
        assert page.evaluate("document.querySelectorAll('link[rel=stylesheet]').length") == 1


# uvicorn's `timeout_graceful_shutdown` in mosaicsync/local/server.py.
GRACEFUL_SHUTDOWN_S = 2.0


@pytest.mark.integration
def test_dev_stops_at_once_with_a_reload_stream_open(dev: dict[str, Any]) -> None:
    """Last of the dev tests: an open SSE stream must not hold the platform's shutdown."""
    url = f"{dev['base']}/_local/reload?project={dev['project_id']}"
    hello = threading.Event()
    ended: list[tuple[str, float]] = []

    def listen() -> None:
        try:
            with httpx.stream("GET", url, timeout=30) as stream:
                for line in stream.iter_lines():
                    if line == "event: hello":
                        hello.set()
            ended.append(("closed", time.monotonic()))
        except httpx.HTTPError as exc:
            ended.append((type(exc).__name__, time.monotonic()))

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        assert hello.wait(10)
        stopping = time.monotonic()
        took = dev["run"].stop()
    finally:
        listener.join(30)
    assert ended, "the stream was still open after the platform stopped"
    # The platform ends the stream itself, first thing: held, it would be cut after uvicorn's
    # 2 s of grace. Timed from Ctrl-C to the stream's end, not to the exit of the whole process
    # tree (PostgreSQL's stop included), which a busy machine slows down.
    (how, at), held = ended[0], GRACEFUL_SHUTDOWN_S
    assert how == "closed" and at - stopping < held / 2, f"stream {how} after {at - stopping:.1f} s"
    assert took < 5.0, f"dev took {took:.1f} s to stop with a stream open"
