"""Seed data: sample rows for local and preview projects, each file applied once and recorded.

`[migrations] seed` in mosaic.toml names a `.sql` file, or a folder whose `.sql` files are
applied in name order. Each file travels in ONE request (one transaction) with its row in
`mosaicsync.seeds`, so a file is either applied and recorded, or neither; a recorded file is
never applied again (a changed one is skipped with a warning). `deploy` and `migrate up` never
seed: only `mosaicsync db seed`, `db reset` and `dev` do.

`production_reason` is the one place that decides whether a project is safe to seed or reset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mosaicsync.api import MosaicClient, SqlError
from mosaicsync.config import Config
from mosaicsync.contract import MAX_REQUEST_BYTES
from mosaicsync.errors import MigrationError, SeedFailed, UnavailableError
from mosaicsync.manifest import sql_literal
from mosaicsync.migrate.requests import CATALOG_RACE, Batch
from mosaicsync.migrate.runner import Migrator, UpResult, default_applied_by, error_location
from mosaicsync.selection import Selection, is_loopback_url
from mosaicsync.sqltext import LineIndex, SqlTextError, analyze, checksum, normalize
from mosaicsync.wire import TransportError

ALREADY_SEEDED = "MS003"
MAX_ATTEMPTS = 3
_SEED_LOCK = "SELECT pg_advisory_xact_lock(hashtext('mosaicsync.seeds'));"

PREPARE_SQL = f"""SET LOCAL lock_timeout = '10s';
{_SEED_LOCK}
CREATE SCHEMA IF NOT EXISTS mosaicsync;
CREATE TABLE IF NOT EXISTS mosaicsync.seeds (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL
);
SELECT coalesce(json_agg(json_build_object('name', name, 'checksum', checksum) ORDER BY name),
                '[]'::json) AS seeds
  FROM mosaicsync.seeds"""

# What a reset drops: every schema the project's role owns (or may own, as `public`), except the
# deploy state in `mosaicsync`; then the migration and seed records, so both apply again.
RESET_SQL = """DO $ms$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_namespace
            WHERE nspname NOT IN ('mosaicsync', 'information_schema')
              AND nspname NOT LIKE 'pg\\_%'
              AND pg_has_role(nspowner, 'USAGE')
  LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END $ms$;
CREATE SCHEMA IF NOT EXISTS public;
GRANT USAGE ON SCHEMA public TO PUBLIC;
DELETE FROM mosaicsync.migrations;
CREATE TABLE IF NOT EXISTS mosaicsync.seeds (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL
);
DELETE FROM mosaicsync.seeds"""


# -- which projects may be seeded ------------------------------------------------------------------


def production_reason(
    selection: Selection, *, also_safe: Callable[[Selection], bool] | None = None
) -> str | None:
    """Why seeding or resetting the selected project could hurt real data; None when it is safe.

    Safe: a project on a local platform (a loopback API URL), or one `also_safe` vouches for
    (the CLI adds "its own database says it is a preview": previews.preview_parent).
    """
    if is_loopback_url(selection.api_url):
        return None
    if also_safe is not None and also_safe(selection):
        return None
    project = selection.project_id or "the project"
    return (
        f"{project} is on {selection.api_url} ({selection.api_url_source}), not a local "
        "platform, so it may hold real data"
    )


# -- the files -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedFile:
    """One seed file; `text` is normalized (no BOM, LF), exactly what is hashed and sent."""

    name: str  # its path relative to the project folder, as recorded
    path: Path
    text: str
    checksum: str


def seed_files(config: Config) -> list[Path]:
    """The seed files of `config`, in the order they apply: the file, or the folder's `.sql`
    files by name; none without `[migrations] seed`."""
    seed = config.seed
    if seed is None:
        return []
    if seed.is_dir():
        return sorted(
            (
                p
                for p in seed.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".sql"
            ),
            key=lambda p: p.name,
        )
    return [seed]


def load_seeds(config: Config) -> list[SeedFile]:
    """Read every seed file; one MigrationError lists every problem, before anything is sent."""
    problems: list[str] = []
    loaded: list[SeedFile] = []
    for path in seed_files(config):
        name = path.relative_to(config.project_dir).as_posix()
        try:
            size = path.stat().st_size
            if size > MAX_REQUEST_BYTES:
                problems.append(
                    f"{name}: {size} bytes, more than the platform's request limit of "
                    f"{MAX_REQUEST_BYTES} bytes, so it can never be sent; split it into "
                    "several files in a seed folder"
                )
                continue
            raw = path.read_bytes()
        except OSError as exc:
            problems.append(f"{name}: cannot be read ({exc.strerror})")
            continue
        try:
            text = normalize(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            problems.append(
                f"{name}: not UTF-8 text (byte {exc.start}, line {line}); save it as UTF-8"
            )
            continue
        try:
            statements = analyze(text).statements
        except SqlTextError as exc:
            problems.append(f"{name}: {exc.message}")
            continue
        lines = LineIndex(text)
        for stmt in statements:
            if stmt.transaction_control:
                line, _ = lines.line_col(stmt.start)
                problems.append(
                    f"{name} line {line}: top-level {stmt.transaction_control} would end the "
                    "seed's transaction early and commit part of it; remove it: each seed "
                    "file already runs in one transaction"
                )
        loaded.append(SeedFile(name, path, text, checksum(text)))
    if problems:
        raise MigrationError(
            f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the seed data: "
            + "; ".join(problems),
            hint="nothing was sent to the platform; fix the files and run again",
        )
    return loaded


def seed_batch(seed: SeedFile, *, applied_by: str) -> Batch:
    """The one request that applies a seed file and records it, refused if already recorded."""
    name = sql_literal(seed.name)
    prefix = (
        f"/* mosaicsync seed */\nSET LOCAL lock_timeout = '10s';\n{_SEED_LOCK}\n"
        "SET LOCAL lock_timeout = DEFAULT;\n"
        "DO $ms$\nBEGIN\n"
        f"  IF EXISTS (SELECT 1 FROM mosaicsync.seeds WHERE name = {name}) THEN\n"
        f"    RAISE EXCEPTION USING ERRCODE = '{ALREADY_SEEDED}', "
        "MESSAGE = 'mosaicsync: already seeded';\n"
        "  END IF;\nEND $ms$;\n"
    )
    suffix = (
        "\n;\nINSERT INTO mosaicsync.seeds (name, checksum, applied_by)\n"
        f"VALUES ({name}, {sql_literal(seed.checksum)}, {sql_literal(applied_by)})"
    )
    return Batch(prefix + seed.text + suffix, len(prefix), seed.text, 0)


# -- applying them ---------------------------------------------------------------------------------


class AppliedSeed(NamedTuple):
    name: str
    ms: int


@dataclass
class SeedResult:
    """What `Seeder.run` did: files applied, files already recorded, and warnings."""

    applied: list[AppliedSeed] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": [a._asdict() for a in self.applied],
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


class Seeder:
    """Applies the seed files of `config` to one project, each exactly once."""

    def __init__(
        self,
        client: MosaicClient,
        project_id: str,
        config: Config,
        *,
        applied_by: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.project_id = project_id
        self.config = config
        self.applied_by = applied_by or default_applied_by()
        self.sleep = sleep

    def _sql(self, query: str, *, idempotent: bool) -> list[dict[str, Any]]:
        return self.client.sql(self.project_id, query, idempotent=idempotent)

    def recorded(self) -> dict[str, str]:
        """The recorded seed files and their checksums (the table is created if absent)."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                rows = self._sql(PREPARE_SQL, idempotent=True)
                break
            except SqlError as exc:
                # Another run creating the schema at the same moment: read again.
                if exc.code not in CATALOG_RACE or attempt == MAX_ATTEMPTS:
                    raise
                self.sleep(0.05 * attempt)
        seeds = rows[0].get("seeds") or []
        if isinstance(seeds, str):
            seeds = json.loads(seeds)
        return {s["name"]: s["checksum"] for s in seeds}

    def run(self) -> SeedResult:
        """Apply each seed file not yet recorded, in order; stop at the first that fails
        (`SeedFailed`: that file left nothing, the ones before it stay applied and recorded)."""
        seeds = load_seeds(self.config)
        result = SeedResult()
        if not seeds:
            return result
        done = self.recorded()
        for seed in seeds:
            if seed.name in done:
                result.skipped.append(seed.name)
                if done[seed.name] != seed.checksum:
                    result.warnings.append(
                        f"{seed.name} changed since it was applied; it is not applied again "
                        "(`mosaicsync db reset` starts over with the new data)"
                    )
                continue
            started = time.perf_counter()
            if self._apply(seed):
                ms = round((time.perf_counter() - started) * 1000)
                result.applied.append(AppliedSeed(seed.name, ms))
            else:
                result.skipped.append(seed.name)
        return result

    def _apply(self, seed: SeedFile) -> bool:
        """Send the file with its record; False when another run recorded it first."""
        batch = seed_batch(seed, applied_by=self.applied_by)
        attempt = 0
        while True:
            attempt += 1
            try:
                self._sql(batch.sql, idempotent=False)
                return True
            except SqlError as exc:
                if exc.code == ALREADY_SEEDED:
                    # Recorded meanwhile: by another run, or by our own lost attempt.
                    return attempt > 1
                raise self._failure(seed, batch, exc) from None
            except (UnavailableError, TransportError) as exc:
                # The outcome is unknown; the guard makes a resend apply it at most once.
                if attempt >= MAX_ATTEMPTS:
                    raise MigrationError(
                        f"{seed.name}: no answer after {attempt} attempts (last: {exc}); "
                        "it is applied and recorded, or neither",
                        hint="run `mosaicsync db seed` again when the platform answers: a "
                        "recorded file is skipped",
                    ) from None
                self.sleep(0.2 * attempt)

    def _failure(self, seed: SeedFile, batch: Batch, exc: SqlError) -> SeedFailed:
        line, col, where, _ = error_location(seed.name, seed.text, batch, exc)
        code = exc.code or "?"
        message = f"{where}: {exc.message} (SQLSTATE {code})"
        if exc.detail:
            message += f"; {exc.detail}"
        return SeedFailed(
            message + "; the file was rolled back, nothing from it was applied",
            (exc.hint + "; " if exc.hint else "")
            + "fix the file and run `mosaicsync db seed` again: the files applied before it "
            "stay recorded and are skipped",
            filename=seed.name,
            line=line,
            column=col,
            sqlstate=exc.code,
        )


# -- reset -----------------------------------------------------------------------------------------


@dataclass
class ResetResult:
    """What `reset` did: the migrations applied again, then the seed files."""

    migrations: UpResult
    seeds: SeedResult

    def to_json(self) -> dict[str, Any]:
        return {"migrations": self.migrations.to_json(), "seeds": self.seeds.to_json()}


def reset(
    client: MosaicClient,
    project_id: str,
    config: Config,
    *,
    migrator: Migrator | None = None,
    applied_by: str | None = None,
    lock_timeout: float = 30,
    on_event: Callable[[Any], None] | None = None,
) -> ResetResult:
    """Drop the project's schemas (all but the deploy state in `mosaicsync`), then apply every
    migration and seed file again, all under the migrations' lease so no deploy runs meanwhile.

    The site, its deploy state and history stay as they are: only the data is started over.
    """
    seeds = load_seeds(config)  # a broken seed file stops the reset before anything is dropped
    if migrator is None:
        migrator = Migrator(
            client,
            project_id,
            config.migrations_dir,
            applied_by=applied_by,
            lock_timeout=lock_timeout,
            on_event=on_event,
        )
    seeder = Seeder(client, project_id, config, applied_by=applied_by)
    with migrator.lease():
        migrator.write_held([RESET_SQL])
        has_migrations = config.migrations_dir.is_dir()
        up = migrator.up(allow_destructive=True) if has_migrations else UpResult()
        seeded = seeder.run() if seeds else SeedResult()
    return ResetResult(up, seeded)
