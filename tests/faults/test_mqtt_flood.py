"""A burst of MQTT messages into a running daemon: its memory stays bounded and no state change
is lost.

A real mosquitto (tests/plugins/mqtt.py) and a real `healer run` subscribed to it. A publisher
sends heartbeats for the lab's nodes as fast as it can (at QoS 0, which no in-flight window
holds back, and at QoS 1), and every ``REQUEST_EVERY``-th message a reboot request with an id
of its own at QoS 1: a state change, which must reach the daemon however many heartbeats
surround it (its ``reboot.answered`` log line names the id). The daemon's peak resident memory
(``VmHWM`` in /proc/<pid>/status) must stay under ``PEAK_BOUND``: 300 MB for the full burst of
200k messages (`make faults`); the short burst of `make test` (20k) has a tenth of the growth
allowed over the memory the daemon had before the burst.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from healer.sources.mqtt_payload import topic_for
from healer.sources.mqtt_reboot import REBOOT_REQUEST, control_topic
from tests.faults.mqtt_section import mqtt_section
from tests.faults.world import LOOPBACK, fault_config, lab_world, scale, until
from tests.plugins.mqtt import MosquittoBroker, mosquitto_binary

MESSAGES = scale(20_000, 200_000)
REQUEST_EVERY = 1000  # one reboot request (a state change, QoS 1) among this many messages
MB = 1024 * 1024
PEAK_BOUND = 300 * MB  # the daemon's peak RSS through the full burst (issue 10)
# What the burst may add to the memory the daemon had before it: the full run's allowance is
# what 300 MB leaves over a daemon at rest (117 MB measured when the issue was filed); the short
# run gets its proportional share, and never less than 20 MB of fixed costs (queues, buffers).
GROWTH_BOUND = max(20 * MB, (300 - 117) * MB * MESSAGES // 200_000)
PACE = 10_000  # the publisher waits for the broker to take each 10,000th message
DRAIN_BOUND = scale(60.0, 300.0)  # seconds for the daemon to get through the burst


def vm(pid: int, field: str) -> int:
    """A VmXXX line of /proc/<pid>/status, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def scrape(port: int) -> dict[str, float]:
    """The daemon's MQTT counters, from its /metrics."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = {
        "received": r'^healer_events_received_total\{source="mqtt"\} (\S+)$',
        "superseded": r'^healer_events_dropped_total\{reason="superseded",source="mqtt"\} (\S+)$',
        "overflow": r'^healer_events_dropped_total\{reason="overflow",source="mqtt"\} (\S+)$',
    }
    out = {}
    for name, pattern in wanted.items():
        match = re.search(pattern, text, re.M)
        out[name] = float(match.group(1)) if match else 0.0
    return out


class Burst:
    """One paho client publishing the burst as fast as the broker takes it."""

    def __init__(self, broker: MosquittoBroker, nodes: list[str], qos: int) -> None:
        self._nodes = nodes
        self._qos = qos
        self.requests: list[str] = []
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}"
        )
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)
        connected = threading.Event()
        self._client.on_connect = lambda *args: connected.set()
        self._client.connect(LOOPBACK, broker.port)
        self._client.loop_start()
        assert connected.wait(10), "the publisher did not connect"

    def send(self, count: int) -> float:
        """Publish ``count`` messages; returns the seconds it took until the last was sent."""
        started = time.monotonic()
        last: paho.MQTTMessageInfo | None = None
        for i in range(count):
            node = self._nodes[i % len(self._nodes)]
            if i % REQUEST_EVERY == REQUEST_EVERY - 1:
                request = f"flood-{i:07d}"
                self.requests.append(request)
                payload = {"v": 1, "id": request, "reason": "flood test"}
                topic = control_topic("healer/v1", "lab", node, REBOOT_REQUEST)
                last = self._client.publish(topic, json.dumps(payload), qos=1)
            else:
                payload = {"v": 1, "ts": time.time()}
                topic = topic_for("healer/v1", "lab", node, "heartbeat")
                last = self._client.publish(topic, json.dumps(payload), qos=self._qos)
            if i % PACE == PACE - 1:
                # paho numbers the messages it holds with 16 bits: never hold more than that.
                last.wait_for_publish(timeout=DRAIN_BOUND)
        assert last is not None
        last.wait_for_publish(timeout=DRAIN_BOUND)
        return time.monotonic() - started

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class DeepBroker(MosquittoBroker):
    """mosquitto queueing without limit for a slow subscriber: by default it drops what goes
    past ``max_queued_messages`` (the test plugin's 10,000; mosquitto's own 1,000), at QoS 1
    too, and a loss at the broker would hide one in the daemon."""

    def write_config(self) -> Path:
        conf = super().write_config()
        lines = conf.read_text().splitlines()
        lines = [ln for ln in lines if not ln.startswith("max_queued_messages")]
        conf.write_text("\n".join([*lines, "max_queued_messages 0", "max_queued_bytes 0"]) + "\n")
        return conf


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto)")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    deep = DeepBroker(binary=binary, workdir=workdir)
    deep.start()
    try:
        yield deep
    finally:
        deep.stop()


def broker_drops(broker: MosquittoBroker) -> int:
    text = broker.log_file.read_text(errors="replace") if broker.log_file.exists() else ""
    return text.count("Outgoing messages are being dropped")


@pytest.mark.parametrize("qos", [0, 1])
async def test_mqtt_burst_keeps_memory_bounded(
    tmp_path: Path, broker: MosquittoBroker, qos: int
) -> None:
    top = {"mqtt": mqtt_section(broker, "flood"), "metrics": {}}

    async with lab_world(tmp_path / "lab", config=lambda kc: fault_config(kc, top=top)) as world:
        metrics_port = _metrics_port(world.config_path)
        daemon = await world.daemon()
        await daemon.ready()
        await until(
            lambda: daemon.logged("mqtt.subscribed"), 30, "the subscription", tail=daemon.tail
        )
        nodes = [n for pool in ("control-plane", "workers") for n in world.harness.pool_nodes(pool)]
        before = vm(daemon.pid, "VmRSS")
        burst = await asyncio.to_thread(Burst, broker, nodes, qos)
        try:
            seconds = await asyncio.to_thread(burst.send, MESSAGES)
        finally:
            await asyncio.to_thread(burst.close)
        wanted = set(burst.requests)

        def answered() -> set[str]:
            return {str(e.get("request")) for e in daemon.events("reboot.answered")}

        try:
            await until(
                lambda: wanted <= answered(),
                DRAIN_BOUND,
                "every reboot request of the burst to be answered",
                tail=daemon.tail,
            )
        finally:
            peak = vm(daemon.pid, "VmHWM")
            counters = await asyncio.to_thread(scrape, metrics_port)
            summary = {
                "messages": MESSAGES,
                "qos": qos,
                "publish_seconds": round(seconds, 1),
                "rss_before_mb": round(before / MB, 1),
                "peak_rss_mb": round(peak / MB, 1),
                "growth_mb": round((peak - before) / MB, 1),
                "growth_bound_mb": round(GROWTH_BOUND / MB, 1),
                "rss_after_mb": round(vm(daemon.pid, "VmRSS") / MB, 1),
                "requests_sent": len(wanted),
                "requests_lost": len(wanted - answered()),
                "broker_drop_warnings": broker_drops(broker),
                **counters,
            }
            print(json.dumps(summary, indent=2))
        assert peak < PEAK_BOUND, summary
        assert peak - before < GROWTH_BOUND, summary
        assert daemon.running, daemon.tail()
        rc, _ = await daemon.stop()
        assert rc == 0, daemon.tail()


def _metrics_port(config_path: Path) -> int:
    listen = yaml.safe_load(config_path.read_text())["metrics"]["listen"]
    return int(str(listen).rsplit(":", 1)[1])
