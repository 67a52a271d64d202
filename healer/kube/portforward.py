"""Port-forwarding through the Kubernetes API (``pods/portforward``), as ``kubectl port-forward``
and Cluster API reach a pod the management host cannot route to: the etcd static pods of a
control plane behind a firewall that lets through SSH and the API load balancer only.

:class:`PortForward` listens on a loopback port; each connection made to it opens one websocket
to ``/api/v1/namespaces/<ns>/pods/<pod>/portforward?ports=<port>`` (subprotocol
``v4.channel.k8s.io``: every binary frame starts with its channel byte, channel 0 carries the
data and channel 1 the errors, and the first frame of each channel only names the port), and
bytes are pumped both ways until either side closes. TLS inside the tunnel is the client's
(etcd's client certificate), end to end: the API server sees only ciphertext.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.stream import WsApiClient

log = structlog.get_logger("healer.kube")

DATA, ERROR = 0, 1
_CHUNK = 64 * 1024


class PortForward:
    """A loopback listener tunnelled to ``namespace/pod:port``. ``start()`` returns the local
    port; ``close()`` stops listening and ends the open tunnels."""

    def __init__(self, configuration: Any, *, namespace: str, pod: str, port: int) -> None:
        self._configuration = configuration
        self.namespace, self.pod, self.port = namespace, pod, port
        self._server: asyncio.Server | None = None
        self._tunnels: set[asyncio.Task[None]] = set()
        self.local_port = 0

    async def start(self) -> int:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.local_port = int(self._server.sockets[0].getsockname()[1])
        return self.local_port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tunnels):
            task.cancel()
        await asyncio.gather(*self._tunnels, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tunnels.add(task)
        try:
            await self._tunnel(reader, writer)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "kube.portforward_failed", pod=f"{self.namespace}/{self.pod}", error=str(exc)
            )
        finally:
            self._tunnels.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        api = WsApiClient(configuration=self._configuration)
        try:
            # Not preloaded: the websocket's context manager, typed as the str it would read.
            connect: Any = await CoreV1Api(api).connect_get_namespaced_pod_portforward(
                self.pod, self.namespace, ports=self.port, _preload_content=False
            )
            async with connect as ws:
                upstream = asyncio.create_task(_to_pod(reader, ws))
                try:
                    await _from_pod(ws, writer, f"{self.namespace}/{self.pod}:{self.port}")
                finally:
                    upstream.cancel()
                    await asyncio.gather(upstream, return_exceptions=True)
        finally:
            await api.close()


async def _to_pod(reader: asyncio.StreamReader, ws: Any) -> None:
    while data := await reader.read(_CHUNK):
        await ws.send_bytes(bytes([DATA]) + data)
    await ws.close()


async def _from_pod(ws: Any, writer: asyncio.StreamWriter, where: str) -> None:
    seen: set[int] = set()
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
            continue
        channel, payload = msg.data[0], msg.data[1:]
        if channel not in seen:  # the first frame of a channel names the port (2 bytes, LE)
            seen.add(channel)
            payload = payload[2:]
        if not payload:
            continue
        if channel == DATA:
            writer.write(payload)
            await writer.drain()
        elif channel == ERROR:
            log.warning(
                "kube.portforward_error", target=where, error=payload.decode(errors="replace")
            )
            return


class PortForwardApi:
    """The port-forwards of one cluster's API (a part of :class:`~healer.kube.client.KubeClient`)."""

    _api: Any

    def port_forward(self, *, namespace: str, pod: str, port: int) -> PortForward:
        return PortForward(self._api.configuration, namespace=namespace, pod=pod, port=port)
