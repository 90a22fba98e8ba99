"""Security: secrets in output, the credentials file, default ignores, and the local platform.

Extends `tests/test_local_api.py` where it covers a concern in part (account isolation, presigned
URLs, the SQL role, body caps) and does not repeat what it already checks.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import psycopg
import pytest

from mosaicsync.api import MosaicClient
from tests.conftest import KEY_A, KEY_B, LocalServer
from tests.faults import FaultProxy, Reply
from tests.test_local_api import presign, sql, tamper, wait_running
from tests.test_reliability import (
    cli_env,
    create_project,
    mosaic,
    platform_state,
    report,
    site_url,
    storage_url,
    write_project,
)

pytestmark = pytest.mark.integration


# -- no secret in any output -----------------------------------------------------------------------


def commands(project: Path, upload: Path) -> list[list[str]]:
    """Every kind of command, successful and failing, as a user would run them."""
    return [
        ["deploy"],
        ["deploy", "--json"],
        ["status"],
        ["migrate", "status", "--json"],
        ["sql", "select current_user as who"],
        ["sql", "select * from no_such_table"],
        ["db", "url"],
        ["db", "url", "--json"],
        ["storage", "put", str(upload), "--name", "uploads/notes.bin"],
        ["storage", "ls", "--json"],
        ["storage", "rm", "uploads/notes.bin"],
        ["projects", "list"],
        ["auth", "magic-link", "someone@example.com"],
        ["doctor", "--json"],
        ["ticket", "--subject", "help", "--message", "it broke", "--diagnostics"],
        ["projects", "delete", "gone-zzz", "--yes"],
    ]


def test_no_secret_in_any_output_log_or_traceback(
    local_server: LocalServer, tmp_path: Path
) -> None:
    project_id = create_project(local_server, "secrets")
    project = write_project(tmp_path / "site", project_id)
    public = project / "public"
    (public / "index.html").write_text('<video src="clip.mp4"></video>\n')
    (public / "clip.mp4").write_bytes(os.urandom(3000))
    (project / "migrations").mkdir()
    (project / "migrations" / "0001_t.sql").write_text("CREATE TABLE t (x int);\n")
    upload = tmp_path / "notes.bin"
    upload.write_bytes(os.urandom(100))
    with MosaicClient(local_server.api, KEY_A) as client:
        password = client.database(project_id)["password"]
    secrets = {"key A": KEY_A, "key B": KEY_B, "database password": password}
    outputs: list[tuple[str, str]] = []

    def run(args: list[str], api_url: str = local_server.api, key: str = KEY_A) -> None:
        for verbose in ([], ["--verbose"]):
            out = mosaic([*args, *verbose], project, api_url, key=key, timeout=120)
            outputs.append((" ".join(args + verbose), out.stdout + out.stderr))

    for args in commands(project, upload):
        run(args)
    # Failing paths: a broken migration, a platform that keeps failing, a rejected key,
    # and an unexpected exception deep in an upload (a traceback).
    (project / "migrations" / "0002_bad.sql").write_text("SELECT * FROM missing;\n")
    run(["deploy"])
    (project / "migrations" / "0002_bad.sql").unlink()
    (public / "new.html").write_text("<p>new</p>\n")
    with FaultProxy(local_server.base_url, rules=[lambda r: Reply(500, b"{}")]) as proxy:
        run(["deploy"], proxy.api_url)
    run(["projects", "list"], key=KEY_B + "x")
    boom = (
        "import sys\n"
        "from mosaicsync import wire\n"
        "def send(self, method, url, headers, body): raise RuntimeError(f'boom {method}')\n"
        "wire.Pool.send = send\n"
        "from mosaicsync.cli import main\n"
        "sys.argv = ['mosaicsync', 'deploy', '--verbose']\n"
        "main()\n"
    )
    traceback = subprocess.run(
        [sys.executable, "-c", boom],
        cwd=project,
        env=cli_env(local_server.api),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" in traceback.stderr
    outputs.append(("traceback", traceback.stdout + traceback.stderr))

    # What the CLI leaves on disk, and the platform's own log.
    for folder in (tmp_path / "xdg-cache", project / ".mosaicsync"):
        for path in folder.rglob("*"):
            if path.is_file():
                outputs.append((str(path), path.read_bytes().decode("utf-8", "replace")))
    outputs.append(("platform log", local_server.log_text()))
    outputs.append(("platform stdout", "\n".join(local_server.stdout_lines)))
    tickets = httpx.get(
        local_server.base_url + "/_local/tickets", params=local_server.local_auth
    ).json()["tickets"]
    outputs.append(("tickets", json.dumps(tickets)))

    leaks = [
        (where, name)
        for where, text in outputs
        for name, secret in secrets.items()
        if secret in text
    ]
    assert leaks == []
    signed = [where for where, text in outputs if "sig=" in text and "sig=***" not in text]
    assert signed == []
    assert len(outputs) > 40
    report("secrets", outputs_scanned=len(outputs), secrets=sorted(secrets))


# -- the credentials file --------------------------------------------------------------------------


def test_login_writes_a_0600_file_and_a_readable_one_is_refused(
    local_server: LocalServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env["MOSAIC_API_URL"] = local_server.api

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mosaicsync", *args],
            cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    login = cli("login", "--key-stdin", stdin=KEY_A + "\n")
    assert login.returncode == 0, login.stderr
    path = tmp_path / "xdg-config" / "mosaicsync" / "credentials.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cli("projects", "list", "--json").returncode == 0
    for mode in (0o640, 0o604, 0o660, 0o644, 0o606):
        path.chmod(mode)
        refused = cli("projects", "list", "--json")
        assert refused.returncode == 3, (oct(mode), refused.stdout)
        error = json.loads(refused.stdout)["error"]
        assert "accessible by other users" in error["error"] and "chmod 600" in error["hint"]
        assert KEY_A not in refused.stdout + refused.stderr
    path.chmod(0o600)
    assert cli("projects", "list", "--json").returncode == 0


# -- the default ignores, one by one ---------------------------------------------------------------

# pattern -> files a real deploy must never upload (at the root, nested, other cases)
NEVER_UPLOADED: dict[str, list[str]] = {
    ".env": [".env", "app/.env", ".ENV"],
    ".env.local": [".env.local", "app/.env.production"],
    ".git/": [".git/config", ".git/HEAD", "vendor/lib/.git/config"],
    ".hg/": [".hg/hgrc"],
    ".svn/": [".svn/entries"],
    "*.pem": ["cert.pem", "tls/Server.PEM"],
    "*.key": ["server.key", "tls/private.key"],
    "*.p12": ["identity.p12"],
    "id_rsa": ["id_rsa", "id_rsa.pub", "keys/id_rsa"],
    "id_ed25519": ["id_ed25519", "keys/id_ed25519.pub"],
    ".npmrc": [".npmrc", "app/.npmrc"],
    ".pypirc": [".pypirc"],
    ".DS_Store": [".DS_Store", "img/.DS_Store"],
    "Thumbs.db": ["Thumbs.db", "img/Thumbs.db"],
    "node_modules/": ["node_modules/lib/index.js", "app/node_modules/x.css"],
    "__pycache__/": ["__pycache__/app.cpython-311.pyc", "tools/__pycache__/x.pyc"],
    ".mosaicsync/": [".mosaicsync/notes.txt"],
    "mosaic.toml": ["mosaic.toml"],
    ".git-credentials": [".git-credentials", "app/.git-credentials"],
    ".pgpass": [".pgpass", "db/.pgpass"],
    ".htpasswd": [".htpasswd", "admin/.HTPASSWD"],
    ".bash_history": [".bash_history", "home/.bash_history"],
    ".aws/credentials": [".aws/credentials", "home/.aws/credentials"],
    ".ssh/": [".ssh/id_ed25519", ".ssh/config", "home/.ssh/known_hosts"],
    ".kube/config": [".kube/config", "home/.kube/config"],
    ".docker/config.json": [".docker/config.json", "home/.docker/config.json"],
    "credentials.toml": ["credentials.toml", ".config/mosaicsync/credentials.toml"],
}
PUBLISHED = [
    ".well-known/x.txt",
    ".well-known/security.txt",
    "index.html",
    "app/page.html",
    "config.json",
    "docker/config.json",
]


@pytest.fixture(scope="module")
def ignored_deploy(
    local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict, set[str]]]:
    """One real deploy of a project folder (root = ".") holding every file of NEVER_UPLOADED."""
    project_id = create_project(local_server, "default ignores")
    project = write_project(tmp_path_factory.mktemp("ignores") / "site", project_id, root=".")
    for path in [p for paths in NEVER_UPLOADED.values() for p in paths if p != "mosaic.toml"]:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(f"SECRET {path}\n")
    for path in PUBLISHED:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(f"public {path}\n")
    out = mosaic(["deploy", "--json"], project, local_server.api)
    assert out.returncode == 0, out.stdout + out.stderr
    state = platform_state(local_server, project_id)
    everywhere = set(state.site) | set(state.storage) | set(state.manifest)
    yield project_id, json.loads(out.stdout), everywhere


@pytest.mark.parametrize("pattern", list(NEVER_UPLOADED))
def test_a_default_ignore_is_never_uploaded(
    pattern: str, ignored_deploy: tuple[str, dict, set[str]], local_server: LocalServer
) -> None:
    project_id, result, everywhere = ignored_deploy
    for path in NEVER_UPLOADED[pattern]:
        assert path not in everywhere
        if pattern.endswith("/"):
            assert not any(f"/{pattern}" in f"/{p}" for p in everywhere)
        assert httpx.get(site_url(local_server, project_id, path)).status_code == 404
        assert httpx.get(storage_url(local_server.base_url, project_id, path)).status_code == 404
    skipped = " ".join(result["skipped"])
    assert NEVER_UPLOADED[pattern][0].split("/")[0] in skipped


def test_well_known_is_published(
    ignored_deploy: tuple[str, dict, set[str]], local_server: LocalServer
) -> None:
    project_id, _, everywhere = ignored_deploy
    assert set(PUBLISHED) <= everywhere
    for path in PUBLISHED:
        served = httpx.get(site_url(local_server, project_id, path))
        assert served.status_code == 200 and served.text == f"public {path}\n"


# -- the local platform: accounts and databases ----------------------------------------------------


@pytest.fixture(scope="module")
def two_accounts(local_server: LocalServer) -> tuple[str, str]:
    """A project of account A and one of account B."""
    return create_project(local_server, "tenant a"), create_project(local_server, "tenant b", KEY_B)


def connect(creds: dict, dbname: str) -> psycopg.Connection:
    return psycopg.connect(
        host=creds["host"], port=creds["port"], user=creds["user"],
        password=creds["password"], dbname=dbname, connect_timeout=10,
    )  # fmt: skip


def test_a_tenants_credentials_reach_only_its_own_database(
    local_server: LocalServer, two_accounts: tuple[str, str]
) -> None:
    mine, theirs = two_accounts
    with MosaicClient(local_server.api, KEY_A) as a, MosaicClient(local_server.api, KEY_B) as b:
        creds, other = a.database(mine), b.database(theirs)
    with connect(creds, creds["database"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (creds["user"],)
    for dbname in (other["database"], "postgres", "template1", "mosaic_template"):
        with pytest.raises(psycopg.OperationalError):
            connect(creds, dbname).close()
    # Another tenant's password does not open this tenant's role either.
    with pytest.raises(psycopg.OperationalError):
        connect({**creds, "password": other["password"]}, creds["database"]).close()


ESCAPES = [
    "COPY (SELECT 1) TO PROGRAM 'id'",  # also in test_local_api; kept with its siblings
    "CREATE TABLE loot (x text); COPY loot FROM PROGRAM 'cat /etc/passwd'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT * FROM pg_shadow",
    "CREATE EXTENSION dblink",
    "CREATE EXTENSION postgres_fdw",
    "CREATE EXTENSION file_fdw",
    "CREATE FUNCTION evil() RETURNS int AS '/lib/x86_64-linux-gnu/libc.so.6', 'getpid' LANGUAGE c",
    "ALTER SYSTEM SET statement_timeout = 0",
    "ALTER ROLE CURRENT_USER SUPERUSER",
    "CREATE ROLE intruder LOGIN",
    "CREATE DATABASE intruder",
    "SET ROLE postgres",
    "SET session_replication_role = replica",
    "GRANT pg_read_server_files TO CURRENT_USER",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename <> current_user",
]


@pytest.mark.parametrize("query", ESCAPES)
def test_the_sql_role_cannot_escape_its_database(
    local_server: LocalServer, two_accounts: tuple[str, str], query: str
) -> None:
    with local_server.client() as api:
        response = sql(api, two_accounts[0], query)
    assert response.status_code == 400, (query, response.text)
    assert response.json()["success"] is False
    assert "root:" not in response.text


OUTLIVE = {
    "role default": ("ALTER ROLE CURRENT_USER SET statement_timeout = 0", "SELECT pg_sleep(30)"),
    "database default": ("ALTER DATABASE {db} SET statement_timeout = 0", "SELECT pg_sleep(30)"),
    "set local": (None, "BEGIN; SET LOCAL statement_timeout = 0; SELECT pg_sleep(30); COMMIT"),
    "cancel caught": (
        None,
        "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(1); "
        "EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$",
    ),
}


@pytest.mark.parametrize("how", list(OUTLIVE))
def test_a_query_cannot_outlive_the_statement_timeout(local_server: LocalServer, how: str) -> None:
    # The session platform runs with --statement-timeout 2; the watchdog allows 2 s of grace.
    project_id = create_project(local_server, f"timeout {how}")
    setup, query = OUTLIVE[how]
    with local_server.client() as api:
        if setup:
            db = "tenant_" + project_id.replace("-", "_")
            assert sql(api, project_id, setup.format(db=db)).status_code == 200
        started = time.monotonic()
        response = api.post(f"/{project_id}/sql", json={"query": query}, timeout=60)
        elapsed = time.monotonic() - started
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "57014"
        assert elapsed < 8
        # Nothing of it keeps running, and the project still answers.
        busy = sql(
            api,
            project_id,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE usename = current_user "
            "AND state = 'active' AND pid <> pg_backend_pid()",
        )
        assert busy.json()["data"] == [{"n": 0}]


# -- the local platform: presigned URLs ------------------------------------------------------------


def test_a_presigned_url_is_bound_to_its_project_name_size_and_time(
    local_server: LocalServer, two_accounts: tuple[str, str]
) -> None:
    mine, theirs = two_accounts
    data = b"0123456789"
    with local_server.client() as api:
        url = presign(api, mine, "bound.bin", len(data))
        other = presign(api, mine, "other.bin", len(data))
    parts = urlsplit(url)
    query = dict(q.split("=", 1) for q in parts.query.split("&"))
    cases = {
        "replayed on another project": url.replace(f"/_storage/{mine}/", f"/_storage/{theirs}/"),
        "expiry pushed later": tamper(url, expires=str(int(query["expires"]) + 3600)),
        "signature of another name": tamper(url, sig=dict(
            q.split("=", 1) for q in urlsplit(other).query.split("&"))["sig"]),
        "encoded traversal in the name": url.replace("/bound.bin?", "/..%2fbound.bin?"),
        "no signature": url.split("&sig=")[0],
        "name in another case": url.replace("/bound.bin?", "/BOUND.bin?"),
    }  # fmt: skip
    for name, bad in cases.items():
        response = httpx.put(bad, content=data)
        assert response.status_code == 403, (name, response.status_code, response.text)
    with MosaicClient(local_server.api, KEY_B) as b:
        assert b.list_storage(theirs)["files"] == []
    with MosaicClient(local_server.api, KEY_A) as a:
        assert "bound.bin" not in {o["filename"] for o in a.list_storage(mine)["files"]}
    # Within its 300 s the URL works once the clock is right, and no longer after.
    assert httpx.put(url, content=data).status_code == 200
    httpx.post(local_server.base_url + "/_local/clock", json={"advance": 301})
    try:
        assert httpx.put(url, content=data).status_code == 403
    finally:
        httpx.post(local_server.base_url + "/_local/clock", json={"reset": True})


# -- the local platform: path traversal in every path parameter ------------------------------------

# Encoded `..`, `%2e%2e`, `%2f`, backslashes and NUL, as a path segment or a whole sub-path.
SEGMENTS = [
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2f",
    "..%2f..",
    "%5c..%5c..",
    "..\\..",
    "%00",
    "x%00y",
    "%252e%252e",
    "%c0%ae%c0%ae",
    "....",
]
SUBPATHS = [
    "..%2f{other}%2fcanary.html",
    "%2e%2e/{other}/canary.html",
    "..%2f..%2fstate.sqlite3",
    "%2e%2e%2f%2e%2e%2fstate.sqlite3",
    "..%5c..%5cstate.sqlite3",
    "..\\..\\state.sqlite3",
    "....//....//state.sqlite3",
    "%252e%252e%252fstate.sqlite3",
    "%2fetc%2fpasswd",
    "keep.html%00",
    "keep.html%00.png",
    "./keep.html",
    "sub/../keep.html",
    "%2e/keep.html",
]


def raw_request(
    server: LocalServer,
    method: str,
    target: str,
    *,
    host: str | None = None,
    body: bytes = b"",
    length: int | None = None,
) -> tuple[int, bytes]:
    """One request with the target sent byte for byte (no client normalizes the dots away)."""
    head = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{server.port}'}",
        f"X-API-Key: {KEY_A}",
        "Content-Type: application/json",
        f"Content-Length: {len(body) if length is None else length}",
        "Connection: close",
    ]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest


@pytest.fixture(scope="module")
def canaries(
    local_server: LocalServer,
    two_accounts: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, object]:
    """Files the sweep must neither reach nor delete: in A's project, B's, and the data dir."""
    mine, theirs = two_accounts
    token = uuid.uuid4().hex
    blobs = tmp_path_factory.mktemp("blobs")

    def _file(data: bytes) -> Path:
        path = blobs / uuid.uuid4().hex
        path.write_bytes(data)
        return path

    with MosaicClient(local_server.api, KEY_A) as a, MosaicClient(local_server.api, KEY_B) as b:
        a.upload_file(mine, "keep.html", f"KEEP {token}")
        a.put_presigned(a.upload_url(mine, "keep.bin", 4)["upload_url"], _file(b"keep"), 4)
        b.upload_file(theirs, "canary.html", f"CANARY {token}")
        b.put_presigned(b.upload_url(theirs, "canary.bin", 6)["upload_url"], _file(b"canary"), 6)
    data = local_server.data_dir
    secret = [(data / "api-key").read_text().strip().encode()]
    return {"mine": mine, "theirs": theirs, "token": token, "secret": secret}


def routes(mine: str, other: str) -> list[tuple[str, str, str, str | None, bytes]]:
    """(method, path template with {P} or {F}, where the payload goes, Host, body) per route."""
    query = json.dumps({"query": "select 1"}).encode()
    return [
        ("GET", "/v1/project/{P}", "P", None, b""),
        ("DELETE", "/v1/project/{P}", "P", None, b""),
        ("GET", "/v1/project/{P}/database", "P", None, b""),
        ("POST", "/v1/project/{P}/sql", "P", None, query),
        ("GET", "/v1/project/{P}/files", "P", None, b""),
        ("POST", "/v1/project/{P}/files", "P", None, b'{"filename": "x.html", "content": "x"}'),
        ("DELETE", "/v1/project/{P}/files/keep.html", "P", None, b""),
        ("POST", "/v1/project/{P}/storage/upload-url", "P", None, b'{"filename": "x", "size": 1}'),
        ("GET", "/v1/project/{P}/storage", "P", None, b""),
        ("DELETE", "/v1/project/{P}/storage/keep.bin", "P", None, b""),
        ("POST", "/v1/project/{P}/auth/magic-link", "P", None, b'{"email": "a@example.com"}'),
        ("GET", "/_storage/{P}/keep.bin", "P", None, b""),
        ("PUT", "/_storage/{P}/keep.bin?size=4&expires=9999999999&sig=x", "P", None, b"evil"),
        ("GET", "/sites/{P}/keep.html", "P", None, b""),
        ("GET", "/sites/{P}", "P", None, b""),
        ("GET", "/keep.html", "P", "{P}.localhost", b""),
        ("DELETE", f"/v1/project/{mine}/files/{{F}}", "F", None, b""),
        ("DELETE", f"/v1/project/{mine}/storage/{{F}}", "F", None, b""),
        ("GET", f"/_storage/{mine}/{{F}}", "F", None, b""),
        ("HEAD", f"/_storage/{mine}/{{F}}", "F", None, b""),
        ("OPTIONS", f"/_storage/{mine}/{{F}}", "F", None, b""),
        ("PUT", f"/_storage/{mine}/{{F}}?size=4&expires=9999999999&sig=x", "F", None, b"evil"),
        ("GET", f"/sites/{mine}/{{F}}", "F", None, b""),
        ("GET", "/{F}", "F", f"{mine}.localhost", b""),
    ]


def test_path_traversal_in_every_path_parameter_of_every_route(
    local_server: LocalServer, canaries: dict
) -> None:
    mine, theirs, token = canaries["mine"], canaries["theirs"], canaries["token"]
    forbidden = [b"SQLite format 3", b"root:x:0:0", *canaries["secret"]]
    sent = 0
    for method, template, where, host, body in routes(mine, theirs):
        payloads = SEGMENTS if where == "P" else [s.format(other=theirs) for s in SUBPATHS]
        for payload in payloads:
            target = template.replace("{" + where + "}", payload)
            virtual = host.replace("{P}", payload) if host else None
            status, answer = raw_request(local_server, method, target, host=virtual, body=body)
            sent += 1
            assert status < 500, (method, target, virtual, status, answer[:300])
            assert not any(f in answer for f in forbidden), (method, target)
            if status < 400 and method in ("DELETE", "PUT", "POST"):
                raise AssertionError(f"{method} {target} was accepted: {answer[:300]!r}")
    # Nothing was deleted or overwritten, here or next door.
    with MosaicClient(local_server.api, KEY_A) as a, MosaicClient(local_server.api, KEY_B) as b:
        assert {"keep.html"} <= {f["filename"] for f in a.list_files(mine)}
        assert {"keep.bin"} <= {o["filename"] for o in a.list_storage(mine)["files"]}
        assert {"canary.html"} <= {f["filename"] for f in b.list_files(theirs)}
        assert {"canary.bin"} <= {o["filename"] for o in b.list_storage(theirs)["files"]}
        assert a.get_project(mine)["status"] == "running"
    assert httpx.get(site_url(local_server, mine, "keep.html")).text == f"KEEP {token}"
    assert httpx.get(storage_url(local_server.base_url, mine, "keep.bin")).content == b"keep"
    assert sent > 300
    report("path traversal", requests=sent, routes=len(routes(mine, theirs)))


def test_a_name_with_encoded_dots_is_just_a_name(local_server: LocalServer, canaries: dict) -> None:
    """`%2e%2e` in a file's *name* is stored literally and served at its quoted URL."""
    mine = canaries["mine"]
    with MosaicClient(local_server.api, KEY_A) as a:
        a.upload_file(mine, "%2e%2e/odd.html", "odd")
    assert httpx.get(f"{local_server.base_url}/sites/{mine}/{quote('%2e%2e/odd.html')}").text == (
        "odd"
    )


# -- the local platform: body caps -----------------------------------------------------------------


def test_every_json_route_caps_its_body_even_without_a_length(
    local_server: LocalServer, two_accounts: tuple[str, str]
) -> None:
    """test_local_api checks a declared 17 MiB body on /files; here each route, streamed."""
    mine = two_accounts[0]

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    paths = [
        "/projects", "/tickets", f"/{mine}/sql", f"/{mine}/files",
        f"/{mine}/storage/upload-url", f"/{mine}/auth/magic-link",
    ]  # fmt: skip
    with local_server.client() as api:
        for path in paths:
            response = api.post(
                path, content=chunks(), headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 413, (path, response.text)
            declared, _ = raw_request(local_server, "POST", "/v1/project" + path, length=2**40)
            assert declared == 413, path
            nested = api.post(path, content=b"[" * 200_000 + b"]" * 200_000)
            assert nested.status_code == 400, (path, nested.text)
        assert api.get(f"/{mine}").status_code == 200


def test_every_api_route_wants_a_key_before_anything_else(
    local_server: LocalServer, two_accounts: tuple[str, str]
) -> None:
    """Every API route answers 401 without a key, before looking at the project or the body."""
    mine = two_accounts[0]
    with local_server.client(key=None) as anon:
        for method, path in [
            ("GET", "/projects"), ("POST", "/projects"), ("POST", "/tickets"),
            ("GET", f"/{mine}"), ("DELETE", f"/{mine}"), ("GET", f"/{mine}/database"),
            ("POST", f"/{mine}/sql"), ("POST", f"/{mine}/files"), ("GET", f"/{mine}/files"),
            ("DELETE", f"/{mine}/files/keep.html"), ("POST", f"/{mine}/storage/upload-url"),
            ("GET", f"/{mine}/storage"), ("DELETE", f"/{mine}/storage/keep.bin"),
            ("POST", f"/{mine}/auth/magic-link"),
        ]:  # fmt: skip
            response = anon.request(method, path, content=b"{not json")
            assert response.status_code == 401, (method, path, response.status_code)
    with local_server.client() as api:
        wait_running(api, mine)
