"""Keeping a source connected: run its session again and again under a tenacity backoff policy.

A source's session (an MQTT connection, a Kubernetes list-then-watch) runs until the link fails.
:func:`reconnect_forever` runs it again after each failure, waiting what the policy says
(:func:`healer.backoff.retrying`, on the injected clock, so tests run it in virtual time). The
waits grow while the link keeps failing and start again from the first one after a session that
*held*: what "held" means is the source's (an MQTT link up for a while, a list that succeeded),
so a broker that accepts and at once drops us still gets slower and slower retries.

A stop is never taken for an outage. A session cancelled while its link fails can end with the
link's error instead of :class:`asyncio.CancelledError` (a client's clean-up on the way out
raising its own error; Python 3.11's ``TaskGroup`` raising a child's error in place of the
parent's cancellation), and a loop that retried that error ran on after SIGTERM for as long as
the peer stayed away. So an error that ends a session while its task is being cancelled is
turned back into the cancellation, and what a session runs side by side goes through
:func:`first_failure`, never a ``TaskGroup`` (whose 3.11 bookkeeping would also leave the task
looking cancelled after any failure of a part).
"""

from __future__ import annotations

import asyncio
import inspect
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
    What ``policy`` does not retry (a bug, a cancellation) propagates, and so does a stop asked
    for while a session was failing (see the module docstring).
    """
    async for attempt in policy:
        with attempt:
            try:
                await session()
            except Exception as exc:
                stop_if_cancelling(exc)
                raise
            else:
                stop_if_cancelling(None)
            finally:
                if held():
                    # tenacity sizes the next wait by the attempt number: a fresh outage.
                    attempt.retry_state.attempt_number = 1
    raise AssertionError("a reconnect policy stopped; it must retry for ever")


def stop_if_cancelling(cause: BaseException | None) -> None:
    """Raise :class:`asyncio.CancelledError` (from ``cause``) if the running task has been asked
    to stop (``Task.cancel``) and something on the way swallowed the cancellation.

    Python 3.11's ``asyncio.wait_for`` is one such thing: a cancellation that comes as the
    awaited future completes is dropped and the result returned (gh-86296, fixed in 3.12).
    aiomqtt waits for CONNACK and SUBACK that way, so a stop that came as the broker answered
    left the MQTT session running for good, and the daemon's shutdown waiting on it (seen
    under load in the lab: `quit` never returned). Sessions call this after such waits."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise asyncio.CancelledError("stopped while the session was ending") from cause


async def first_failure(*coros: Awaitable[None]) -> None:
    """Run the coroutines together until the first one raises; cancel the rest and re-raise it
    (a bare exception, not an ExceptionGroup, so callers can catch by type).

    What a session runs side by side goes through this rather than an ``asyncio.TaskGroup``:
    on Python 3.11 a TaskGroup whose child fails while the parent waits for it leaves the
    parent's ``cancelling()`` count raised for good, and a cancellation that comes at that
    moment is lost in its error, which is how a stop used to turn into a retry.
    """
    try:
        # A stop swallowed on the way in: the MQTT session enters here right after CONNACK.
        stop_if_cancelling(None)
    except asyncio.CancelledError:
        for coro in coros:
            if inspect.iscoroutine(coro):
                coro.close()  # never started: no "never awaited" warning
        raise
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None:
            raise exc
