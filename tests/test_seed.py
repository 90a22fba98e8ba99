"""Seed data and `db reset`, end to end: the real CLI against the real local platform.

A seed file is applied once, in one transaction with its record; a failing one leaves nothing and
names file:line:column; `deploy` and `migrate up` never seed; a reset starts the data over and
keeps the site and its deploy state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from mosaicsync.api import MosaicClient
from mosaicsync.config import load_config
from mosaicsync.dev import Dev, seed_local
from mosaicsync.errors import ConfigError
from mosaicsync.events import Seeded, WatchWarning
from mosaicsync.seed import production_reason, seed_files
from mosaicsync.selection import select_target
from mosaicsync.watch import WatchOptions
from tests.conftest import KEY_A, LocalServer
from tests.test_reliability import create_project, write_project

pytestmark = pytest.mark.integration

TODOS = "CREATE TABLE todos (id serial PRIMARY KEY, title text NOT NULL);\n"


def run(
    args: list[str], folder: Path, server: LocalServer, *, code: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=server.api, MOSAIC_API_KEY=KEY_A)
    out = subprocess.run(
        [sys.executable, "-m", "mosaicsync", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert KEY_A not in out.stdout + out.stderr, "the API key leaked into output"
    assert out.returncode == code, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def query(server: LocalServer, project_id: str, sql: str) -> list[dict]:
    with MosaicClient(server.api, KEY_A) as client:
        return client.sql(project_id, sql, idempotent=True)


def titles(server: LocalServer, project_id: str) -> list[str]:
    return [r["title"] for r in query(server, project_id, "SELECT title FROM todos ORDER BY id")]


def seeds(server: LocalServer, project_id: str) -> dict[str, dict]:
    rows = query(
        server,
        project_id,
        "SELECT name, checksum, applied_by, applied_at::text AS at FROM mosaicsync.seeds",
    )
    return {r["name"]: r for r in rows}


@pytest.fixture
def project(local_server: LocalServer, tmp_path: Path) -> tuple[Path, str]:
    """A folder with one migration and a seed folder of two files, linked to a new project."""
    project_id = create_project(local_server, "seed")
    folder = write_project(tmp_path / "site", project_id)
    (folder / "public" / "index.html").write_text("<!doctype html><p>home</p>\n")
    (folder / "migrations").mkdir()
    (folder / "migrations" / "0001_todos.sql").write_text(TODOS)
    config = folder / "mosaic.toml"
    config.write_text(config.read_text() + 'seed = "seed"\n')
    (folder / "seed").mkdir()
    (folder / "seed" / "01_first.sql").write_text("INSERT INTO todos (title) VALUES ('one');\n")
    (folder / "seed" / "02_second.sql").write_text(
        "INSERT INTO todos (title) VALUES ('two');\nINSERT INTO todos (title) VALUES ('three');\n"
    )
    return folder, project_id


def test_seed_is_applied_once_recorded_and_a_changed_file_is_not_reapplied(
    project: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = project
    run(["migrate", "up"], folder, local_server)
    first = json.loads(run(["db", "seed", "--yes", "--json"], folder, local_server).stdout)
    assert [a["name"] for a in first["applied"]] == ["seed/01_first.sql", "seed/02_second.sql"]
    assert first["skipped"] == [] and first["warnings"] == []
    assert titles(local_server, project_id) == ["one", "two", "three"]
    recorded = seeds(local_server, project_id)
    assert set(recorded) == {"seed/01_first.sql", "seed/02_second.sql"}
    assert all(r["checksum"].startswith("sha256:") and "mosaicsync/" in r["applied_by"]
               for r in recorded.values())  # fmt: skip

    again = json.loads(run(["db", "seed", "--yes", "--json"], folder, local_server).stdout)
    assert again["applied"] == [] and again["skipped"] == sorted(recorded)
    assert titles(local_server, project_id) == ["one", "two", "three"]

    (folder / "seed" / "01_first.sql").write_text("INSERT INTO todos (title) VALUES ('uno');\n")
    changed = json.loads(run(["db", "seed", "--yes", "--json"], folder, local_server).stdout)
    assert changed["applied"] == []
    assert len(changed["warnings"]) == 1 and "seed/01_first.sql changed" in changed["warnings"][0]
    assert titles(local_server, project_id) == ["one", "two", "three"]
    assert seeds(local_server, project_id) == recorded


def test_a_failing_seed_file_names_file_line_column_and_keeps_the_files_before_it(
    project: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = project
    run(["migrate", "up"], folder, local_server)
    bad = folder / "seed" / "02_second.sql"
    bad.write_text(
        "INSERT INTO todos (title) VALUES ('two');\n-- then\n"
        "INSERT INTO todos (titel) VALUES ('x');\n"
    )
    out = run(["db", "seed", "--yes", "--json"], folder, local_server, code=7)
    error = json.loads(out.stdout)["error"]
    assert error["exit_code"] == 7 and error["code"] == "seed"
    assert (error["file"], error["line"], error["column"]) == ("seed/02_second.sql", 3, 20)
    assert error["sqlstate"] == "42703"
    assert error["error"].startswith('seed/02_second.sql:3:20: column "titel"')
    assert "(SQLSTATE 42703)" in error["error"]
    # The first file stays applied and recorded; the failing one left nothing, not even 'two'.
    assert titles(local_server, project_id) == ["one"]
    assert set(seeds(local_server, project_id)) == {"seed/01_first.sql"}

    human = run(["db", "seed", "--yes"], folder, local_server, code=7)
    assert "seed/02_second.sql:3:20" in human.stderr and "SQLSTATE 42703" in human.stderr

    bad.write_text(bad.read_text().replace("titel", "title"))
    fixed = json.loads(run(["db", "seed", "--yes", "--json"], folder, local_server).stdout)
    assert [a["name"] for a in fixed["applied"]] == ["seed/02_second.sql"]
    assert titles(local_server, project_id) == ["one", "two", "x"]


def test_deploy_and_migrate_up_never_seed(
    project: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = project
    run(["migrate", "up"], folder, local_server)
    run(["deploy", "--json"], folder, local_server)
    (folder / "migrations" / "0002_more.sql").write_text(
        "ALTER TABLE todos ADD COLUMN done bool;\n"
    )
    run(["deploy", "--json"], folder, local_server)
    assert titles(local_server, project_id) == []
    present = query(local_server, project_id, "SELECT to_regclass('mosaicsync.seeds') AS t")
    assert present[0]["t"] is None


def test_db_seed_and_reset_refuse_a_project_that_is_not_local(
    project: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, _ = project
    remote = ["--api-url", "https://api.mosaic.invalid/v1/project", "--project", "pod-16f"]
    for command in ("seed", "reset"):
        out = run(["db", command, "--yes", "--json", *remote], folder, local_server, code=2)
        error = json.loads(out.stdout)["error"]
        assert "refused: pod-16f is on https://api.mosaic.invalid/v1/project" in error["error"]
        assert "not a local platform" in error["error"] and "--force-production" in error["hint"]
        # The flag lets it through to the platform, which does not exist here (exit 6).
        run(["db", command, "--yes", "--force-production", *remote], folder, local_server, code=6)
    # Without a terminal, --yes is required; the JSON envelope says so.
    out = run(["db", "seed", "--json"], folder, local_server, code=2)
    assert "so pass --yes" in json.loads(out.stdout)["error"]["error"]


def test_production_reason_is_none_only_for_a_local_platform_or_what_the_caller_vouches_for(
    tmp_path: Path,
) -> None:
    folder = write_project(tmp_path / "p", "pod-16f")
    config = load_config(folder / "mosaic.toml")

    def chosen(url: str) -> object:
        return select_target(config, {}, api_url=url)

    assert production_reason(chosen("http://127.0.0.1:8787/v1/project")) is None
    assert production_reason(chosen("http://app.localhost:8787/v1/project")) is None
    reason = production_reason(chosen("https://api.mosaic.site/v1/project"))
    assert reason is not None and "pod-16f is on https://api.mosaic.site" in reason
    assert production_reason(chosen("https://api.mosaic.site/v1/project"),
                             also_safe=lambda s: s.project_id == "pod-16f") is None  # fmt: skip


def test_db_reset_starts_the_data_over_and_keeps_the_site_and_its_deploy_state(
    project: tuple[Path, str], local_server: LocalServer
) -> None:
    folder, project_id = project
    run(["deploy", "-m", "first", "--json"], folder, local_server)
    run(["db", "seed", "--yes"], folder, local_server)
    query(
        local_server,
        project_id,
        "INSERT INTO todos (title) VALUES ('mine'); CREATE SCHEMA extra; "
        "CREATE TABLE extra.t (x int); SELECT 1 AS ok",
    )
    state = "SELECT (SELECT json_agg(d ORDER BY id) FROM mosaicsync.deploys d) AS deploys, " \
            "(SELECT json_agg(f ORDER BY path) FROM mosaicsync.files f) AS files"  # fmt: skip
    before = query(local_server, project_id, state)[0]
    migrated = query(local_server, project_id, "SELECT run_id::text FROM mosaicsync.migrations")

    out = json.loads(run(["db", "reset", "--yes", "--json"], folder, local_server).stdout)
    assert [m["version"] for m in out["migrations"]["applied"]] == [1]
    assert len(out["seeds"]["applied"]) == 2
    assert titles(local_server, project_id) == ["one", "two", "three"]
    gone = query(local_server, project_id, "SELECT to_regnamespace('extra') AS s")
    assert gone[0]["s"] is None
    again = query(local_server, project_id, "SELECT run_id::text FROM mosaicsync.migrations")
    assert len(again) == 1 and again != migrated
    assert query(local_server, project_id, state)[0] == before
    page = httpx.get(f"{local_server.base_url}/sites/{project_id}/index.html")
    assert page.status_code == 200 and b"home" in page.content
    status = json.loads(run(["status", "--json"], folder, local_server).stdout)
    assert status["live"]["message"] == "first"


def test_dev_seeds_its_project_once(project: tuple[Path, str], local_server: LocalServer) -> None:
    folder, project_id = project
    run(["migrate", "up"], folder, local_server)
    config = load_config(folder / "mosaic.toml")
    events: list[object] = []
    with MosaicClient(local_server.api, KEY_A) as client:
        seed_local(client, project_id, config, events.append)
        seed_local(client, project_id, config, events.append)  # a restart of dev
        (folder / "seed" / "03_bad.sql").write_text("SELECT 1/0;\n")
        seed_local(client, project_id, config, events.append)
    first, second, third = events
    assert isinstance(first, Seeded) and [n for n, _ in first.applied] == [
        "seed/01_first.sql",
        "seed/02_second.sql",
    ]
    assert isinstance(second, Seeded) and second.applied == []
    assert isinstance(third, WatchWarning) and third.kind == "seed"
    assert "seed/03_bad.sql: division by zero (SQLSTATE 22012)" in third.message
    assert titles(local_server, project_id) == ["one", "two", "three"]


def test_dev_seeds_after_its_first_deploy_and_not_again_when_restarted(
    project: tuple[Path, str], local_server: LocalServer, tmp_path: Path
) -> None:
    folder, _ = project
    data = tmp_path / "data"
    data.mkdir()
    (data / "api-key").write_text(KEY_A)
    platform = SimpleNamespace(api_url=local_server.api, base_url=local_server.base_url)

    def one_run() -> list[object]:
        events: list[object] = []

        def on_event(event: object) -> None:
            events.append(event)
            # The seed follows whichever of the first deploy and the migrations' flush leaves
            # no migration pending: that may be after `Watching`, so the run ends on the
            # seed's own event (or its warning), never on a moment in between.
            if isinstance(event, Seeded) or (
                isinstance(event, WatchWarning) and event.kind == "seed"
            ):
                assert dev.watcher is not None
                dev.watcher.stop()

        dev = Dev(load_config(folder / "mosaic.toml"), data, 0, WatchOptions(target="local"),
                  on_event=on_event)  # fmt: skip
        dev._watch(platform)
        return events

    first = one_run()
    kinds = [type(e).__name__ for e in first]
    # When the seed fails, dev says so in a warning: show it.
    assert "Seeded" in kinds, [e for e in first if type(e).__name__ == "WatchWarning"]
    # After the schema is there, whichever of the watch's first deploy and its migrations
    # comes first: seeding before them failed ("relation todos does not exist").
    assert kinds.index("MigrationsApplied") < kinds.index("Seeded"), kinds
    seeded = next(e for e in first if isinstance(e, Seeded))
    assert [n for n, _ in seeded.applied] == ["seed/01_first.sql", "seed/02_second.sql"]
    local_id = load_config(folder / "mosaic.toml").targets["local"].project_id
    assert local_id is not None
    assert titles(local_server, local_id) == ["one", "two", "three"]

    again = next(e for e in one_run() if isinstance(e, Seeded))
    assert again.applied == []
    assert load_config(folder / "mosaic.toml").targets["local"].project_id == local_id
    assert titles(local_server, local_id) == ["one", "two", "three"]


# -- mosaic.toml -----------------------------------------------------------------------------------


def test_seed_path_is_checked_like_the_other_folders(tmp_path: Path) -> None:
    folder = write_project(tmp_path / "p", "pod-16f")
    toml = folder / "mosaic.toml"
    base = toml.read_text()
    toml.write_text(base + 'seed = "nope.sql"\n')
    with pytest.raises(ConfigError) as missing:
        load_config(toml)
    assert "[migrations] seed: 'nope.sql' does not exist in" in missing.value.message
    assert "remove the key" in missing.value.message
    toml.write_text(base + 'seed = "../outside.sql"\n')
    (tmp_path / "outside.sql").write_text("SELECT 1;\n")
    with pytest.raises(ConfigError) as outside:
        load_config(toml)
    assert "outside the project folder" in outside.value.message
    toml.write_text(base + "seed = 3\n")
    with pytest.raises(ConfigError) as typed:
        load_config(toml)
    assert '[migrations] seed: expected a string, got an integer; write seed = "seed.sql"' in (
        typed.value.message
    )
    toml.write_text(base)
    assert seed_files(load_config(toml)) == []


def test_seed_inside_the_static_root_is_never_published(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "index.html").write_text("<p>x</p>")
    (folder / "seed.sql").write_text("SELECT 1;\n")
    (folder / "seeds").mkdir()
    (folder / "seeds" / "b.sql").write_text("SELECT 2;\n")
    (folder / "seeds" / "a.sql").write_text("SELECT 1;\n")
    (folder / "seeds" / "notes.txt").write_text("not SQL")
    toml = folder / "mosaic.toml"
    toml.write_text('[app]\nname = "p"\n[static]\nroot = "."\n[migrations]\nseed = "seed.sql"\n')
    config = load_config(toml)
    assert "/seed.sql" in config.static_ignore
    assert seed_files(config) == [folder / "seed.sql"]
    toml.write_text('[app]\nname = "p"\n[static]\nroot = "."\n[migrations]\nseed = "seeds"\n')
    config = load_config(toml)
    assert "/seeds/" in config.static_ignore
    assert seed_files(config) == [folder / "seeds" / "a.sql", folder / "seeds" / "b.sql"]
