"""The webhook's connections: a cap on how many are open, and the bounded report of the ones shed.

aiohttp closes a connection whose request headers are not complete within its keep-alive timeout
(armed when the connection is made and again after each response), so the webhook sets that
timeout to ``headerTimeout``: slow senders of headers (slowloris) and idle keep-alive connections
are both closed by it. What aiohttp has no setting for lives here:

* ``ConnectionGuard.factory`` wraps aiohttp's protocol factory and keeps the open connections
  under a cap, so a flood of connections cannot use up the file descriptors the Kubernetes and
  cloud clients need. At the cap the oldest connection that has not yet sent a whole request is
  closed to make room (``evicted``): a slow sender loses its place to a client that sends its
  request at once; only when there is none is the newcomer closed (``over_cap``). A
  connection that closed without a request after ``headerTimeout`` counts as ``header_timeout``.
* Every shed connection is counted in ``healer_webhook_connections_shed_total{reason}``; the log
  gets one ``webhook.connections_shed`` summary per interval at most, never a line per connection.
* ``connection_cap``: the cap, a fraction of the process's open-file limit, leaving a reserve.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Final

import structlog

from healer.sources.webhook_payload import BODY_TIMEOUT as BODY_TIMEOUT
from healer.telemetry.metrics import WEBHOOK_CONNECTIONS, WEBHOOK_SHED

log = structlog.get_logger(__name__)

OVER_CAP: Final = "over_cap"
EVICTED: Final = "evicted"
HEADER_TIMEOUT: Final = "header_timeout"

# Descriptors kept out of the webhook's reach whatever the limit: the state database and its
# WAL, the log, the Kubernetes watches and requests of every cluster, the cloud clients, MQTT.
FD_RESERVE: Final = 256
# The webhook may use at most this share of what is left above the reserve.
FD_SHARE: Final = 0.5
MIN_CAP: Final = 8


def connection_cap(configured: int, soft_limit: int | None) -> int:
    """How many connections the webhook may hold open: ``maxConnections``, lowered so that at
    least ``FD_RESERVE`` descriptors and half of the rest stay for everything else. ``None``
    (no limit known, or unlimited) leaves ``configured``."""
    if soft_limit is None or soft_limit <= 0:
        return configured
    share = int((soft_limit - FD_RESERVE) * FD_SHARE)
    return min(configured, max(MIN_CAP, share))


class ShedLog:
    """Counts shed connections (the metric, every time) and logs a summary at most once per
    ``interval`` seconds: a flood of a million connections is a handful of log lines.

    Connections live on the event loop's real monotonic time (aiohttp's timers use it), so
    this module does too, rather than the daemon's injected clock."""

    def __init__(self, *, interval: float = 10.0, now: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._now = now
        self._pending: Counter[str] = Counter()
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def shed(self, reason: str) -> None:
        WEBHOOK_SHED.labels(reason=reason).inc()
        self._pending[reason] += 1
        now = self._now()
        if self._last is None or now - self._last >= self._interval:
            self.flush()
        elif self._timer is None:
            # What comes after the last summary is told when the interval is up, flood or not.
            with_loop = _running_loop()
            if with_loop is not None:
                delay = self._interval - (now - self._last)
                self._timer = with_loop.call_later(delay, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        self._last = self._now()
        log.warning(
            "webhook.connections_shed",
            total=sum(self._pending.values()),
            **dict(sorted(self._pending.items())),
        )
        self._pending.clear()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted from accept to close."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._made_at: float | None = None
        self._open = True  # counted in the guard until connection_lost (or the handshake expiry)
        self.transport: asyncio.BaseTransport | None = None
        self.requests = 0
        self.evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._open:  # a handshake that ended after it was given up: count it again
            self._open = True
            self._guard.count(+1)
        self._made_at = time.monotonic()
        self.transport = transport
        self._guard.made(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._guard.lost(self)

    def expire_if_never_made(self) -> None:
        """A TLS connection whose handshake never completed is never made nor lost here."""
        if self._made_at is None:
            self.release()

    def evict(self) -> None:
        self.evicted = True
        self.release()
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()
        elif self.transport is not None:
            self.transport.close()

    def release(self) -> None:
        """Stop counting this connection (once)."""
        if self._open:
            self._open = False
            self._guard.count(-1)

    def lived(self) -> float:
        return 0.0 if self._made_at is None else time.monotonic() - self._made_at


class _Shed(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            transport.close()


class ConnectionGuard:
    """Caps the connections of one listener and counts the ones it sheds.

    At the cap, room is made by closing the oldest connection that has not sent a whole request
    yet (``evicted``): slow senders go first; a client that has just connected stays, and so
    does one kept alive after an answered request (until ``headerTimeout`` idles it out: a
    refused caller's connection is closed with its answer). Only when no connection is left
    that has not sent a request is the newcomer closed (``over_cap``).

    ``factory(make)`` is the protocol factory to give ``loop.create_server``; ``make`` is
    aiohttp's (``runner.server``). ``request_started(transport)`` is called as each request's
    handling starts; it says whether the connection may stay open for another one
    (``maxRequestsPerConnection``).
    """

    def __init__(
        self,
        *,
        cap: int,
        header_timeout: float,
        max_requests: int,
        handshake_timeout: float,
        shed_log: ShedLog | None = None,
    ) -> None:
        self.cap = cap
        self.open = 0
        self._header_timeout = header_timeout
        self._max_requests = max_requests
        self._handshake_timeout = handshake_timeout
        self.shed_log = shed_log or ShedLog()
        self._by_transport: dict[asyncio.BaseTransport, _Guarded] = {}
        # Made, no request yet, oldest first: who is closed to make room.
        self._fresh: OrderedDict[_Guarded, None] = OrderedDict()

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def protocol() -> asyncio.Protocol:
            if self.open >= self.cap:
                if not self._fresh:
                    self.shed_log.shed(OVER_CAP)
                    return _Shed()
                oldest, _ = self._fresh.popitem(last=False)
                oldest.evict()
                self.shed_log.shed(EVICTED)
            self.count(+1)
            guarded = _Guarded(self, make())
            loop = _running_loop()
            if loop is not None:
                loop.call_later(self._handshake_timeout + 1.0, guarded.expire_if_never_made)
            return guarded

        return protocol

    def count(self, delta: int) -> None:
        self.open += delta
        WEBHOOK_CONNECTIONS.set(self.open)

    def made(self, conn: _Guarded) -> None:
        if conn.transport is not None:
            self._by_transport[conn.transport] = conn
            self._fresh[conn] = None

    def lost(self, conn: _Guarded) -> None:
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)
        self._fresh.pop(conn, None)
        conn.release()
        # aiohttp's timer closes at the header timeout; a little slack for the clocks' reads.
        if not conn.evicted and conn.requests == 0 and conn.lived() >= self._header_timeout * 0.95:
            self.shed_log.shed(HEADER_TIMEOUT)

    def request_started(self, transport: asyncio.BaseTransport | None) -> bool:
        """Count a request on its connection; False once it has had ``max_requests``."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is None:
            return True
        self._fresh.pop(conn, None)
        conn.requests += 1
        return conn.requests < self._max_requests


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
