"""The SQL of every request the migration runner sends, built by pure functions.

The database is reachable only through the SQL endpoint: one request is one implicit transaction,
nothing outlives it, and a response can be lost after the server committed. So each migration and
its history row travel in ONE request, guarded so that a resend can never apply it twice; a lease
row with a fencing token stands in for a lock that outlives one request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from mosaicsync.manifest import sql_literal
from mosaicsync.sqltext import Statement

if TYPE_CHECKING:
    from mosaicsync.migrate.files import MigrationFile
    from mosaicsync.migrate.history import LockInfo

# Errors that mean "the schema or its tables do not exist yet".
MISSING_SCHEMA = frozenset({"42P01", "3F000"})
# A concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs.
CATALOG_RACE = frozenset({"23505", "42P06", "42P07", "42710", "40P01"})
LOCK_NOT_AVAILABLE = "55P03"
ALREADY_APPLIED = "MS001"
LEASE_LOST = "MS002"
XACT_LOCK = "SELECT pg_advisory_xact_lock(hashtext('mosaicsync.migrations'));"

SCHEMA_SQL = f"""SET LOCAL lock_timeout = '10s';
{XACT_LOCK}
CREATE SCHEMA IF NOT EXISTS mosaicsync;
CREATE TABLE IF NOT EXISTS mosaicsync.migrations (
    version numeric PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    state text NOT NULL DEFAULT 'applied' CHECK (state IN ('applied', 'partial', 'baseline')),
    statements_done integer,
    applied_at timestamptz NOT NULL DEFAULT now(),
    execution_ms integer,
    applied_by text NOT NULL,
    run_id uuid NOT NULL,
    fence bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS mosaicsync.lock (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    holder uuid,
    host text,
    pid integer,
    acquired_at timestamptz,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    fence bigint NOT NULL DEFAULT 0
);
INSERT INTO mosaicsync.lock (id) VALUES (1) ON CONFLICT DO NOTHING"""

_ROW_JSON = (
    "json_build_object('version', m.version::text, 'name', m.name, 'checksum', m.checksum, "
    "'state', m.state, 'statements_done', m.statements_done, 'applied_at', m.applied_at, "
    "'execution_ms', m.execution_ms, 'applied_by', m.applied_by, 'run_id', m.run_id, "
    "'fence', m.fence)"
)
_HISTORY = (
    f"(SELECT coalesce(json_agg({_ROW_JSON} ORDER BY m.version), '[]'::json) "
    "FROM mosaicsync.migrations m) AS history"
)
_LOCK = (
    "(SELECT json_build_object('holder', l.holder, 'host', l.host, 'pid', l.pid, "
    "'acquired_at', l.acquired_at, 'expires_at', l.expires_at, 'fence', l.fence, "
    "'active', l.expires_at > now()) FROM mosaicsync.lock l WHERE l.id = 1) AS lock"
)
READ_SQL = (
    f"SELECT {_HISTORY},\n       {_LOCK},\n"
    "       current_setting('server_version_num') AS server_version_num"
)


class Batch(NamedTuple):
    """One request: `sql`, and where `body` (text[body_start:...]) sits in it for error mapping."""

    sql: str
    prefix_len: int
    body: str
    body_start: int


def _tag(run_id: str, version: int, attempt: int, step: int | None = None) -> str:
    step_part = f" step={step}" if step is not None else ""
    return f"/* mosaicsync run={run_id} v={version}{step_part} attempt={attempt} */\n"


def _probe_pattern(run_id: str, version: int, step: int | None = None) -> str:
    step_part = f" step={step}" if step is not None else ""
    return f"/* mosaicsync run={run_id} v={version}{step_part} %"


def _ttl(seconds: float) -> str:
    return f"interval '{seconds:g} seconds'"


def _guard(run_id: str, fence: int, ttl: float, version: int, *, expect_done: int | None) -> str:
    """Renew the lease under its fencing token, then refuse a batch that already took effect."""
    if expect_done is None:
        check = f"EXISTS (SELECT 1 FROM mosaicsync.migrations WHERE version = {version})"
    else:
        check = (
            "(SELECT statements_done FROM mosaicsync.migrations "
            f"WHERE version = {version} AND state = 'partial') IS DISTINCT FROM {expect_done}"
        )
    return (
        "SET LOCAL lock_timeout = '10s';\n"
        f"{XACT_LOCK}\n"
        "SET LOCAL lock_timeout = DEFAULT;\n"
        "DO $ms$\nBEGIN\n"
        f"  UPDATE mosaicsync.lock SET expires_at = clock_timestamp() + {_ttl(ttl)}\n"
        f"   WHERE id = 1 AND holder = '{run_id}' AND fence = {fence};\n"
        "  IF NOT FOUND THEN\n"
        f"    RAISE EXCEPTION USING ERRCODE = '{LEASE_LOST}', MESSAGE = 'mosaicsync: lease lost';\n"
        "  END IF;\n"
        f"  IF {check} THEN\n"
        f"    RAISE EXCEPTION USING ERRCODE = '{ALREADY_APPLIED}', "
        "MESSAGE = 'mosaicsync: already applied';\n"
        "  END IF;\nEND $ms$;\n"
    )


def renew_lease_sql(run_id: str, fence: int, ttl: float) -> str:
    """Extend the lease, or fail with LEASE_LOST when this run no longer holds it."""
    return (
        "DO $ms$\nBEGIN\n"
        f"  UPDATE mosaicsync.lock SET expires_at = clock_timestamp() + {_ttl(ttl)}\n"
        f"   WHERE id = 1 AND holder = '{run_id}' AND fence = {fence};\n"
        "  IF NOT FOUND THEN\n"
        f"    RAISE EXCEPTION USING ERRCODE = '{LEASE_LOST}', MESSAGE = 'mosaicsync: lease lost';\n"
        "  END IF;\nEND $ms$;\n"
    )


_EXECUTION_MS = "(extract(epoch FROM clock_timestamp() - now()) * 1000)::int"


def apply_batch(
    migration: MigrationFile,
    *,
    run_id: str,
    fence: int,
    ttl: float,
    applied_by: str,
    attempt: int = 1,
) -> Batch:
    """The one request that applies a transactional migration and records it."""
    prefix = _tag(run_id, migration.version, attempt) + _guard(
        run_id, fence, ttl, migration.version, expect_done=None
    )
    values = ", ".join(
        [
            str(migration.version),
            sql_literal(migration.name),
            sql_literal(migration.checksum),
            _EXECUTION_MS,
            sql_literal(applied_by),
            f"'{run_id}'",
            str(fence),
        ]
    )
    suffix = (
        "\n;\n"
        "INSERT INTO mosaicsync.migrations "
        "(version, name, checksum, execution_ms, applied_by, run_id, fence)\n"
        f"VALUES ({values})\nRETURNING execution_ms"
    )
    return Batch(prefix + migration.text + suffix, len(prefix), migration.text, 0)


def open_batch(
    migration: MigrationFile, *, run_id: str, fence: int, ttl: float, applied_by: str, attempt: int
) -> Batch:
    """Record a no-transaction migration as `partial` with 0 statements done."""
    prefix = _tag(run_id, migration.version, attempt, 0) + _guard(
        run_id, fence, ttl, migration.version, expect_done=None
    )
    values = ", ".join(
        [
            str(migration.version),
            sql_literal(migration.name),
            sql_literal(migration.checksum),
            "'partial'",
            "0",
            "0",
            sql_literal(applied_by),
            f"'{run_id}'",
            str(fence),
        ]
    )
    sql = (
        prefix + "INSERT INTO mosaicsync.migrations "
        "(version, name, checksum, state, statements_done, execution_ms, applied_by, run_id, "
        f"fence)\nVALUES ({values})"
    )
    return Batch(sql, len(sql), "", 0)


def _progress_update(version: int, step: int, total: int, fence: int, ms: int | None) -> str:
    sets = [f"statements_done = {step}", f"fence = {fence}"]
    if step == total:
        sets += ["state = 'applied'", f"execution_ms = {ms or 0}", "applied_at = now()"]
    return (
        f"UPDATE mosaicsync.migrations SET {', '.join(sets)}\n"
        f"WHERE version = {version} AND state = 'partial' AND statements_done = {step - 1}"
    )


def step_batch(
    migration: MigrationFile,
    stmt: Statement,
    step: int,
    total: int,
    *,
    run_id: str,
    fence: int,
    ttl: float,
    attempt: int,
    ms: int | None = None,
) -> Batch:
    """A statement that may run in a transaction, together with its progress row: exactly once."""
    prefix = _tag(run_id, migration.version, attempt, step) + _guard(
        run_id, fence, ttl, migration.version, expect_done=step - 1
    )
    suffix = "\n;\n" + _progress_update(migration.version, step, total, fence, ms)
    return Batch(prefix + stmt.text + suffix, len(prefix), stmt.text, stmt.start)


def lone_batch(
    migration: MigrationFile, stmt: Statement, step: int, *, run_id: str, attempt: int
) -> Batch:
    """A statement PostgreSQL refuses inside a transaction block: alone in its request."""
    prefix = _tag(run_id, migration.version, attempt, step)
    return Batch(prefix + stmt.text + "\n;", len(prefix), stmt.text, stmt.start)


def progress_batch(
    migration: MigrationFile,
    step: int,
    total: int,
    *,
    run_id: str,
    fence: int,
    ttl: float,
    ms: int | None = None,
) -> Batch:
    """Record that a lone statement finished, renewing the lease under its fencing token."""
    sql = renew_lease_sql(run_id, fence, ttl) + _progress_update(
        migration.version, step, total, fence, ms
    )
    return Batch(sql, len(sql), "", 0)


def take_lease_sql(
    run_id: str, host: str, pid: int, ttl: float, stale: LockInfo | None = None
) -> str:
    """Take the lease if it is free or already ours, and read history and holder with it.

    `stale` is a lease whose holder is known to be dead: it is taken over, but only while that
    exact holder and fence still hold it.
    """
    takeover = ""
    if stale is not None and stale.holder:
        takeover = f" OR (holder = {sql_literal(stale.holder)} AND fence = {stale.fence})"
    # One statement, so the answer is its rows whichever result set a platform returns.
    return (
        "WITH taken AS (\n"
        f"  UPDATE mosaicsync.lock SET holder = '{run_id}', host = {sql_literal(host)}, "
        f"pid = {pid}, acquired_at = now(),\n"
        f"         expires_at = now() + {_ttl(ttl)}, fence = fence + 1\n"
        f"   WHERE id = 1 AND (expires_at < now() OR holder = '{run_id}'{takeover})\n"
        "  RETURNING fence, expires_at)\n"
        "SELECT (SELECT json_build_object('fence', fence, 'expires_at', expires_at) "
        f"FROM taken) AS taken,\n       {_HISTORY},\n       {_LOCK},\n"
        "       current_setting('server_version_num') AS server_version_num"
    )


def release_lease_sql(run_id: str, fence: int) -> str:
    """Give the lease back, only if this run still holds it under the same token."""
    return (
        "UPDATE mosaicsync.lock SET holder = NULL, host = NULL, pid = NULL, acquired_at = NULL, "
        "expires_at = '-infinity'\n"
        f"WHERE id = 1 AND holder = '{run_id}' AND fence = {fence}"
    )


UNLOCK_SQL = (
    "WITH old AS (SELECT holder, host, pid, acquired_at, expires_at, expires_at > now() AS active\n"
    "             FROM mosaicsync.lock WHERE id = 1 FOR UPDATE)\n"
    "UPDATE mosaicsync.lock l SET holder = NULL, host = NULL, pid = NULL, acquired_at = NULL,\n"
    "       expires_at = '-infinity', fence = l.fence + 1\n"
    "FROM old WHERE l.id = 1\n"
    "RETURNING old.holder, old.host, old.pid, old.acquired_at, old.expires_at, old.active, l.fence"
)


def probe_sql(run_id: str, version: int, step: int | None = None) -> str:
    """Is a request of this run for this version still running, and is the version recorded?"""
    return (
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND state <> 'idle'\n"
        f"          AND query LIKE {sql_literal(_probe_pattern(run_id, version, step))}) "
        "AS running,\n"
        f"       (SELECT {_ROW_JSON} FROM mosaicsync.migrations m "
        f"WHERE m.version = {version}) AS row"
    )


def claim_sql(migration: MigrationFile, *, run_id: str, fence: int, ttl: float) -> str:
    """Make a partially applied migration this run's, to resume it under this run's fence."""
    # Tagged as a claim, not as attempt 1 of a statement: the client resends it as it is (it
    # is idempotent), and a resend that calls itself a first attempt misleads whoever reads
    # the requests (pg_stat_activity, a proxy).
    return (
        f"/* mosaicsync run={run_id} v={migration.version} claim */\n"
        + renew_lease_sql(run_id, fence, ttl)
        + f"UPDATE mosaicsync.migrations SET run_id = '{run_id}', fence = {fence}\n"
        f"WHERE version = {migration.version} AND state = 'partial' "
        f"AND checksum = {sql_literal(migration.checksum)}"
    )


def guarded_sql(run_id: str, fence: int, ttl: float, statements: Sequence[str]) -> str:
    """History edits (repair, baseline) that take effect only while this run holds the lease."""
    return renew_lease_sql(run_id, fence, ttl) + ";\n".join(statements)


def accept_sql(migration: MigrationFile) -> str:
    """Take the file's checksum and name as the truth for an applied (or partial) version."""
    return (
        f"UPDATE mosaicsync.migrations SET checksum = {sql_literal(migration.checksum)}, "
        f"name = {sql_literal(migration.name)}, state = CASE WHEN state = 'partial' "
        f"THEN 'applied' ELSE state END WHERE version = {migration.version}"
    )


def forget_sql(versions: Sequence[int]) -> str:
    return (
        "DELETE FROM mosaicsync.migrations WHERE version IN "
        f"({', '.join(str(v) for v in versions)})"
    )


def baseline_sql(
    migrations: Sequence[MigrationFile], *, applied_by: str, run_id: str, fence: int
) -> str:
    """Record migrations as applied without running them."""
    values = ",\n".join(
        f"({m.version}, {sql_literal(m.name)}, {sql_literal(m.checksum)}, "
        f"'baseline', 0, {sql_literal(applied_by)}, '{run_id}', {fence})"
        for m in migrations
    )
    return (
        "INSERT INTO mosaicsync.migrations (version, name, checksum, state, "
        f"execution_ms, applied_by, run_id, fence) VALUES\n{values}\n"
        "ON CONFLICT (version) DO NOTHING"
    )


def _qualified(index: tuple[str | None, str]) -> str:
    schema, name = index
    return (_quote_ident(schema) + "." if schema else "") + _quote_ident(name)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def index_valid_sql(index: tuple[str | None, str]) -> str:
    """Whether an index exists (row with a boolean) and is valid (not left INVALID)."""
    return (
        "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = "
        f"to_regclass({sql_literal(_qualified(index))})) AS valid"
    )


def drop_index_sql(index: tuple[str | None, str]) -> str:
    return f"DROP INDEX CONCURRENTLY IF EXISTS {_qualified(index)}"
