"""Memory bounded under a message flood, part by part (the whole daemon under a real burst is
tests/faults/test_mqtt_flood.py): the heartbeat watcher keeps one deadline per node however many
heartbeats arrive, and the MQTT client's incoming queue coalesces heartbeats per topic, drops
QoS 0 messages past its limit (counted) and never a QoS 1 one."""

from __future__ import annotations

import asyncio
import tracemalloc

import aiomqtt
import paho.mqtt.client as paho

from healer.clock import VirtualClock
from healer.model import EventKind, NodeEvent
from healer.sources.heartbeat import HeartbeatPolicy, HeartbeatWatcher
from healer.sources.mqtt import _INCOMING_LIMIT, _Incoming
from healer.telemetry.metrics import EVENTS_DROPPED

POLICY = HeartbeatPolicy(interval=10.0, miss_after=3)


def dropped(reason: str) -> float:
    return EVENTS_DROPPED.labels(source="mqtt", reason=reason)._value.get()


async def test_heartbeat_watcher_keeps_one_deadline_per_node_under_a_flood() -> None:
    clock = VirtualClock(start=1000.0)
    reports: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        reports.append(event)

    watcher = HeartbeatWatcher(clock=clock, emit=emit, policy=POLICY)
    task = asyncio.create_task(watcher.run())
    try:
        nodes = [f"w-{i}" for i in range(4)]
        for node in nodes:
            await watcher.observe(NodeEvent("lab", node, EventKind.HEARTBEAT, 1000.0, "mqtt"))
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            for i in range(50_000):
                at = 1000.0 + (i + 1) * 1e-4  # 5 s of heartbeats, 10k per second
                node = nodes[i % 4]
                await watcher.observe(NodeEvent("lab", node, EventKind.HEARTBEAT, at, "mqtt"))
            grown, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # One heap entry per heartbeat would be several MB here.
        assert grown - base < 64 * 1024, grown - base
        # The deadlines still follow the latest heartbeat: missing 30 s after it, not after
        # the first one.
        await clock.advance(30.0)
        assert [r.status for r in reports] == ["False"] * 4
        await clock.advance(5.5)
        assert sorted((r.node, r.status) for r in reports[4:]) == [(n, "True") for n in nodes]
        assert all(r.since is not None and r.since > 1034.99 for r in reports[4:])
    finally:
        task.cancel()


def message(topic: str, mid: int, qos: int) -> aiomqtt.Message:
    raw = paho.MQTTMessage(mid=mid, topic=topic.encode())
    raw.payload = b'{"v":1}'
    raw.qos = qos
    return aiomqtt.Message._from_paho_message(raw)


HB = "healer/v1/lab/w-1/heartbeat"
HB2 = "healer/v1/lab/w-2/heartbeat"
HEALTH = "healer/v1/lab/w-1/health"


async def test_incoming_queue_coalesces_heartbeats_and_acknowledges_the_superseded() -> None:
    queue = _Incoming(maxsize=_INCOMING_LIMIT)
    before = dropped("superseded")
    for msg in [message(HB, 1, 1), message(HEALTH, 2, 1), message(HB2, 3, 0), message(HB, 4, 1)]:
        queue.put_nowait(msg)
    assert queue.qsize() == 3
    assert [(m.topic.value, m.mid) for m in [queue.get_nowait() for _ in range(3)]] == [
        (HEALTH, 2),
        (HB2, 3),
        (HB, 4),
    ]
    assert queue.empty()
    # The superseded QoS 1 heartbeat is acknowledged by the consumer, after the newer one.
    assert queue.take_superseded() == [(1, 1)]
    assert queue.take_superseded() == []
    assert dropped("superseded") - before == 1


async def test_incoming_queue_is_bounded_for_qos0_and_keeps_every_qos1_message() -> None:
    queue = _Incoming(maxsize=10)
    before = dropped("overflow")
    for i in range(10):
        queue.put_nowait(message(HEALTH, i + 1, 0))
    queue.put_nowait(message(HEALTH, 100, 0))  # past the limit, at most once: dropped
    queue.put_nowait(message(HEALTH, 101, 1))  # at least once: kept (the broker's window bounds)
    queue.put_nowait(message(HB, 102, 0))  # a new topic's heartbeat at QoS 0: dropped too
    assert dropped("overflow") - before == 2
    mids = [queue.get_nowait().mid for _ in range(queue.qsize())]
    assert mids == [*range(1, 11), 101]


async def test_incoming_queue_wakes_a_waiting_reader() -> None:
    queue = _Incoming(maxsize=10)
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(message(HB, 1, 0))
    assert (await asyncio.wait_for(getter, 1)).mid == 1
