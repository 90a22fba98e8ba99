"""The applied history (`mosaicsync.migrations`) and the lease row, and how they compare with files.

The records and `classify`/`validation_problems` are pure; `read_history` and `ensure_schema` are
the two reads, through whatever runs SQL on the project (the platform's SQL endpoint).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from mosaicsync.api import SqlError
from mosaicsync.migrate.files import MigrationFile
from mosaicsync.migrate.requests import CATALOG_RACE, MISSING_SCHEMA, READ_SQL, SCHEMA_SQL
from mosaicsync.retry import Backoff, retry_call

REPAIR = "mosaicsync migrate repair"  # named in hints, so the fix can be pasted


class AppliedMigration(NamedTuple):
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


class LockInfo(NamedTuple):
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
        return f"{host} (pid {self.pid}) until {short_time(self.expires_at)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
            "fence": self.fence,
        }


class ChangedMigration(NamedTuple):
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


def short_time(value: str | None) -> str:
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
                    f"{short_time(row.applied_at)} but has no file",
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
                f"{row.applied_by} on {short_time(row.applied_at)}",
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


# -- reading it ------------------------------------------------------------------------------------


class Sql(Protocol):
    """Runs one request on the project's database and returns its rows."""

    def __call__(self, query: str, *, idempotent: bool) -> list[dict[str, Any]]: ...


@dataclass
class Snapshot:
    """History and lease row from one request; `taken` is set when that request took the lease."""

    history: list[AppliedMigration]
    lock: LockInfo | None
    server_version_num: int | None
    taken: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Snapshot:
        def parsed(key: str) -> Any:
            value = row.get(key)
            # A platform may return json columns as text.
            return json.loads(value) if isinstance(value, str) else value

        version = row.get("server_version_num")
        return cls(
            [AppliedMigration.from_json(r) for r in parsed("history") or []],
            LockInfo.from_json(parsed("lock")),
            int(version) if version is not None else None,
            parsed("taken"),
        )


def ensure_schema(sql: Sql, *, sleep: Callable[[float], None], rng: random.Random) -> None:
    """Create the schema and tables; idempotent, serialized by the transaction lock."""
    retry_call(
        lambda: sql(SCHEMA_SQL, idempotent=True),
        attempts=3,
        retry_if=lambda exc: isinstance(exc, SqlError) and exc.code in CATALOG_RACE,
        backoff=Backoff(0.05, 0.1, rng=rng),
        sleep=sleep,
    )


def read_history(
    sql: Sql, *, create: bool, sleep: Callable[[float], None], rng: random.Random
) -> Snapshot:
    """History and lease row; without the schema, an empty history (created first if `create`)."""
    try:
        rows = sql(READ_SQL, idempotent=True)
    except SqlError as exc:
        if exc.code not in MISSING_SCHEMA:
            raise
        if not create:
            # Nothing recorded yet; the server's version still decides how strict
            # the pre-flight is.
            rows = sql(
                "SELECT current_setting('server_version_num') AS server_version_num",
                idempotent=True,
            )
            return Snapshot([], None, int(rows[0]["server_version_num"]))
        ensure_schema(sql, sleep=sleep, rng=rng)
        rows = sql(READ_SQL, idempotent=True)
    return Snapshot.from_row(rows[0])
