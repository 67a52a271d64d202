"""Retries for workflow steps: typed by exception, sleeping on the injected clock.

Only :class:`~healer.errors.TemporaryError` is retried; a ``delay`` it carries is honoured, up
to ``maxDelay``. Normally a step gets ``attempts`` tries; with ``forever=True`` (a pool short of a
machine: see :mod:`healer.workflow.runner`) it is retried until it succeeds, the waits growing to
``maxDelay`` and staying there, so the pool is made whole soon after the cloud recovers. The
waits double from ``initialDelay`` up to ``maxDelay``, the last half of each random so that
workflows failing together do not retry in lockstep. The policy itself is built by
:func:`healer.backoff.retrying`, the one place that builds tenacity policies; tests run it in
virtual time rather than turning the waits off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import RetryCallState

from healer.backoff import call, retrying
from healer.clock import Clock
from healer.config import RetryPolicy

log = structlog.get_logger("healer.workflow")
T = TypeVar("T")

OnRetry = Callable[[int, float, BaseException | None], None]  # (attempt, wait, error)

# The random part of each wait (see healer.backoff.exponential).
JITTER = 0.5


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

    steps = retrying(
        clock,
        first=policy.initial_delay,
        cap=policy.max_delay,
        jitter=JITTER,
        attempts=None if forever else policy.attempts,
        before_sleep=before_sleep,
    )
    return await call(steps, fn)
