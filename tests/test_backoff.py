"""Backoff on the injected clock (healer/backoff.py): the waits, the stops, and what a policy
gives back when it stops, all in virtual time."""

from __future__ import annotations

import asyncio
import random

import pytest
from tenacity import RetryCallState

from healer.backoff import call, exponential, retrying
from healer.clock import VirtualClock
from healer.errors import KubeUnavailable, PermanentError, TemporaryError

T0 = 1_700_000_000.0


class Flaky:
    """An async callable that raises the queued errors in turn, then returns ``value``,
    recording the clock's time of every call."""

    def __init__(self, clock: VirtualClock, errors: list[BaseException], value: str = "ok"):
        self.clock = clock
        self.errors = list(errors)
        self.value = value
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock.now() - T0)
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def waits(wait: object, n: int, error: BaseException | None = None) -> list[float]:
    """The first ``n`` waits of a wait strategy, as tenacity would ask for them."""
    out = []
    for attempt in range(1, n + 1):
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        state.set_exception((type(error), error, None)) if error else state.set_result(None)
        out.append(wait(state))  # type: ignore[operator]
    return out


@pytest.mark.parametrize(
    ("first", "cap", "multiplier", "expected"),
    [
        (1.0, 10.0, 2.0, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
        (0.5, 30.0, 2.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]),
        (2.0, 5.0, 3.0, [2.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
        (1.0, 7.0, 1.0, [1.0] * 6),
    ],
)
def test_exponential_without_jitter_grows_to_the_cap(
    first: float, cap: float, multiplier: float, expected: list[float]
) -> None:
    assert waits(exponential(first=first, cap=cap, multiplier=multiplier), 6) == expected


def test_exponential_does_not_overflow_after_weeks_of_failures() -> None:
    wait = exponential(first=0.5, cap=30.0)
    assert waits(wait, 5000)[-1] == 30.0


def test_jitter_draws_the_last_fraction_of_each_wait() -> None:
    wait = exponential(first=4.0, cap=100.0, jitter=0.5, rng=random.Random(7))
    drawn = waits(wait, 200)
    bases = [min(100.0, 4.0 * 2.0**i) for i in range(200)]
    assert all(base / 2 <= d <= base for d, base in zip(drawn, bases, strict=True))
    assert len({round(d / base, 6) for d, base in zip(drawn, bases, strict=True)}) > 100


def test_jitter_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="jitter must be a fraction"):
        exponential(first=1.0, cap=2.0, jitter=1.5)


def test_a_delay_carried_by_the_error_is_honoured_up_to_the_cap() -> None:
    wait = exponential(first=1.0, cap=10.0, jitter=0.5)
    assert waits(wait, 2, KubeUnavailable("429", delay=3.0)) == [3.0, 3.0]
    assert waits(wait, 1, TemporaryError("slow down", delay=60.0)) == [10.0]


async def test_retries_temporary_errors_on_the_clock_then_returns() -> None:
    clock = VirtualClock(T0)
    fn = Flaky(clock, [TemporaryError("a"), TemporaryError("b"), TemporaryError("c")])
    task = asyncio.create_task(call(retrying(clock, first=1.0, cap=3.0, attempts=5), fn))
    await clock.advance(100.0)
    assert await task == "ok"
    assert fn.calls == [0.0, 1.0, 3.0, 6.0]  # waits of 1, 2, then 3 (the cap)


async def test_the_last_error_is_raised_as_it_is_after_the_last_attempt() -> None:
    clock = VirtualClock(T0)
    fn = Flaky(clock, [TemporaryError(f"try {i}") for i in range(1, 5)])
    task = asyncio.create_task(call(retrying(clock, first=1.0, cap=10.0, attempts=3), fn))
    await clock.advance(100.0)
    with pytest.raises(TemporaryError, match="try 3"):
        await task
    assert fn.calls == [0.0, 1.0, 3.0]


async def test_other_errors_are_not_retried() -> None:
    clock = VirtualClock(T0)
    fn = Flaky(clock, [PermanentError("forbidden")])
    with pytest.raises(PermanentError, match="forbidden"):
        await call(retrying(clock, first=1.0, cap=10.0), fn)
    assert fn.calls == [0.0]


async def test_retry_on_names_the_errors_to_ride_out() -> None:
    clock = VirtualClock(T0)
    fn = Flaky(clock, [ConnectionError("reset"), OSError("refused")])
    policy = retrying(clock, first=2.0, cap=2.0, retry_on=(OSError,))
    task = asyncio.create_task(call(policy, fn))
    await clock.advance(10.0)
    assert await task == "ok"
    assert fn.calls == [0.0, 2.0, 4.0]


async def test_retry_result_tries_again_until_a_deadline_and_returns_the_last_result() -> None:
    clock = VirtualClock(T0)
    results = iter(["blocked"] * 100)

    async def round_() -> str:
        return next(results)

    seen: list[float] = []
    policy = retrying(
        clock,
        first=1.0,
        cap=4.0,
        deadline=T0 + 10.0,
        retry_result=lambda r: r == "blocked",
        before_sleep=lambda state: seen.append(state.upcoming_sleep),
    )
    task = asyncio.create_task(call(policy, round_))
    await clock.advance(60.0)
    assert await task == "blocked"
    # 1 + 2 + 4 + 3 (cut to reach the deadline exactly); no try starts after it.
    assert seen == [1.0, 2.0, 4.0, 3.0]


async def test_before_sleep_sees_each_retry() -> None:
    clock = VirtualClock(T0)
    fn = Flaky(clock, [KubeUnavailable("down", delay=5.0), TemporaryError("again")])
    seen: list[tuple[int, float, str]] = []

    def record(state: RetryCallState) -> None:
        assert state.outcome is not None
        seen.append((state.attempt_number, state.upcoming_sleep, str(state.outcome.exception())))

    task = asyncio.create_task(call(retrying(clock, first=1.0, cap=10.0, before_sleep=record), fn))
    await clock.advance(30.0)
    assert await task == "ok"
    assert seen == [(1, 5.0, "down"), (2, 2.0, "again")]
    assert fn.calls == [0.0, 5.0, 7.0]


async def test_call_awaits_what_a_lambda_returns() -> None:
    clock = VirtualClock(T0)
    fn = Flaky(clock, [TemporaryError("once")], value="done")
    task = asyncio.create_task(call(retrying(clock, first=1.0, cap=1.0), lambda: fn()))
    await clock.advance(5.0)
    assert await task == "done"
    assert fn.calls == [0.0, 1.0]
