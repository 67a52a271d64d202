"""The daemon's own ``/metrics`` and ``/healthz`` listener, and the node gauges it serves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healer.model import Health
from healer.telemetry import metrics

log = structlog.get_logger("healer.telemetry")

HEADER_TIMEOUT = 10.0


async def serve_until_cancelled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> NoReturn:
    """Start a listener, serve until the task is cancelled, then stop it."""
    await start()
    try:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover - wait() only ends by cancel
    finally:
        await stop()


def set_node_gauges(cluster: str, counts: Mapping[Health, int]) -> None:
    """Every health state gets a value (zeros included) so dashboards see the series."""
    for state in Health:
        metrics.NODES.labels(cluster, str(state)).set(counts.get(state, 0))


class MetricsServer:
    """``GET /metrics`` (the daemon's registry) and ``GET /healthz`` on their own listener.

    ``health`` returns (healthy, text): /healthz answers 200 when healthy, 503 otherwise, with
    the text as the body, so a load balancer or a human with curl sees why. ``name`` is the
    setting the address came from, for the error when it cannot be bound.

    Only small, quick GETs are served: a connection that has not sent its request head within
    ``HEADER_TIMEOUT`` (or is idle that long after a response) is closed.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        health: Callable[[], tuple[bool, str]],
        name: str = "metrics.listen",
    ) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._name = name
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=HEADER_TIMEOUT
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(
                exc.errno,
                f"{self._name} {self._host}:{self._port}: cannot listen: {exc.strerror}",
            ) from exc
        server = site._server  # the bound socket tells the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("metrics.listening", host=self._host, port=self.port, setting=self._name)

    async def run(self) -> NoReturn:
        """Serve until cancelled."""
        await serve_until_cancelled(self.start, self.stop)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy, text = self._health()
        return web.Response(status=200 if healthy else 503, text=text + "\n")
