"""The migration lease: one row with a holder, an expiry and a fencing token.

No lock outlives a request to the SQL endpoint, so the lease stands in for one: it is taken with
a TTL, renewed while a run works, given back at the end, and every batch renews it under its
fencing token, so a run whose lease was taken away cannot commit anything more.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from mosaicsync.api import SqlError
from mosaicsync.errors import (
    LeaseLost,
    LockTimeout,
    MosaicError,
    PlatformError,
    UnavailableError,
)
from mosaicsync.events import LockAcquired, LockReleased, LockWaiting, MigrationEvent
from mosaicsync.migrate.history import (
    LockInfo,
    Snapshot,
    Sql,
    ensure_schema,
    read_history,
)
from mosaicsync.migrate.requests import (
    LEASE_LOST,
    LOCK_NOT_AVAILABLE,
    MISSING_SCHEMA,
    UNLOCK_SQL,
    guarded_sql,
    release_lease_sql,
    renew_lease_sql,
    take_lease_sql,
)
from mosaicsync.retry import Backoff, poll
from mosaicsync.wire import TransportError

# A statement cancelled by the server (statement_timeout) while the holder's batch held the row.
QUERY_CANCELED = "57014"


@dataclass
class Run:
    """One run of the runner: its id, and the lease it holds under `fence`."""

    run_id: str
    fence: int = 0
    holds_lease: bool = False
    lost: bool = False  # a renewal found the lease taken away
    server_version_num: int | None = None


class Lease:
    """Takes, renews and gives back the lease of one project's migrations."""

    def __init__(
        self,
        sql: Sql,
        *,
        ttl: float,
        timeout: float,
        sleep: Callable[[float], None],
        rng: random.Random,
        emit: Callable[[MigrationEvent], None],
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.sql = sql
        self.ttl = ttl
        self.timeout = timeout
        self.sleep = sleep
        self.rng = rng
        self.emit = emit
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()

    def take(self, run: Run, stale: LockInfo | None = None) -> Snapshot:
        """One attempt: take the lease if free (or `stale`), reading history and holder with it."""
        query = take_lease_sql(run.run_id, self.host, self.pid, self.ttl, stale)
        try:
            rows = self.sql(query, idempotent=True)
        except SqlError as exc:
            if exc.code not in MISSING_SCHEMA:
                raise
            ensure_schema(self.sql, sleep=self.sleep, rng=self.rng)
            rows = self.sql(query, idempotent=True)
        return Snapshot.from_row(rows[0])

    def acquire(self, run: Run) -> Snapshot:
        """Take the lease, polling with jitter while another live run holds it."""
        last_lock: LockInfo | None = None  # the holder last seen, for the messages
        announced = False

        def attempt() -> tuple[bool, Snapshot | None]:
            nonlocal last_lock
            try:
                snap: Snapshot | None = self.take(run)
            except SqlError as exc:
                # A batch of the holder keeps the lease row locked while it runs.
                if exc.code not in (LOCK_NOT_AVAILABLE, QUERY_CANCELED):
                    raise
                snap = None
            stale = snap.lock if snap is not None and not snap.taken else None
            if stale is not None and self.holder_is_dead(stale):
                # A run of this machine that was killed (SIGKILL, power loss) cannot give the
                # lease back: take it over now rather than wait out its TTL. The fence bump
                # stops the old run should it be alive after all.
                snap = self.take(run, stale=stale)
            if snap is not None and not snap.taken:
                last_lock = snap.lock
            return snap is not None and bool(snap.taken), snap

        def announce(_: object) -> None:
            nonlocal announced
            if not announced:
                announced = True
                self.emit(
                    LockWaiting(
                        last_lock.host if last_lock else None,
                        last_lock.pid if last_lock else None,
                        last_lock.expires_at if last_lock else None,
                    )
                )

        taken, snap = poll(
            attempt,
            timeout=self.timeout,
            backoff=Backoff(0.2, 2.0, factor=1.5, jitter=0.5, rng=self.rng),
            sleep=self.sleep,
            on_wait=announce,
        )
        if not taken or snap is None or not snap.taken:
            who = last_lock.describe() if last_lock else "another run"
            raise LockTimeout(
                f"migrations are locked by {who}; waited {self.timeout:g} s",
                hint="wait for that run to finish; if it crashed, its lease expires by "
                "itself, or an operator can run `mosaicsync migrate unlock`",
                lock=last_lock,
            )
        run.fence = int(snap.taken["fence"])
        run.holds_lease = True
        run.server_version_num = snap.server_version_num
        self.emit(LockAcquired(run.fence, snap.taken.get("expires_at")))
        return snap

    @contextmanager
    def renewed(self, run: Run) -> Iterator[None]:
        """Renew the lease in the background every quarter TTL; raise LeaseLost at the end if a
        renewal found it taken away."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.ttl / 4):
                try:
                    self.sql(renew_lease_sql(run.run_id, run.fence, self.ttl), idempotent=True)
                except SqlError as exc:
                    if exc.code == LEASE_LOST:
                        run.lost = True
                        return
                except (MosaicError, TransportError):
                    pass  # a blip: the next renewal, well within the TTL, tries again

        renewer = threading.Thread(target=renew, name="mosaicsync-lease", daemon=True)
        renewer.start()
        try:
            yield
            if run.lost:
                raise self.lost(run)
        finally:
            stop.set()
            renewer.join()

    def holder_is_dead(self, lock: LockInfo) -> bool:
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

    def release(self, run: Run) -> None:
        """Give the lease back; if that fails, it expires by itself after its TTL."""
        if not run.holds_lease:
            return
        try:
            self.sql(release_lease_sql(run.run_id, run.fence), idempotent=True)
        except (PlatformError, UnavailableError, TransportError):
            return
        run.holds_lease = False
        self.emit(LockReleased(run.fence))

    def lost(self, run: Run) -> LeaseLost:
        """The error for a run whose lease was taken away, naming the new holder if any."""
        run.holds_lease = False
        try:
            lock = read_history(self.sql, create=False, sleep=self.sleep, rng=self.rng).lock
        except (PlatformError, UnavailableError, TransportError):
            lock = None
        holder = f"; it is now held by {lock.describe()}" if lock and lock.active else ""
        return LeaseLost(
            f"this run lost the migration lease (fence {run.fence}){holder}; nothing more "
            "was applied",
            hint="the lease expired (raise lease_ttl above the longest migration) or an "
            "operator ran `mosaicsync migrate unlock`; run `mosaicsync migrate status`, then "
            "`mosaicsync migrate up` again",
        )

    def write(self, run: Run, statements: Sequence[str]) -> None:
        """History edits that take effect only while this run still holds the lease."""
        try:
            self.sql(guarded_sql(run.run_id, run.fence, self.ttl, statements), idempotent=True)
        except SqlError as exc:
            if exc.code == LEASE_LOST:
                raise self.lost(run) from None
            raise

    def unlock(self) -> LockInfo | None:
        """Free the lease whoever holds it and bump the fence, so a stale holder cannot commit."""
        try:
            rows = self.sql(UNLOCK_SQL, idempotent=True)
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
