"""Migrations: files on disk, history in `mosaicsync.migrations`, a lease lock, exactly-once apply.

The database is reachable only through the SQL endpoint: one request is one implicit transaction,
nothing outlives it, and a response can be lost after the server committed. So each migration and
its history row travel in ONE request, guarded so that a resend can never apply it twice; a lease
row with a fencing token stands in for a lock that outlives one request.

MigrationError (errors.py)     exit 7
 +-- MigrationFailed             PostgreSQL rejected a migration; carries file, line and SQLSTATE
 +-- LockTimeout                 another run held the lease for longer than `lock_timeout`
 +-- LeaseLost                   the lease was taken away mid-run; nothing more was applied
"""

from __future__ import annotations

import getpass
import json
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from mosaicsync import __version__
from mosaicsync.api import MosaicClient, SqlError
from mosaicsync.errors import (
    ConfigError,
    MigrationError,
    MosaicError,
    PlatformError,
    UnavailableError,
)
from mosaicsync.manifest import sql_literal
from mosaicsync.retry import Backoff, poll, retry_call
from mosaicsync.sqltext import (
    NO_TRANSACTION,
    Analysis,
    SqlTextError,
    Statement,
    analyze,
    checksum,
    end_of_text,
    is_transactional,
    line_col,
    locate,
    normalize,
)

try:
    from pglast.parser import get_postgresql_version as _pglast_pg_version
except ImportError:  # pragma: no cover
    _pglast_pg_version = None

FILE_NAME = re.compile(r"(\d+)_([A-Za-z0-9][A-Za-z0-9_-]*)\.sql")
TIMESTAMP_DIGITS = 12
DEFAULT_WIDTH = 4
REPAIR = "mosaicsync migrate repair"  # named in hints, so the fix can be pasted
MAX_ATTEMPTS = 5
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


# -- files -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationFile:
    """One migration file; `text` is normalized (no BOM, LF), exactly what is hashed and sent."""

    version: int
    name: str
    path: Path
    text: str
    checksum: str
    transactional: bool

    @property
    def filename(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "file": self.filename,
            "checksum": self.checksum,
            "transactional": self.transactional,
        }


@lru_cache(maxsize=512)
def _analysis(text: str) -> Analysis:
    return analyze(text)


def analyze_migration(migration: MigrationFile) -> Analysis:
    """The statements of a migration as PostgreSQL's grammar (or the fallback lexer) sees them."""
    return _analysis(migration.text)


def _statement_problems(migration: MigrationFile) -> list[str]:
    """Statements that would silently break a migration's promise, found before any request."""
    problems = []
    for stmt in analyze_migration(migration).statements:
        line, _ = line_col(migration.text, stmt.start)
        if stmt.transaction_control:
            if migration.transactional:
                problems.append(
                    f"{migration.filename} line {line}: top-level {stmt.transaction_control} "
                    "would end the migration's transaction early and commit part of it; remove "
                    "it: each migration already runs in one transaction"
                )
            else:
                problems.append(
                    f"{migration.filename} line {line}: {stmt.transaction_control} has no "
                    "effect in a no-transaction migration (each statement is its own request); "
                    "remove it"
                )
        elif stmt.no_transaction and migration.transactional:
            problems.append(
                f"{migration.filename} line {line}: {stmt.no_transaction} cannot run inside a "
                f"transaction; make the first line of the file `{NO_TRANSACTION}` (and keep "
                "its statements idempotent, e.g. IF NOT EXISTS) rather than removing it"
            )
    return problems


def _read_migration(path: Path, version: int, name: str) -> tuple[MigrationFile | None, str | None]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"{path.name}: cannot be read ({exc.strerror})"
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return (
            None,
            f"{path.name}: not UTF-8 text (byte {exc.start}, line {line}); save it as UTF-8",
        )
    text = normalize(decoded)
    try:
        transactional = is_transactional(text)
    except SqlTextError as exc:
        return None, f"{path.name}: {exc.message}"
    migration = MigrationFile(version, name, path, text, checksum(text), transactional)
    if not analyze_migration(migration).statements:
        return None, f"{path.name}: has no SQL statements; write the migration, or delete the file"
    return migration, None


def load_migrations(directory: Path) -> list[MigrationFile]:
    """Every `<version>_<name>.sql` in directory, in version order; problems reported at once."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"migrations directory {directory} does not exist",
            hint="create the first migration with `mosaicsync migrate new NAME`, or set "
            "[migrations] dir in mosaic.toml",
        )
    problems: list[str] = []
    by_version: dict[int, MigrationFile] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() != ".sql":
            continue
        match = FILE_NAME.fullmatch(path.name)
        if match is None:
            problems.append(
                f"{path.name}: not a migration name; use <version>_<name>.sql, "
                "e.g. 0001_create_todos.sql"
            )
            continue
        version, name = int(match.group(1)), match.group(2)
        migration, problem = _read_migration(path, version, name)
        if problem:
            problems.append(problem)
            continue
        assert migration is not None
        if version in by_version:
            problems.append(
                f"{path.name}: version {version} is also used by {by_version[version].filename}; "
                "renumber one of them"
            )
            continue
        by_version[version] = migration
        problems.extend(_statement_problems(migration))
    if problems:
        raise MigrationError(
            f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {directory}: "
            + "; ".join(problems),
            hint="nothing was sent to the platform; fix the files and run again",
        )
    return [by_version[v] for v in sorted(by_version)]


def _slug(name: str) -> str:
    slug = re.sub(r"[\s\-.]+", "_", name.strip()).strip("_").lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", slug):
        raise ConfigError(
            f"migration name {name!r} must use letters, digits and underscores",
            hint="e.g. `create_todos`",
        )
    return slug


def new_migration(directory: Path, name: str, *, now: datetime | None = None) -> Path:
    """Create the next migration file: next integer at the existing width, or a UTC timestamp."""
    directory = Path(directory)
    slug = _slug(name)
    directory.mkdir(parents=True, exist_ok=True)
    prefixes = [
        m.group(1) for p in directory.iterdir() if (m := FILE_NAME.fullmatch(p.name)) is not None
    ]
    highest = max((int(p) for p in prefixes), default=0)
    if any(len(p) >= TIMESTAMP_DIGITS for p in prefixes):
        stamp = int((now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S"))
        version, width = max(stamp, highest + 1), TIMESTAMP_DIGITS
    else:
        version = highest + 1
        width = max((len(p) for p in prefixes), default=DEFAULT_WIDTH)
    path = directory / f"{version:0{width}d}_{slug}.sql"
    with open(path, "x", encoding="utf-8", newline="\n") as f:
        f.write(
            f"-- {slug}: each migration runs in one transaction, with its history row.\n"
            f"-- For CREATE INDEX CONCURRENTLY, make the first line: {NO_TRANSACTION}\n\n"
        )
    return path


# -- history and status ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedMigration:
    """One row of `mosaicsync.migrations`."""

    version: int
    name: str
    checksum: str
    state: str
    statements_done: int | None
    applied_at: str
    execution_ms: int | None
    applied_by: str
    run_id: str
    fence: int

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> AppliedMigration:
        return cls(
            version=int(row["version"]),
            name=row["name"],
            checksum=row["checksum"],
            state=row["state"],
            statements_done=row.get("statements_done"),
            applied_at=str(row["applied_at"]),
            execution_ms=row.get("execution_ms"),
            applied_by=row["applied_by"],
            run_id=str(row["run_id"]),
            fence=int(row["fence"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "checksum": self.checksum,
            "state": self.state,
            "statements_done": self.statements_done,
            "applied_at": self.applied_at,
            "execution_ms": self.execution_ms,
            "applied_by": self.applied_by,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class LockInfo:
    """The lease row: who holds (or last held) the migration lock, and until when."""

    holder: str | None
    host: str | None
    pid: int | None
    acquired_at: str | None
    expires_at: str | None
    fence: int
    active: bool

    @classmethod
    def from_json(cls, row: dict[str, Any] | None) -> LockInfo | None:
        if not row:
            return None
        return cls(
            holder=row.get("holder"),
            host=row.get("host"),
            pid=row.get("pid"),
            acquired_at=row.get("acquired_at"),
            expires_at=row.get("expires_at"),
            fence=int(row.get("fence") or 0),
            active=bool(row.get("active")),
        )

    def describe(self) -> str:
        host = self.host or "an unknown host"
        return f"{host} (pid {self.pid}) until {_short_time(self.expires_at)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
            "fence": self.fence,
        }


@dataclass(frozen=True)
class ChangedMigration:
    """An applied migration whose file no longer matches the checksum in the history."""

    version: int
    name: str
    filename: str
    db_checksum: str
    file_checksum: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "file": self.filename,
            "db_checksum": self.db_checksum,
            "file_checksum": self.file_checksum,
        }


@dataclass
class MigrationStatus:
    """Files and history side by side; `lock` is the active lease holder, or None."""

    applied: list[AppliedMigration] = field(default_factory=list)
    pending: list[MigrationFile] = field(default_factory=list)
    changed: list[ChangedMigration] = field(default_factory=list)
    missing: list[AppliedMigration] = field(default_factory=list)
    partial: list[AppliedMigration] = field(default_factory=list)
    out_of_order: list[MigrationFile] = field(default_factory=list)
    lock: LockInfo | None = None

    @property
    def clean(self) -> bool:
        return not (self.changed or self.missing or self.partial or self.out_of_order)

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": [a.to_json() for a in self.applied],
            "pending": [p.to_json() for p in self.pending],
            "changed": [c.to_json() for c in self.changed],
            "missing": [m.to_json() for m in self.missing],
            "partial": [p.to_json() for p in self.partial],
            "out_of_order": [o.to_json() for o in self.out_of_order],
            "lock": self.lock.to_json() if self.lock else None,
        }


def classify(
    files: Sequence[MigrationFile],
    history: Sequence[AppliedMigration],
    lock: LockInfo | None = None,
) -> MigrationStatus:
    """Compare files with history rows; pure, so every case is testable without a server."""
    by_version = {f.version: f for f in files}
    rows = {r.version: r for r in history}
    status = MigrationStatus(lock=lock if lock is not None and lock.active else None)
    for row in sorted(history, key=lambda r: r.version):
        migration = by_version.get(row.version)
        if row.state == "partial":
            status.partial.append(row)
            continue
        status.applied.append(row)
        if migration is None:
            status.missing.append(row)
        elif migration.checksum != row.checksum:
            status.changed.append(
                ChangedMigration(
                    row.version, row.name, migration.filename, row.checksum, migration.checksum
                )
            )
    highest = max((r.version for r in history if r.state != "partial"), default=None)
    for migration in files:
        if migration.version in rows:
            continue
        status.pending.append(migration)
        if highest is not None and migration.version < highest:
            status.out_of_order.append(migration)
    return status


def _short_sum(value: str) -> str:
    return value[:15] + "…" if len(value) > 15 else value


def _short_time(value: str | None) -> str:
    if not value:
        return "?"
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return value
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def validation_problems(
    status: MigrationStatus,
    files: Sequence[MigrationFile],
    *,
    allow_changed: bool = False,
    allow_out_of_order: bool = False,
    resumable: Sequence[int] = (),
) -> list[tuple[str, str]]:
    """(problem, what to do) for each history/file mismatch that must stop `up`."""
    problems: list[tuple[str, str]] = []
    newest = max((f.version for f in files), default=None)
    by_version = {f.version: f for f in files}
    if not allow_changed:
        for c in status.changed:
            problems.append(
                (
                    f"{c.filename} changed after it was applied (db {_short_sum(c.db_checksum)}, "
                    f"file {_short_sum(c.file_checksum)})",
                    f"revert the file, or accept its new text with `{REPAIR} --accept {c.version}`",
                )
            )
    for row in status.missing:
        if newest is None or row.version > newest:
            problems.append(
                (
                    f"the database has migration {row.version} ({row.name}) but the newest file "
                    f"is {newest if newest is not None else 'none'}",
                    "pull the latest migrations first; if the file was deleted on purpose, "
                    f"`{REPAIR} --forget {row.version}`",
                )
            )
        else:
            problems.append(
                (
                    f"migration {row.version} ({row.name}) was applied on "
                    f"{_short_time(row.applied_at)} but has no file",
                    f"restore the file, or `{REPAIR} --forget {row.version}`",
                )
            )
    for row in status.partial:
        if row.version in resumable:
            continue
        where = by_version[row.version].filename if row.version in by_version else row.name
        problems.append(
            (
                f"{where} was partially applied ({row.statements_done} statements done) by "
                f"{row.applied_by} on {_short_time(row.applied_at)}",
                f"finish or undo it by hand, then `{REPAIR} --accept {row.version}` (finished) or "
                f"`{REPAIR} --forget {row.version}` (undone, to run it again)",
            )
        )
    if not allow_out_of_order and status.out_of_order:
        highest = max(r.version for r in status.applied)
        for migration in status.out_of_order:
            problems.append(
                (
                    f"{migration.filename} is older than applied migration {highest}",
                    f"apply it anyway with --allow-out-of-order, or renumber it after {highest}",
                )
            )
    return problems


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockWaiting:
    """Another run holds the lease; this run polls until it is free or `lock_timeout`."""

    host: str | None
    pid: int | None
    until: str | None


@dataclass(frozen=True)
class LockAcquired:
    """This run holds the lease; `fence` is the token every batch checks."""

    fence: int
    expires_at: str | None


@dataclass(frozen=True)
class LockReleased:
    """The lease was given back at the end of the run."""

    fence: int


@dataclass(frozen=True)
class MigrationStarted:
    """A migration is about to be sent."""

    version: int
    name: str
    transactional: bool


@dataclass(frozen=True)
class MigrationApplied:
    """A migration and its history row are committed."""

    version: int
    name: str
    ms: int
    atomic: bool


@dataclass(frozen=True)
class NotAtomic:
    """A no-transaction migration: a failure midway leaves earlier statements in place."""

    version: int
    name: str
    statements: int


@dataclass(frozen=True)
class StatementApplied:
    """Statement `index` of `total` of a no-transaction migration is done and recorded."""

    version: int
    index: int
    total: int


@dataclass(frozen=True)
class Resuming:
    """A partially applied no-transaction migration continues where it stopped."""

    version: int
    name: str
    from_statement: int
    total: int


@dataclass(frozen=True)
class OutcomeUnknown:
    """A request got no answer; the runner reads the history before it resends anything."""

    version: int
    step: int | None
    attempt: int
    error: str


@dataclass(frozen=True)
class Resending:
    """The probe found the request neither applied nor running: it is sent again."""

    version: int
    step: int | None
    attempt: int


@dataclass(frozen=True)
class PreflightWarning:
    """pglast rejected a transactional migration that the server may still accept."""

    filename: str
    line: int
    column: int
    message: str


@dataclass(frozen=True)
class MigrationWarning:
    """Something the operator should know that does not stop the run."""

    version: int
    message: str


MigrationEvent = (
    LockWaiting
    | LockAcquired
    | LockReleased
    | MigrationStarted
    | MigrationApplied
    | NotAtomic
    | StatementApplied
    | Resuming
    | OutcomeUnknown
    | Resending
    | PreflightWarning
    | MigrationWarning
)


# -- errors ----------------------------------------------------------------------------------------


class MigrationFailed(MigrationError):
    """When: PostgreSQL rejected a migration; the migration left nothing behind if atomic."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        filename: str,
        line: int | None = None,
        column: int | None = None,
        sqlstate: str | None = None,
        detail: str | None = None,
        snippet: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.filename = filename
        self.line = line
        self.column = column
        self.sqlstate = sqlstate
        self.detail = detail
        self.snippet = snippet

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "file": self.filename,
            "line": self.line,
            "column": self.column,
            "sqlstate": self.sqlstate,
            "detail": self.detail,
        }


class LockTimeout(MigrationError):
    """When: another run held the migration lease for longer than `lock_timeout`."""

    def __init__(self, message: str, hint: str | None = None, *, lock: LockInfo | None) -> None:
        super().__init__(message, hint)
        self.lock = lock


class LeaseLost(MigrationError):
    """When: the lease expired or was taken over mid-run; the database refused further batches."""


# -- results ---------------------------------------------------------------------------------------


class AppliedInfo(NamedTuple):
    version: int
    name: str
    ms: int


@dataclass
class UpResult:
    """What `up` did; for a dry run, `sql` holds every request it would send, in order."""

    applied: list[AppliedInfo] = field(default_factory=list)
    planned: list[MigrationFile] = field(default_factory=list)
    sql: list[str] = field(default_factory=list)
    not_atomic: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": [a._asdict() for a in self.applied],
            "planned": [p.to_json() for p in self.planned],
            "not_atomic": self.not_atomic,
            "warnings": self.warnings,
            "dry_run": self.dry_run,
        }


@dataclass
class RepairResult:
    """Versions whose stored checksum was replaced, and versions removed from the history."""

    accepted: list[int] = field(default_factory=list)
    forgotten: list[int] = field(default_factory=list)


# -- request builders (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
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


def _lease_only(run_id: str, fence: int, ttl: float) -> str:
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
    sql = _lease_only(run_id, fence, ttl) + _progress_update(
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


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _index_regclass(index: tuple[str | None, str]) -> str:
    schema, name = index
    qualified = (_quote_ident(schema) + "." if schema else "") + _quote_ident(name)
    return f"to_regclass({sql_literal(qualified)})"


# -- the runner ------------------------------------------------------------------------------------


def default_applied_by() -> str:
    """`user@host mosaicsync/<version>`: who wrote a history row, for the humans reading it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} mosaicsync/{__version__}"


@dataclass
class _Run:
    run_id: str
    fence: int = 0
    holds_lease: bool = False
    lost: bool = False  # a renewal found the lease taken away
    server_version_num: int | None = None


@dataclass
class _Snapshot:
    history: list[AppliedMigration]
    lock: LockInfo | None
    server_version_num: int | None
    taken: dict[str, Any] | None = None


def _snapshot(row: dict[str, Any]) -> _Snapshot:
    history = row.get("history") or []
    if isinstance(history, str):  # a platform that returns json as text
        history = json.loads(history)
    lock = row.get("lock")
    if isinstance(lock, str):
        lock = json.loads(lock)
    taken = row.get("taken")
    if isinstance(taken, str):
        taken = json.loads(taken)
    version = row.get("server_version_num")
    return _Snapshot(
        [AppliedMigration.from_json(r) for r in history],
        LockInfo.from_json(lock),
        int(version) if version is not None else None,
        taken,
    )


class _Unknown(Exception):
    """Internal: a request's outcome is unknown (no answer, or an answer we cannot read)."""


class Migrator:
    """Applies the migrations of one directory to one project, exactly once each."""

    def __init__(
        self,
        client: MosaicClient,
        project_id: str,
        directory: Path,
        *,
        applied_by: str | None = None,
        lease_ttl: float = 120,
        lock_timeout: float = 30,
        on_event: Callable[[MigrationEvent], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        preflight: bool = True,
        max_attempts: int = MAX_ATTEMPTS,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.project_id = project_id
        self.directory = Path(directory)
        self.applied_by = applied_by or default_applied_by()
        self.lease_ttl = lease_ttl
        self.lock_timeout = lock_timeout
        self.on_event = on_event
        self.sleep = sleep
        self.preflight = preflight
        self.max_attempts = max_attempts
        self.rng = rng or random.Random()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._held: _Run | None = None
        self._held_snapshot: _Snapshot | None = None

    # -- plumbing ----------------------------------------------------------------------------------

    def _emit(self, event: MigrationEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _sql(self, query: str, *, idempotent: bool) -> list[dict[str, Any]]:
        return self.client.sql(self.project_id, query, idempotent=idempotent)

    def _ensure_schema(self) -> None:
        """Create the schema and tables; idempotent, serialized by the transaction lock."""
        retry_call(
            lambda: self._sql(SCHEMA_SQL, idempotent=True),
            attempts=3,
            retry_if=lambda exc: isinstance(exc, SqlError) and exc.code in CATALOG_RACE,
            backoff=Backoff(0.05, 0.1, rng=self.rng),
            sleep=self.sleep,
        )

    def _read(self, *, create: bool) -> _Snapshot:
        try:
            rows = self._sql(READ_SQL, idempotent=True)
        except SqlError as exc:
            if exc.code not in MISSING_SCHEMA:
                raise
            if not create:
                # Nothing recorded yet; the server's version still decides how strict
                # the pre-flight is.
                rows = self._sql(
                    "SELECT current_setting('server_version_num') AS server_version_num",
                    idempotent=True,
                )
                return _Snapshot([], None, int(rows[0]["server_version_num"]))
            self._ensure_schema()
            rows = self._sql(READ_SQL, idempotent=True)
        return _snapshot(rows[0])

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> MigrationStatus:
        """Files against history, read in one request (the schema is created if absent)."""
        files = load_migrations(self.directory)
        snap = self._read(create=True)
        return classify(files, snap.history, snap.lock)

    # -- the lease ---------------------------------------------------------------------------------

    def _take(self, run: _Run, stale: LockInfo | None = None) -> _Snapshot:
        query = take_lease_sql(run.run_id, self.host, self.pid, self.lease_ttl, stale)
        try:
            rows = self._sql(query, idempotent=True)
        except SqlError as exc:
            if exc.code not in MISSING_SCHEMA:
                raise
            self._ensure_schema()
            rows = self._sql(query, idempotent=True)
        return _snapshot(rows[0])

    def _acquire(self, run: _Run) -> _Snapshot:
        """Take the lease, polling with jitter while another live run holds it."""
        last_lock: LockInfo | None = None  # the holder last seen, for the messages
        announced = False

        def attempt() -> tuple[bool, _Snapshot | None]:
            nonlocal last_lock
            try:
                snap: _Snapshot | None = self._take(run)
            except SqlError as exc:
                # A batch of the holder keeps the lease row locked while it runs.
                if exc.code not in (LOCK_NOT_AVAILABLE, "57014"):
                    raise
                snap = None
            stale = snap.lock if snap is not None and not snap.taken else None
            if stale is not None and self._holder_is_dead(stale):
                # A run of this machine that was killed (SIGKILL, power loss) cannot give the
                # lease back: take it over now rather than wait out its TTL. The fence bump
                # stops the old run should it be alive after all.
                snap = self._take(run, stale=stale)
            if snap is not None and not snap.taken:
                last_lock = snap.lock
            return snap is not None and bool(snap.taken), snap

        def announce(_: object) -> None:
            nonlocal announced
            if not announced:
                announced = True
                self._emit(
                    LockWaiting(
                        last_lock.host if last_lock else None,
                        last_lock.pid if last_lock else None,
                        last_lock.expires_at if last_lock else None,
                    )
                )

        taken, snap = poll(
            attempt,
            timeout=self.lock_timeout,
            backoff=Backoff(0.2, 2.0, factor=1.5, jitter=0.5, rng=self.rng),
            sleep=self.sleep,
            on_wait=announce,
        )
        if not taken or snap is None or not snap.taken:
            who = last_lock.describe() if last_lock else "another run"
            raise LockTimeout(
                f"migrations are locked by {who}; waited {self.lock_timeout:g} s",
                hint="wait for that run to finish; if it crashed, its lease expires by "
                "itself, or an operator can run `mosaicsync migrate unlock`",
                lock=last_lock,
            )
        run.fence = int(snap.taken["fence"])
        run.holds_lease = True
        run.server_version_num = snap.server_version_num
        self._emit(LockAcquired(run.fence, snap.taken.get("expires_at")))
        return snap

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Hold the lease for a whole deploy, renewed in the background, so that two deploys of
        one project run one after the other; `up` inside it uses this lease."""
        run = _Run(str(uuid.uuid4()))
        self._held_snapshot = self._acquire(run)
        self._held = run
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_ttl / 4):
                try:
                    self._sql(_lease_only(run.run_id, run.fence, self.lease_ttl), idempotent=True)
                except SqlError as exc:
                    if exc.code == LEASE_LOST:
                        run.lost = True
                        return
                except (MosaicError, httpx.TransportError):
                    pass  # a blip: the next renewal, well within the TTL, tries again

        renewer = threading.Thread(target=renew, name="mosaicsync-lease", daemon=True)
        renewer.start()
        try:
            yield
            if run.lost:
                raise self._lease_lost(run)
        finally:
            stop.set()
            renewer.join()
            self._held = self._held_snapshot = None
            if run.holds_lease:
                self._release(run)

    def _holder_is_dead(self, lock: LockInfo) -> bool:
        """True when the lease is held by a process of this host that no longer exists."""
        if not lock.active or lock.host != self.host or not lock.pid or lock.pid == self.pid:
            return False
        try:
            os.kill(lock.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # it exists, as another user's process
        return False

    def _release(self, run: _Run) -> None:
        if not run.holds_lease:
            return
        try:
            self._sql(release_lease_sql(run.run_id, run.fence), idempotent=True)
        except (PlatformError, UnavailableError, httpx.TransportError):
            return  # the lease expires by itself after its TTL
        run.holds_lease = False
        self._emit(LockReleased(run.fence))

    def _lease_lost(self, run: _Run) -> LeaseLost:
        run.holds_lease = False
        try:
            lock = self._read(create=False).lock
        except (PlatformError, UnavailableError, httpx.TransportError):
            lock = None
        holder = f"; it is now held by {lock.describe()}" if lock and lock.active else ""
        return LeaseLost(
            f"this run lost the migration lease (fence {run.fence}){holder}; nothing more "
            "was applied",
            hint="the lease expired (raise lease_ttl above the longest migration) or an "
            "operator ran `mosaicsync migrate unlock`; run `mosaicsync migrate status`, then "
            "`mosaicsync migrate up` again",
        )

    def unlock(self) -> LockInfo | None:
        """Free the lease whoever holds it and bump the fence, so a stale holder cannot commit."""
        try:
            rows = self._sql(UNLOCK_SQL, idempotent=True)
        except SqlError as exc:
            if exc.code in MISSING_SCHEMA:
                return None
            raise
        if not rows or "holder" not in rows[0]:
            return None
        row = rows[0]
        if row.get("holder") is None:
            return None
        return LockInfo.from_json(row)

    # -- up ----------------------------------------------------------------------------------------

    def _preflight(
        self, todo: Sequence[MigrationFile], server_version_num: int | None, result: UpResult
    ) -> None:
        """Syntax errors found by PostgreSQL's grammar, before any migration is sent."""
        if not self.preflight:
            return
        same_grammar = (
            _pglast_pg_version is not None
            and server_version_num is not None
            and server_version_num // 10000 == _pglast_pg_version()[0]
        )
        problems = []
        for migration in todo:
            error = analyze_migration(migration).syntax_error
            if error is None:
                continue
            line, col = line_col(migration.text, error.offset or 0)
            where = f"{migration.filename}:{line}:{col}"
            if not migration.transactional or same_grammar:
                problems.append(f"{where}: {error.message}")
                continue
            result.warnings.append(f"{where}: {error.message} (the server may still accept it)")
            self._emit(PreflightWarning(migration.filename, line, col, error.message))
        if problems:
            raise MigrationError(
                "syntax error, found before anything was applied: " + "; ".join(problems),
                hint="fix the SQL (a no-transaction migration must parse: it is split into "
                "statements); pass preflight=False only if the server's grammar is newer",
            )

    def _plan(
        self,
        files: list[MigrationFile],
        snap: _Snapshot,
        *,
        to: int | None,
        allow_changed: bool,
        allow_out_of_order: bool,
    ) -> tuple[list[MigrationFile], dict[int, AppliedMigration]]:
        status = classify(files, snap.history, snap.lock)
        by_version = {f.version: f for f in files}
        resumable = {
            row.version: row
            for row in status.partial
            if row.version in by_version and self._resumable(by_version[row.version], row)
        }
        problems = validation_problems(
            status,
            files,
            allow_changed=allow_changed,
            allow_out_of_order=allow_out_of_order,
            resumable=list(resumable),
        )
        if problems:
            raise MigrationError(
                "; ".join(p for p, _ in problems),
                hint="; ".join(h for _, h in problems) + "; nothing was applied",
            )
        todo = [by_version[v] for v in resumable] + list(status.pending)
        todo = sorted((m for m in todo if to is None or m.version <= to), key=lambda m: m.version)
        return todo, resumable

    @staticmethod
    def _resumable(migration: MigrationFile, row: AppliedMigration) -> bool:
        """Same text, and the statement to resume at can safely run a second time."""
        if migration.transactional or migration.checksum != row.checksum:
            return False
        statements = analyze_migration(migration).statements
        done = row.statements_done or 0
        if done >= len(statements):
            return True
        nxt = statements[done]
        return not nxt.no_transaction or nxt.idempotent or nxt.index is not None

    def up(
        self,
        *,
        to: int | None = None,
        dry_run: bool = False,
        allow_changed: bool = False,
        allow_out_of_order: bool = False,
    ) -> UpResult:
        """Apply pending migrations in version order, each exactly once; stop at the first error."""
        files = load_migrations(self.directory)
        held = self._held
        run = held or _Run(str(uuid.uuid4()))
        result = UpResult(dry_run=dry_run)
        if dry_run:
            snap = self._read(create=False)
            run.fence = (snap.lock.fence if snap.lock else 0) + 1
            todo, resumable = self._plan(
                files,
                snap,
                to=to,
                allow_changed=allow_changed,
                allow_out_of_order=allow_out_of_order,
            )
            self._preflight(todo, snap.server_version_num, result)
            result.planned = todo
            for migration in todo:
                result.sql.extend(self._planned_requests(migration, run, resumable))
                if not migration.transactional:
                    result.not_atomic.append(migration.version)
            return result
        if held is None:
            snap = self._acquire(run)
        else:
            # The history read with the lease is still current: nobody else can write it.
            snap = self._held_snapshot or self._read(create=True)
            self._held_snapshot = None
        lost = False
        try:
            todo, resumable = self._plan(
                files,
                snap,
                to=to,
                allow_changed=allow_changed,
                allow_out_of_order=allow_out_of_order,
            )
            self._preflight(todo, run.server_version_num, result)
            self._warn_unsafe(todo, result)
            result.planned = todo
            for migration in todo:
                self._emit(
                    MigrationStarted(migration.version, migration.name, migration.transactional)
                )
                if migration.transactional:
                    ms = self._apply_transactional(migration, run)
                else:
                    result.not_atomic.append(migration.version)
                    ms = self._apply_no_transaction(
                        migration, run, resumable.get(migration.version)
                    )
                result.applied.append(AppliedInfo(migration.version, migration.name, ms))
                self._emit(
                    MigrationApplied(migration.version, migration.name, ms, migration.transactional)
                )
        except LeaseLost:
            lost = True
            raise
        finally:
            if not lost and held is None:
                self._release(run)
        return result

    def _warn_unsafe(self, todo: Sequence[MigrationFile], result: UpResult) -> None:
        for migration in todo:
            if migration.transactional:
                continue
            for stmt in analyze_migration(migration).statements:
                if stmt.no_transaction and not stmt.idempotent and stmt.index is None:
                    line, _ = line_col(migration.text, stmt.start)
                    message = (
                        f"{migration.filename} line {line}: {stmt.no_transaction} is not "
                        "idempotent; if its response is lost it cannot be resent safely "
                        "(prefer IF NOT EXISTS / IF EXISTS)"
                    )
                    result.warnings.append(message)
                    self._emit(MigrationWarning(migration.version, message))

    def _planned_requests(
        self, migration: MigrationFile, run: _Run, resumable: dict[int, AppliedMigration]
    ) -> list[str]:
        common = {"run_id": run.run_id, "fence": run.fence, "ttl": self.lease_ttl}
        if migration.transactional:
            return [apply_batch(migration, applied_by=self.applied_by, **common).sql]
        statements = analyze_migration(migration).statements
        total = len(statements)
        row = resumable.get(migration.version)
        requests = []
        if row is None:
            done = 0
            requests.append(
                open_batch(migration, applied_by=self.applied_by, attempt=1, **common).sql
            )
        else:
            done = row.statements_done or 0
            requests.append(self._claim_sql(migration, run))
        for step in range(done + 1, total + 1):
            stmt = statements[step - 1]
            if stmt.no_transaction:
                requests.append(lone_batch(migration, stmt, step, run_id=run.run_id, attempt=1).sql)
                requests.append(progress_batch(migration, step, total, ms=0, **common).sql)
            else:
                requests.append(
                    step_batch(migration, stmt, step, total, attempt=1, ms=0, **common).sql
                )
        return requests

    # -- one request, exactly once -----------------------------------------------------------------

    def _probe(
        self, run: _Run, version: int, step: int | None
    ) -> tuple[int, AppliedMigration | None]:
        try:
            rows = self._sql(probe_sql(run.run_id, version, step), idempotent=True)
        except (UnavailableError, httpx.TransportError) as exc:
            raise MigrationError(
                f"the outcome of migration {version} is unknown and the platform cannot be "
                f"reached to check it ({exc})",
                hint="run `status` when the platform answers again; a new `up` reads the "
                "history first, so it never applies a migration twice",
            ) from None
        row = rows[0]
        history = row.get("row")
        if isinstance(history, str):
            history = json.loads(history)
        return int(row.get("running") or 0), (
            AppliedMigration.from_json(history) if history else None
        )

    def _send(
        self,
        run: _Run,
        migration: MigrationFile,
        step: int | None,
        build: Callable[[int], Batch],
        is_done: Callable[[AppliedMigration | None], bool],
    ) -> list[dict[str, Any]] | None:
        """Send a batch; after an unknown outcome, probe and resend only if it did not happen.

        Returns the rows, or None when the probe or the guard shows the batch already committed.
        """
        resend = Backoff(0.2, 2.0, jitter=0.5, rng=self.rng)
        attempt = 0
        while True:
            attempt += 1
            batch = build(attempt)
            try:
                try:
                    return self._sql(batch.sql, idempotent=False)
                except (UnavailableError, httpx.TransportError) as exc:
                    raise _Unknown(str(exc)) from None
            except SqlError as exc:
                if exc.code == LEASE_LOST:
                    raise self._lease_lost(run) from None
                if exc.code == ALREADY_APPLIED:
                    _, row = self._probe(run, migration.version, step)
                    if is_done(row):
                        return None
                    raise self._applied_elsewhere(migration, row) from None
                if exc.code == LOCK_NOT_AVAILABLE and attempt < self.max_attempts:
                    self._wait_until_idle(run, migration, step)
                    continue
                raise self._failure(migration, batch, exc, step) from None
            except PlatformError as exc:
                # A refusal (413...) or an unreadable answer: it may still have committed.
                _, row = self._wait_until_idle(run, migration, step)
                if is_done(row):
                    return None
                raise MigrationError(
                    f"{migration.filename}: the platform refused the request: {exc.message}",
                    hint=exc.hint,
                ) from None
            except _Unknown as exc:
                self._emit(OutcomeUnknown(migration.version, step, attempt, str(exc)))
                _, row = self._wait_until_idle(run, migration, step)
                if is_done(row):
                    return None
                if row is not None and row.run_id != run.run_id:
                    raise self._applied_elsewhere(migration, row) from None
                if attempt >= self.max_attempts:
                    raise MigrationError(
                        f"{migration.filename}: no answer after {attempt} attempts "
                        f"(last: {exc}); it was not applied",
                        hint="check the platform's status; a new `up` reads the history first",
                    ) from None
                self._emit(Resending(migration.version, step, attempt + 1))
                self.sleep(resend.delay(attempt))

    def _wait_until_idle(
        self, run: _Run, migration: MigrationFile, step: int | None
    ) -> tuple[int, AppliedMigration | None]:
        """Probe until no request of this run for this migration is still running."""

        def idle() -> tuple[bool, tuple[int, AppliedMigration | None]]:
            running, row = self._probe(run, migration.version, step)
            return running == 0, (running, row)

        _, (running, row) = poll(
            idle, timeout=self.lease_ttl, backoff=Backoff(0.1, 2.0, rng=self.rng), sleep=self.sleep
        )
        return running, row

    def _applied_elsewhere(
        self, migration: MigrationFile, row: AppliedMigration | None
    ) -> MigrationError:
        if row is None:
            return MigrationError(
                f"{migration.filename}: the database refused it as already applied, but no "
                "history row is visible",
                hint="run `status`; if this persists, report it",
            )
        same = "the same text" if row.checksum == migration.checksum else "a different text"
        return MigrationError(
            f"{migration.filename} was applied by another run ({row.applied_by}, run "
            f"{row.run_id}) on {_short_time(row.applied_at)}, with {same}",
            hint="run `status` and `up` again",
        )

    def _failure(
        self, migration: MigrationFile, batch: Batch, exc: SqlError, step: int | None = None
    ) -> MigrationFailed:
        """Turn PostgreSQL's error into file:line:col, SQLSTATE, message and detail."""
        off = locate(exc.position, batch.prefix_len, batch.body)
        line = col = None
        snippet = None
        if off is not None:
            file_off = batch.body_start + off
            line, col = line_col(migration.text, file_off)
            where = f"{migration.filename}:{line}:{col}"
        elif exc.position is not None and exc.position - 1 - batch.prefix_len >= len(batch.body):
            # Past the body: the wrapper's closing `;` met an unterminated last statement.
            line, col = line_col(migration.text, batch.body_start + end_of_text(batch.body))
            where = f"{migration.filename}:{line}:{col} (end of statement)"
        elif step and batch.body:
            # No position (23505, 42P07...), but a no-transaction step is one known statement.
            line, col = line_col(migration.text, batch.body_start)
            where = f"{migration.filename}:{line}:{col} (statement {step})"
        else:
            where = migration.filename
        if line is not None:
            source = migration.text.split("\n")[line - 1]
            snippet = f"{source}\n{' ' * ((col or 1) - 1)}^"
        code = exc.code or "?"
        message = f"{where}: {exc.message} (SQLSTATE {code})"
        if exc.detail:
            message += f"; {exc.detail}"
        hint = exc.hint
        if migration.transactional:
            outcome = "; the migration was rolled back, nothing from it was applied"
            if code == "25001":
                hint = f"make the first line of the file `{NO_TRANSACTION}`"
        else:
            done = max(0, (step or 1) - 1)
            total = len(analyze_migration(migration).statements)
            outcome = (
                f"; not atomic: {done} of {total} statements stay applied and the history "
                "marks the migration partial"
            )
            hint = (exc.hint + "; " if exc.hint else "") + (
                "if the cause was outside the file, `up` resumes at the failed statement; "
                "if you change the file, undo the applied statements (or keep them "
                f"idempotent) and `{REPAIR} --forget {migration.version}`"
            )
        return MigrationFailed(
            message + outcome,
            hint,
            filename=migration.filename,
            line=line,
            column=col,
            sqlstate=exc.code,
            detail=exc.detail,
            snippet=snippet,
        )

    def _apply_transactional(self, migration: MigrationFile, run: _Run) -> int:
        started = time.perf_counter()

        def build(attempt: int) -> Batch:
            return apply_batch(
                migration,
                run_id=run.run_id,
                fence=run.fence,
                ttl=self.lease_ttl,
                applied_by=self.applied_by,
                attempt=attempt,
            )

        def done(row: AppliedMigration | None) -> bool:
            return row is not None and row.run_id == run.run_id

        rows = self._send(run, migration, None, build, done)
        if rows and rows[0].get("execution_ms") is not None:
            return int(rows[0]["execution_ms"])
        return round((time.perf_counter() - started) * 1000)

    # -- no-transaction migrations -----------------------------------------------------------------

    def _claim_sql(self, migration: MigrationFile, run: _Run) -> str:
        return (
            _tag(run.run_id, migration.version, 1, 0)
            + _lease_only(run.run_id, run.fence, self.lease_ttl)
            + f"UPDATE mosaicsync.migrations SET run_id = '{run.run_id}', fence = {run.fence}\n"
            f"WHERE version = {migration.version} AND state = 'partial' "
            f"AND checksum = {sql_literal(migration.checksum)}"
        )

    def _apply_no_transaction(
        self, migration: MigrationFile, run: _Run, resume: AppliedMigration | None
    ) -> int:
        statements = analyze_migration(migration).statements
        total = len(statements)
        started = time.perf_counter()
        self._emit(NotAtomic(migration.version, migration.name, total))
        common = {"run_id": run.run_id, "fence": run.fence, "ttl": self.lease_ttl}

        def mine(row: AppliedMigration | None) -> bool:
            return row is not None and row.run_id == run.run_id

        if resume is None:
            done = 0
            self._send(
                run,
                migration,
                0,
                lambda attempt: open_batch(
                    migration, applied_by=self.applied_by, attempt=attempt, **common
                ),
                mine,
            )
        else:
            done = resume.statements_done or 0
            self._emit(Resuming(migration.version, migration.name, done + 1, total))
            try:
                self._sql(self._claim_sql(migration, run), idempotent=True)
            except SqlError as exc:
                if exc.code == LEASE_LOST:
                    raise self._lease_lost(run) from None
                raise
        for step in range(done + 1, total + 1):
            stmt = statements[step - 1]
            ms = round((time.perf_counter() - started) * 1000)

            def recorded(row: AppliedMigration | None, step: int = step) -> bool:
                return (
                    row is not None
                    and row.run_id == run.run_id
                    and (row.state == "applied" or (row.statements_done or 0) >= step)
                )

            if stmt.no_transaction:
                resumed_here = resume is not None and step == done + 1
                self._run_lone(run, migration, stmt, step, check_index=resumed_here)
                ms = round((time.perf_counter() - started) * 1000)
                self._send(
                    run,
                    migration,
                    step,
                    lambda attempt, step=step, ms=ms: progress_batch(
                        migration, step, total, ms=ms, **common
                    ),
                    recorded,
                )
            else:
                self._send(
                    run,
                    migration,
                    step,
                    lambda attempt, stmt=stmt, step=step, ms=ms: step_batch(
                        migration, stmt, step, total, attempt=attempt, ms=ms, **common
                    ),
                    recorded,
                )
            self._emit(StatementApplied(migration.version, step, total))
        return round((time.perf_counter() - started) * 1000)

    def _index_valid(self, index: tuple[str | None, str]) -> bool | None:
        rows = self._sql(
            "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = "
            f"{_index_regclass(index)}) AS valid",
            idempotent=True,
        )
        return rows[0].get("valid")

    def _settle_index(self, migration: MigrationFile, stmt: Statement) -> bool:
        """True if the index already exists and is valid; an INVALID leftover is dropped."""
        assert stmt.index is not None
        valid = self._index_valid(stmt.index)
        if valid:
            return True
        if valid is False:
            self._emit(
                MigrationWarning(
                    migration.version,
                    f"dropping INVALID index {stmt.index[1]} left by an interrupted "
                    "CREATE INDEX CONCURRENTLY, then building it again",
                )
            )
            schema, name = stmt.index
            qualified = (_quote_ident(schema) + "." if schema else "") + _quote_ident(name)
            self._sql(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}", idempotent=True)
        return False

    def _run_lone(
        self,
        run: _Run,
        migration: MigrationFile,
        stmt: Statement,
        step: int,
        *,
        check_index: bool,
    ) -> None:
        """Run a statement that must be alone in its request; it cannot carry a guard."""
        if check_index and stmt.index is not None and self._settle_index(migration, stmt):
            return
        state = {"skip": False}

        def settled(row: AppliedMigration | None) -> bool:
            # Without a guard the history cannot tell; only the index itself can.
            return state["skip"]

        def before_resend() -> None:
            if stmt.index is not None:
                state["skip"] = self._settle_index(migration, stmt)
                if state["skip"]:
                    return
            elif not stmt.idempotent:
                raise MigrationError(
                    f"{migration.filename}: statement {step} ({stmt.no_transaction}) got no "
                    "answer and is not idempotent, so it is not sent again",
                    hint=f"check by hand whether it took effect, then `{REPAIR} --accept "
                    f"{migration.version}` or `{REPAIR} --forget {migration.version}`",
                )

        self._send_lone(run, migration, stmt, step, settled, before_resend)

    def _send_lone(
        self,
        run: _Run,
        migration: MigrationFile,
        stmt: Statement,
        step: int,
        settled: Callable[[AppliedMigration | None], bool],
        before_resend: Callable[[], None],
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            batch = lone_batch(migration, stmt, step, run_id=run.run_id, attempt=attempt)
            try:
                self._sql(batch.sql, idempotent=False)
                return
            except SqlError as exc:
                raise self._failure(migration, batch, exc, step) from None
            except (UnavailableError, httpx.TransportError, PlatformError) as exc:
                self._emit(OutcomeUnknown(migration.version, step, attempt, str(exc)))
                self._wait_until_idle(run, migration, step)
                before_resend()
                if settled(None):
                    return
                if attempt >= self.max_attempts:
                    raise MigrationError(
                        f"{migration.filename}: statement {step} got no answer after "
                        f"{attempt} attempts",
                        hint="check the platform's status, then `up` again (it resumes)",
                    ) from None
                self._emit(Resending(migration.version, step, attempt + 1))

    # -- repair and baseline -----------------------------------------------------------------------

    def _guarded_write(self, run: _Run, statements: list[str]) -> None:
        sql = _lease_only(run.run_id, run.fence, self.lease_ttl) + ";\n".join(statements)
        try:
            self._sql(sql, idempotent=True)
        except SqlError as exc:
            if exc.code == LEASE_LOST:
                raise self._lease_lost(run) from None
            raise

    def repair(self, *, accept: Sequence[int] = (), forget: Sequence[int] = ()) -> RepairResult:
        """Accept files' current checksums for applied versions, or forget history rows."""
        files = {f.version: f for f in load_migrations(self.directory)}
        run = _Run(str(uuid.uuid4()))
        snap = self._acquire(run)
        lost = False
        try:
            rows = {r.version: r for r in snap.history}
            problems = []
            for version in accept:
                if version not in rows:
                    problems.append(f"{version} is not in the history; nothing to accept")
                elif version not in files:
                    problems.append(f"{version} has no file to take the checksum from")
            for version in forget:
                if version not in rows:
                    problems.append(f"{version} is not in the history; nothing to forget")
                elif version in files and rows[version].state != "partial":
                    problems.append(
                        f"{files[version].filename} still exists; forgetting it would apply it "
                        "again on the next `up`"
                    )
            if set(accept) & set(forget):
                problems.append("a version cannot be both accepted and forgotten")
            if problems:
                raise MigrationError(
                    "repair refused: " + "; ".join(problems), hint="nothing was changed"
                )
            statements = []
            for version in accept:
                f = files[version]
                statements.append(
                    f"UPDATE mosaicsync.migrations SET checksum = {sql_literal(f.checksum)}, "
                    f"name = {sql_literal(f.name)}, state = CASE WHEN state = 'partial' "
                    f"THEN 'applied' ELSE state END WHERE version = {version}"
                )
            if forget:
                versions = ", ".join(str(v) for v in forget)
                statements.append(
                    f"DELETE FROM mosaicsync.migrations WHERE version IN ({versions})"
                )
            if statements:
                self._guarded_write(run, statements)
            return RepairResult(sorted(accept), sorted(forget))
        except LeaseLost:
            lost = True
            raise
        finally:
            if not lost:
                self._release(run)

    def baseline(self, version: int) -> list[int]:
        """Record every file up to `version` as applied without running it (an existing schema)."""
        files = load_migrations(self.directory)
        run = _Run(str(uuid.uuid4()))
        snap = self._acquire(run)
        lost = False
        try:
            known = {r.version for r in snap.history}
            chosen = [f for f in files if f.version <= version and f.version not in known]
            if chosen:
                values = ",\n".join(
                    f"({f.version}, {sql_literal(f.name)}, {sql_literal(f.checksum)}, "
                    f"'baseline', 0, {sql_literal(self.applied_by)}, '{run.run_id}', {run.fence})"
                    for f in chosen
                )
                self._guarded_write(
                    run,
                    [
                        "INSERT INTO mosaicsync.migrations (version, name, checksum, state, "
                        f"execution_ms, applied_by, run_id, fence) VALUES\n{values}\n"
                        "ON CONFLICT (version) DO NOTHING"
                    ],
                )
            return [f.version for f in chosen]
        except LeaseLost:
            lost = True
            raise
        finally:
            if not lost:
                self._release(run)
