"""The migration runner: `up`, `status`, `repair`, `baseline`, each exactly once under the lease.

Each migration and its history row travel in one guarded request (requests.py); when an answer is
lost, the runner reads the history before it resends anything, so nothing is applied twice.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mosaicsync import __version__
from mosaicsync.api import MosaicClient, SqlError
from mosaicsync.errors import (
    LeaseLost,
    MigrationError,
    MigrationFailed,
    PlatformError,
    UnavailableError,
)
from mosaicsync.events import (
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
from mosaicsync.findings import Finding, ordered, raise_for
from mosaicsync.migrate import lint
from mosaicsync.migrate.files import MigrationFile, analyze_migration, load_migrations
from mosaicsync.migrate.history import (
    REPAIR,
    AppliedMigration,
    LockInfo,
    MigrationStatus,
    Snapshot,
    classify,
    read_history,
    short_time,
    validation_problems,
)
from mosaicsync.migrate.lease import Lease, Run
from mosaicsync.migrate.requests import (
    ALREADY_APPLIED,
    LEASE_LOST,
    LOCK_NOT_AVAILABLE,
    Batch,
    accept_sql,
    apply_batch,
    baseline_sql,
    claim_sql,
    drop_index_sql,
    forget_sql,
    index_valid_sql,
    lone_batch,
    open_batch,
    probe_sql,
    progress_batch,
    step_batch,
)
from mosaicsync.retry import Backoff, poll
from mosaicsync.selection import user_at_host
from mosaicsync.sqltext import (
    NO_TRANSACTION,
    LineIndex,
    Statement,
    end_of_text,
    line_col,
    locate,
)
from mosaicsync.wire import TransportError

MAX_ATTEMPTS = 5


# -- results ---------------------------------------------------------------------------------------


def _pglast_pg_version() -> tuple[int, ...]:
    """The PostgreSQL release whose grammar pglast parses; imported on first use (start-up)."""
    from pglast.parser import get_postgresql_version

    return tuple(get_postgresql_version())


class Linted(NamedTuple):
    """What `lint` found in the pending migrations, and how many were pending."""

    findings: list[Finding]
    pending: int


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
    # Destructive and risky statements of the pending migrations (migrate/lint.py), with counts.
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": [a._asdict() for a in self.applied],
            "planned": [p.to_json() for p in self.planned],
            "not_atomic": self.not_atomic,
            "warnings": self.warnings,
            "findings": [f.to_json() for f in ordered(self.findings)],
            "dry_run": self.dry_run,
        }


@dataclass
class RepairResult:
    """Versions whose stored checksum was replaced, and versions removed from the history."""

    accepted: list[int] = field(default_factory=list)
    forgotten: list[int] = field(default_factory=list)


class ErrorLocation(NamedTuple):
    """Where in a file PostgreSQL's error lies: 1-based line and column (None when unknown),
    `where` (`file:line:col`, or the file name alone) and the source line with a caret."""

    line: int | None
    column: int | None
    where: str
    snippet: str | None


def error_location(
    filename: str, text: str, batch: Batch, exc: SqlError, step: int | None = None
) -> ErrorLocation:
    """Map the 1-based `position` of an error in `batch` back to `text` (the file it came from).

    `batch.body` is `text[batch.body_start:...]` sent after `batch.prefix_len` characters of
    wrapper; `step` names the one statement of a no-transaction step when there is no position.
    """
    off = locate(exc.position, batch.prefix_len, batch.body)
    line = col = None
    snippet = None
    if off is not None:
        line, col = line_col(text, batch.body_start + off)
        where = f"{filename}:{line}:{col}"
    elif exc.position is not None and exc.position - 1 - batch.prefix_len >= len(batch.body):
        # Past the body: the wrapper's closing `;` met an unterminated last statement.
        line, col = line_col(text, batch.body_start + end_of_text(batch.body))
        where = f"{filename}:{line}:{col} (end of statement)"
    elif step and batch.body:
        # No position (23505, 42P07...), but a no-transaction step is one known statement.
        line, col = line_col(text, batch.body_start)
        where = f"{filename}:{line}:{col} (statement {step})"
    else:
        where = filename
    if line is not None:
        source = text.split("\n")[line - 1]
        snippet = f"{source}\n{' ' * ((col or 1) - 1)}^"
    return ErrorLocation(line, col, where, snippet)


# -- the runner ------------------------------------------------------------------------------------


def default_applied_by() -> str:
    """`user@host mosaicsync/<version>`: who wrote a history row, for the humans reading it."""
    return f"{user_at_host()} mosaicsync/{__version__}"


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
        self._lease = Lease(
            self._sql,
            ttl=lease_ttl,
            timeout=lock_timeout,
            sleep=sleep,
            rng=self.rng,
            emit=self._emit,
        )
        self._held: Run | None = None
        self._held_snapshot: Snapshot | None = None

    @property
    def host(self) -> str:
        """The host name the lease row records for this run."""
        return self._lease.host

    @property
    def pid(self) -> int:
        return self._lease.pid

    # -- plumbing ----------------------------------------------------------------------------------

    def _emit(self, event: MigrationEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _sql(self, query: str, *, idempotent: bool) -> list[dict[str, Any]]:
        return self.client.sql(self.project_id, query, idempotent=idempotent)

    def _read(self, *, create: bool) -> Snapshot:
        return read_history(self._sql, create=create, sleep=self.sleep, rng=self.rng)

    # -- status and the lease ----------------------------------------------------------------------

    def status(self) -> MigrationStatus:
        """Files against history, read in one request (the schema is created if absent)."""
        files = load_migrations(self.directory)
        snap = self._read(create=True)
        return classify(files, snap.history, snap.lock)

    @contextmanager
    def lease(self, run_id: str | None = None) -> Iterator[int]:
        """Hold the lease for a whole deploy, renewed in the background, so that two deploys of
        one project run one after the other; `up` inside it uses this lease. Yields the fence
        of the take (each take adds one).

        A caller that takes it again and again (a watch) passes the same `run_id` each time: a
        take whose answer was lost left the lease held under that id, and is then simply retaken
        instead of blocking its own taker until the lease expires.
        """
        run = Run(run_id or str(uuid.uuid4()))
        self._held_snapshot = self._lease.acquire(run)
        self._held = run
        try:
            with self._lease.renewed(run):
                yield run.fence
        finally:
            self._held = self._held_snapshot = None
            self._lease.release(run)

    def write_held(self, statements: Sequence[str]) -> None:
        """Run `statements` in one request that commits only while this runner still holds the
        lease taken with `lease()` (a LeaseLost otherwise); `up` then reads the history afresh."""
        if self._held is None:
            raise RuntimeError("write_held needs the lease: call it inside `with lease()`")
        self._held_snapshot = None
        self._lease.write(self._held, statements)

    def unlock(self) -> LockInfo | None:
        """Free the lease whoever holds it and bump the fence, so a stale holder cannot commit."""
        return self._lease.unlock()

    # -- up ----------------------------------------------------------------------------------------

    def _preflight(
        self, todo: Sequence[MigrationFile], server_version_num: int | None, result: UpResult
    ) -> None:
        """Syntax errors found by PostgreSQL's grammar, before any migration is sent."""
        if not self.preflight:
            return
        same_grammar = (
            server_version_num is not None
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
        snap: Snapshot,
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
        allow_destructive: bool = False,
        confirm: Callable[[list[Finding]], bool] | None = None,
    ) -> UpResult:
        """Apply pending migrations in version order, each exactly once; stop at the first error.

        A pending statement that can lose data (migrate/lint.py) stops the run before anything
        is applied (`ChecksFailed`, exit 9) unless `allow_destructive`, a `confirm` that answers
        yes, or a `-- mosaicsync: allow-destructive` comment above it says it was reviewed.
        """
        files = load_migrations(self.directory)
        held = self._held
        run = held or Run(str(uuid.uuid4()))
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
            result.findings = self._lint(todo)
            self._show(result.findings)
            result.planned = todo
            for migration in todo:
                result.sql.extend(self._planned_requests(migration, run, resumable))
                if not migration.transactional:
                    result.not_atomic.append(migration.version)
            return result
        if held is None:
            snap = self._lease.acquire(run)
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
            result.findings = self._gate(
                self._lint(todo), allow_destructive=allow_destructive, confirm=confirm
            )
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
                self._lease.release(run)
        return result

    def lint(self) -> Linted:
        """The findings `up` would act on, with row counts; reads the history, applies nothing."""
        files = load_migrations(self.directory)
        snap = self._read(create=False)
        todo, _ = self._plan(files, snap, to=None, allow_changed=True, allow_out_of_order=True)
        self._preflight(todo, snap.server_version_num, UpResult(dry_run=True))
        return Linted(self._lint(todo), len(todo))

    def _lint(self, todo: Sequence[MigrationFile]) -> list[Finding]:
        """Destructive and risky statements of `todo`, with the live row counts in one read."""
        flagged = lint.classify(todo)
        counts: dict[str, int] = {}
        query = lint.count_sql(lint.tables_to_count(flagged))
        if query is not None:
            try:
                counts = lint.read_counts(self._sql(query, idempotent=True))
            except SqlError:
                counts = {}  # e.g. no right to read a table: the findings go without counts
        return lint.to_findings(flagged, counts)

    def _gate(
        self,
        found: list[Finding],
        *,
        allow_destructive: bool,
        confirm: Callable[[list[Finding]], bool] | None,
    ) -> list[Finding]:
        """Stop before anything is applied unless each destructive statement was allowed."""
        stopping = [f for f in found if f.severity == "error"]
        if stopping and not allow_destructive and not (confirm is not None and confirm(found)):
            n = len(stopping)
            raise_for(
                found,
                headline=f"{n} destructive statement{'s' if n > 1 else ''} in the pending "
                "migrations",
                outcome="nothing was applied",
                hint=f"if losing this data is intended, run again with --allow-destructive, or "
                f"put `{lint.ALLOW_COMMENT}` on the line above each statement; otherwise "
                "rewrite the migration (e.g. keep the column and stop using it)",
            )
        allowed = [lint.allowed(f) for f in found]
        self._show(allowed)
        return allowed

    def _show(self, found: Sequence[Finding]) -> None:
        """Each finding as a warning line, before anything is applied."""
        for f in ordered(found):
            self._emit(PreflightWarning(f.file, f.line or 0, f.column or 0, f.message))

    def _warn_unsafe(self, todo: Sequence[MigrationFile], result: UpResult) -> None:
        for migration in todo:
            if migration.transactional:
                continue
            lines = LineIndex(migration.text)
            for stmt in analyze_migration(migration).statements:
                if stmt.no_transaction and not stmt.idempotent and stmt.index is None:
                    line, _ = lines.line_col(stmt.start)
                    message = (
                        f"{migration.filename} line {line}: {stmt.no_transaction} is not "
                        "idempotent; if its response is lost it cannot be resent safely "
                        "(prefer IF NOT EXISTS / IF EXISTS)"
                    )
                    result.warnings.append(message)
                    self._emit(MigrationWarning(migration.version, message))

    def _planned_requests(
        self, migration: MigrationFile, run: Run, resumable: dict[int, AppliedMigration]
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
        self, run: Run, version: int, step: int | None
    ) -> tuple[int, AppliedMigration | None]:
        try:
            rows = self._sql(probe_sql(run.run_id, version, step), idempotent=True)
        except (UnavailableError, TransportError) as exc:
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
        run: Run,
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
                except (UnavailableError, TransportError) as exc:
                    raise _Unknown(str(exc)) from None
            except SqlError as exc:
                if exc.code == LEASE_LOST:
                    raise self._lease.lost(run) from None
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
        self, run: Run, migration: MigrationFile, step: int | None
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
            f"{row.run_id}) on {short_time(row.applied_at)}, with {same}",
            hint="run `status` and `up` again",
        )

    def _failure(
        self, migration: MigrationFile, batch: Batch, exc: SqlError, step: int | None = None
    ) -> MigrationFailed:
        """Turn PostgreSQL's error into file:line:col, SQLSTATE, message and detail."""
        line, col, where, snippet = error_location(
            migration.filename, migration.text, batch, exc, step
        )
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

    def _apply_transactional(self, migration: MigrationFile, run: Run) -> int:
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

    def _claim_sql(self, migration: MigrationFile, run: Run) -> str:
        return claim_sql(migration, run_id=run.run_id, fence=run.fence, ttl=self.lease_ttl)

    def _apply_no_transaction(
        self, migration: MigrationFile, run: Run, resume: AppliedMigration | None
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
                    raise self._lease.lost(run) from None
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
        rows = self._sql(index_valid_sql(index), idempotent=True)
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
            self._sql(drop_index_sql(stmt.index), idempotent=True)
        return False

    def _run_lone(
        self,
        run: Run,
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
        run: Run,
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
            except (UnavailableError, TransportError, PlatformError) as exc:
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

    def repair(self, *, accept: Sequence[int] = (), forget: Sequence[int] = ()) -> RepairResult:
        """Accept files' current checksums for applied versions, or forget history rows."""
        files = {f.version: f for f in load_migrations(self.directory)}
        run = Run(str(uuid.uuid4()))
        snap = self._lease.acquire(run)
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
            statements = [accept_sql(files[version]) for version in accept]
            if forget:
                statements.append(forget_sql(forget))
            if statements:
                self._lease.write(run, statements)
            return RepairResult(sorted(accept), sorted(forget))
        except LeaseLost:
            lost = True
            raise
        finally:
            if not lost:
                self._lease.release(run)

    def baseline(self, version: int) -> list[int]:
        """Record every file up to `version` as applied without running it (an existing schema)."""
        files = load_migrations(self.directory)
        run = Run(str(uuid.uuid4()))
        snap = self._lease.acquire(run)
        lost = False
        try:
            known = {r.version for r in snap.history}
            chosen = [f for f in files if f.version <= version and f.version not in known]
            if chosen:
                sql = baseline_sql(
                    chosen, applied_by=self.applied_by, run_id=run.run_id, fence=run.fence
                )
                self._lease.write(run, [sql])
            return [f.version for f in chosen]
        except LeaseLost:
            lost = True
            raise
        finally:
            if not lost:
                self._lease.release(run)
