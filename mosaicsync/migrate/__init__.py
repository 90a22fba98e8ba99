"""Migrations: files on disk, history in `mosaicsync.migrations`, a lease lock, exactly-once apply.

  files.py     migration files: naming, loading, checks of each file, `new_migration`
  history.py   applied rows and the lease row; `classify` files against them
  requests.py  the SQL of every request, built by pure functions
  lease.py     the lease: take, renew, give back, take over from a dead holder, unlock
  runner.py    `Migrator`: status, up, repair and baseline under the lease
  lint.py      destructive and risky statements of the pending migrations (pure), row counts

The events a run reports live in mosaicsync.events, its errors (MigrationFailed, LockTimeout,
LeaseLost) in mosaicsync.errors; both are importable from here as well.
"""

from mosaicsync.errors import LeaseLost, LockTimeout, MigrationFailed
from mosaicsync.events import (
    LockAcquired,
    LockReleased,
    LockWaiting,
    MigrationApplied,
    MigrationEvent,
    MigrationStarted,
    MigrationWarning,
    NotAtomic,
    OutcomeUnknown,
    PreflightWarning,
    Resending,
    Resuming,
    StatementApplied,
)
from mosaicsync.migrate.files import (
    DEFAULT_WIDTH,
    FILE_NAME,
    TIMESTAMP_DIGITS,
    MigrationFile,
    analyze_migration,
    load_migrations,
    new_migration,
)
from mosaicsync.migrate.history import (
    REPAIR,
    AppliedMigration,
    ChangedMigration,
    LockInfo,
    MigrationStatus,
    classify,
    validation_problems,
)
from mosaicsync.migrate.lease import Lease
from mosaicsync.migrate.requests import (
    ALREADY_APPLIED,
    CATALOG_RACE,
    LEASE_LOST,
    LOCK_NOT_AVAILABLE,
    MISSING_SCHEMA,
    READ_SQL,
    SCHEMA_SQL,
    UNLOCK_SQL,
    XACT_LOCK,
    Batch,
    apply_batch,
    lone_batch,
    open_batch,
    probe_sql,
    progress_batch,
    release_lease_sql,
    step_batch,
    take_lease_sql,
)
from mosaicsync.migrate.runner import (
    MAX_ATTEMPTS,
    AppliedInfo,
    Migrator,
    RepairResult,
    UpResult,
    default_applied_by,
)

__all__ = [
    "ALREADY_APPLIED",
    "CATALOG_RACE",
    "DEFAULT_WIDTH",
    "FILE_NAME",
    "LEASE_LOST",
    "LOCK_NOT_AVAILABLE",
    "MAX_ATTEMPTS",
    "MISSING_SCHEMA",
    "READ_SQL",
    "REPAIR",
    "SCHEMA_SQL",
    "TIMESTAMP_DIGITS",
    "UNLOCK_SQL",
    "XACT_LOCK",
    "AppliedInfo",
    "AppliedMigration",
    "Batch",
    "ChangedMigration",
    "Lease",
    "LeaseLost",
    "LockAcquired",
    "LockInfo",
    "LockReleased",
    "LockTimeout",
    "LockWaiting",
    "MigrationApplied",
    "MigrationEvent",
    "MigrationFailed",
    "MigrationFile",
    "MigrationStarted",
    "MigrationStatus",
    "MigrationWarning",
    "Migrator",
    "NotAtomic",
    "OutcomeUnknown",
    "PreflightWarning",
    "RepairResult",
    "Resending",
    "Resuming",
    "StatementApplied",
    "UpResult",
    "analyze_migration",
    "apply_batch",
    "classify",
    "default_applied_by",
    "load_migrations",
    "lone_batch",
    "new_migration",
    "open_batch",
    "probe_sql",
    "progress_batch",
    "release_lease_sql",
    "step_batch",
    "take_lease_sql",
    "validation_problems",
]
