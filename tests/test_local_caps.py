"""One account cannot starve the others: projects per account and SQL connections per account.

Before the caps, one account with 10 projects holding 4 SQL requests each (blocked on a lock)
took every worker thread of the platform, and another account's `/sql` got no answer; an
account could also create projects without end and fill the server's connections.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import KEY_A, KEY_B, LocalServer, make_traversable
from tests.test_reliability import create_project

pytestmark = pytest.mark.integration

KEY_C = "mk_test_account_c"
PROJECTS = 10  # the cap of this platform: enough for account A to hold 40 requests


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    data = tmp_path_factory.mktemp("caps") / "data"
    make_traversable(data.parent)
    server = LocalServer(
        data,
        [
            *("--api-key", KEY_A, "--api-key", KEY_B, "--api-key", KEY_C),
            *("--rate-limit", "0", "--statement-timeout", "60"),
            *("--projects-per-account", str(PROJECTS)),
            *("--connections-per-account", "2", "--connection-wait", "0.5"),
        ],
    )
    server.start()
    yield server
    server.stop()


def connect(creds: dict) -> psycopg.Connection:
    return psycopg.connect(
        host=creds["host"], port=creds["port"], user=creds["user"], password=creds["password"],
        dbname=creds["database"], connect_timeout=10, autocommit=True,
    )  # fmt: skip


def test_one_account_holding_connections_does_not_starve_another(capped: LocalServer) -> None:
    projects = [create_project(capped, f"busy {n}") for n in range(PROJECTS)]
    b_project = create_project(capped, "quiet", key=KEY_B)
    with capped.client(KEY_A) as api:
        check_starvation(capped, api, projects, b_project)


def check_starvation(
    capped: LocalServer, api: httpx.Client, projects: list[str], b_project: str
) -> None:
    holders = []
    for project_id in projects:  # a lock in each database that A's requests will wait for
        holder = connect(api.get(f"/{project_id}/database").json())
        holder.execute("SELECT pg_advisory_lock(7)")
        holders.append(holder)
    results: list[httpx.Response] = []
    done = threading.Lock()

    def blocked_query(project_id: str) -> None:
        with capped.client(KEY_A) as client:
            client.timeout = httpx.Timeout(60)
            answer = client.post(f"/{project_id}/sql", json={"query": "SELECT pg_advisory_lock(7)"})
        with done:
            results.append(answer)

    # 4 per project: with the lock holder, the role's 5 connections.
    threads = [
        threading.Thread(target=blocked_query, args=(p,)) for p in projects for _ in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        # Every request of A is either refused or waiting on the lock inside PostgreSQL.
        deadline = time.monotonic() + 30
        while True:
            (waiting,) = (
                holders[0]
                .execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                .fetchone()
            )
            with done:
                finished = len(results)
            if waiting + finished == len(threads) or time.monotonic() > deadline:
                break
            threading.Event().wait(0.02)
        assert waiting == 2, "A holds at most --connections-per-account connections"
        with capped.client(KEY_B) as b:
            b.timeout = httpx.Timeout(5)
            answer = b.post(f"/{b_project}/sql", json={"query": "SELECT 1 AS one"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] == [{"one": 1}]
    finally:
        for holder in holders:
            holder.close()
        for thread in threads:
            thread.join()
    refused = [r for r in results if r.status_code == 429]
    assert len(refused) == len(threads) - 2, [r.text for r in results if r.status_code != 429]
    assert refused[0].headers["Retry-After"] == "1"
    message = refused[0].json()["error"]
    assert "all 2 database connections" in message and "--connections-per-account" in message
    assert sorted(r.status_code for r in results if r.status_code != 429) == [200, 200]
    # The account's idle connections make room for its other projects, one after another.
    for project_id in projects:
        answer = api.post(f"/{project_id}/sql", json={"query": "SELECT 1 AS one"})
        assert answer.status_code == 200, answer.text


def fill(server: LocalServer, key: str) -> list[str]:
    """Create projects for `key` until it has the platform's cap."""
    with server.client(key) as api:
        have = len(api.get("/projects").json()["projects"])
        made = []
        for n in range(have, PROJECTS):
            answer = api.post("/projects", json={"name": f"slot {n}"})
            assert answer.status_code == 200, answer.text
            made.append(answer.json()["project_id"])
        return made


def test_projects_per_account_are_capped_until_one_is_deleted(capped: LocalServer) -> None:
    made = fill(capped, KEY_C)
    with capped.client(KEY_C) as api:
        refused = api.post("/projects", json={"name": "one too many"})
        assert refused.status_code == 403
        body = refused.json()
        assert body["success"] is False
        assert f"already has {PROJECTS} projects" in body["error"]
        assert f"--projects-per-account {PROJECTS}" in body["error"]
        assert "delete a project" in body["error"]
        names = [p["name"] for p in api.get("/projects").json()["projects"]]
        assert "one too many" not in names and len(names) == PROJECTS
        create_project(capped, "other account", key=KEY_B)  # B's own slots are untouched
        assert api.delete(f"/{made[-1]}").status_code == 200
        again = api.post("/projects", json={"name": "after delete"})
        assert again.status_code == 200, again.text


def test_cli_projects_create_at_the_cap_says_how_to_free_a_slot(
    capped: LocalServer, tmp_path: Path
) -> None:
    fill(capped, KEY_C)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=capped.api, MOSAIC_API_KEY=KEY_C)
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", "projects", "create", "one too many"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 3, out.stderr  # AuthError: a plan limit or a permission
    assert f"already has {PROJECTS} projects" in out.stderr
    assert "mosaicsync projects delete ID --yes" in out.stderr
    assert KEY_C not in out.stdout + out.stderr


def test_a_preview_at_the_project_cap_names_preview_prune(
    capped: LocalServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=capped.api, MOSAIC_API_KEY=KEY_C)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mosaicsync", *args],
            cwd=tmp_path / "app", env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    (tmp_path / "app" / "public").mkdir(parents=True)
    (tmp_path / "app" / "public" / "index.html").write_text("<p>hi</p>")
    with capped.client(KEY_C) as api:
        have = api.get("/projects").json()["projects"]
        parent = (
            have[0]["project_id"]
            if have
            else api.post("/projects", json={"name": "parent"}).json()["project_id"]
        )
    (tmp_path / "app" / "mosaic.toml").write_text(
        f'[app]\nname = "Capped"\nproject_id = "{parent}"\n'
    )
    fill(capped, KEY_C)
    out = run("preview", "feature-x", "--no-seed")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "preview 'feature-x'" in out.stderr and "mosaicsync preview prune" in out.stderr
    listed = run("preview", "list", "--json")
    assert listed.returncode == 0 and '"previews": []' in listed.stdout
