"""Keeping a source connected: run its session again and again under a tenacity backoff policy.

A source's session (an MQTT connection, a Kubernetes list-then-watch) runs until the link fails.
:func:`reconnect_forever` runs it again after each failure, waiting what the policy says
(:func:`healer.backoff.retrying`, on the injected clock, so tests run it in virtual time). The
waits grow while the link keeps failing and start again from the first one after a session that
*held*: what "held" means is the source's (an MQTT link up for a while, a list that succeeded),
so a broker that accepts and at once drops us still gets slower and slower retries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

from tenacity import AsyncRetrying


async def reconnect_forever(
    session: Callable[[], Awaitable[object]],
    *,
    policy: AsyncRetrying,
    held: Callable[[], bool],
) -> NoReturn:
    """Run ``session`` for ever under ``policy`` (which must never stop).

    ``held()`` is asked when a session ends: True makes the next wait the policy's first again.
    What ``policy`` does not retry (a bug, a cancellation) propagates.
    """
    async for attempt in policy:
        with attempt:
            try:
                await session()
            finally:
                if held():
                    # tenacity sizes the next wait by the attempt number: a fresh outage.
                    attempt.retry_state.attempt_number = 1
    raise AssertionError("a reconnect policy stopped; it must retry for ever")
