"""The MQTT broker restarts while QoS 1 events are queued for the daemon: none is lost.

A real mosquitto with persistence (tests/plugins/mqtt.py) and a real `healer run` subscribed
to it in a persistent session. An agent-like client (the node agent's own paho transport,
publishing at QoS 1 and publishing again whenever the broker did not acknowledge, as the agent
does) sends reboot requests, each with its own id, in phases:

* while the daemon reads;
* while the daemon is frozen (SIGSTOP): the broker queues them for its session, and fills its
  in-flight window with ones the daemon never acknowledges;
* while the broker restarts (SIGTERM: mosquitto saves the session and its queue, then starts
  again on the same port): the agent publishes again until the new broker acknowledges.

Then the daemon is thawed. Every id must reach the daemon: its `reboot.answered` log line names
the request id of every request it handled (duplicates are allowed, QoS 1 is at least once;
losses are not). Reboot requests are the agent's messages that carry an id of their own, which
is what makes a loss visible. One restart in `make test`, four in `make faults`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from healer.agent.config import Config
from healer.agent.errors import MqttError
from healer.agent.paho_mqtt import PahoTransport
from healer.sources.mqtt_reboot import REBOOT_REQUEST, control_topic
from tests.faults.world import LOOPBACK, fault_config, lab_world, scale, until
from tests.plugins.mqtt import MosquittoBroker

RESTARTS = scale(1, 4)
PER_PHASE = scale(100, 400)  # requests published in each phase
PUBLISH_BOUND = 60.0  # one request acknowledged by the broker within this, restarts included
SEEN_BOUND = 60.0
RESTART_PAUSE = 0.005  # between the requests published while the broker restarts


class Agent:
    """The node agent's MQTT transport, publishing reboot requests at QoS 1 until acknowledged."""

    def __init__(self, broker: MosquittoBroker, node: str) -> None:
        self.topic = control_topic("healer/v1", "lab", node, REBOOT_REQUEST)
        self._transport = PahoTransport(
            Config(
                {
                    "HEALER_MQTT_HOST": LOOPBACK,
                    "HEALER_MQTT_PORT": str(broker.port),
                    "HEALER_CLUSTER": "lab",
                    "HEALER_NODE": node,
                    "HEALER_PUBLISH_TIMEOUT": "2",
                },
                "the fault test's agent",
            )
        )
        self._transport.connect()
        self.sent: list[str] = []
        self.republished = 0
        self._lock = threading.Lock()

    def publish(self, ids: list[str], pause: float = 0.0) -> None:
        """Blocking: each request published and acknowledged, in order, ``pause`` s apart."""
        for request_id in ids:
            time.sleep(pause)
            payload = json.dumps({"v": 1, "id": request_id, "reason": "fault suite"}).encode()
            deadline = time.monotonic() + PUBLISH_BOUND
            while True:
                try:
                    self._transport.publish(self.topic, payload, qos=1)
                    break
                except MqttError:
                    if time.monotonic() > deadline:
                        raise
                    with self._lock:
                        self.republished += 1
                    time.sleep(0.05)
            with self._lock:
                self.sent.append(request_id)

    def close(self) -> None:
        self._transport.close()


async def test_broker_restart_loses_no_queued_qos1_event(
    tmp_path: Path, mosquitto_restartable: MosquittoBroker
) -> None:
    broker = mosquitto_restartable

    def config(kubeconfig: Path) -> dict[str, Any]:
        mqtt = {"host": LOOPBACK, "port": broker.port, "clientId": "healer-faults"}
        return fault_config(kubeconfig, top={"mqtt": mqtt})

    async with lab_world(tmp_path / "lab", config=config) as world:
        daemon = await world.daemon()
        await daemon.ready()
        await until(
            lambda: daemon.logged("mqtt.subscribed"), 30, "the subscription", tail=daemon.tail
        )
        node = world.harness.pool_nodes("workers")[0]
        agent = await asyncio.to_thread(Agent, broker, node)
        counter = iter(range(1_000_000))
        phases: dict[str, int] = {"daemon_reading": 0, "daemon_frozen": 0, "broker_restarting": 0}

        def batch() -> list[str]:
            return [f"fault-{next(counter):06d}" for _ in range(PER_PHASE)]

        try:
            for _ in range(RESTARTS):
                ids = batch()
                await asyncio.to_thread(agent.publish, ids)
                phases["daemon_reading"] += len(ids)
                os.kill(daemon.pid, signal.SIGSTOP)
                try:
                    ids = batch()
                    await asyncio.to_thread(agent.publish, ids)
                    phases["daemon_frozen"] += len(ids)
                    ids = batch()
                    await asyncio.gather(
                        asyncio.to_thread(broker.restart),
                        # Spread out so that the restart falls in the middle of them.
                        asyncio.to_thread(agent.publish, ids, RESTART_PAUSE),
                    )
                    phases["broker_restarting"] += len(ids)
                finally:
                    os.kill(daemon.pid, signal.SIGCONT)
            ids = batch()
            await asyncio.to_thread(agent.publish, ids)
            phases["daemon_reading"] += len(ids)
        finally:
            await asyncio.to_thread(agent.close)
        sent = set(agent.sent)

        try:
            await until(
                lambda: sent <= set(daemon.answered_requests()),
                SEEN_BOUND,
                "every request to reach the daemon",
                tail=daemon.tail,
            )
        finally:
            handled = daemon.answered_requests()
            lost = sorted(sent - set(handled))
            summary = {
                "published": len(sent),
                "phases": phases,
                "broker_restarts": RESTARTS,
                "published_again_by_the_agent": agent.republished,
                "handled_by_the_daemon": len(handled),
                "duplicates": len(handled) - len(set(handled)),
                "lost": len(lost),
            }
            print(json.dumps(summary, indent=2))
        assert not lost, (summary, lost[:20])
        assert daemon.running, daemon.tail()
        rc, _ = await daemon.stop()
        assert rc == 0, daemon.tail()
