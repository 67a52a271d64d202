"""Retries for workflow steps: tenacity, typed by exception, sleeping on the injected clock.

Only :class:`~healer.errors.TemporaryError` is retried; a ``delay`` it carries is honoured, up
to ``maxDelay``. Normally a step gets ``attempts`` tries; with ``forever=True`` (a pool short of a
machine: see :mod:`healer.workflow.runner`) it is retried until it succeeds, the waits growing to
``maxDelay`` and staying there, so the pool is made whole soon after the cloud recovers.
``set_testing(True)`` removes the waits (as stamina's test mode does); not with ``forever``, where
a wait of zero would spin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from healer.clock import Clock
from healer.config import RetryPolicy
from healer.errors import TemporaryError

log = structlog.get_logger("healer.workflow")
T = TypeVar("T")

_testing = False


def set_testing(enabled: bool) -> None:
    global _testing
    _testing = enabled


OnRetry = Callable[[int, float, BaseException | None], None]  # (attempt, wait, error)


def _wait(policy: RetryPolicy, *, forever: bool) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(
        multiplier=policy.initial_delay, max=policy.max_delay, jitter=policy.initial_delay
    )

    def wait(state: RetryCallState) -> float:
        if _testing and not forever:
            return 0.0
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TemporaryError) and exc.delay is not None:
            return min(exc.delay, policy.max_delay)
        return float(backoff(state))

    return wait


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    what: str,
    forever: bool = False,
    on_retry: OnRetry | None = None,
) -> T:
    """``fn()``, retried on :class:`TemporaryError`; ``on_retry`` is told of every retry (the
    runner journals it, which is what ``healer status`` shows)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "workflow.retrying",
            step=what,
            attempt=state.attempt_number,
            of="until it succeeds" if forever else policy.attempts,
            wait=round(state.upcoming_sleep, 2),
            error=str(exc),
        )
        if on_retry is not None:
            on_retry(state.attempt_number, state.upcoming_sleep, exc)

    retrying = AsyncRetrying(
        stop=stop_never if forever else stop_after_attempt(policy.attempts),
        wait=_wait(policy, forever=forever),
        retry=retry_if_exception_type(TemporaryError),
        sleep=clock.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity reraises the last error")
