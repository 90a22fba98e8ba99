"""Starting, restarting and stopping the local platform; keys; rate limits."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mosaicsync.local.pg.cluster import Cluster
from tests.conftest import LocalServer
from tests.test_local_api import wait_running

pytestmark = pytest.mark.integration


def test_first_start_key_restart_persistence_and_expiry(tmp_path) -> None:
    data = tmp_path / "data"
    server = LocalServer(data, ["--allow-clock-override", "--rate-limit", "0"])
    started = time.monotonic()
    server.start()
    try:
        assert time.monotonic() - started < 30
        key_lines = [line for line in server.stdout_lines if line.startswith("API key: ")]
        assert len(key_lines) == 1
        key = key_lines[0].removeprefix("API key: ").strip()
        assert key.startswith("mk_")
        key_file = data / "api-key"
        assert key_file.read_text().strip() == key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        with server.client(key) as api:
            pid = api.post("/projects", json={"name": "Keeps"}).json()["project_id"]
            wait_running(api, pid)
            api.post(
                f"/{pid}/sql",
                json={
                    "query": "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')"
                },
            )
            api.post(f"/{pid}/files", json={"filename": "index.html", "content": "persisted"})
            url = api.post(
                f"/{pid}/storage/upload-url", json={"filename": "o.bin", "size": 3}
            ).json()["upload_url"]
            assert httpx.put(url, content=b"abc").status_code == 200
            api.post("/tickets", json={"subject": "s", "message": "kept ticket"})
    finally:
        assert server.stop() == 0

    # Second start: same key, not printed again; everything is still there.
    server = LocalServer(data, ["--allow-clock-override", "--rate-limit", "0"])
    server.start()
    try:
        assert not any(line.startswith("API key: ") for line in server.stdout_lines)
        with server.client(key) as api:
            assert [p["project_id"] for p in api.get("/projects").json()["projects"]] == [pid]
            rows = api.post(f"/{pid}/sql", json={"query": "SELECT v FROM kept"}).json()["data"]
            assert rows == [{"v": "still here"}]
            assert httpx.get(f"{server.base_url}/sites/{pid}/").text == "persisted"
            assert httpx.get(f"{server.base_url}/_storage/{pid}/o.bin").content == b"abc"
            tickets = httpx.get(
                server.base_url + "/_local/tickets", params=server.local_auth
            ).json()["tickets"]
            assert tickets[0]["message"] == "kept ticket"
            # Thirty-one days later the generated key has expired, as on Mosaic.
            httpx.post(server.base_url + "/_local/clock", json={"advance": 31 * 86400})
            r = api.get("/projects")
            assert r.status_code == 401
            assert "rotate every 30 days" in r.json()["error"]
    finally:
        server.stop()

    # A start after expiry prints a new key for the same account (the local clock is real again,
    # so expire the key by shortening the lifetime instead).
    server = LocalServer(data, ["--key-ttl-days", "0"])
    server.start()
    try:
        new = [line for line in server.stdout_lines if "API key" in line]
        assert new and new[0].startswith("New API key")
        new_key = new[0].split(": ", 1)[1].strip()
        assert new_key != key
        assert (data / "api-key").read_text().strip() == new_key
    finally:
        server.stop()
    # No secret in the platform's log.
    assert key not in server.log_text() and new_key not in server.log_text()


def test_rate_limit_gives_429_with_retry_after(tmp_path) -> None:
    server = LocalServer(tmp_path / "data", ["--api-key", "mk_test_rate", "--rate-limit", "5"])
    server.start()
    try:
        with server.client("mk_test_rate") as api:
            codes = [api.get("/projects") for _ in range(40)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited, [r.status_code for r in codes]
        assert int(limited[0].headers["retry-after"]) >= 1
        assert "rate limited" in limited[0].json()["error"]
    finally:
        server.stop()


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (and theirs, PostgreSQL included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_fixed_key_answers_quickly(tmp_path) -> None:
    # The work a first start does (initdb included) in CPU seconds, not wall time: the suite
    # runs on busy machines, where a wall-clock budget measures the neighbours.
    cpu = children_cpu()
    server = LocalServer(tmp_path / "data", ["--api-key", "mk_test_x"]).start()
    try:
        assert (
            httpx.get(server.api + "/projects", headers={"X-API-Key": "mk_test_x"}).status_code
            == 200
        )
        assert httpx.get(server.api + "/projects").status_code == 401
    finally:
        server.stop()
    assert children_cpu() - cpu < 5


def test_port_in_use_is_a_clear_error(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "mosaicsync",
                "local",
                "--port",
                str(port),
                "--data",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")},
        )
    assert out.returncode == 8
    assert "already in use" in out.stderr and "--port 0" in out.stderr


DEBIAN_PG = Path("/usr/lib/postgresql/15/bin")


def smoke(server: LocalServer, key: str) -> list[dict]:
    """Create a project and run SQL that needs the three documented extensions' functions."""
    with server.client(key) as api:
        pid = api.post("/projects", json={"name": "Smoke"}).json()["project_id"]
        wait_running(api, pid)
        r = api.post(
            f"/{pid}/sql",
            json={
                "query": "CREATE TABLE t (id uuid DEFAULT uuid_generate_v4(), h text); "
                "INSERT INTO t (h) VALUES (encode(digest('abc', 'sha256'), 'hex')); "
                "SELECT h, id IS NOT NULL AS has_id FROM t"
            },
        )
        assert r.status_code == 200, r.text
        return r.json()["data"]


@pytest.mark.skipif(not DEBIAN_PG.exists(), reason="no system PostgreSQL 15 on this machine")
def test_system_postgresql_binaries_with_pg_bin(tmp_path) -> None:
    server = LocalServer(
        tmp_path / "data", ["--api-key", "mk_test_pgbin", "--pg-bin", str(DEBIAN_PG)]
    )
    server.start()
    try:
        info = httpx.get(server.base_url + "/_local/info").json()
        assert info["database"]["version"].startswith("15")
        assert info["database"]["extensions"]["pgcrypto"].startswith("real")
        rows = smoke(server, "mk_test_pgbin")
        assert rows == [{"h": hashlib.sha256(b"abc").hexdigest(), "has_id": True}]
    finally:
        server.stop()


def test_external_server_with_database_url(tmp_path) -> None:
    """--database-url: the platform provisions tenants on a server it does not own."""
    external = Cluster(data_dir=tmp_path / "external", fast=True)
    external.start()
    try:
        server = LocalServer(
            tmp_path / "data",
            ["--api-key", "mk_test_external", "--database-url", external.admin_dsn],
        )
        server.start()
        try:
            info = httpx.get(server.base_url + "/_local/info").json()
            assert info["database"]["mode"].startswith("external")
            rows = smoke(server, "mk_test_external")
            assert rows[0]["h"] == hashlib.sha256(b"abc").hexdigest()
            # The admin password is never shown by the platform.
            password = external.password_path.read_text().strip()
            assert password not in server.log_text()
            assert password not in "\n".join(server.stdout_lines)
            assert password not in httpx.get(server.base_url + "/_local/info").text
        finally:
            server.stop()
    finally:
        external.stop()


def test_a_postgresql_that_cannot_start_is_a_clear_error(tmp_path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", "local", "--port", "0",
         "--data", str(tmp_path / "data"), "--pg-bin", str(empty)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")},
    )  # fmt: skip
    assert out.returncode == 8, out.stderr
    assert "holds no postgres/initdb binaries" in out.stderr and "Traceback" not in out.stderr
