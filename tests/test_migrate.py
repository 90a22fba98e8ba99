"""Migrations against the real local platform: exactly once, atomic, locked, and honest about it."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mosaicsync import wire
from mosaicsync.api import MosaicClient
from mosaicsync.contract import MAX_REQUEST_BYTES
from mosaicsync.errors import ConfigError, MigrationError
from mosaicsync.events import RequestEvent
from mosaicsync.migrate import (
    AppliedMigration,
    LeaseLost,
    LockTimeout,
    LockWaiting,
    MigrationApplied,
    MigrationFailed,
    MigrationFile,
    Migrator,
    NotAtomic,
    OutcomeUnknown,
    Resending,
    Resuming,
    classify,
    load_migrations,
    new_migration,
)
from mosaicsync.sqltext import checksum
from tests.conftest import KEY_A, LocalServer

# -- test doubles and fixtures ---------------------------------------------------------------------


def write(directory: Path, filename: str, text: str, *, raw: bytes | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_bytes(raw if raw is not None else text.encode("utf-8"))
    return path


def query(client: MosaicClient, project_id: str, sql: str) -> list[dict]:
    return client.sql(project_id, sql, idempotent=True)


def history(client: MosaicClient, project_id: str) -> list[dict]:
    return query(
        client,
        project_id,
        "SELECT version::int AS version, name, state, statements_done, run_id::text AS run_id "
        "FROM mosaicsync.migrations ORDER BY version",
    )


def table_exists(client: MosaicClient, project_id: str, name: str) -> bool:
    rows = query(client, project_id, f"SELECT to_regclass('{name}') IS NOT NULL AS present")
    return bool(rows[0]["present"])


class FaultyTransport:
    """Real network underneath; `decide(query)` may drop a request or its response."""

    def __init__(self, decide: Callable[[str], str | None]) -> None:
        self.inner = wire.Pool()
        self.decide = decide
        self.after: Callable[[str, str, dict[str, str], bytes], None] | None = None

    def send(self, method: str, url: str, headers: dict[str, str], body) -> wire.Response:
        sql = json.loads(body)["query"] if body else ""
        action = self.decide(sql) if sql else None
        if action == "drop_before":
            raise wire.Dropped("dropped before the server saw it")
        response = self.inner.send(method, url, headers, body)
        if action == "drop_after":
            raise wire.Dropped("response lost after the server processed it")
        if self.after is not None:
            self.after(method, url, headers, body)
        return response

    def stream(self, method: str, url: str, headers: dict[str, str]):
        return self.inner.stream(method, url, headers)

    def close(self) -> None:
        self.inner.close()


# A no-transaction migration of three statements, each safe to run again.
TWO_INDEXES = (
    "-- mosaicsync:no-transaction\n"
    "CREATE TABLE IF NOT EXISTS big (x int, y int);\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_x ON big (x);\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_y ON big (y);\n"
)


@pytest.fixture
def project_id(local_server: LocalServer) -> str:
    """A fresh project per test: each test starts from an empty database."""
    with MosaicClient(local_server.api, KEY_A) as c:
        created = c.create_project(f"migrations {uuid.uuid4().hex[:6]}")
        c.wait_until_running(created["project_id"], timeout=30)
    return created["project_id"]


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[MosaicClient]:
    with MosaicClient(local_server.api, KEY_A) as c:
        yield c


def three(directory: Path) -> None:
    write(directory, "0001_create_todos.sql", "CREATE TABLE todos (id serial PRIMARY KEY);\n")
    write(directory, "0002_add_title.sql", "ALTER TABLE todos ADD COLUMN title text;\n")
    write(directory, "0003_add_done.sql", "ALTER TABLE todos ADD COLUMN done boolean;\n")


pytestmark = pytest.mark.integration


# -- the basic cycle -------------------------------------------------------------------------------


def test_apply_three_rerun_applies_none_and_status_lists_them(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    migrator = Migrator(client, project_id, tmp_path, applied_by="tester")
    result = migrator.up()
    assert [(a.version, a.name) for a in result.applied] == [
        (1, "create_todos"),
        (2, "add_title"),
        (3, "add_done"),
    ]
    assert all(a.ms >= 0 for a in result.applied)
    assert result.not_atomic == []
    query(client, project_id, "INSERT INTO todos (title, done) VALUES ('x', false)")
    assert migrator.up().applied == []
    status = migrator.status()
    assert [a.version for a in status.applied] == [1, 2, 3]
    assert status.pending == [] and status.clean and status.lock is None
    assert {a.checksum for a in status.applied} == {m.checksum for m in load_migrations(tmp_path)}
    assert status.applied[0].applied_by == "tester"
    assert json.dumps(status.to_json())


def test_requests_are_one_per_migration_plus_a_constant(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    sql_requests: list[RequestEvent] = []

    def count(event: RequestEvent) -> None:
        if event.path.endswith("/sql"):
            sql_requests.append(event)

    with MosaicClient(local_server.api, KEY_A, on_request=count) as c:
        three(tmp_path)
        Migrator(c, project_id, tmp_path).up()
        # Fresh database: lease+read fails, schema, lease+read, 3 migrations, release.
        assert len(sql_requests) == 3 + 4
        sql_requests.clear()
        write(tmp_path, "0004_a.sql", "CREATE TABLE a (x int);\n")
        write(tmp_path, "0005_b.sql", "CREATE TABLE b (x int);\n")
        Migrator(c, project_id, tmp_path).up()
        assert len(sql_requests) == 2 + 2  # lease+read, 2 migrations, release
        sql_requests.clear()
        Migrator(c, project_id, tmp_path).up()
        assert len(sql_requests) == 0 + 2
        sql_requests.clear()
        Migrator(c, project_id, tmp_path).status()
        assert len(sql_requests) == 1


def test_dry_run_shows_the_exact_requests_and_changes_nothing(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    result = Migrator(client, project_id, tmp_path).up(dry_run=True)
    assert result.dry_run and result.applied == []
    assert [m.version for m in result.planned] == [1, 2, 3]
    assert len(result.sql) == 3
    assert (
        "ALTER TABLE todos ADD COLUMN title text;\n\n;\nINSERT INTO mosaicsync.migrations"
        in (result.sql[1])
    )
    assert not table_exists(client, project_id, "todos")


# -- validation ------------------------------------------------------------------------------------


def test_edited_applied_file_is_refused_and_nothing_is_applied(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    migrator = Migrator(client, project_id, tmp_path)
    migrator.up(to=2)
    write(tmp_path, "0001_create_todos.sql", "CREATE TABLE todos (id bigserial PRIMARY KEY);\n")
    with pytest.raises(MigrationError) as caught:
        migrator.up()
    assert "0001_create_todos.sql changed after it was applied" in caught.value.message
    assert "repair --accept 1" in (caught.value.hint or "")
    assert [r["version"] for r in history(client, project_id)] == [1, 2]
    assert migrator.status().changed[0].version == 1
    # Accepting the edit makes the history match again; then 0003 applies.
    assert migrator.repair(accept=[1]).accepted == [1]
    assert migrator.status().changed == []
    assert [a.version for a in migrator.up().applied] == [3]


def test_allow_changed_applies_the_rest(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    migrator = Migrator(client, project_id, tmp_path)
    migrator.up(to=1)
    write(tmp_path, "0001_create_todos.sql", "CREATE TABLE todos (id serial PRIMARY KEY); \n")
    assert [a.version for a in migrator.up(allow_changed=True).applied] == [2, 3]


def test_crlf_and_bom_copies_of_an_applied_file_validate_clean(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    text = "-- todos\nCREATE TABLE todos (\n  id serial PRIMARY KEY\n);\n"
    write(tmp_path, "0001_create_todos.sql", text)
    migrator = Migrator(client, project_id, tmp_path)
    migrator.up()
    write(
        tmp_path,
        "0001_create_todos.sql",
        "",
        raw=b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode(),
    )
    status = migrator.status()
    assert status.clean and status.changed == []
    assert migrator.up().applied == []


def test_applied_file_missing_is_an_error_until_forgotten(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    migrator = Migrator(client, project_id, tmp_path)
    migrator.up()
    (tmp_path / "0002_add_title.sql").unlink()
    with pytest.raises(
        MigrationError, match=r"migration 2 \(add_title\) was applied on .* no file"
    ):
        migrator.up()
    assert migrator.status().missing[0].version == 2
    (tmp_path / "0003_add_done.sql").unlink()
    with pytest.raises(MigrationError, match=r"the database has migration 3 .* newest file is 1"):
        migrator.up()
    assert migrator.repair(forget=[2, 3]).forgotten == [2, 3]
    assert migrator.status().clean
    with pytest.raises(MigrationError, match="still exists"):
        migrator.repair(forget=[1])


def test_out_of_order_needs_permission(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (x int);\n")
    write(tmp_path, "0003_c.sql", "CREATE TABLE c (x int);\n")
    migrator = Migrator(client, project_id, tmp_path)
    migrator.up()
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (x int);\n")
    with pytest.raises(MigrationError, match=r"0002_b\.sql is older than applied migration 3"):
        migrator.up()
    assert not table_exists(client, project_id, "b")
    assert [m.version for m in migrator.status().out_of_order] == [2]
    assert [a.version for a in migrator.up(allow_out_of_order=True).applied] == [2]


def test_commit_in_a_transactional_file_is_refused_before_any_request(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    seen: list[RequestEvent] = []
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (x int);\n")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (x int);\n-- a comment\nCOMMIT;\nSELECT 1/0;\n")
    with (
        MosaicClient(local_server.api, KEY_A, on_request=seen.append) as c,
        pytest.raises(MigrationError, match=r"0002_b\.sql line 3: top-level COMMIT"),
    ):
        Migrator(c, project_id, tmp_path).up()
    assert seen == []


def test_syntax_error_is_found_before_anything_is_applied(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (x int);\n")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (x int);\n\nCREATE TABEL c (x int);\n")
    with pytest.raises(MigrationError, match=r"0002_b.sql:3:8: syntax error at or near \"TABEL\""):
        Migrator(client, project_id, tmp_path).up()
    assert not table_exists(client, project_id, "a")


# -- failures --------------------------------------------------------------------------------------


def test_error_on_line_7_names_file_line_and_leaves_no_trace(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_create_todos.sql", "CREATE TABLE todos (id serial PRIMARY KEY);\n")
    write(
        tmp_path,
        "0002_add_tags.sql",
        "-- tags for todos\n"
        "CREATE TABLE tags (\n"
        "  id serial PRIMARY KEY,\n"
        "  label text NOT NULL\n"
        ");\n"
        "INSERT INTO tags (label) VALUES ('café ☕');\n"
        "INSERT INTO tags (label) SELECT '☕ café: ' || colour FROM tags;\n"
        "CREATE INDEX tags_label ON tags (label);\n",
    )
    write(tmp_path, "0003_more.sql", "CREATE TABLE more (x int);\n")
    migrator = Migrator(client, project_id, tmp_path)
    with pytest.raises(MigrationFailed) as caught:
        migrator.up()
    error = caught.value
    assert error.filename == "0002_add_tags.sql"
    line_7 = (tmp_path / "0002_add_tags.sql").read_text().split("\n")[6]
    assert (error.line, error.column) == (7, line_7.index("colour") + 1) == (7, 47)
    assert error.sqlstate == "42703"
    assert error.message.startswith('0002_add_tags.sql:7:47: column "colour" does not exist')
    assert "nothing from it was applied" in error.message
    assert error.snippet is not None and error.snippet.endswith("^")
    assert error.to_json()["line"] == 7
    # Atomic: neither the table nor the history row of 0002; 0003 never ran; the lock is free.
    assert not table_exists(client, project_id, "tags")
    assert not table_exists(client, project_id, "more")
    assert [r["version"] for r in history(client, project_id)] == [1]
    status = migrator.status()
    assert [m.version for m in status.pending] == [2, 3] and status.lock is None


def test_error_without_position_and_in_a_missing_final_semicolon(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (x int);\nCREATE TABLE a (x int);\n")
    with pytest.raises(MigrationFailed) as caught:
        Migrator(client, project_id, tmp_path).up()
    assert caught.value.sqlstate == "42P07" and caught.value.line is None
    assert caught.value.message.startswith('0001_a.sql: relation "a" already exists')


# -- tricky SQL ------------------------------------------------------------------------------------


def test_dollar_quotes_comments_semicolons_and_extensions(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "0001_extensions.sql",
        "CREATE EXTENSION IF NOT EXISTS vector;\n"
        "CREATE TABLE docs (id serial PRIMARY KEY, body text, embedding vector(3));\n",
    )
    write(
        tmp_path,
        "0002_functions.sql",
        "/* a block comment; with a semicolon /* nested; */ */\n"
        "CREATE FUNCTION add_doc(b text) RETURNS int LANGUAGE plpgsql AS $fn$\n"
        "DECLARE new_id int;\n"
        "BEGIN\n"
        "  INSERT INTO docs (body) VALUES (b || '; COMMIT;') RETURNING id INTO new_id;\n"
        "  RETURN new_id;\n"
        "END\n"
        "$fn$;\n"
        "CREATE FUNCTION twice(x int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n"
        "  SELECT CASE WHEN x > 0 THEN x * 2 ELSE 0 END;\n"
        "END;\n"
        "INSERT INTO docs (body) VALUES ('semi;colon'), (E'it\\'s; fine'), ($$dollar; $$);\n"
        "-- ends with a comment and no newline",
    )
    write(
        tmp_path,
        "0003_no_final_semicolon.sql",
        "",
        raw="\ufeffINSERT INTO docs (body) VALUES ('crlf')\r\n-- trailing".encode(),
    )
    result = Migrator(client, project_id, tmp_path).up()
    assert [a.version for a in result.applied] == [1, 2, 3]
    rows = query(client, project_id, "SELECT add_doc('x') AS id, twice(21) AS t")
    assert rows[0]["t"] == 42
    bodies = {r["body"] for r in query(client, project_id, "SELECT body FROM docs")}
    assert {"semi;colon", "it's; fine", "dollar; ", "crlf", "x; COMMIT;"} <= bodies


def test_no_transaction_migration_with_create_index_concurrently(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_todos.sql", "CREATE TABLE todos (id serial PRIMARY KEY, done bool);\n")
    write(
        tmp_path,
        "0002_index.sql",
        "-- mosaicsync:no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS todos_done ON todos (done);\n"
        "CREATE TABLE IF NOT EXISTS audit (x int);\n",
    )
    events: list = []
    result = Migrator(client, project_id, tmp_path, on_event=events.append).up()
    assert [a.version for a in result.applied] == [1, 2]
    assert result.not_atomic == [2]
    assert any(isinstance(e, NotAtomic) and e.version == 2 for e in events)
    assert [e.atomic for e in events if isinstance(e, MigrationApplied)] == [True, False]
    rows = query(
        client,
        project_id,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('todos_done')",
    )
    assert rows == [{"indisvalid": True}]
    assert history(client, project_id)[1]["state"] == "applied"
    assert history(client, project_id)[1]["statements_done"] == 2


def test_concurrently_in_a_transactional_file_points_to_the_directive(tmp_path: Path) -> None:
    write(tmp_path, "0001_i.sql", "CREATE INDEX CONCURRENTLY i ON t (x);\n")
    with pytest.raises(MigrationError, match="-- mosaicsync:no-transaction"):
        load_migrations(tmp_path)


# -- locking ---------------------------------------------------------------------------------------


def test_two_concurrent_runs_apply_each_migration_exactly_once(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0000_log.sql", "CREATE TABLE log (v int);\n")
    for v in range(1, 21):
        write(
            tmp_path,
            f"{v:04d}_m{v}.sql",
            f"CREATE TABLE m{v} (x int);\nINSERT INTO log VALUES ({v});\n",
        )
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with MosaicClient(local_server.api, KEY_A) as c:
                up = Migrator(c, project_id, tmp_path, lock_timeout=30).up()
                results[i] = [a.version for a in up.applied]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results[0] + results[1]) == list(range(21))
    with MosaicClient(local_server.api, KEY_A) as c:
        rows = query(c, project_id, "SELECT v, count(*) AS n FROM log GROUP BY v ORDER BY v")
        assert rows == [{"v": v, "n": 1} for v in range(1, 21)]
        assert len(history(c, project_id)) == 21


def test_a_crashed_holder_blocks_until_its_lease_expires(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    Migrator(client, project_id, tmp_path).status()  # creates the schema
    query(
        client,
        project_id,
        "UPDATE mosaicsync.lock SET holder = gen_random_uuid(), host = 'crashed-host', "
        "pid = 4242, acquired_at = now(), expires_at = now() + interval '2 seconds', "
        "fence = fence + 1",
    )
    with pytest.raises(LockTimeout) as caught:
        Migrator(client, project_id, tmp_path, lock_timeout=0.3).up()
    assert "locked by crashed-host (pid 4242) until" in caught.value.message
    assert Migrator(client, project_id, tmp_path).status().lock.host == "crashed-host"
    events: list = []
    result = Migrator(client, project_id, tmp_path, lock_timeout=10, on_event=events.append).up()
    assert [a.version for a in result.applied] == [1, 2, 3]
    assert any(isinstance(e, LockWaiting) and e.host == "crashed-host" for e in events)


def test_unlock_mid_run_fences_out_the_old_runner(
    local_server: LocalServer, client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    operator = Migrator(client, project_id, tmp_path)

    def on_event(event: object) -> None:
        if isinstance(event, MigrationApplied) and event.version == 1:
            previous = operator.unlock()
            assert previous is not None and previous.active

    with (
        MosaicClient(local_server.api, KEY_A) as c,
        pytest.raises(LeaseLost, match="lost the migration lease"),
    ):
        Migrator(c, project_id, tmp_path, on_event=on_event).up()
    assert [r["version"] for r in history(client, project_id)] == [1]
    assert operator.unlock() is None  # already free
    assert [a.version for a in operator.up().applied] == [2, 3]


# -- lost responses --------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["drop_after", "drop_before"])
def test_a_lost_request_or_response_applies_exactly_once(
    local_server: LocalServer, project_id: str, tmp_path: Path, action: str
) -> None:
    three(tmp_path)
    dropped: list[str] = []

    def decide(sql: str) -> str | None:
        if sql.startswith("/* mosaicsync run=") and " v=2 " in sql and not dropped:
            dropped.append(sql)
            return action
        return None

    events: list = []
    transport = FaultyTransport(decide)
    with MosaicClient(local_server.api, KEY_A, transport=transport) as c:
        result = Migrator(c, project_id, tmp_path, on_event=events.append).up()
        assert [a.version for a in result.applied] == [1, 2, 3]
        assert [r["version"] for r in history(c, project_id)] == [1, 2, 3]
        assert len({r["run_id"] for r in history(c, project_id)}) == 1
    assert dropped
    assert [type(e) for e in events if isinstance(e, OutcomeUnknown | Resending)] == (
        [OutcomeUnknown] if action == "drop_after" else [OutcomeUnknown, Resending]
    )


def test_a_late_duplicate_of_a_batch_is_refused_by_the_guard(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_log.sql", "CREATE TABLE log (v int);\nINSERT INTO log VALUES (1);\n")
    replies: list[wire.Response] = []
    transport = FaultyTransport(lambda sql: None)

    def replay(method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        sql = json.loads(body)["query"]
        if sql.startswith("/* mosaicsync run=") and not replies:
            replies.append(transport.inner.send(method, url, headers, body))

    transport.after = replay
    with MosaicClient(local_server.api, KEY_A, transport=transport) as c:
        Migrator(c, project_id, tmp_path).up()
        assert query(c, project_id, "SELECT count(*) AS n FROM log") == [{"n": 1}]
    assert replies[0].status == 400
    assert replies[0].json()["code"] == "MS001"


def test_a_no_transaction_migration_resumes_after_an_interruption(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_index.sql", TWO_INDEXES)

    def decide(sql: str) -> str | None:
        # Statement 3 itself never arrives; probes and other steps do.
        return "drop_before" if sql.startswith("/* mosaicsync run=") and " step=3 " in sql else None

    transport = FaultyTransport(decide)
    with MosaicClient(local_server.api, KEY_A, transport=transport) as c:
        with pytest.raises(MigrationError, match="statement 3 got no answer"):
            Migrator(c, project_id, tmp_path, max_attempts=2).up()
        rows = history(c, project_id)
        assert rows == [
            {
                "version": 1,
                "name": "index",
                "state": "partial",
                "statements_done": 2,
                "run_id": rows[0]["run_id"],
            }
        ]
    events: list = []
    with MosaicClient(local_server.api, KEY_A) as c:
        result = Migrator(c, project_id, tmp_path, on_event=events.append).up()
        assert [a.version for a in result.applied] == [1]
        assert history(c, project_id)[0]["state"] == "applied"
        assert table_exists(c, project_id, "big_y")
    assert any(isinstance(e, Resuming) and e.from_statement == 3 for e in events)


@pytest.mark.integration
def test_a_resume_gets_through_when_every_first_attempt_is_lost(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    """Seen in the fault suite under load: the claim that resumes a partial migration was sent
    again and again as `attempt=1`, so a link that loses first attempts lost every one of them
    and no later run could ever finish the migration."""
    write(tmp_path, "0001_index.sql", TWO_INDEXES)
    step3 = FaultyTransport(
        lambda sql: (
            "drop_before" if sql.startswith("/* mosaicsync run=") and " step=3 " in sql else None
        )
    )
    with MosaicClient(local_server.api, KEY_A, transport=step3) as c:
        with pytest.raises(MigrationError, match="statement 3 got no answer"):
            Migrator(c, project_id, tmp_path, max_attempts=2).up()
        assert history(c, project_id)[0]["state"] == "partial"

    first_attempts = FaultyTransport(
        lambda sql: "drop_before" if re.search(r" v=1(?: step=\d+)? attempt=1 ", sql) else None
    )
    events: list = []
    with MosaicClient(local_server.api, KEY_A, transport=first_attempts) as c:
        Migrator(c, project_id, tmp_path, on_event=events.append).up()
        assert history(c, project_id)[0]["state"] == "applied"
        assert table_exists(c, project_id, "big_y")
    assert any(isinstance(e, Resuming) and e.from_statement == 3 for e in events)


# -- files (no server) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.sql": b"SELECT 1;", "001_b.sql": b"SELECT 2;"}, "version 1 is also used by"),
        ({"first.sql": b"SELECT 1;"}, "first.sql: not a migration name"),
        ({"0001_a.sql": b"  \n-- only a comment\n"}, "0001_a.sql: has no SQL statements"),
        ({"0001_a.sql": b"SELECT '\xff';"}, "0001_a.sql: not UTF-8 text (byte 8, line 1)"),
        ({"0001_a.sql": b"-- mosaicsync:notx\nSELECT 1;"}, "unknown directive"),
    ],
)
def test_bad_files_are_refused_locally(
    tmp_path: Path, files: dict[str, bytes], message: str
) -> None:
    for name, raw in files.items():
        write(tmp_path, name, "", raw=raw)
    with pytest.raises(MigrationError, match=re.escape(message)):
        load_migrations(tmp_path)


def test_load_sorts_numerically_and_ignores_other_files(tmp_path: Path) -> None:
    write(tmp_path, "10_c.sql", "SELECT 3;")
    write(tmp_path, "9_b.sql", "SELECT 2;")
    write(tmp_path, "0001_a.sql", "-- mosaicsync:no-transaction\nVACUUM;")
    write(tmp_path, "README.md", "not a migration")
    loaded = load_migrations(tmp_path)
    assert [(m.version, m.name) for m in loaded] == [(1, "a"), (9, "b"), (10, "c")]
    assert [m.transactional for m in loaded] == [False, True, True]
    assert loaded[1].checksum == checksum("SELECT 2;")
    with pytest.raises(ConfigError, match="does not exist"):
        load_migrations(tmp_path / "nope")


def test_new_migration_numbers_and_widths(tmp_path: Path) -> None:
    first = new_migration(tmp_path / "m", "create todos")
    assert first.name == "0001_create_todos.sql"
    assert new_migration(tmp_path / "m", "add-title").name == "0002_add_title.sql"
    write(tmp_path / "w", "000009_x.sql", "SELECT 1;")
    assert new_migration(tmp_path / "w", "y").name == "000010_y.sql"
    write(tmp_path / "t", "20240101120000_x.sql", "SELECT 1;")
    now = datetime(2026, 8, 1, 12, 0, 0, tzinfo=UTC)
    assert new_migration(tmp_path / "t", "y", now=now).name == "20260801120000_y.sql"
    assert new_migration(tmp_path / "t", "z", now=now).name == "20260801120001_z.sql"
    with pytest.raises(ConfigError):
        new_migration(tmp_path / "m", "drop; table")
    # A fresh file has no SQL yet, so it cannot be applied by accident.
    with pytest.raises(MigrationError, match="has no SQL statements"):
        load_migrations(tmp_path / "m")


def test_classify_is_pure() -> None:
    def row(version: int, sum_: str, state: str = "applied") -> AppliedMigration:
        return AppliedMigration(version, f"m{version}", sum_, state, None, "", 1, "t", "r", 1)

    files = []
    for v in (1, 2, 4, 5):
        text = f"SELECT {v};"
        files.append(MigrationFile(v, f"m{v}", Path(f"{v}_m{v}.sql"), text, checksum(text), True))
    status = classify(
        files,
        [
            row(1, checksum("SELECT 1;")),
            row(2, "sha256:old"),
            row(3, "x"),
            row(5, checksum("SELECT 5;")),
        ],
    )
    assert [c.version for c in status.changed] == [2]
    assert [m.version for m in status.missing] == [3]
    assert [p.version for p in status.pending] == [4]
    assert [o.version for o in status.out_of_order] == [4]


def test_resend_refused_as_already_applied_by_this_run_counts_as_success(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    state = {"dropped": False, "faked": False}

    def decide(sql: str) -> str | None:
        if sql.startswith("/* mosaicsync run=") and " v=2 " in sql and not state["dropped"]:
            state["dropped"] = True
            return "drop_after"
        return None

    class LyingProbe(FaultyTransport):
        """The first probe claims nothing happened, so the runner resends a committed batch."""

        def send(self, method, url, headers, body) -> wire.Response:
            sql = json.loads(body)["query"] if body else ""
            if "pg_stat_activity" in sql and state["dropped"] and not state["faked"]:
                state["faked"] = True
                answer = {"success": True, "data": [{"running": 0, "row": None}]}
                return wire.Response(method, url, 200, "OK", {}, json.dumps(answer).encode())
            return super().send(method, url, headers, body)

    events: list = []
    with MosaicClient(local_server.api, KEY_A, transport=LyingProbe(decide)) as c:
        result = Migrator(c, project_id, tmp_path, on_event=events.append).up()
        assert [a.version for a in result.applied] == [1, 2, 3]
        assert [r["version"] for r in history(c, project_id)] == [1, 2, 3]
    assert state == {"dropped": True, "faked": True}
    assert any(isinstance(e, Resending) and e.version == 2 for e in events)


def test_grammar_mismatch_only_warns_and_the_server_error_is_mapped(
    client: MosaicClient, project_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend pglast knows an older grammar than the server: its verdict is then advisory.
    monkeypatch.setattr("mosaicsync.migrate.runner._pglast_pg_version", lambda: (1, 0))
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (x int);\n")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (x int);\n\nCREATE TABEL c (x int);\n")
    events: list = []
    with pytest.raises(MigrationFailed) as caught:
        Migrator(client, project_id, tmp_path, on_event=events.append).up()
    warning = next(e for e in events if type(e).__name__ == "PreflightWarning")
    assert (warning.filename, warning.line, warning.column) == ("0002_b.sql", 3, 8)
    assert (caught.value.line, caught.value.column, caught.value.sqlstate) == (3, 8, "42601")
    assert table_exists(client, project_id, "a") and not table_exists(client, project_id, "b")


def test_no_transaction_file_must_parse(
    client: MosaicClient, project_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mosaicsync.migrate.runner._pglast_pg_version", lambda: (1, 0))
    write(
        tmp_path,
        "0001_i.sql",
        "-- mosaicsync:no-transaction\nCREATE TABLE t (x int);\nCREATE INDEXX i ON t (x);\n",
    )
    with pytest.raises(MigrationError, match=r"0001_i\.sql:3:8: syntax error"):
        Migrator(client, project_id, tmp_path).up()
    assert not table_exists(client, project_id, "t")


def test_baseline_records_existing_schema_without_running_it(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    three(tmp_path)
    query(client, project_id, "CREATE TABLE todos (id serial PRIMARY KEY, title text)")
    migrator = Migrator(client, project_id, tmp_path)
    assert migrator.baseline(2) == [1, 2]
    assert [(r["version"], r["state"]) for r in history(client, project_id)] == [
        (1, "baseline"),
        (2, "baseline"),
    ]
    assert [a.version for a in migrator.up().applied] == [3]
    assert migrator.baseline(3) == []


def test_failed_concurrent_index_is_partial_then_resumes_and_rebuilds_the_invalid_index(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_t.sql", "CREATE TABLE t (x int);\nINSERT INTO t VALUES (1), (1);\n")
    write(
        tmp_path,
        "0002_unique.sql",
        "-- mosaicsync:no-transaction\n"
        "CREATE TABLE IF NOT EXISTS side (y int);\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n",
    )
    migrator = Migrator(client, project_id, tmp_path)
    with pytest.raises(MigrationFailed) as caught:
        migrator.up()
    assert (caught.value.filename, caught.value.line, caught.value.sqlstate) == (
        "0002_unique.sql",
        3,
        "23505",
    )
    assert "not atomic: 1 of 2 statements stay applied" in caught.value.message
    assert history(client, project_id)[1]["state"] == "partial"
    assert table_exists(client, project_id, "side")
    invalid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('t_x')"
    assert query(client, project_id, invalid) == [{"indisvalid": False}]
    # The cause was in the data, not the file: fix it, and `up` resumes at statement 2.
    query(client, project_id, "DELETE FROM t WHERE ctid <> (SELECT min(ctid) FROM t)")
    events: list = []
    result = Migrator(client, project_id, tmp_path, on_event=events.append).up()
    assert [a.version for a in result.applied] == [2]
    assert any(isinstance(e, Resuming) and e.from_statement == 2 for e in events)
    assert query(client, project_id, invalid) == [{"indisvalid": True}]
    assert history(client, project_id)[1]["state"] == "applied"


def test_a_lease_left_by_a_lost_answer_is_retaken_by_the_same_holder_id(
    client: MosaicClient, project_id: str, tmp_path: Path
) -> None:
    Migrator(client, project_id, tmp_path).status()  # creates the schema
    mine = "6f1c2d3e-0000-4000-8000-00000000beef"
    # The take reached the server, its answer did not: the lease is held under `mine` with a long
    # expiry, and the taker never learnt it.
    query(
        client,
        project_id,
        f"UPDATE mosaicsync.lock SET holder = '{mine}', host = 'this-host', pid = 1, "
        "acquired_at = now(), expires_at = now() + interval '10 minutes', fence = fence + 1",
    )
    other = Migrator(client, project_id, tmp_path, lock_timeout=0.3)
    with pytest.raises(LockTimeout), other.lease():  # another holder id waits, and times out
        pass
    with Migrator(client, project_id, tmp_path, lock_timeout=0.3).lease(mine):
        held = query(client, project_id, "SELECT holder FROM mosaicsync.lock")[0]["holder"]
        assert held == mine
    assert query(client, project_id, "SELECT holder FROM mosaicsync.lock")[0]["holder"] is None


def test_a_migration_over_the_request_limit_is_refused_before_any_request(
    local_server: LocalServer, project_id: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_small.sql", "CREATE TABLE small (x int);\n")
    big = write(tmp_path, "0002_big.sql", "")
    with open(big, "r+b") as f:
        f.truncate(MAX_REQUEST_BYTES + 1)  # sparse: never read, only its size is looked at
    sent: list[RequestEvent] = []
    with MosaicClient(local_server.api, KEY_A, on_request=sent.append) as c:
        for dry_run in (True, False):
            with pytest.raises(MigrationError) as info:
                Migrator(c, project_id, tmp_path).up(dry_run=dry_run)
            message = info.value.message
            assert "0002_big.sql" in message and str(MAX_REQUEST_BYTES + 1) in message
            assert f"request limit of {MAX_REQUEST_BYTES} bytes" in message
            assert info.value.exit_code == 7
    assert sent == []
