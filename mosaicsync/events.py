"""Every event the library reports while it works; output.py renders them, the library never prints.

One module for all of them, so a renderer dispatches on classes, not on where they were defined.
Today it holds the migration events; deploy and watch events will join them here.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- migrations ------------------------------------------------------------------------------------


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
