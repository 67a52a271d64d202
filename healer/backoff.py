"""Backoff on the injected clock: the one place that builds tenacity retry policies.

Every retry loop in healer (a workflow step, the drain's rounds, a source's reconnect loop)
is a :class:`tenacity.AsyncRetrying` made by :func:`retrying`: tenacity decides whether and
when to try again, and the waits are slept on a :class:`healer.clock.Clock`, so tests run them
in virtual time (:class:`~healer.clock.VirtualClock`) and never really sleep. This module sits
in the bottom layer (beside the clock) so that every layer above may use it.

The public API is three functions:

:func:`retrying` ``(clock, *, first, cap, ...) -> AsyncRetrying``
    A policy. Run ``fn`` (an async callable without arguments) under it with
    ``await call(policy, fn)``, or ``async for attempt in policy: with attempt: ...``. It tries
    ``fn`` again when it raises one of ``retry_on`` (default: :class:`~healer.errors.
    TemporaryError`) or, given ``retry_result``, when that predicate holds for what ``fn``
    returned. It stops after ``attempts`` tries (errors of a ``free`` type retried without
    counting), or once the clock reaches ``deadline``, or never (both None). When it stops, the
    last error is raised as it is (never tenacity's ``RetryError``) and the last result is
    returned, for the caller to inspect.
:func:`call` ``(policy, fn) -> T``
    Runs ``fn`` under ``policy``, typed (tenacity's own ``__call__`` returns ``Any``), and for
    any callable that returns an awaitable, not only an ``async def``.
:func:`exponential` ``(*, first, cap, ...) -> wait``
    The wait :func:`retrying` uses, on its own for a loop that tenacity does not drive:
    ``first * multiplier ** (n - 1)`` before try ``n + 1``, at most ``cap``, with the last
    ``jitter`` fraction of each wait random (``jitter=0.5``: a wait of ``d`` is drawn from
    ``[d/2, d]``) so a fleet restarted together does not retry in lockstep. An error that
    carries a ``delay`` (a :class:`~healer.errors.TemporaryError` from a 429's Retry-After)
    is waited for that long instead, at most ``cap``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_base,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_never,
)
from tenacity.stop import stop_base

from healer.clock import Clock
from healer.errors import TemporaryError

Wait = Callable[[RetryCallState], float]
T = TypeVar("T")

# 2.0 ** 64 times any sane ``first`` is far past any cap; a bigger exponent could overflow.
_MAX_EXPONENT = 64


def exponential(
    *,
    first: float,
    cap: float,
    multiplier: float = 2.0,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> Wait:
    """The capped, jittered exponential wait described in the module docstring.

    ``rng`` is injectable so tests can pin the jitter; ``jitter`` is a fraction in ``[0, 1]``.
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be a fraction between 0 and 1, not {jitter}")
    draw = rng if rng is not None else random.Random()

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, TemporaryError) and error.delay is not None:
            return max(0.0, min(error.delay, cap))
        exponent = min(state.attempt_number - 1, _MAX_EXPONENT)
        delay = min(cap, first * multiplier**exponent)
        return delay * (1.0 - jitter * draw.random()) if jitter else delay

    return wait


class _Deadline(stop_base):
    """Stop once ``clock.now()`` reaches ``deadline`` (tenacity's own delay stops read the
    monotonic clock, not the injected one)."""

    def __init__(self, clock: Clock, deadline: float) -> None:
        self._clock = clock
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock.now() >= self._deadline


class _Budget(stop_base):
    """Stop after ``attempts`` tries that did not fail with a ``free`` error (tenacity's
    ``stop_after_attempt`` counts every try). Counts per call: a policy runs one call at a
    time."""

    def __init__(self, attempts: int, free: tuple[type[BaseException], ...]) -> None:
        self._attempts = attempts
        self._free = free
        self._spent = 0

    def __call__(self, retry_state: RetryCallState) -> bool:
        if retry_state.attempt_number == 1:
            self._spent = 0
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if not isinstance(error, self._free):
            self._spent += 1
        return self._spent >= self._attempts


def _last_outcome(state: RetryCallState) -> Any:
    """When retrying stops: the last error raised as it is, or the last result returned."""
    assert state.outcome is not None  # tenacity stops only after an attempt
    return state.outcome.result()


def retrying(
    clock: Clock,
    *,
    first: float,
    cap: float,
    multiplier: float = 2.0,
    jitter: float = 0.0,
    rng: random.Random | None = None,
    attempts: int | None = None,
    deadline: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (TemporaryError,),
    free: tuple[type[BaseException], ...] = (),
    retry_result: Callable[[Any], bool] | None = None,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """A tenacity policy sleeping on ``clock`` (see the module docstring).

    ``free`` errors (a subset of ``retry_on``) are retried without counting against
    ``attempts``: the Kubernetes API being away is waited out, not spent from the budget.

    ``deadline`` is on the clock's timeline (``clock.now()`` values): no wait goes past it, and
    no try starts after it. ``before_sleep`` sees each retry before its wait
    (``state.attempt_number``, ``state.upcoming_sleep``, ``state.outcome``): log it there.
    """
    backoff = exponential(first=first, cap=cap, multiplier=multiplier, jitter=jitter, rng=rng)
    wait: Wait = backoff
    if deadline is not None:
        at = deadline

        def wait(state: RetryCallState) -> float:
            return min(backoff(state), max(0.0, at - clock.now()))

    stop: stop_base = stop_never
    if attempts is not None:
        stop = _Budget(attempts, free) if free else stop_after_attempt(attempts)
    if deadline is not None:
        stop = stop | _Deadline(clock, deadline)
    retry: retry_base = retry_if_exception_type(retry_on)
    if retry_result is not None:
        retry = retry | retry_if_result(retry_result)
    return AsyncRetrying(
        sleep=clock.sleep,
        stop=stop,
        wait=wait,
        retry=retry,
        before_sleep=before_sleep,
        retry_error_callback=_last_outcome,
        reraise=True,
    )


async def call(policy: AsyncRetrying, fn: Callable[[], Awaitable[T]]) -> T:
    """``fn()`` under ``policy``: retried as the policy says; the last error raised as it is,
    or the last result returned when a ``retry_result`` policy stops.

    ``fn`` may be any callable returning an awaitable (a lambda, a bound method): tenacity itself
    awaits only what an ``async def`` returns, and would hand back a lambda's coroutine unawaited.
    """

    async def attempt() -> T:
        return await fn()

    return cast(T, await policy(attempt))
