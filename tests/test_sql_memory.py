"""The SQL endpoint's caps bound the platform's memory, not only the response it sends.

A platform of its own, so its peak resident size (VmHWM) is this module's alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY_A, LocalServer, make_traversable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/PID/status"),
]

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    data = tmp_path_factory.mktemp("sqlmem") / "data"
    make_traversable(data.parent)
    server = LocalServer(data, ["--api-key", KEY_A, "--rate-limit", "0"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api, headers={"X-API-Key": KEY_A}, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def project_id(api: httpx.Client) -> str:
    project_id = api.post("/projects", json={"name": "Memory"}).json()["project_id"]
    deadline = time.monotonic() + 20
    while api.get(f"/{project_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the project never became running"
        time.sleep(0.05)
    return project_id


def memory(server: LocalServer) -> dict[str, int]:
    """The platform process's peak (VmHWM) and current (VmRSS) resident size, in bytes."""
    assert server.proc is not None
    fields = {}
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def reset_peak(server: LocalServer) -> None:
    assert server.proc is not None
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def sql(api: httpx.Client, project_id: str, query: str) -> httpx.Response:
    return api.post(f"/{project_id}/sql", json={"query": query})


def test_a_value_over_the_byte_cap_is_refused_without_copies(
    server: LocalServer, api: httpx.Client, project_id: str
) -> None:
    assert sql(api, project_id, "SELECT 1 AS ok").json()["data"] == [{"ok": 1}]
    reset_peak(server)
    before = memory(server)
    r = sql(api, project_id, "SELECT repeat('x', 200000000) AS big")
    after = memory(server)
    assert r.status_code == 400, r.text[:500]
    body = r.json()
    assert body["code"] == "54000"
    assert "larger than 10 MiB of JSON" in body["error"] and "--max-result-bytes" in body["error"]
    # libpq holds the 200 MB row twice (its receive buffer, the row's result): about 400 MB.
    # Decoding it to a str, dumping it to JSON and encoding that took about 950 MB.
    growth = after["VmHWM"] - before["VmHWM"]
    assert growth < 600 * MiB, f"peak grew by {growth / MiB:.0f} MiB"
    # Nothing of it stays resident (the pooled connection kept a 256 MB buffer: 430 MB stayed).
    assert after["VmRSS"] - before["VmRSS"] < 50 * MiB
    # The project's connections still work.
    for _ in range(3):
        assert sql(api, project_id, "SELECT 2 AS ok").json()["data"] == [{"ok": 2}]


def test_error_text_is_cut(server: LocalServer, api: httpx.Client, project_id: str) -> None:
    reset_peak(server)
    before = memory(server)
    r = sql(api, project_id, "SELECT repeat('x', 100000000)::int")
    growth = memory(server)["VmHWM"] - before["VmHWM"]
    assert r.status_code == 400
    # libpq's receive and field buffers and the field itself: about 290 MB; it was about 480 MB
    # with libpq building the whole message text too, and the endpoint decoding and sending it.
    assert growth < 400 * MiB, f"peak grew by {growth / MiB:.0f} MiB"
    assert len(r.content) < 16 * 1024  # it was the whole 100 MB value
    body = r.json()
    assert body["code"] == "22P02"
    assert body["error"].startswith('invalid input syntax for type integer: "xxx')
    assert body["error"].endswith(
        "… [cut: 100,000,041 bytes in all; the first 4,096 characters are shown]"
    )
    assert len(body["error"]) < 4096 + 100
    assert memory(server)["VmRSS"] < 200 * MiB
    assert sql(api, project_id, "SELECT 3 AS ok").json()["data"] == [{"ok": 3}]
    # Short errors are whole, with their detail and hint.
    r = sql(api, project_id, "SELECT * FROM missing_table")
    assert r.json()["error"] == 'relation "missing_table" does not exist'


def test_many_rows_over_the_byte_cap_are_read_one_at_a_time(
    server: LocalServer, api: httpx.Client, project_id: str
) -> None:
    reset_peak(server)
    before = memory(server)
    r = sql(api, project_id, "SELECT repeat('x', 1000000) AS s FROM generate_series(1, 300)")
    growth = memory(server)["VmHWM"] - before["VmHWM"]
    assert r.status_code == 400 and r.json()["code"] == "54000"
    # Chunks of 1,000 rows held all 300 MB in libpq before the first row was looked at.
    assert growth < 100 * MiB, f"peak grew by {growth / MiB:.0f} MiB"
