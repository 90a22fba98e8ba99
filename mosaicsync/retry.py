"""Backoff and retries: the one place that decides how long to wait before trying again.

Nothing here sleeps or draws randomness on its own: callers pass `sleep` and `rng`, so tests
record the waits instead of taking them.

One jitter rule for every wait: the capped exponential delay is multiplied by a factor drawn
uniformly from [1 - jitter, 1 + jitter]. `jitter=0` waits exactly (polling our own work);
`RetryPolicy` uses the full spread around half its nominal delay, which is "full jitter"
(uniform between 0 and the nominal delay), so clients that failed together retry apart.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

T = TypeVar("T")
Sleep = Callable[[float], None]
Clock = Callable[[], float]

# A test and CI knob, not a user setting: a number in (0, 1] that multiplies every wait computed
# here (Retry-After included), so the suites that drive the real CLI in a subprocess through a
# faulty network make the same retries without sleeping each one out in full. Unset, or any other
# value, it is 1 and nothing changes. Read at each wait: the test suite clears MOSAIC_* per test.
BACKOFF_SCALE_ENV = "MOSAIC_TEST_BACKOFF_SCALE"


def backoff_scale() -> float:
    """The factor of `BACKOFF_SCALE_ENV`: 1 unless it holds a number in (0, 1]."""
    try:
        value = float(os.environ.get(BACKOFF_SCALE_ENV) or 1)
    except ValueError:
        return 1.0
    return value if 0 < value <= 1 else 1.0


def jittered(delay: float, jitter: float, rng: random.Random) -> float:
    """`delay` times a factor uniform in [1 - jitter, 1 + jitter]: the one jitter rule."""
    if not jitter:
        return delay
    return delay * rng.uniform(1 - jitter, 1 + jitter)


class Backoff:
    """Exponential delays, capped, with ±`jitter`: base, base*factor, ... up to cap.

    Stateful for loops that count their own failures (`next_delay`, `reset`, `attempt`);
    `delay(attempt)` serves loops whose attempt number is already known.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.attempt = 0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (counted from 1)."""
        nominal = min(self.cap, self.base * self.factor ** (attempt - 1))
        return jittered(nominal, self.jitter, self.rng) * backoff_scale()

    def next_delay(self) -> float:
        self.attempt += 1
        return self.delay(self.attempt)

    def reset(self) -> None:
        self.attempt = 0


class RetryPolicy(NamedTuple):
    """Exponential backoff with full jitter, capped; `Retry-After` wins when the server sends it."""

    attempts: int = 6
    base: float = 0.25
    cap: float = 15.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempts count from 1)."""
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.max_retry_after) * backoff_scale()
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        nominal = min(self.cap, self.base * 2 ** (attempt - 1))
        return jittered(nominal / 2, 1.0, rng) * backoff_scale()


def poll(
    attempt: Callable[[], tuple[bool, T]],
    *,
    timeout: float,
    backoff: Backoff,
    sleep: Sleep,
    clock: Clock = time.monotonic,
    on_wait: Callable[[T], None] | None = None,
) -> tuple[bool, T]:
    """Call `attempt` until it returns (True, value) or `timeout` seconds have passed.

    Returns the last (done, value). Waits never run past the deadline: the last attempt is made
    at it. `on_wait(value)` runs before each wait, e.g. to say who is being waited for.
    """
    deadline = clock() + timeout
    while True:
        done, value = attempt()
        if done:
            return True, value
        remaining = deadline - clock()
        if remaining <= 0:
            return False, value
        if on_wait is not None:
            on_wait(value)
        sleep(min(remaining, backoff.next_delay()))


def retry_call(
    call: Callable[[], T],
    *,
    attempts: int,
    retry_if: Callable[[Exception], bool],
    backoff: Backoff,
    sleep: Sleep,
) -> T:
    """`call()`, tried up to `attempts` times while it raises an error `retry_if` accepts."""
    for attempt in range(1, attempts):
        try:
            return call()
        except Exception as exc:
            if not retry_if(exc):
                raise
        sleep(backoff.delay(attempt))
    return call()
