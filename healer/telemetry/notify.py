"""Outgoing notifications: a JSON POST to an operator's webhook (Slack-, Mattermost- or
Teams-style incoming webhooks all take ``{"text": ...}``), e.g. ``reboots.notify``.

Owns the POST, its bounded retry (:func:`healer.backoff.retrying` on the injected clock, so tests
run it in virtual time) and never blocking the caller: :meth:`Notifier.post` returns at once and
the delivery runs as a background task. A delivery that fails every attempt is logged
(``notify.failed``) and counted (``healer_reboot_notifications{outcome="failed"}``); nothing
waits on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog

from healer.backoff import call, retrying
from healer.clock import Clock
from healer.errors import TemporaryError
from healer.telemetry import metrics

log = structlog.get_logger("healer.telemetry.notify")

Send = Callable[[str, dict[str, Any], float], Awaitable[None]]  # (url, body, timeout)
MAX_PENDING = 100  # deliveries in flight; more are dropped (and counted) rather than queued


async def post_json(url: str, body: dict[str, Any], timeout: float) -> None:
    """One POST; :class:`TemporaryError` on anything but a 2xx answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, json=body) as response,
        ):
            if not 200 <= response.status < 300:
                raise TemporaryError(f"POST {url}: HTTP {response.status}")
    except TimeoutError:
        raise TemporaryError(f"POST {url}: no answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise TemporaryError(f"POST {url}: {exc or type(exc).__name__}") from None


class Notifier:
    def __init__(self, *, clock: Clock, send: Send = post_json, first_retry: float = 2.0) -> None:
        self._clock = clock
        self._send = send
        self._first = first_retry
        self._pending: set[asyncio.Task[None]] = set()

    def post(
        self, url: str, body: dict[str, Any], *, timeout: float, attempts: int, event: str
    ) -> None:
        """Deliver ``body`` to ``url`` in the background; ``event`` labels the count."""
        if len(self._pending) >= MAX_PENDING:
            metrics.REBOOT_NOTIFICATIONS.labels(event, "failed").inc()
            log.warning("notify.failed", url=url, event_kind=event, error="too many pending")
            return
        task = asyncio.get_running_loop().create_task(
            self._deliver(url, body, timeout=timeout, attempts=attempts, event=event),
            name=f"notify-{event}",
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for the deliveries under way (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _deliver(
        self, url: str, body: dict[str, Any], *, timeout: float, attempts: int, event: str
    ) -> None:
        policy = retrying(self._clock, first=self._first, cap=30.0, attempts=attempts)
        try:
            await call(policy, lambda: self._send(url, body, timeout))
        except TemporaryError as exc:
            metrics.REBOOT_NOTIFICATIONS.labels(event, "failed").inc()
            log.warning(
                "notify.failed", url=url, event_kind=event, attempts=attempts, error=str(exc)
            )
            return
        metrics.REBOOT_NOTIFICATIONS.labels(event, "sent").inc()
        log.info("notify.sent", url=url, event_kind=event)
