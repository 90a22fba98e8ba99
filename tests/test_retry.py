"""Pure tests of the backoff module: seeded randomness, a recording sleep, a fake clock."""

from __future__ import annotations

import random

import pytest

from mosaicsync.retry import (
    BACKOFF_SCALE_ENV,
    Backoff,
    RetryPolicy,
    jittered,
    poll,
    retry_call,
)


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_jitter_zero_is_exact_and_draws_nothing() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    assert jittered(1.5, 0.0, rng) == 1.5
    assert rng.getstate() == state


def test_jitter_stays_within_its_fraction() -> None:
    rng = random.Random(0)
    draws = [jittered(2.0, 0.2, rng) for _ in range(500)]
    assert all(1.6 <= d <= 2.4 for d in draws)
    assert min(draws) < 1.7 and max(draws) > 2.3  # the whole band is used


def test_backoff_is_exponential_and_capped_without_jitter() -> None:
    backoff = Backoff(0.25, 5.0)
    assert [backoff.next_delay() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.attempt == 7
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay() == 0.25


def test_backoff_factor_and_jitter_match_the_rule() -> None:
    backoff = Backoff(0.2, 2.0, factor=1.5, jitter=0.5, rng=random.Random(3))
    reference = random.Random(3)
    for attempt in range(1, 10):
        nominal = min(2.0, 0.2 * 1.5 ** (attempt - 1))
        assert backoff.next_delay() == pytest.approx(nominal * reference.uniform(0.5, 1.5))


def test_backoff_delay_does_not_move_the_attempt_counter() -> None:
    backoff = Backoff(0.1, 2.0)
    assert backoff.delay(3) == pytest.approx(0.4)
    assert backoff.attempt == 0


def test_watch_style_backoff_is_a_drop_in() -> None:
    # What the watch loop expects: 250 ms doubling to 5 s, ±20 %, attempt visible on screen.
    backoff = Backoff(0.25, 5.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    nominal = [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert all(0.8 * n <= d <= 1.2 * n for d, n in zip(delays, nominal, strict=True))
    assert backoff.attempt == 8


def test_retry_policy_is_full_jitter_as_before() -> None:
    policy = RetryPolicy(base=0.5, cap=4)
    rng, reference = random.Random(0), random.Random(0)
    for attempt in range(1, 12):
        expected = reference.uniform(0, min(4, 0.5 * 2 ** (attempt - 1)))
        assert policy.delay(attempt, None, rng) == expected


def test_retry_after_wins_and_is_bounded() -> None:
    policy = RetryPolicy(max_retry_after=60)
    rng = random.Random(0)
    state = rng.getstate()
    assert policy.delay(1, "7", rng) == 7.0
    assert policy.delay(1, "-3", rng) == 0.0
    assert policy.delay(1, "100000", rng) == 60
    assert rng.getstate() == state
    # An HTTP date is not understood: our own backoff decides.
    assert 0 <= policy.delay(1, "Wed, 21 Oct 2015 07:28:00 GMT", rng) <= policy.base


def test_the_test_knob_scales_every_wait_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suites that run the real CLI through faults shorten its waits with it; the same
    draws are made, so the same retries happen, only sooner."""
    policy = RetryPolicy(base=0.5, cap=4)

    def waits() -> list[float]:
        backoff = Backoff(0.25, 5.0, jitter=0.2, rng=random.Random(1))
        rng = random.Random(2)
        return [
            *(backoff.next_delay() for _ in range(6)),
            *(policy.delay(attempt, None, rng) for attempt in range(1, 6)),
            policy.delay(1, "7", rng),
        ]

    full = waits()
    monkeypatch.setenv(BACKOFF_SCALE_ENV, "0.1")
    assert waits() == pytest.approx([0.1 * w for w in full])
    # Anything but a number in (0, 1] leaves the waits as they are: never longer, never zero.
    for ignored in ("", "fast", "0", "-1", "2", "nan"):
        monkeypatch.setenv(BACKOFF_SCALE_ENV, ignored)
        assert waits() == full, ignored
    monkeypatch.delenv(BACKOFF_SCALE_ENV)
    assert waits() == full


def test_poll_returns_as_soon_as_done() -> None:
    clock = FakeClock()
    answers = iter([(False, "a"), (False, "b"), (True, "c")])
    done, value = poll(
        lambda: next(answers), timeout=10, backoff=Backoff(0.1, 1.0), sleep=clock.sleep, clock=clock
    )
    assert (done, value) == (True, "c")
    assert clock.sleeps == [0.1, 0.2]


def test_poll_never_sleeps_past_the_deadline_and_tries_once_at_it() -> None:
    clock = FakeClock()
    calls: list[float] = []
    waited: list[int] = []

    def attempt() -> tuple[bool, int]:
        calls.append(clock.now)
        return False, len(calls)

    done, value = poll(
        attempt,
        timeout=1.0,
        backoff=Backoff(0.4, 10.0),
        sleep=clock.sleep,
        clock=clock,
        on_wait=waited.append,
    )
    assert not done and value == 3
    assert clock.sleeps == [0.4, pytest.approx(0.6)]  # 0.8 would overshoot: cut to the deadline
    assert calls[-1] == pytest.approx(101.0)
    assert waited == [1, 2]


def test_retry_call_retries_only_what_it_is_told_to() -> None:
    sleeps: list[float] = []
    failures = [KeyError("race"), KeyError("race")]

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    result = retry_call(
        call,
        attempts=3,
        retry_if=lambda e: isinstance(e, KeyError),
        backoff=Backoff(0.05, 1.0),
        sleep=sleeps.append,
    )
    assert result == "ok" and sleeps == [0.05, 0.1]

    with pytest.raises(ValueError):
        retry_call(
            lambda: (_ for _ in ()).throw(ValueError("no")),
            attempts=3,
            retry_if=lambda e: isinstance(e, KeyError),
            backoff=Backoff(0.05, 1.0),
            sleep=sleeps.append,
        )
    assert sleeps == [0.05, 0.1]  # a refused error is not retried


def test_retry_call_gives_up_after_the_last_attempt() -> None:
    sleeps: list[float] = []
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise KeyError("race")

    with pytest.raises(KeyError):
        retry_call(
            call, attempts=3, retry_if=lambda e: True, backoff=Backoff(1, 1), sleep=sleeps.append
        )
    assert len(calls) == 3 and sleeps == [1, 1]
