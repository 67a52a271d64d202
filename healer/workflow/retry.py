"""Retries for workflow steps: typed by exception, sleeping on the injected clock.

Only :class:`~healer.errors.TemporaryError` is retried; a ``delay`` it carries is honoured, up
to ``maxDelay``. Normally a step gets ``attempts`` tries; with ``forever=True`` (a pool short of a
machine: see :mod:`healer.workflow.runner`) it is retried until it succeeds, the waits growing to
``maxDelay`` and staying there, so the pool is made whole soon after the cloud recovers. The
waits double from ``initialDelay`` up to ``maxDelay``, the last half of each random so that
workflows failing together do not retry in lockstep.

A :class:`~healer.errors.KubeUnavailable` is not spent from ``attempts``: a workflow does not fail
because the Kubernetes API is briefly away (the planner freezes its decisions meanwhile too).
The step is tried again every ``maxDelay`` at most, for as long as the API stays away, and goes on
once it answers. The outage is logged (and told to ``on_outage``) once when it starts and once
when it ends, not per try; its end is seen when a try ends without that error, so for a long try
(a drain, a poll) that is when the try finishes, not when the API first answered. Cancelling the
caller stops the wait at once.

The policy itself is built by :func:`healer.backoff.retrying`, the one place that builds tenacity
policies; tests run it in virtual time rather than turning the waits off.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import RetryCallState

from healer.backoff import call, retrying
from healer.clock import Clock
from healer.config import RetryPolicy
from healer.errors import KubeUnavailable

log = structlog.get_logger("healer.workflow")
T = TypeVar("T")

OnRetry = Callable[[int, float, BaseException | None], None]  # (attempt, wait, error)
# The error when an outage of the Kubernetes API starts; None when a try ends without one.
OnOutage = Callable[[KubeUnavailable | None], None]

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
    on_outage: OnOutage | None = None,
    rng: random.Random | None = None,
) -> T:
    """``fn()``, retried on :class:`TemporaryError`; ``on_retry`` is told of every retry that
    spends an attempt (the runner journals it, which is what ``healer status`` shows), and
    ``on_outage`` of the start and end of each wait for the Kubernetes API."""
    away_since: list[float] = []  # when the current outage began; empty while the API answers

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, KubeUnavailable):
            if not away_since:
                away_since.append(clock.now())
                log.warning(
                    "workflow.waiting_for_api",
                    step=what,
                    retry_every=policy.max_delay,
                    error=str(exc),
                )
                if on_outage is not None:
                    on_outage(exc)
            return
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

    def api_answered() -> None:
        if away_since:
            log.info(
                "workflow.api_reachable",
                step=what,
                waited=round(clock.now() - away_since.pop(), 2),
            )
            if on_outage is not None:
                on_outage(None)

    async def attempt() -> T:
        try:
            result = await fn()
        except (KubeUnavailable, asyncio.CancelledError):
            raise
        except Exception:
            api_answered()
            raise
        api_answered()
        return result

    steps = retrying(
        clock,
        first=policy.initial_delay,
        cap=policy.max_delay,
        jitter=JITTER,
        rng=rng,  # seeded by `healer simulate`, so that its runs repeat exactly
        attempts=None if forever else policy.attempts,
        free=(KubeUnavailable,),
        before_sleep=before_sleep,
    )
    return await call(steps, attempt)
