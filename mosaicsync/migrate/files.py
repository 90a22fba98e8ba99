"""Migration files on disk: naming, loading, validation of each file, and creating the next one.

Pure reading of the directory: nothing here talks to the platform, so every problem in the files
is reported, all at once, before a request is sent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from mosaicsync.contract import MAX_REQUEST_BYTES
from mosaicsync.errors import ConfigError, MigrationError
from mosaicsync.sqltext import (
    NO_TRANSACTION,
    Analysis,
    LineIndex,
    SqlTextError,
    analyze,
    checksum,
    is_transactional,
    normalize,
)

FILE_NAME = re.compile(r"(\d+)_([A-Za-z0-9][A-Za-z0-9_-]*)\.sql")
TIMESTAMP_DIGITS = 12
DEFAULT_WIDTH = 4


class MigrationFile(NamedTuple):
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
    lines = LineIndex(migration.text)
    for stmt in analyze_migration(migration).statements:
        line, _ = lines.line_col(stmt.start)
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
        size = path.stat().st_size
        if size > MAX_REQUEST_BYTES:
            # Refused before reading it: it can never fit in one request to the platform.
            return None, (
                f"{path.name}: {size} bytes, more than the platform's request limit of "
                f"{MAX_REQUEST_BYTES} bytes ({MAX_REQUEST_BYTES // (1024 * 1024)} MiB), so it "
                "can never be sent; split it into several smaller migrations"
            )
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
