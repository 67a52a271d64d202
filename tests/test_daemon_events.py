"""The composition root wires the event sources of issue 3: a Daemon in this process, with the fake
Kubernetes API, the lab cloud, mosquitto and the webhook on loopback.

Checks the wiring, not the parts (each has its own tests): a webhook alert reaches the node, a
blocking alert is audited and blocks the planner, an agent's reboot request is answered through
MQTT by the arbiter, and heartbeat absence is watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.config import parse_config
from healer.lab.apiserver.server import FakeApiServer
from healer.model import LABEL_POOL, NodeKey
from tests.plugins.mqtt import MosquittoBroker, free_port

Eventually = Callable[..., Awaitable[None]]


@pytest.mark.mosquitto
async def test_daemon_wires_webhook_mqtt_arbiter_and_heartbeats(
    fake_api: FakeApiServer,
    kubeconfig: Path,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    eventually: Eventually,
) -> None:
    port, ops_port = free_port(), free_port()
    config = parse_config(
        {
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "clientId": "daemon-wiring"},
            "webhook": {
                "listen": f"127.0.0.1:{port}",
                "metricsListen": f"127.0.0.1:{ops_port}",
                "allowUnauthenticated": True,
                "blockingAlerts": ["KubeAPIDown"],
                # The webhook sets only the conditions it is given (healer.config.provenance).
                "conditions": {"NodeDiskFailing": "NodeDiskFailing"},
            },
            "clusters": [
                {
                    "name": "lab",
                    "kubeconfig": str(kubeconfig),
                    "provider": {"plugin": "lab"},
                    "pools": [{"name": "workers", "size": 3}],
                }
            ],
        }
    )
    for i in (1, 2, 3):
        fake_api.add_node(f"w-{i}", {LABEL_POOL: "workers"})
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    daemon = Daemon(
        config,
        state_dir=tmp_path / "state",
        tuning=Tuning(recheck_interval=0.2, startup_timeout=10.0),
        on_ready=on_ready,
    )
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        await eventually(lambda: daemon.tracker is not None and daemon.tracker.knows("lab", "w-3"))
        assert daemon.heartbeats is not None and daemon.reboot_arbiter is not None

        url = f"http://127.0.0.1:{port}/v1/alertmanager/lab"
        firing = {
            "version": "4",
            "alerts": [
                {"status": "firing", "labels": {"alertname": "NodeDiskFailing", "node": "w-1"}},
                {"status": "firing", "labels": {"alertname": "KubeAPIDown"}},
            ],
        }
        async with aiohttp.ClientSession() as http, http.post(url, json=firing) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["accepted"] == 1
        # /healthz (the daemon's own answer) and /metrics: on their own listener only.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ops_port}/healthz") as resp:
                assert resp.status == 200 and (await resp.text()).startswith("ok: ")
            async with http.get(f"http://127.0.0.1:{ops_port}/metrics") as resp:
                assert "healer_webhook_connections" in await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status in (404, 405)

        def disk_failing() -> bool:
            obs = daemon.tracker.observation(NodeKey("lab", "w-1"))  # type: ignore[union-attr]
            return obs is not None and "NodeDiskFailing" in obs.conditions

        await eventually(disk_failing)
        assert daemon.blocks.active("lab", daemon.clock.now()) == ("KubeAPIDown",)
        assert daemon.store is not None
        assert [e.event for e in daemon.store.audit_log(event="alert.blocking")] == [
            "alert.blocking"
        ]
        assert daemon.planner.snapshot(config.clusters[0]).blocking_alerts == ("KubeAPIDown",)  # type: ignore[union-attr]
        # Kept in the state store for the next start.
        saved = daemon.store.alert_blocks("lab")
        assert [b.alert for b in saved] == ["KubeAPIDown"]

        # An agent asks to reboot w-2: a blocking alert fires, so the arbiter says no, over MQTT.
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="agent-w-2") as agent:
            await agent.subscribe("healer/v1/lab/w-2/reboot-permit", qos=1)
            await agent.publish("healer/v1/lab/w-2/heartbeat", b'{"v": 1}', qos=1)
            await agent.publish(
                "healer/v1/lab/w-2/reboot-request", b'{"v": 1, "id": "req-1"}', qos=1
            )
            async with asyncio.timeout(10):
                message = await anext(aiter(agent.messages))
            permit = json.loads(bytes(message.payload))  # type: ignore[arg-type]
        assert (permit["id"], permit["granted"], permit["reason"]) == (
            "req-1",
            False,
            "BlockedByAlert",
        )
        await eventually(lambda: NodeKey("lab", "w-2") in daemon.heartbeats.watching())  # type: ignore[union-attr]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
