"""Reliability: deploys and migrations through a faulty network, killed deploys, racing deploys.

Everything runs the real CLI in a subprocess against the real local platform, with the fault
proxy of `tests/faults.py` in between. The heavy suites are marked `heavy` (`make test-all`);
each prints what was injected and survived, the figures the README's "Reliability" section quotes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from mosaicsync.api import MosaicClient
from mosaicsync.history import PREFIX as HISTORY_PREFIX
from mosaicsync.manifest import sql_literal
from mosaicsync.retry import BACKOFF_SCALE_ENV
from tests.conftest import KEY_A, LocalServer, make_traversable
from tests.faults import FaultProxy, Faults, Reply, Request

pytestmark = pytest.mark.integration

# The mix of the big runs: 20% errors (500/502/503 and 429) and 5% dropped connections, some
# after the platform did the work, plus a few cut and slow responses.
HARSH = Faults(
    server_error=0.15,
    rate_limit=0.05,
    drop_before=0.02,
    drop_after=0.02,
    truncate=0.01,
    slow=0.02,
    retry_after="1",
    slow_seconds=0.2,
)
MAX_RUNS = 6  # deploys a user (or CI) would try before giving up on a failing platform


# -- helpers shared with the other suites ----------------------------------------------------------


# The CLI's own waits (its backoff and the proxy's `Retry-After: 1`) at a tenth of their length,
# through the test knob of mosaicsync/retry.py: the fault draws depend on the requests only, never
# on time, so the same requests fail and the same retries happen, without sleeping each one out.
FAST_WAITS = "0.1"


def cli_env(
    api_url: str, key: str = KEY_A, *, backoff_scale: str | None = FAST_WAITS, **extra: str
) -> dict[str, str]:
    """The CLI's environment: the test's, minus any MOSAIC_ setting, plus URL and key (and the
    wait scale; None keeps the real schedule)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=api_url, MOSAIC_API_KEY=key, **extra)
    if backoff_scale is not None:
        env[BACKOFF_SCALE_ENV] = backoff_scale
    return env


def mosaic(
    args: list[str],
    cwd: Path,
    api_url: str,
    *,
    key: str = KEY_A,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; the caller checks the exit code."""
    return subprocess.run(
        [sys.executable, "-m", "mosaicsync", *args],
        cwd=cwd,
        env=cli_env(api_url, key),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def create_project(server: LocalServer, name: str, key: str = KEY_A) -> str:
    with MosaicClient(server.api, key) as client:
        project_id = client.create_project(name)["project_id"]
        client.wait_until_running(project_id, timeout=60)
    return project_id


def write_project(directory: Path, project_id: str, *, root: str = "public") -> Path:
    """A project folder linked to `project_id`: mosaic.toml, the static root, migrations/."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / root).mkdir(exist_ok=True)
    (directory / "mosaic.toml").write_text(
        f'[app]\nname = "{directory.name}"\nproject_id = "{project_id}"\n\n'
        f'[static]\nroot = "{root}"\n\n[migrations]\ndir = "migrations"\n'
    )
    return directory


HISTORY_NAME = re.escape(HISTORY_PREFIX) + r"(packs/[0-9a-f]{64}\.pack|objects/[0-9a-f]{64})"


def png_bytes(seed: int, size: int = 8) -> bytes:
    """A small valid PNG whose pixels depend on `seed`."""
    rng = random.Random(seed)
    raw = b"".join(b"\0" + rng.randbytes(size * 3) for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@dataclass
class PlatformState:
    """What one project holds: site files, storage objects, manifest rows, migration history."""

    site: dict[str, str]  # path -> sha256 as stored
    storage: dict[str, int]  # path -> size
    manifest: dict[str, dict]  # path -> row
    migrations: list[dict]
    manifest_exists: bool
    history: dict[str, int] = field(default_factory=dict)  # the deploy history's own objects

    @property
    def empty(self) -> bool:
        return not (self.site or self.storage or self.manifest or self.migrations)


def platform_state(server: LocalServer, project_id: str, key: str = KEY_A) -> PlatformState:
    """Read straight from the platform, never through a proxy."""
    with MosaicClient(server.api, key) as client:
        site = {f["filename"]: f["sha256"] for f in client.list_files(project_id)}
        objects = {o["filename"]: o["size"] for o in client.list_storage(project_id)["files"]}
        # Packs and kept copies of the deploy history: named by content, never a site path.
        history = {p: n for p, n in objects.items() if p.startswith(HISTORY_PREFIX)}
        assert all(re.fullmatch(HISTORY_NAME, p) for p in history), sorted(history)
        storage = {p: n for p, n in objects.items() if p not in history}
        tables = client.sql(
            project_id,
            "SELECT to_regclass('mosaicsync.files') IS NOT NULL AS files, "
            "to_regclass('mosaicsync.migrations') IS NOT NULL AS migrations",
            idempotent=True,
        )[0]
        manifest: dict[str, dict] = {}
        after = ""
        while tables["files"]:
            rows = client.sql(
                project_id,
                f"SELECT * FROM mosaicsync.files {after}ORDER BY path LIMIT 500",
                idempotent=True,
            )
            manifest.update((r["path"], r) for r in rows)
            if len(rows) < 500:
                break
            after = f"WHERE path > {sql_literal(rows[-1]['path'])} "
        migrations: list[dict] = []
        if tables["migrations"]:
            migrations = client.sql(
                project_id,
                "SELECT version::int AS version, name, state, run_id::text AS run_id "
                "FROM mosaicsync.migrations ORDER BY version",
                idempotent=True,
            )
    return PlatformState(site, storage, manifest, migrations, bool(tables["files"]), history)


def local_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` by POSIX relative path, through symlinks as deploy does."""
    tree: dict[str, bytes] = {}
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                tree[path.relative_to(root).as_posix()] = path.read_bytes()
    return dict(sorted(tree.items()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def site_url(server: LocalServer, project_id: str, path: str) -> str:
    return f"{server.base_url}/sites/{project_id}/{quote(path)}"


def storage_url(base_url: str, project_id: str, path: str) -> str:
    return f"{base_url}/_storage/{project_id}/{quote(path)}"


def assert_manifest_matches_platform(state: PlatformState) -> None:
    """Every manifest row describes exactly what the platform holds, and nothing is untracked."""
    site_rows = {p: r for p, r in state.manifest.items() if r["target"] == "site"}
    storage_rows = {p: r for p, r in state.manifest.items() if r["target"] == "storage"}
    assert set(site_rows) == set(state.site)
    assert set(storage_rows) == set(state.storage)
    for path, row in site_rows.items():
        assert state.site[path] == (row["uploaded_sha256"] or row["sha256"]), path
    for path, row in storage_rows.items():
        assert state.storage[path] == int(row["size"]), path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A platform with the documented default caps (the session one is deliberately tight)."""
    data = tmp_path_factory.mktemp("reliability") / "data"
    make_traversable(data.parent)
    server = LocalServer(data, ["--api-key", KEY_A, "--rate-limit", "0"]).start()
    yield server
    server.stop()


# -- the proxy itself ------------------------------------------------------------------------------


@pytest.fixture
def proxy(local_server: LocalServer) -> Iterator[FaultProxy]:
    with FaultProxy(local_server.base_url, seed=1) as p:
        yield p


def test_proxy_relays_keep_alive_and_keeps_the_host(
    proxy: FaultProxy, local_server: LocalServer
) -> None:
    project_id = create_project(local_server, "proxy relay")
    with MosaicClient(proxy.api_url, KEY_A) as client:
        for _ in range(5):
            assert client.get_project(project_id)["project_id"] == project_id
        signed = client.upload_url(project_id, "a b/c.bin", 3)
        assert signed["upload_url"].startswith(proxy.base_url + f"/_storage/{project_id}/a%20b/")
    counts = proxy.counts()
    assert counts["requests"] == counts["forwarded"] == 6
    assert proxy.injected() == {}


def test_each_fault_kind_reaches_the_client_as_intended(
    proxy: FaultProxy, local_server: LocalServer
) -> None:
    project_id = create_project(local_server, "proxy kinds")
    seen: dict[str, object] = {}
    with httpx.Client(base_url=proxy.api_url, headers={"X-API-Key": KEY_A}) as http:
        for kind in ("server_error", "rate_limit", "drop_before", "drop_after", "truncate", "slow"):
            proxy.rules = [lambda r, kind=kind: kind]
            body = {"filename": f"{kind}.txt", "content": kind}
            started = time.monotonic()
            try:
                response = http.post(f"/{project_id}/files", json=body)
                seen[kind] = (response.status_code, response.headers.get("retry-after"))
            except httpx.TransportError as exc:
                seen[kind] = type(exc).__name__
            if kind == "slow":
                assert time.monotonic() - started >= proxy.faults.slow_seconds
    proxy.rules = []
    assert seen["server_error"][0] in (500, 502, 503)  # type: ignore[index]
    assert seen["rate_limit"] == (429, "1")
    assert seen["drop_before"] == seen["drop_after"] == seen["truncate"] == "RemoteProtocolError"
    assert seen["slow"] == (200, None)
    # Dropped after forwarding, cut or slow: the platform did the work all the same.
    stored = set(platform_state(local_server, project_id).site)
    assert stored == {"drop_after.txt", "truncate.txt", "slow.txt"}


def test_the_draw_is_seeded_and_independent_of_arrival_order(local_server: LocalServer) -> None:
    faults = Faults(server_error=0.3, drop_before=0.2)
    # The query string is not part of a request's identity: a presigned URL's changes each time.
    paths = [f"/x/{i}?expires={i}" for i in range(40)]

    def fates(order: list[str], seed: int) -> dict[str, list[object]]:
        proxy = FaultProxy(local_server.base_url, faults, seed=seed)
        result: dict[str, list[object]] = {}
        for path in order:
            for _ in range(3):
                request = Request("GET", path, (), b"")
                result.setdefault(path, []).append(proxy._draw(request))
        return result

    forward = fates(paths, seed=5)
    assert fates(list(reversed(paths)), seed=5) == forward
    assert fates(paths, seed=6) != forward
    kinds = Counter(kind for draws in forward.values() for kind, _ in draws)
    assert kinds["server_error"] > 0 and kinds["drop_before"] > 0 and kinds[None] > 0


def test_down_refuses_connections_and_up_listens_again(
    proxy: FaultProxy, local_server: LocalServer
) -> None:
    with httpx.Client(base_url=proxy.api_url, headers={"X-API-Key": KEY_A}) as http:
        assert http.get("/projects").status_code == 200
        proxy.down()
        with pytest.raises(httpx.ConnectError):
            http.get("/projects")
        proxy.up()
        assert http.get("/projects").status_code == 200


def test_a_rule_answers_instead_of_the_platform(proxy: FaultProxy) -> None:
    proxy.rules = [lambda r: Reply(402, b'{"error": "upgrade"}') if r.method == "GET" else None]
    with httpx.Client(base_url=proxy.api_url, headers={"X-API-Key": KEY_A}) as http:
        response = http.get("/projects")
    assert response.status_code == 402 and response.json() == {"error": "upgrade"}
    assert proxy.counts() == {"requests": 1, "rule_402": 1}


# -- a 1,000-file deploy through a harsh network ---------------------------------------------------


def build_site(root: Path, count: int, seed: int) -> dict[str, str]:
    """`count` files of every kind, some routed to storage; returns page -> storage file it uses.

    Only the pages in the returned map reference a storage file (and are rewritten when served).
    """
    rng = random.Random(seed)
    references: dict[str, str] = {}
    media: list[str] = []
    kinds = (
        ["html"] * 30 + ["css"] * 15 + ["js"] * 25 + ["png"] * 15 + ["other"] * 8 + ["store"] * 7
    )
    for i in range(count):
        kind = rng.choice(kinds)
        folder = root / f"section{i % 12:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        text = f"{kind} {i} {rng.randbytes(rng.randint(20, 3000)).hex()}"
        if kind == "html":
            path = folder / f"page{i:04d}.html"
            body = f"<!doctype html><title>{i}</title><p>{text}</p>"
            if media and rng.random() < 0.1:
                used = rng.choice(media)
                body += f'<video src="/{used}"></video>'
                references[path.relative_to(root).as_posix()] = used
            path.write_text(body + "\n")
        elif kind == "css":
            (folder / f"style{i:04d}.css").write_text(f"/* {text} */\nbody {{ margin: {i}px }}\n")
        elif kind == "js":
            (folder / f"app{i:04d}.js").write_text(f"// {text}\nconsole.log({i});\n")
        elif kind == "png":
            (folder / f"img{i:04d}.png").write_bytes(png_bytes(i, rng.randint(4, 40)))
        elif kind == "other":
            ext = rng.choice([".txt", ".json", ".svg"])
            data = json.dumps({"i": i, "t": text}) if ext == ".json" else text
            (folder / f"data{i:04d}{ext}").write_text(data)
        else:
            ext = rng.choice([".woff2", ".mp4", ".bin"])
            path = folder / f"asset{i:04d}{ext}"
            path.write_bytes(rng.randbytes(rng.randint(1, 200_000)))
            media.append(path.relative_to(root).as_posix())
    return references


def expected_served(
    files: dict[str, bytes], references: dict[str, str], storage_base: str, project_id: str
) -> dict[str, bytes]:
    """What each site path must serve: the bytes on disk, or the page with its storage URL."""
    expected = dict(files)
    for page, used in references.items():
        text = files[page].decode()
        expected[page] = text.replace(
            f'src="/{used}"', f'src="{storage_url(storage_base, project_id, used)}"'
        ).encode()
    return expected


def deploy_until_done(
    project: Path, api_url: str, runs: int = MAX_RUNS, *extra: str
) -> tuple[dict, list[subprocess.CompletedProcess[str]]]:
    """Deploy as a user or CI would on a failing platform: again, until it succeeds.

    Every failed run must fail cleanly: a JSON error with an exit code, never a traceback.
    """
    failures: list[subprocess.CompletedProcess[str]] = []
    for _ in range(runs):
        out = mosaic(["deploy", "--json", *extra], project, api_url)
        assert "Traceback" not in out.stderr, out.stderr
        if out.returncode == 0:
            return json.loads(out.stdout), failures
        body = json.loads(out.stdout)
        assert body["status"] == "error" and body["error"]["exit_code"] == out.returncode
        failures.append(out)
    messages = "\n".join(json.loads(f.stdout)["error"]["error"] for f in failures)
    raise AssertionError(f"no successful deploy in {runs} runs:\n{messages}")


def assert_site_equals(
    server: LocalServer,
    project_id: str,
    root: Path | dict[str, bytes],
    references: dict[str, str],
    storage_base: str,
) -> int:
    """Fetch every served file and storage object; each must be byte-identical to the folder
    (or to the given files). Returns how many were checked."""
    from mosaicsync.plan import route

    files = local_tree(root) if isinstance(root, Path) else root
    site = {p: b for p, b in files.items() if route(p, len(b)) == "site"}
    stored = {p: b for p, b in files.items() if p not in site}
    expected = expected_served(site, references, storage_base, project_id)
    state = platform_state(server, project_id)
    generated = {"mosaic-assets.json"} if stored else set()
    assert set(state.site) == set(expected) | generated
    assert set(state.storage) == set(stored)
    assert_manifest_matches_platform(state)
    with httpx.Client(timeout=30) as http:
        for path, data in expected.items():
            response = http.get(site_url(server, project_id, path))
            assert response.status_code == 200, path
            assert response.content == data, path
        for path, data in stored.items():
            response = http.get(storage_url(server.base_url, project_id, path))
            assert response.status_code == 200, path
            assert response.content == data, path
        if stored:
            assets = http.get(site_url(server, project_id, "mosaic-assets.json")).json()
            assert assets == {p: storage_url(storage_base, project_id, p) for p in stored}
    return len(expected) + len(stored)


def report(title: str, **figures: object) -> None:
    """One line the README's Reliability section is copied from (visible with `pytest -s`)."""
    print(f"\n[reliability] {title}: " + json.dumps(figures, sort_keys=True))


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_a_thousand_files_through_errors_and_drops_end_byte_identical(
    platform: LocalServer, tmp_path: Path
) -> None:
    project_id = create_project(platform, "thousand files")
    project = write_project(tmp_path / "site", project_id)
    root = project / "public"
    references = build_site(root, 1000, seed=11)
    assert len(local_tree(root)) == 1000
    started = time.monotonic()
    with FaultProxy(platform.base_url, HARSH, seed=2026) as proxy:
        result, failures = deploy_until_done(project, proxy.api_url)
        first_ms = result["duration_ms"]
        # A second pass through the same network changes nothing.
        again, more = deploy_until_done(project, proxy.api_url)
        assert again["uploaded"] == 0 and again["pruned"] == 0
        checked = assert_site_equals(platform, project_id, root, references, proxy.base_url)
        # Then an edit of 50 files and 10 deletions: the manifest is read and pruned as well.
        rng = random.Random(3)
        paths = sorted(local_tree(root))
        for path in rng.sample(paths, 50):
            target = root / path
            if target.suffix in (".html", ".css", ".js", ".txt", ".svg"):
                target.write_text(target.read_text() + "\n<!-- edited -->\n")
            elif target.suffix == ".json":
                target.write_text(json.dumps({"edited": path}))
            elif target.suffix == ".png":
                target.write_bytes(png_bytes(rng.randint(10_000, 20_000)))
            else:
                target.write_bytes(rng.randbytes(rng.randint(1, 50_000)))
        for path in rng.sample(paths, 10):
            (root / path).unlink()
            references.pop(path, None)
        references = {p: u for p, u in references.items() if (root / u).exists()}
        for page, used in list(references.items()):
            if f'src="/{used}"' not in (root / page).read_text():
                references.pop(page)
        edit, last = deploy_until_done(project, proxy.api_url)
        assert edit["pruned"] >= 10
        injected = proxy.injected()
        counts = proxy.counts()
        assert_site_equals(platform, project_id, root, references, proxy.base_url)
    assert checked == 1000
    assert sum(injected.values()) > 200, injected
    report(
        "1000-file deploy",
        requests=counts["requests"],
        injected=injected,
        injected_total=sum(injected.values()),
        failed_runs=len(failures) + len(more) + len(last),
        failures=[json.loads(f.stdout)["error"]["error"][:160] for f in failures + more + last],
        files_checked=checked,
        seconds=round(time.monotonic() - started, 1),
        first_deploy_ms=first_ms,
    )


@pytest.mark.parametrize("fault", ["server_error", "drop_after"])
def test_a_lost_answer_to_the_deploy_record_does_not_fail_the_deploy(
    local_server: LocalServer, tmp_path: Path, fault: str
) -> None:
    """Everything arrived; a 503, or a response lost after the insert, must not turn it red."""
    project_id = create_project(local_server, "deploy record")
    project = write_project(tmp_path / "site", project_id)
    (project / "public" / "index.html").write_text("<p>hi</p>\n")
    hits: list[int] = []

    def first_record(request: Request) -> str | None:
        if b"INSERT INTO mosaicsync.deploys" in request.body:
            hits.append(1)
            return fault if len(hits) == 1 else "pass"
        return "pass"

    with FaultProxy(local_server.base_url, rules=[first_record]) as proxy:
        out = mosaic(["deploy", "--json"], project, proxy.api_url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(hits) == 2
    with MosaicClient(local_server.api, KEY_A) as client:
        rows = client.sql(project_id, "SELECT count(*) AS n FROM mosaicsync.deploys")
    assert rows == [{"n": 1}]


# -- migrations through the same network -----------------------------------------------------------


SIDE_EFFECTS = "CREATE TABLE side_effects (version int NOT NULL, at timestamptz DEFAULT now());\n"


def write_migrations(directory: Path, versions: range) -> None:
    """Each migration's body leaves one row in `side_effects`: a body run twice leaves two."""
    directory.mkdir(parents=True, exist_ok=True)
    for v in versions:
        if v == 1:
            body = SIDE_EFFECTS + "INSERT INTO side_effects (version) VALUES (1);\n"
        elif v % 10 == 0:
            body = (
                "-- mosaicsync:no-transaction\n"
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS side_effects_{v} "
                "ON side_effects (version, at);\n"
                f"INSERT INTO side_effects (version) VALUES ({v});\n"
            )
        else:
            body = (
                f"CREATE TABLE t{v} (id serial PRIMARY KEY, note text DEFAULT 'v{v}');\n"
                f"INSERT INTO t{v} DEFAULT VALUES;\n"
                f"INSERT INTO side_effects (version) VALUES ({v});\n"
            )
        (directory / f"{v:04d}_step_{v}.sql").write_text(body)


def run_until_done(
    args: list[str], project: Path, api_url: str, runs: int = MAX_RUNS
) -> tuple[dict, list[dict]]:
    """Run a command until it succeeds; each failure must be a clean JSON error."""
    failures: list[dict] = []
    for _ in range(runs):
        out = mosaic([*args, "--json"], project, api_url)
        assert "Traceback" not in out.stderr, out.stderr
        body = json.loads(out.stdout)
        if out.returncode == 0:
            return body, failures
        assert body["status"] == "error" and body["error"]["exit_code"] == out.returncode
        failures.append(body["error"])
    raise AssertionError(f"{args} never succeeded: {failures}")


def assert_each_migration_ran_once(server: LocalServer, project_id: str, versions: range) -> None:
    state = platform_state(server, project_id)
    assert [m["version"] for m in state.migrations] == list(versions)
    assert {m["state"] for m in state.migrations} == {"applied"}
    with MosaicClient(server.api, KEY_A) as client:
        rows = client.sql(
            project_id,
            "SELECT version, count(*) AS n FROM side_effects GROUP BY version ORDER BY version",
        )
        lock = client.sql(
            project_id, "SELECT holder IS NULL AS free FROM mosaicsync.lock WHERE id = 1"
        )
    assert {r["version"]: r["n"] for r in rows} == {v: 1 for v in versions}
    assert lock == [{"free": True}]


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_migrations_through_errors_and_drops_apply_each_exactly_once(
    platform: LocalServer, tmp_path: Path
) -> None:
    project_id = create_project(platform, "faulty migrations")
    project = write_project(tmp_path / "site", project_id)
    (project / "public" / "index.html").write_text("<p>migrations</p>\n")
    migrations = project / "migrations"
    started = time.monotonic()
    failures: list[dict] = []
    totals: Counter[str] = Counter()

    def lose_first_attempts(request: Request) -> str | None:
        """On top of the random faults: lose the first try of two migrations in three, half
        of them after the platform committed it."""
        found = re.search(rb"mosaicsync run=\S+ v=(\d+)(?: step=\d+)? attempt=1 ", request.body)
        if found is None:
            return None
        return ("drop_after", "drop_before", None)[int(found[1]) % 3]

    # Five rounds of 20, each with its own seed: `migrate up`, then `deploy` (migrations first).
    for round_ in range(5):
        versions = range(1 + 20 * round_, 21 + 20 * round_)
        command = ["migrate", "up"] if round_ % 2 == 0 else ["deploy"]
        write_migrations(migrations, versions)
        rules = [lose_first_attempts]
        with FaultProxy(platform.base_url, HARSH, seed=100 + round_, rules=rules) as proxy:
            _, failed = run_until_done(command, project, proxy.api_url)
            failures += failed
            totals.update(proxy.injected())
            totals["requests"] += proxy.counts()["requests"]
        assert_each_migration_ran_once(platform, project_id, range(1, versions.stop))
    requests = totals.pop("requests")
    report(
        "migrations",
        migrations=100,
        requests=requests,
        injected=dict(totals),
        injected_total=sum(totals.values()),
        failed_runs=len(failures),
        failures=[f["error"][:100] for f in failures],
        seconds=round(time.monotonic() - started, 1),
    )


# -- deploys killed with SIGKILL -------------------------------------------------------------------


def mutate(root: Path, migrations: Path, rng: random.Random, round_: int) -> None:
    """One round of work: new, changed and deleted files (site and storage), two migrations."""
    existing = sorted(p for p in root.rglob("*") if p.is_file())
    for path in rng.sample(existing, min(len(existing), 25)):
        if path.suffix in (".html", ".css", ".js", ".txt"):
            path.write_text(f"round {round_} {rng.randbytes(rng.randint(10, 2000)).hex()}\n")
        else:
            path.write_bytes(rng.randbytes(rng.randint(0, 60_000)))
    for path in rng.sample(existing, min(len(existing), 4)):
        path.unlink()
    for n in range(12):
        ext = rng.choice([".html", ".css", ".js", ".txt", ".png", ".woff2", ".mp4"])
        folder = root / f"dir{rng.randint(0, 5)}"
        folder.mkdir(exist_ok=True)
        name = folder / f"r{round_:02d}_{n:02d}{ext}"
        if ext == ".png":
            name.write_bytes(png_bytes(round_ * 100 + n, rng.randint(4, 30)))
        elif ext in (".woff2", ".mp4"):
            name.write_bytes(rng.randbytes(rng.randint(1, 80_000)))
        else:
            name.write_text(f"{name.name} {rng.randbytes(rng.randint(10, 1500)).hex()}\n")
    first = 2 * round_ + 1
    write_migrations(migrations, range(first, first + 2))


def describe(request: Request) -> str:
    """Which step of a deploy a request belongs to, for the list of kill points."""
    path = request.path
    if path.endswith("/sql"):
        body = request.body
        for marker, step in (
            (b"mosaicsync run=", "migration batch"),
            (b"UPDATE mosaicsync.lock", "migration lease"),
            (b"FROM mosaicsync.migrations", "migration history"),
            (b"INSERT INTO mosaicsync.files", "manifest write"),
            (b"DELETE FROM mosaicsync.files", "manifest prune"),
            (b"INSERT INTO mosaicsync.deploys", "deploy record"),
            (b"CREATE SCHEMA IF NOT EXISTS mosaicsync", "manifest digest"),
            (b"FROM mosaicsync.files", "manifest read"),
        ):
            if marker in body:
                return step
        return "other sql"
    if request.method == "PUT":
        return "storage upload"
    if path.endswith("/upload-url"):
        return "presign"
    if request.method == "DELETE":
        return "prune"
    if path.endswith("/files") and request.method == "POST":
        return "site upload"
    if path.endswith("/storage"):
        return "storage listing"
    return "project lookup" if request.method == "GET" else f"{request.method} {path}"


class Killer:
    """A proxy rule that SIGKILLs the deploy at the `nth` request of one step, before or after
    the request is forwarded; it also counts each step's requests."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.step = ""
        self.nth = 0
        self.forward = False
        self.steps: Counter[str] = Counter()
        self.killed: str | None = None
        self.lock = threading.Lock()

    def arm(self, step: str, nth: int, forward: bool) -> None:
        with self.lock:
            self.pid, self.step, self.nth, self.forward = None, step, nth, forward
            self.steps, self.killed = Counter(), None

    def __call__(self, request: Request) -> str | None:
        step = describe(request)
        with self.lock:
            if self.pid is None:
                return "pass"
            self.steps[step] += 1
            if self.killed or step != self.step or self.steps[step] != self.nth:
                return "pass"
            os.kill(self.pid, signal.SIGKILL)
            where = "after the platform did it" if self.forward else "before it arrived"
            self.killed = f"{step} #{self.nth} ({where})"
            return "drop_after" if self.forward else "drop_before"


def deploy_killed_at(project: Path, proxy: FaultProxy, killer: Killer) -> int:
    """Run a deploy that the killer may SIGKILL; its exit code (-9 when killed). Its temporary
    files go under the test's own folder: a killed process cannot remove them itself."""
    scratch = project.parent / "tmp"
    scratch.mkdir(exist_ok=True)
    with subprocess.Popen(
        [sys.executable, "-m", "mosaicsync", "deploy", "--concurrency", "4"],
        cwd=project, env={**cli_env(proxy.api_url), "TMPDIR": str(scratch)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        with killer.lock:
            killer.pid = process.pid
        _, stderr = process.communicate(timeout=300)
    with killer.lock:
        killer.pid = None
    assert "Traceback" not in stderr, stderr
    return process.returncode


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_a_deploy_killed_at_ten_random_points_converges_on_the_next(
    platform: LocalServer, tmp_path: Path
) -> None:
    project_id = create_project(platform, "killed deploys")
    project = write_project(tmp_path / "site", project_id)
    root, migrations = project / "public", project / "migrations"
    rng = random.Random(99)
    build_site(root, 120, seed=5)
    for path in [p for p in root.rglob("*.html")]:
        path.write_text(path.read_text().split("<video")[0] + "\n")  # no storage references
    killer = Killer()
    started = time.monotonic()
    with FaultProxy(platform.base_url, rules=[killer]) as proxy:
        # Calibration: which steps one round of work takes, and how many requests each.
        mutate(root, migrations, rng, 0)
        killer.arm("", 0, forward=False)
        assert deploy_killed_at(project, proxy, killer) == 0
        steps = dict(killer.steps)
        kills: list[str] = []
        round_ = 0
        while len(kills) < 10:
            round_ += 1
            assert round_ <= 25, f"only {len(kills)} kills in {round_} rounds"
            mutate(root, migrations, rng, round_)
            step = rng.choice(sorted(steps))
            killer.arm(step, rng.randint(1, steps[step]), forward=rng.random() < 0.5)
            code = deploy_killed_at(project, proxy, killer)
            if killer.killed is None:  # this round needed fewer requests of that step
                assert code == 0
                continue
            assert code == -signal.SIGKILL
            kills.append(killer.killed)
            # The next deploy, an ordinary one, finishes the job.
            out = mosaic(["deploy", "--json"], project, proxy.api_url)
            assert out.returncode == 0, (kills[-1], out.stdout, out.stderr)
            assert_site_equals(platform, project_id, root, {}, proxy.base_url)
            assert_each_migration_ran_once(platform, project_id, range(1, 2 * round_ + 3))
    report(
        "SIGKILL",
        kill_points=len(kills),
        points=kills,
        rounds=round_,
        steps_per_round=steps,
        seconds=round(time.monotonic() - started, 1),
    )


def test_a_lease_left_by_a_dead_process_of_this_host_is_taken_over_at_once(
    local_server: LocalServer, tmp_path: Path
) -> None:
    """SIGKILL cannot release the lease; waiting out its TTL would fail the next deploy."""
    from mosaicsync.migrate import LockTimeout, Migrator

    project_id = create_project(local_server, "stale lease")
    write_migrations(tmp_path, range(1, 3))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with MosaicClient(local_server.api, KEY_A) as client:
            migrator = Migrator(client, project_id, tmp_path, lock_timeout=0.5)
            migrator.status()  # creates the schema

            def hold(pid: int) -> None:
                client.sql(
                    project_id,
                    "UPDATE mosaicsync.lock SET holder = gen_random_uuid(), "
                    f"host = {sql_literal(migrator.host)}, pid = {pid}, acquired_at = now(), "
                    "expires_at = now() + interval '120 seconds', fence = fence + 1",
                )

            hold(alive.pid)
            with pytest.raises(LockTimeout, match=f"pid {alive.pid}"):
                migrator.up()
            hold(int(dead.stdout))
            started = time.monotonic()
            assert [a.version for a in migrator.up().applied] == [1, 2]
            assert time.monotonic() - started < 5
    finally:
        alive.kill()
        alive.wait()


# -- two deploys of one project at the same time ---------------------------------------------------


def write_traced_migrations(directory: Path, versions: range) -> None:
    """Migrations that log when their body starts and ends, slowly enough to overlap if allowed."""
    directory.mkdir(parents=True, exist_ok=True)
    for v in versions:
        body = ""
        if v == 1:
            body = "CREATE TABLE trace (version int, started timestamptz, ended timestamptz);\n"
        body += (
            f"INSERT INTO trace VALUES ({v}, clock_timestamp(), NULL);\n"
            "SELECT pg_sleep(0.15);\n"
            f"UPDATE trace SET ended = clock_timestamp() WHERE version = {v};\n"
        )
        (directory / f"{v:04d}_traced_{v}.sql").write_text(body)


def fill(root: Path, label: str, rng: random.Random) -> None:
    """A site whose shared paths differ from the other folder's, plus paths of its own."""
    for child in list(root.rglob("*")):
        if child.is_file():
            child.unlink()
    for i in range(60):
        (root / f"shared{i:02d}.html").write_text(f"<p>{label} {i} {rng.random()}</p>\n")
    for i in range(20):
        (root / f"only-{label}-{i:02d}.js").write_text(f"// {label} {i} {rng.random()}\n")
    (root / "media").mkdir(exist_ok=True)
    (root / "media" / "clip.mp4").write_bytes(f"{label}".encode() * rng.randint(100, 5000))


def served_tree(server: LocalServer, project_id: str) -> dict[str, bytes]:
    """Every site file and storage object of the project, as served (no generated file)."""
    state = platform_state(server, project_id)
    tree: dict[str, bytes] = {}
    with httpx.Client(timeout=30) as http:
        for path in state.site:
            if path != "mosaic-assets.json":
                tree[path] = http.get(site_url(server, project_id, path)).content
        for path in state.storage:
            tree[path] = http.get(storage_url(server.base_url, project_id, path)).content
    return tree


@pytest.mark.heavy
@pytest.mark.timeout(600)
def test_two_deploys_at_once_never_interleave_and_one_folder_wins(
    platform: LocalServer, tmp_path: Path
) -> None:
    project_id = create_project(platform, "racing deploys")
    folders = {label: write_project(tmp_path / label, project_id) for label in ("left", "right")}
    rng = random.Random(17)
    outcomes: list[str] = []
    for round_ in range(6):
        # Every other round brings no migration, so nothing holds one deploy back.
        versions = range(1, 4 * (round_ // 2) + 5)
        for label, folder in folders.items():
            write_traced_migrations(folder / "migrations", versions)
            fill(folder / "public", f"{label}{round_}", rng)
        barrier = threading.Barrier(2)
        results: dict[str, subprocess.CompletedProcess[str]] = {}

        def deploy(
            label: str,
            barrier: threading.Barrier = barrier,
            results: dict[str, subprocess.CompletedProcess[str]] = results,
        ) -> None:
            barrier.wait()
            results[label] = mosaic(["deploy", "--json"], folders[label], platform.api)

        threads = [threading.Thread(target=deploy, args=(label,)) for label in folders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert all(r.returncode == 0 for r in results.values()), results
        state = platform_state(platform, project_id)
        # Migrations: each exactly once, all by one run, one after another.
        assert [m["version"] for m in state.migrations] == list(versions)
        with MosaicClient(platform.api, KEY_A) as client:
            trace = client.sql(project_id, "SELECT * FROM trace ORDER BY started")
        assert [t["version"] for t in trace] == list(versions)
        assert all(a["ended"] <= b["started"] for a, b in itertools.pairwise(trace))
        new = [m for m in state.migrations if m["version"] > versions.stop - 5]
        assert len({m["run_id"] for m in new}) == 1 or round_ % 2
        # The site: exactly one folder, not a mix of both.
        served = served_tree(platform, project_id)
        winners = [label for label, f in folders.items() if served == local_tree(f / "public")]
        assert len(winners) == 1, sorted(
            (p, label)
            for label, f in folders.items()
            for p in local_tree(f / "public")
            if served.get(p) != local_tree(f / "public")[p]
        )[:10]
        assert_manifest_matches_platform(state)
        outcomes.append(winners[0])
    report("concurrent deploys", rounds=len(outcomes), winners=outcomes)


# -- watch mode through a platform outage ----------------------------------------------------------


class WatchProcess:
    """`mosaicsync watch --json` in a subprocess; its events are read by a thread it joins."""

    def __init__(self, project: Path, api_url: str) -> None:
        # The real retry schedule: the outage is as long as a user's, and so are its waits.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mosaicsync", "watch", "--json"],
            cwd=project, env=cli_env(api_url, backoff_scale=None), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(event)

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            assert self.process.poll() is None, self.stop()
            assert time.monotonic() < deadline, f"no {kind!r} event: {self.events}"
            time.sleep(0.1)

    def stop(self) -> str:
        """Ctrl-C, then wait; returns stderr for messages."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(10)
        assert self.process.stderr is not None
        stderr = self.process.stderr.read()
        self.process.stdout.close()  # type: ignore[union-attr]
        self.process.stderr.close()
        return stderr


def site_matches(server: LocalServer, project_id: str, root: Path) -> bool:
    """Cheap check by hashes: the site and storage hold exactly the folder's files."""
    from mosaicsync.plan import route

    files = local_tree(root)
    state = platform_state(server, project_id)
    site = {p: sha(b) for p, b in files.items() if route(p, len(b)) == "site"}
    stored = {p: len(b) for p, b in files.items() if p not in site}
    served_site = {p: s for p, s in state.site.items() if p != "mosaic-assets.json"}
    return served_site == site and state.storage == stored


@pytest.mark.heavy
@pytest.mark.timeout(600)
def test_watch_loses_nothing_through_a_thirty_second_outage(
    platform: LocalServer, tmp_path: Path
) -> None:
    project_id = create_project(platform, "watch outage")
    project = write_project(tmp_path / "site", project_id)
    root = project / "public"
    for i in range(30):
        (root / f"page{i:02d}.html").write_text(f"<p>page {i}</p>\n")
    (root / "media").mkdir()
    (root / "media" / "intro.mp4").write_bytes(os.urandom(20_000))
    rng = random.Random(30)
    with FaultProxy(platform.base_url, seed=30) as proxy:
        watch = WatchProcess(project, proxy.api_url)
        try:
            watch.wait_for("watching")
            (root / "first.html").write_text("<p>before the outage</p>\n")
            watch.wait_for("sync")
            assert site_matches(platform, project_id, root)

            proxy.down()
            outage_started = time.monotonic()
            edits = 0
            while time.monotonic() - outage_started < 30:
                action = rng.choice(["new", "edit", "delete", "media"])
                pages = sorted(root.glob("*.html"))
                if action == "new":
                    (root / f"down{edits:03d}.html").write_text(f"<p>written down {edits}</p>\n")
                elif action == "edit" and pages:
                    rng.choice(pages).write_text(f"<p>edited {edits} {rng.random()}</p>\n")
                elif action == "delete" and len(pages) > 5:
                    rng.choice(pages).unlink()
                else:
                    (root / "media" / f"clip{edits:03d}.mp4").write_bytes(os.urandom(5_000))
                edits += 1
                time.sleep(0.5)
            retries = len(watch.of("retry"))
            assert retries >= 3, "the watch did not keep trying while the platform was away"
            assert not site_matches(platform, project_id, root)

            # Back, and still a little flaky: it must catch up with every change.
            proxy.faults = Faults(server_error=0.1, drop_after=0.05)
            proxy.up()
            back = time.monotonic()
            deadline = back + 90
            while not site_matches(platform, project_id, root):
                assert time.monotonic() < deadline, "the watch never caught up"
                assert watch.process.poll() is None, watch.stop()
                time.sleep(0.5)
            caught_up = time.monotonic() - back
        finally:
            stderr = watch.stop()
        assert "Traceback" not in stderr, stderr
        assert_site_equals(platform, project_id, root, {}, proxy.base_url)
        injected = proxy.injected()
    report(
        "watch outage",
        outage_seconds=30,
        edits_during_outage=edits,
        retries_during_outage=retries,
        caught_up_seconds=round(caught_up, 1),
        injected_after=injected,
    )
