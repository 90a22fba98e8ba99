"""mosaicsync's errors. The CLI catches `MosaicError` once and turns it into one line + exit code.

MosaicError                 exit 1   anything we anticipated that has no better class
 +-- ConfigError            exit 2   mosaic.toml, an environment variable or a flag is wrong
 |    +-- ScanError                   a symlink leaves the static root or dangles; unreadable file
 +-- AuthError              exit 3   no key, wrong key, expired key, forbidden
 +-- NotFoundError          exit 4   unknown project, file or object
 +-- PlatformError          exit 5   the platform refused a request (another 4xx)
 +-- UnavailableError       exit 6   network down, 5xx or 429 after retries
 +-- MigrationError         exit 7   a migration failed or history does not match the files
 |    +-- MigrationFailed             PostgreSQL rejected a migration; file, line and SQLSTATE
 |    |    +-- SeedFailed             ... or a seed file (`db seed`, `preview`, `dev`)
 |    +-- LockTimeout                 another run held the lease for longer than `lock_timeout`
 |    +-- LeaseLost                   the lease was taken away mid-run; nothing more was applied
 +-- LocalPlatformError     exit 8   `mosaicsync local` cannot start
 +-- ChecksFailed           exit 9   a preflight check stopped the run: a secret in content, a
 |                                   destructive migration not allowed, a broken reference (strict)
 +-- HistoryError           exit 10  a deploy to restore (rollback, promote) is unknown, pruned
                                     or expired, or bytes it needs are gone; nothing was changed
Usage errors from click exit 2 as well; Ctrl-C exits 130.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mosaicsync.migrate.history import LockInfo


class MosaicError(Exception):
    """When: a failure we can explain; `hint` says what to do about it."""

    exit_code: ClassVar[int] = 1
    reference: ClassVar[str] = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, object]:
        return {
            "error": self.message,
            "hint": self.hint,
            "code": self.reference,
            "exit_code": self.exit_code,
        }


class ConfigError(MosaicError):
    """When: mosaic.toml, an environment variable or a flag has a value we cannot use."""

    exit_code = 2
    reference = "config"


class AuthError(MosaicError):
    """When: the platform answered 401/403, or no API key is configured."""

    exit_code = 3
    reference = "auth"


class NotFoundError(MosaicError):
    """When: the platform answered 404 for a project, file or object."""

    exit_code = 4
    reference = "not-found"


class PlatformError(MosaicError):
    """When: the platform refused a request with another 4xx."""

    exit_code = 5
    reference = "platform"


class UnavailableError(MosaicError):
    """When: the platform could not be reached or kept failing after retries."""

    exit_code = 6
    reference = "unavailable"


class MigrationError(MosaicError):
    """When: a migration failed, or the applied history does not match the files."""

    exit_code = 7
    reference = "migration"


class LocalPlatformError(MosaicError):
    """When: `mosaicsync local` cannot start (port taken, PostgreSQL cannot run, bad data dir)."""

    exit_code = 8
    reference = "local-platform"


class ChecksFailed(MosaicError):
    """When: a preflight check found a problem that stops the run before anything is sent."""

    exit_code = 9
    reference = "check"

    def __init__(self, message: str, hint: str | None = None, *, findings: list[Any]) -> None:
        super().__init__(message, hint)
        self.findings = findings

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "findings": [f.to_json() for f in self.findings]}


class HistoryError(MosaicError):
    """When: `rollback` or `promote` cannot restore a deploy (unknown, pruned, expired, bytes
    gone); nothing changed."""

    exit_code = 10
    reference = "history"


class ScanError(ConfigError):
    """When: the static root holds a symlink that leaves it or dangles, or an unreadable file."""

    reference = "scan"


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


class SeedFailed(MigrationFailed):
    """When: PostgreSQL rejected a seed file; that file left nothing, earlier ones stay applied."""

    reference = "seed"
