"""Accounts and API keys: a key belongs to one account; generated keys expire like Mosaic's."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from mosaicsync.local.atomic import write_atomic
from mosaicsync.local.clock import Clock
from mosaicsync.local.errors import ApiError
from mosaicsync.local.state import State, hash_secret

DAY = 86400.0
KEY_FILE = "api-key"


@dataclass(frozen=True)
class NewKey:
    """A key created at this start, to be shown once."""

    key: str
    path: Path
    rotated: bool


def generate_key() -> str:
    return "mk_" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")


def write_secret_file(path: Path, value: str) -> None:
    """Write `value` so that the file is never readable by others, not even for an instant."""
    write_atomic(path, value + "\n", mode=0o600)


class Accounts:
    def __init__(self, state: State, clock: Clock, key_ttl_days: float) -> None:
        self.state = state
        self.clock = clock
        self.key_ttl = key_ttl_days * DAY

    def ensure_generated_key(self, data_dir: Path) -> NewKey | None:
        """On first start (or when the generated key has expired) make a key for account 1."""
        now = self.clock.now()
        row = self.state.one(
            "SELECT account_id, created_at FROM api_keys WHERE generated = 1 "
            "ORDER BY created_at DESC LIMIT 1"
        )
        if row and row["created_at"] + self.key_ttl > now:
            return None
        key = generate_key()
        with self.state.transaction() as conn:
            if row:
                account_id = row["account_id"]
            else:
                account_id = conn.execute(
                    "INSERT INTO accounts (created_at) VALUES (?)", (now,)
                ).lastrowid
            conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, 1)",
                (hash_secret(key), account_id, key[:7], now, now + self.key_ttl),
            )
        path = data_dir / KEY_FILE
        write_secret_file(path, key)
        return NewKey(key=key, path=path, rotated=row is not None)

    def register_fixed_key(self, key: str) -> int:
        """A key given with --api-key: its own account, kept across restarts, never expires."""
        if not key.startswith("mk_") or len(key) < 8:
            raise ValueError("an API key must start with 'mk_' and be at least 8 characters long")
        digest = hash_secret(key)
        with self.state.transaction() as conn:
            row = conn.execute(
                "SELECT account_id FROM api_keys WHERE key_hash = ?", (digest,)
            ).fetchone()
            if row:
                return int(row["account_id"])
            now = self.clock.now()
            account_id = conn.execute(
                "INSERT INTO accounts (created_at) VALUES (?)", (now,)
            ).lastrowid
            conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, NULL, 0)",
                (digest, account_id, key[:7], now),
            )
            return int(account_id or 0)

    def authenticate(self, key: str | None) -> int:
        """The account of `key`, or 401 with a message that says how to get a working key."""
        if not key:
            raise ApiError(
                401,
                "missing API key: send it in the X-API-Key header (X-API-Key: mk_...)",
            )
        row = self.state.one(
            "SELECT account_id, created_at, generated FROM api_keys WHERE key_hash = ?",
            hash_secret(key),
        )
        if row is None:
            raise ApiError(
                401,
                "invalid API key: check for typos; keys rotate every 30 days, so get the "
                "current key from the dashboard (local platform: see the data dir's api-key file)",
            )
        # The lifetime applies when checked, so --key-ttl-days also governs existing keys.
        expires = row["created_at"] + self.key_ttl
        if row["generated"] and expires <= self.clock.now():
            when = time.strftime("%Y-%m-%d", time.gmtime(expires))
            raise ApiError(
                401,
                f"API key expired on {when}: Mosaic keys rotate every 30 days; get the current "
                "key from the dashboard and run `mosaicsync login` (local platform: restart "
                "`mosaicsync local` to get a new key printed, or pass --api-key)",
            )
        return int(row["account_id"])


class RateLimiter:
    """A token bucket per key: `rate` requests per second with a burst of two seconds' worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(2 * rate, 10.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait = max(1, math.ceil((1 - tokens) / self.rate))
                raise ApiError(
                    429,
                    f"rate limited: more than {self.rate:g} requests per second with this key; "
                    f"retry after {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            self._buckets[key] = (tokens - 1, now)


def connections_busy(cap: int, waited: float) -> ApiError:
    """429 for an account whose SQL requests hold every connection it may have."""
    return ApiError(
        429,
        f"this account's SQL requests already hold all {cap} database connections one account "
        f"may use at once (the local platform's cap, --connections-per-account); waited "
        f"{waited:g} s for one to free up. Retry shortly, or run fewer queries at once "
        "(long transactions and pg_sleep hold a connection until they end)",
        headers={"Retry-After": "1"},
    )


class AccountSlots:
    """At most `cap` SQL requests of one account in flight, queued on the event loop.

    Waiting here, not in a worker thread, matters: the server has a few dozen threads for every
    account, and one account's queue must not occupy them while another's query is waiting.
    """

    def __init__(self, cap: int, wait: float) -> None:
        self.cap = cap
        self.wait = wait
        self._slots: dict[int, asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def hold(self, account_id: int) -> AsyncIterator[None]:
        if self.cap <= 0:
            yield
            return
        slots = self._slots.setdefault(account_id, asyncio.Semaphore(self.cap))
        try:
            await asyncio.wait_for(slots.acquire(), self.wait)
        except TimeoutError:
            raise connections_busy(self.cap, self.wait) from None
        try:
            yield
        finally:
            slots.release()
