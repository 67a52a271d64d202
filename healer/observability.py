"""Observability plumbing the daemon wires in: timing of provider calls, the gauges computed from
state, and the daemon's own /metrics and /healthz listener.

Metric objects live in :mod:`healer.metrics`; this module only feeds and serves them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healer import metrics
from healer.errors import TemporaryError
from healer.model import Health
from providers.base import Machine, MachineRequest, Provider

log = structlog.get_logger("healer.observability")


class MeteredProvider:
    """A :class:`~providers.base.Provider` that times every call and counts the failures.

    Wrapping at the plugin boundary measures every plugin the same way without touching them.
    Anything else (a plugin's own attributes) is passed through.
    """

    def __init__(self, inner: Provider) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def __repr__(self) -> str:
        return f"MeteredProvider({self._inner!r})"

    async def _timed(self, operation: str, call: Any) -> Any:
        started = time.monotonic()
        try:
            return await call
        except TemporaryError:
            metrics.PROVIDER_ERRORS.labels(self.name, operation, "temporary").inc()
            raise
        except Exception:
            metrics.PROVIDER_ERRORS.labels(self.name, operation, "permanent").inc()
            raise
        finally:
            metrics.PROVIDER_SECONDS.labels(self.name, operation).observe(
                time.monotonic() - started
            )

    async def create_machine(self, request: MachineRequest) -> Machine:
        machine: Machine = await self._timed("create_machine", self._inner.create_machine(request))
        return machine

    async def destroy_machine(self, machine: Machine) -> bool:
        return bool(await self._timed("destroy_machine", self._inner.destroy_machine(machine)))

    async def get_machine(self, name: str) -> Machine | None:
        found: Machine | None = await self._timed("get_machine", self._inner.get_machine(name))
        return found

    async def list_machines(self, tags: Mapping[str, str]) -> list[Machine]:
        found: list[Machine] = await self._timed("list_machines", self._inner.list_machines(tags))
        return found

    async def close(self) -> None:
        await self._inner.close()


def set_node_gauges(cluster: str, healths: list[Health]) -> None:
    """Every health state gets a value (zeros included) so dashboards see the series."""
    for state in Health:
        metrics.NODES.labels(cluster, str(state)).set(sum(1 for h in healths if h is state))


class MetricsServer:
    """``GET /metrics`` (the daemon's registry) and ``GET /healthz`` on their own listener.

    ``health`` returns (healthy, text): /healthz answers 200 when healthy, 503 otherwise, with
    the text as the body, so a load balancer or a human with curl sees why.
    """

    def __init__(self, *, host: str, port: int, health: Callable[[], tuple[bool, str]]) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(
                exc.errno,
                f"metrics.listen {self._host}:{self._port}: cannot listen: {exc.strerror}",
            ) from exc
        server = site._server  # the bound socket tells the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("metrics.listening", host=self._host, port=self.port)

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
