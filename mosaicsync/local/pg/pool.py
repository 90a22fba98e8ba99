"""The per-tenant connection pool of the SQL endpoint: a few connections per project, reused.

A hand-written pool rather than psycopg_pool: a pool per tenant would start threads per tenant.
Connections log in as the tenant role, are reset between requests, and are checked before reuse.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import AdaptersMap

from mosaicsync.local.pg.tenants import TenantCredentials, TenantUnavailableError

POOL_WAIT = 5.0  # seconds a request waits for a busy project's connection (default)
MAX_IDLE = 2  # idle connections kept per project (each counts against its connection limit)
IDLE_TTL = 60.0


class PoolExhaustedError(TenantUnavailableError):
    """Every connection a project may open is busy (its role's CONNECTION LIMIT)."""


class AccountConnectionsError(PoolExhaustedError):
    """The account's projects together hold every connection one account may have (429)."""


@dataclass
class _Pool:
    limit: int
    account: object = None
    idle: list[tuple[psycopg.Connection[Any], float]] = field(default_factory=list)
    busy: int = 0  # checked out, or being connected
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    """An idle pooled connection is safe to hand out: open, idle, and nothing unread on it.

    Anything readable on an idle connection means the server closed or terminated it.
    """
    if conn.closed or conn.broken:
        return False
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


def _reset(conn: psycopg.Connection[Any]) -> bool:
    """Clear what a tenant's statements left on the connection; False if it is done for."""
    if conn.closed or conn.broken:
        return False
    try:
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")  # an unfinished BEGIN must not leak into the next request
        # SET, temp tables, prepared statements, LISTEN, advisory locks: gone.
        conn.execute("DISCARD ALL")
    except psycopg.Error:
        return False
    return conn.pgconn.transaction_status == pq.TransactionStatus.IDLE


class TenantPool:
    """Connections per tenant, at most `limit` at a time (the role's CONNECTION LIMIT)."""

    def __init__(
        self,
        limit: int,
        context: AdaptersMap,
        *,
        per_account: int = 0,
        wait: float = POOL_WAIT,
    ) -> None:
        self.limit = limit
        self.per_account = per_account  # connections, busy or idle, of one account; 0 = no cap
        self.wait = wait
        self.context = context  # how values load: the SQL endpoint's JSON mapping
        self._pools: dict[TenantCredentials, _Pool] = {}
        self._lock = threading.Lock()
        self._account_locks: dict[object, threading.Lock] = {}
        self._last_prune = time.monotonic()

    def _pool(self, creds: TenantCredentials, account: object = None) -> _Pool:
        with self._lock:
            pool = self._pools.get(creds)
            if pool is None:
                pool = self._pools[creds] = _Pool(limit=self.limit, account=account)
            return pool

    def checkout(self, creds: TenantCredentials, account: object = None) -> psycopg.Connection[Any]:
        """A connection of the project: an idle one, or a new one within the project's limit
        and, when `account` is given, within the connections its account may hold."""
        self._prune_idle()
        pool = self._pool(creds, account)
        deadline = time.monotonic() + self.wait
        while True:
            conn = self._take_idle(pool, creds, deadline)
            if conn is not None:
                return conn
            if self._reserve_new(pool, account):
                break
        try:
            return self._connect(creds)
        except BaseException:
            self._release(pool)
            raise

    def _take_idle(
        self, pool: _Pool, creds: TenantCredentials, deadline: float
    ) -> psycopg.Connection[Any] | None:
        """An idle connection of the project (checked out), or None once a new one may open."""
        discard: list[psycopg.Connection[Any]] = []
        conn: psycopg.Connection[Any] | None = None
        with pool.cond:
            while True:
                while pool.idle and conn is None:
                    candidate, _since = pool.idle.pop()
                    if _reusable(candidate):
                        conn = candidate
                    else:
                        discard.append(candidate)
                if conn is not None:
                    pool.busy += 1
                    break
                if pool.busy < pool.limit:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolExhaustedError(
                        f"all {pool.limit} connections of {creds.database} are busy; retry "
                        "shortly (the limit is the role's CONNECTION LIMIT)"
                    )
                pool.cond.wait(remaining)
        for stale in discard:
            stale.close()
        return conn

    def _reserve_new(self, pool: _Pool, account: object) -> bool:
        """Count a connection about to open; False if the project filled up meanwhile.

        Under the account's cap an idle connection of another of its projects is closed to
        make room; when every one is busy the account is at its cap (AccountConnectionsError).
        """
        if account is None or self.per_account <= 0:
            with pool.cond:
                if pool.busy >= pool.limit:
                    return False
                pool.busy += 1
                return True
        with self._lock:
            lock = self._account_locks.setdefault(account, threading.Lock())
        evicted: list[psycopg.Connection[Any]] = []
        try:
            with lock:  # count and reserve at once: two requests cannot both take the last slot
                with self._lock:
                    mine = [p for p in self._pools.values() if p.account == account]
                held = 0
                for other in mine:
                    with other.cond:
                        held += other.busy + len(other.idle)
                for other in mine:
                    if held < self.per_account:
                        break
                    with other.cond:
                        while other.idle and held >= self.per_account:
                            evicted.append(other.idle.pop(0)[0])
                            held -= 1
                if held >= self.per_account:
                    raise AccountConnectionsError(
                        f"this account's projects hold all {self.per_account} connections one "
                        "account may have"
                    )
                with pool.cond:
                    if pool.busy >= pool.limit:
                        return False
                    pool.busy += 1
                    return True
        finally:
            for conn in evicted:
                conn.close()

    def _release(self, pool: _Pool) -> None:
        with pool.cond:
            pool.busy -= 1
            pool.cond.notify()

    def _connect(self, creds: TenantCredentials) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.Connection.connect(
                host=creds.host,
                port=creds.port,
                dbname=creds.database,
                user=creds.user,
                password=creds.password,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=10,
                application_name="mosaicsync sql endpoint",
                context=self.context,
            )
        except psycopg.OperationalError as exc:
            if "too many connections" in str(exc):
                raise PoolExhaustedError(
                    f"{creds.database} has reached its connection limit "
                    f"({self.limit}, counting psql connections); retry "
                    "shortly or close other connections"
                ) from exc
            raise TenantUnavailableError(
                f"cannot connect to the database {creds.database}: {str(exc).strip()}"
            ) from exc
        # With a handler registered psycopg keeps no backlog: a tenant's LISTEN plus a flood of
        # NOTIFY must not pile up in our memory.
        conn.add_notify_handler(_ignore_notify)
        return conn

    def checkin(
        self, creds: TenantCredentials, conn: psycopg.Connection[Any], reusable: bool
    ) -> None:
        reusable = reusable and _reset(conn)
        pool = self._pool(creds)
        with pool.cond:
            pool.busy -= 1
            keep = reusable and not pool.closed and len(pool.idle) < MAX_IDLE
            if keep:
                pool.idle.append((conn, time.monotonic()))
            pool.cond.notify()
        if not keep:
            conn.close()

    def _prune_idle(self) -> None:
        """Close connections idle for a while, so quiet projects hold no server slots."""
        now = time.monotonic()
        if now - self._last_prune < IDLE_TTL / 4:
            return
        self._last_prune = now
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            with pool.cond:
                old = [c for c, since in pool.idle if now - since > IDLE_TTL]
                pool.idle = [(c, s) for c, s in pool.idle if now - s <= IDLE_TTL]
            for conn in old:
                conn.close()

    def close(self, match: Callable[[TenantCredentials], bool]) -> None:
        with self._lock:
            doomed = [creds for creds in self._pools if match(creds)]
            pools = [self._pools.pop(creds) for creds in doomed]
        for pool in pools:
            with pool.cond:
                pool.closed = True
                idle, pool.idle = pool.idle, []
                pool.cond.notify_all()
            for conn, _since in idle:
                conn.close()


def _ignore_notify(_notify: psycopg.Notify) -> None:
    pass
