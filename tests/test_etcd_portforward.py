"""etcd.mode portforward: healer reaches each etcd member through the Kubernetes API's
pods/portforward websocket (v4.channel.k8s.io), as Cluster API does, with TLS end to end.

The API side is a small aiohttp server speaking that protocol (the port in the first frame of
each channel, data on channel 0), tunnelling ``etcd-<node>`` to the real member of
tests/etcd_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from healer.config import EtcdConfig
from healer.etcd import EtcdClient
from healer.kube.connection import load_configuration
from healer.kube.portforward import PortForward
from healer.kube.records import NodeInfo
from healer.model import LABEL_CONTROL_PLANE
from healer.provisioning.etcd_access import PortForwardEndpoints
from tests.etcd_cluster import MEMBERS, EtcdCluster
from tests.etcd_cluster import etcd_cluster as etcd_cluster


async def _portforward_api(etcd: EtcdCluster, seen: list[str]) -> web.AppRunner:
    async def portforward(request: web.Request) -> web.WebSocketResponse:
        pod = request.match_info["pod"]
        seen.append(f"{request.match_info['ns']}/{pod}:{request.query['ports']}")
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        proc = etcd.procs[pod.removeprefix("etcd-")]
        port = int(proc.client_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wire_port = int(request.query["ports"]).to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + wire_port)
        await ws.send_bytes(b"\x01" + wire_port)

        async def down() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)
            await ws.close()

        task = asyncio.create_task(down())
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00":
                writer.write(msg.data[1:])
                await writer.drain()
        task.cancel()
        writer.close()
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/portforward", portforward)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


class Kube:
    """The two things PortForwardEndpoints asks of the cluster's KubeClient."""

    def __init__(self, configuration: object) -> None:
        self.configuration = configuration

    async def list_nodes(self) -> tuple[list[NodeInfo], str]:
        nodes = [NodeInfo(n, {LABEL_CONTROL_PLANE: ""}, False, {}, (), 0.0, "1") for n in MEMBERS]
        return nodes, "1"

    def port_forward(self, *, namespace: str, pod: str, port: int) -> PortForward:
        return PortForward(self.configuration, namespace=namespace, pod=pod, port=port)


@pytest.fixture
async def api(etcd_cluster: EtcdCluster, tmp_path: Path) -> AsyncIterator[tuple[Path, list[str]]]:
    seen: list[str] = []
    runner = await _portforward_api(etcd_cluster, seen)
    port = runner.addresses[0][1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t0ken}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    yield kubeconfig, seen
    await runner.cleanup()


async def test_portforward_mode_reads_members_and_health_through_the_api(
    etcd_cluster: EtcdCluster, api: tuple[Path, list[str]]
) -> None:
    kubeconfig, seen = api
    cfg = EtcdConfig(mode="portforward")
    endpoints = PortForwardEndpoints(Kube(await load_configuration(kubeconfig)), cfg)
    client = EtcdClient(
        cluster="lab", endpoints=endpoints, tls=etcd_cluster.client_tls(), timeout=3.0
    )
    try:
        async with asyncio.timeout(20):
            view = await client.view()
        assert view.reachable, view.error
        assert sorted(m.name for m in view.members) == sorted(MEMBERS)
        assert view.healthy == 3 and view.leader is not None
        assert {"kube-system/etcd-cp-1:2379", "kube-system/etcd-cp-3:2379"} <= set(seen)
        etcd_cluster.kill("cp-2")
        async with asyncio.timeout(20):
            view = await client.view()
        assert view.healthy == 2 and view.member("cp-2") is not None
    finally:
        with contextlib.suppress(Exception):
            await client.close()
