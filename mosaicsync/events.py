"""Every event the library reports while it works; output.py renders them, the library never prints.

One module for all of them, so a renderer dispatches on classes, not on where they were defined.
`Event` is the union of all of them. Named tuples rather than dataclasses: they are as immutable,
and the whole module costs a third of the start-up time, which every command pays.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from mosaicsync.deploy import DeployResult
    from mosaicsync.plan import Plan

# -- requests --------------------------------------------------------------------------------------


class RequestEvent(NamedTuple):
    """One HTTP exchange, for `--verbose`; never carries the key or a signed query string."""

    method: str
    path: str
    status: int | None
    ms: float
    attempt: int
    error: str | None = None


# -- deploy ----------------------------------------------------------------------------------------


class Scanned(NamedTuple):
    """Event: the static root was scanned."""

    files: int
    hashed: int
    bytes_hashed: int
    skipped: list[str]
    ms: float


class Planned(NamedTuple):
    """Event: the plan is known."""

    plan: Plan
    noop: bool


class Transferred(NamedTuple):
    """Event: one file arrived (or was pruned)."""

    path: str
    target: str
    size: int
    done: int
    total: int
    action: str = "upload"


class Checked(NamedTuple):
    """Event: the preflight checks ran on what is about to be published (findings.Finding)."""

    findings: list[Any]
    files_read: int  # files whose content was read (the others were known clean by hash)
    ms: float


DeployEvent = Scanned | Checked | Planned | Transferred


# -- watch and dev --------------------------------------------------------------------------------


class Deployed(NamedTuple):
    """Event: the full deploy at start (or after mosaic.toml changed) is done."""

    result: DeployResult


class Watching(NamedTuple):
    """Event: changes are being watched from now on."""

    project_id: str
    url: str
    paths: list[str]
    polling: bool


class Synced(NamedTuple):
    """Event: one sync reached the platform."""

    at: float  # epoch seconds when the sync started
    uploaded: int
    pruned: int
    bytes: int
    ms: float
    paths: list[str]

    @property
    def files(self) -> int:
        return self.uploaded + self.pruned


class SyncFailed(NamedTuple):
    """Event: the platform could not be reached; the changes are kept and retried."""

    message: str
    pending: int
    retry_in: float
    attempt: int


class MigrationsApplied(NamedTuple):
    """Event: new migration files were applied."""

    applied: list[tuple[int, str, int]]  # version, name, ms


class WatchWarning(NamedTuple):
    """Event: something the user must act on; watching goes on."""

    kind: str  # migration-edited, migration-failed, config, skipped, watcher, history
    message: str
    hint: str | None = None


class ConfigReloaded(NamedTuple):
    """Event: mosaic.toml (or .mosaicignore) changed and was reloaded."""

    message: str
    restart_required: bool = False


class Stopped(NamedTuple):
    """Event: the watch ended; `pending` changes had not reached the platform."""

    pending: int


class DevStarted(NamedTuple):
    """Event: the platform runs and this folder's project is on it; the watch starts next."""

    base_url: str
    api_url: str
    data_dir: Path
    project_id: str
    url: str
    url_by_path: str
    config_file: str


class Seeded(NamedTuple):
    """Event: `dev` applied the seed files its local project had not recorded yet."""

    applied: list[tuple[str, int]]  # (name, ms)
    warnings: list[str]


WatchEvent = (
    Deployed
    | Watching
    | Synced
    | SyncFailed
    | MigrationsApplied
    | WatchWarning
    | ConfigReloaded
    | Stopped
    | DevStarted
    | Seeded
)


# -- migrations ------------------------------------------------------------------------------------


class LockWaiting(NamedTuple):
    """Another run holds the lease; this run polls until it is free or `lock_timeout`."""

    host: str | None
    pid: int | None
    until: str | None


class LockAcquired(NamedTuple):
    """This run holds the lease; `fence` is the token every batch checks."""

    fence: int
    expires_at: str | None


class LockReleased(NamedTuple):
    """The lease was given back at the end of the run."""

    fence: int


class MigrationStarted(NamedTuple):
    """A migration is about to be sent."""

    version: int
    name: str
    transactional: bool


class MigrationApplied(NamedTuple):
    """A migration and its history row are committed."""

    version: int
    name: str
    ms: int
    atomic: bool


class NotAtomic(NamedTuple):
    """A no-transaction migration: a failure midway leaves earlier statements in place."""

    version: int
    name: str
    statements: int


class StatementApplied(NamedTuple):
    """Statement `index` of `total` of a no-transaction migration is done and recorded."""

    version: int
    index: int
    total: int


class Resuming(NamedTuple):
    """A partially applied no-transaction migration continues where it stopped."""

    version: int
    name: str
    from_statement: int
    total: int


class OutcomeUnknown(NamedTuple):
    """A request got no answer; the runner reads the history before it resends anything."""

    version: int
    step: int | None
    attempt: int
    error: str


class Resending(NamedTuple):
    """The probe found the request neither applied nor running: it is sent again."""

    version: int
    step: int | None
    attempt: int


class PreflightWarning(NamedTuple):
    """pglast rejected a transactional migration that the server may still accept."""

    filename: str
    line: int
    column: int
    message: str


class MigrationWarning(NamedTuple):
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

Event = RequestEvent | DeployEvent | WatchEvent | MigrationEvent
