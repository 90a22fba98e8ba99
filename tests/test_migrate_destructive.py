"""Destructive migrations against the real local platform: stopped with row counts, or allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mosaicsync.api import MosaicClient
from mosaicsync.errors import ChecksFailed
from mosaicsync.findings import Finding
from mosaicsync.migrate import Migrator
from tests.conftest import KEY_A, LocalServer
from tests.test_deploy import project_id_of, run_cli
from tests.test_migrate import client, history, project_id, write  # noqa: F401
from tests.test_watch import Run, cli_env, make_site, wait_until

pytestmark = pytest.mark.integration

DROP_TASK = "ALTER TABLE todos DROP COLUMN task;\n"


def has_column(c: MosaicClient, pid: str, table: str, column: str) -> bool:
    rows = c.sql(
        pid,
        "SELECT count(*) AS n FROM information_schema.columns "
        f"WHERE table_name = '{table}' AND column_name = '{column}'",
    )
    return rows == [{"n": 1}]


@pytest.fixture
def todo_site(tmp_path: Path, local_server: LocalServer) -> tuple[Path, str]:
    """The todo template deployed, with three rows in todos."""
    run_cli(["init", "todo", "--template", "todo"], tmp_path, local_server)
    site = tmp_path / "todo"
    run_cli(["link", "--create", "Todo"], site, local_server)
    run_cli(["deploy", "--json"], site, local_server)
    pid = project_id_of(site)
    with MosaicClient(local_server.api, KEY_A) as c:
        c.sql(pid, "INSERT INTO todos (task) VALUES ('a'), ('b'), ('c')")
    return site, pid


def test_deploy_without_a_terminal_stops_then_allow_destructive_applies(
    todo_site: tuple[Path, str], local_server: LocalServer
) -> None:
    site, pid = todo_site
    write(site / "migrations", "0002_drop_task.sql", "-- tasks move to notes\n" + DROP_TASK)
    (site / "public" / "new.html").write_text("<p>new</p>")

    out = run_cli(["deploy", "--json"], site, local_server, check=False)
    assert out.returncode == 9, out.stdout + out.stderr
    error = json.loads(out.stdout)["error"]
    assert "0002_drop_task.sql:2:1: drops column public.todos.task (3 rows)" in error["error"]
    assert "--allow-destructive" in error["hint"]
    assert [(f["kind"], f["severity"], f["line"]) for f in error["findings"]] == [
        ("destructive-migration", "error", 2)
    ]
    human = run_cli(["deploy"], site, local_server, check=False)
    assert human.returncode == 9
    assert "drops column public.todos.task (3 rows)" in human.stderr
    assert "--allow-destructive" in human.stderr
    with MosaicClient(local_server.api, KEY_A) as c:
        assert has_column(c, pid, "todos", "task")
        assert [r["version"] for r in history(c, pid)] == [1]
        assert c.sql(pid, "SELECT count(*) AS n FROM todos") == [{"n": 3}]

    done = json.loads(
        run_cli(["deploy", "--json", "--allow-destructive"], site, local_server).stdout
    )
    assert done["migrations_applied"] == 1 and done["uploaded"] == 1
    assert [(f["severity"], f["message"]) for f in done["findings"]] == [
        ("warning", "drops column public.todos.task (3 rows) (allowed)")
    ]
    with MosaicClient(local_server.api, KEY_A) as c:
        assert not has_column(c, pid, "todos", "task")
        assert c.sql(pid, "SELECT count(*) AS n FROM todos") == [{"n": 3}]


def test_migrate_lint_and_dry_run_report_findings_with_counts(
    todo_site: tuple[Path, str], local_server: LocalServer
) -> None:
    site, pid = todo_site
    migrations = site / "migrations"
    write(
        migrations,
        "0002_reshape.sql",
        "ALTER TABLE todos RENAME COLUMN done TO finished;\n"
        "TRUNCATE todos;\n"
        "DROP TABLE IF EXISTS never_there;\n",
    )
    out = run_cli(["migrate", "lint", "--json"], site, local_server, check=False)
    assert out.returncode == 9, out.stdout + out.stderr
    error = json.loads(out.stdout)["error"]
    assert [(f["severity"], f["line"], f["message"]) for f in error["findings"]] == [
        ("error", 2, "truncates public.todos (3 rows)"),
        ("error", 3, "drops table public.never_there"),  # no such table: no count, no failure
        ("warning", 1, "renames column public.todos.done to finished"),
    ]
    human = run_cli(["migrate", "lint"], site, local_server, check=False)
    assert human.returncode == 9
    assert "0002_reshape.sql:2:1: error: truncates public.todos (3 rows)" in human.stderr

    plan = json.loads(run_cli(["migrate", "up", "--dry-run", "--json"], site, local_server).stdout)
    assert plan["dry_run"] is True
    assert [f["message"] for f in plan["findings"]][:1] == ["truncates public.todos (3 rows)"]
    status = json.loads(run_cli(["status", "--json"], site, local_server).stdout)
    assert "truncates public.todos (3 rows)" in [f["message"] for f in status["findings"]]

    # Reviewed in the file: lint passes with the warnings, and the deploy applies it.
    write(
        migrations,
        "0002_reshape.sql",
        "ALTER TABLE todos RENAME COLUMN done TO finished;\n"
        "-- mosaicsync: allow-destructive\n"
        "TRUNCATE todos;\n"
        "-- mosaicsync: allow-destructive\n"
        "DROP TABLE IF EXISTS never_there;\n",
    )
    lint = json.loads(run_cli(["migrate", "lint", "--json"], site, local_server).stdout)
    assert {f["severity"] for f in lint["findings"]} == {"warning"}
    assert len(lint["findings"]) == 3
    run_cli(["migrate", "up", "--json"], site, local_server)
    with MosaicClient(local_server.api, KEY_A) as c:
        assert c.sql(pid, "SELECT count(*) AS n FROM todos") == [{"n": 0}]
    assert (
        json.loads(run_cli(["migrate", "lint", "--json"], site, local_server).stdout)["findings"]
        == []
    )


def test_the_gate_asks_confirm_and_releases_the_lease(
    tmp_path: Path,
    client: MosaicClient,  # noqa: F811
    project_id: str,  # noqa: F811
) -> None:
    migrations = tmp_path / "migrations"
    write(migrations, "0001_t.sql", "CREATE TABLE t (id int, note text);\n")
    Migrator(client, project_id, migrations).up()
    client.sql(project_id, "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1204) g")
    # A fresh database would create and drop in one run: that is never gated.
    write(migrations, "0002_drop.sql", "ALTER TABLE t DROP COLUMN note;\nDELETE FROM t;\n")
    asked: list[list[Finding]] = []

    def no(found: list[Finding]) -> bool:
        asked.append(found)
        return False

    migrator = Migrator(client, project_id, migrations, lock_timeout=2)
    with pytest.raises(ChecksFailed) as caught:
        migrator.up(confirm=no)
    assert caught.value.exit_code == 9
    assert "drops column public.t.note (1,204 rows)" in caught.value.message
    assert "deletes every row of public.t (no WHERE) (1,204 rows)" in caught.value.message
    assert [f.line for f in asked[0]] == [1, 2]
    assert has_column(client, project_id, "t", "note")
    # The lease was given back: the next run takes it at once (lock_timeout is 2 s).
    result = migrator.up(confirm=lambda found: True)
    assert [a.version for a in result.applied] == [2]
    assert all(f.severity == "warning" for f in result.findings)
    assert not has_column(client, project_id, "t", "note")


def test_a_whole_history_on_a_fresh_database_is_never_gated(
    tmp_path: Path,
    client: MosaicClient,  # noqa: F811
    project_id: str,  # noqa: F811
) -> None:
    migrations = tmp_path / "migrations"
    write(migrations, "0001_t.sql", "CREATE TABLE t (id int, note text);\n")
    write(migrations, "0002_drop.sql", "ALTER TABLE t DROP COLUMN note;\nTRUNCATE t;\n")
    write(
        migrations,
        "0003_touch.sql",
        "DROP FUNCTION IF EXISTS touch();\n"
        "CREATE FUNCTION touch() RETURNS int LANGUAGE sql AS $$ DELETE FROM t; SELECT 1 $$;\n",
    )
    result = Migrator(client, project_id, migrations).up()
    assert [a.version for a in result.applied] == [1, 2, 3] and result.findings == []


def test_watch_pauses_a_destructive_migration_and_goes_on(
    tmp_path: Path,
    local_server: LocalServer,
    client: MosaicClient,  # noqa: F811
) -> None:
    site = tmp_path / "site"
    pid = make_site(site, client)
    migrations = site / "migrations"
    write(migrations, "0001_notes.sql", "CREATE TABLE notes (id int, body text);\n")
    run = Run(["watch"], site, cli_env(local_server))
    try:
        run.wait_for("migrations")
        run.wait_for("watching")
        client.sql(pid, "INSERT INTO notes VALUES (1, 'a'), (2, 'b')")
        write(migrations, "0002_drop.sql", "ALTER TABLE notes DROP COLUMN body;\n")
        paused = wait_until(
            lambda: [w for w in run.of("warning") if w["kind"] == "migration-destructive"]
        )[0]
        assert "0002_drop.sql:1:1: drops column public.notes.body (2 rows)" in paused["message"]
        assert "--allow-destructive" in paused["hint"]
        assert has_column(client, pid, "notes", "body")
        # Reviewed in the file: the watch applies it on the change.
        write(
            migrations,
            "0002_drop.sql",
            "-- mosaicsync: allow-destructive\nALTER TABLE notes DROP COLUMN body;\n",
        )
        assert run.wait_for("migrations", 2)["applied"][0]["version"] == 2
        assert not has_column(client, pid, "notes", "body")
    finally:
        assert run.stop() < 2.0
