"""The MQTT source's per-message path, without a broker: what issue 12 trimmed stays trimmed.

- ``_lean_publish`` hands ``on_message`` the same message paho's own decoder would, for every
  protocol and QoS, and builds no ``Properties`` object for a PUBLISH that has none;
- ``_read_in_bursts`` has one wake-up of the socket reader read every packet waiting (up to a
  bound), not one packet per event-loop round;
- ``_consume`` takes the messages already waiting straight from the incoming queue (aiomqtt's
  iterator, a task and an ``asyncio.wait`` per message, only when it is empty), acknowledges each
  after ``emit`` and ends when the iterator does (the link is gone);
- the topic cache of the payload parser is bounded and keyed by prefix.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.config import MqttConfig
from healer.model import EventKind, NodeEvent
from healer.sources import mqtt as mqtt_module
from healer.sources import mqtt_payload
from healer.sources.mqtt import (
    _INCOMING_LIMIT,
    _READ_BURST,
    MqttSource,
    _Incoming,
    _lean_publish,
    _paho,
    _read_in_bursts,
    _trim,
)
from healer.sources.mqtt_payload import BAD_TOPIC, Rejection, parse_message

TOPIC = "healer/v1/prod/w-1/heartbeat"
PAYLOAD = b'{"v": 1}'


def publish_packet(
    *, qos: int, v5: bool, topic: str = TOPIC, props: bytes = b"", mid: int = 7
) -> tuple[int, bytes]:
    """(first byte, rest after the remaining length) of a PUBLISH, as paho's reader stores it."""
    body = struct.pack("!H", len(topic)) + topic.encode()
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        body += bytes([len(props)]) + props
    return 0x30 | (qos << 1) | 0x01, body + PAYLOAD  # retain set: it must come through


def received(client: paho.Client, command: int, packet: bytes, handle: Any) -> paho.MQTTMessage:
    got: list[paho.MQTTMessage] = []
    client.on_message = lambda _c, _u, message: got.append(message)
    client._in_packet = {"command": command, "packet": packet}  # what _packet_read leaves
    assert handle() == paho.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(got) == 1
    return got[0]


def fields(message: paho.MQTTMessage) -> tuple[Any, ...]:
    props = message.properties
    return (
        message.topic,
        message.payload,
        message.qos,
        message.mid,
        message.retain,
        message.dup,
        None if props is None else (props.packetType, str(props)),
    )


@pytest.mark.parametrize(
    ("v5", "qos", "props"),
    [
        (True, 0, b""),
        (True, 1, b""),
        (True, 1, bytes([0x01, 0x01])),  # Payload Format Indicator
        (True, 0, bytes([0x02, 0, 0, 0, 60])),  # Message Expiry Interval
        (False, 0, b""),
        (False, 1, b""),
    ],
)
def test_lean_publish_hands_out_what_paho_would(v5: bool, qos: int, props: bytes) -> None:
    protocol = paho.MQTTv5 if v5 else paho.MQTTv311
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol)
    client.manual_ack_set(True)
    command, packet = publish_packet(qos=qos, v5=v5, props=props)
    expected = fields(received(client, command, packet, client._handle_publish))
    _lean_publish(client)
    assert fields(received(client, command, packet, client._handle_publish)) == expected


def test_lean_publish_builds_no_properties_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.manual_ack_set(True)
    _lean_publish(client)
    built: list[object] = []
    real_init = Properties.__init__

    def counted(self: Properties, packet_type: int) -> None:
        built.append(packet_type)
        real_init(self, packet_type)

    monkeypatch.setattr(Properties, "__init__", counted)
    for mid in range(1, 101):
        command, packet = publish_packet(qos=1, v5=True, mid=mid)
        message = received(client, command, packet, client._handle_publish)
        assert message.mid == mid
    assert built == []
    # A message that does carry properties still gets them decoded (by paho).
    command, packet = publish_packet(qos=1, v5=True, props=bytes([0x01, 0x01]))
    received(client, command, packet, client._handle_publish)
    assert built == [PacketTypes.PUBLISH]


def test_lean_publish_leaves_qos2_and_topic_aliases_to_paho() -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.manual_ack_set(True)
    calls: list[str] = []
    original = client._handle_publish

    def spy() -> paho.MQTTErrorCode:
        calls.append("paho")
        return original()

    client._handle_publish = spy  # type: ignore[method-assign]
    _lean_publish(client)
    client.on_message = lambda *_: None
    for command, packet in (
        publish_packet(qos=2, v5=True),
        # An empty topic with a Topic Alias property (0x23): paho's to resolve or refuse.
        publish_packet(qos=1, v5=True, topic="", props=bytes([0x23, 0x00, 0x01])),
    ):
        client._in_packet = {"command": command, "packet": packet}
        client._handle_publish()
    assert calls == ["paho", "paho"]


def test_one_wake_up_of_the_reader_reads_what_is_waiting_up_to_the_burst() -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.manual_ack_set(True)
    _lean_publish(client)
    _read_in_bursts(client)
    got: list[int] = []
    client.on_message = lambda _c, _u, message: got.append(message.mid)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours  # what paho reads from once connected
    try:
        total = _READ_BURST + 8
        for mid in range(1, total + 1):
            command, packet = publish_packet(qos=1, v5=True, mid=mid)
            broker.sendall(bytes([command, len(packet)]) + packet)
        assert client.loop_read() == paho.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert got == list(range(1, _READ_BURST + 1))  # a burst, bounded
        assert client.loop_read() == paho.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert got == list(range(1, total + 1))  # the rest, stopping where a read would block
        assert client.loop_read() == paho.MQTTErrorCode.MQTT_ERR_SUCCESS  # nothing waiting
        assert len(got) == total
    finally:
        client._sock = None
        ours.close()
        broker.close()


async def test_the_source_trims_its_clients_and_falls_back_on_an_unknown_paho(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = MqttSource(
        config=MqttConfig(clientId="trim-test"),
        known_clusters=["prod"],
        clock=VirtualClock(0.0),
        emit=lambda event: None,  # type: ignore[arg-type,return-value]
    )
    client = _paho(source._new_client())
    # The installed paho has the internals the trims use, so they are in force.
    assert "_handle_publish" in vars(client) and "loop_read" in vars(client)

    monkeypatch.setattr(mqtt_module, "_PAHO_INTERNALS", ("_renamed_by_a_later_paho",))
    odd = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    with capture_logs() as logs:
        _trim(odd)
    assert [e["event"] for e in logs] == ["mqtt.paho_untrimmed"]
    assert "_handle_publish" not in vars(odd) and "loop_read" not in vars(odd)


class FakePaho:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def is_connected(self) -> bool:
        return True

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


class FakeClient:
    """What _consume touches of aiomqtt.Client: its queue, its paho client, its iterator."""

    def __init__(self, queue: _Incoming) -> None:
        self._queue = queue
        self._client = FakePaho()
        self.waits = 0
        self.messages = self._messages()

    async def _messages(self) -> AsyncIterator[aiomqtt.Message]:
        self.waits += 1
        raise aiomqtt.MqttError("Disconnected during message iteration")
        yield  # an async generator


def message(node: str, mid: int) -> aiomqtt.Message:
    return aiomqtt.Message(
        topic=f"healer/v1/prod/{node}/heartbeat",
        payload=PAYLOAD,
        qos=1,
        retain=False,
        mid=mid,
        properties=None,
    )


async def test_consume_takes_what_is_waiting_without_a_wait_per_message() -> None:
    queue = _Incoming(_INCOMING_LIMIT)
    for i in range(50):
        queue.put_nowait(message(f"w-{i}", i + 1))
    client = FakeClient(queue)
    acked_at_emit: list[int] = []

    async def emit(event: NodeEvent) -> None:
        acked_at_emit.append(len(client._client.acked))

    source = MqttSource(
        config=MqttConfig(clientId="consume-test"),
        known_clusters=["prod"],
        clock=VirtualClock(1_700_000_000.0),
        emit=emit,
    )
    with pytest.raises(aiomqtt.MqttError):
        await source._consume(client)  # type: ignore[arg-type]
    assert client._client.acked == list(range(1, 51))  # each one, in order
    assert acked_at_emit == list(range(50))  # ... only after its emit returned
    assert client.waits == 1  # the iterator only once the queue was empty: it ends the session


def test_the_topic_cache_is_bounded_and_keyed_by_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_payload, "_TOPICS", {})
    monkeypatch.setattr(mqtt_payload, "_TOPICS_MAX", 8)
    for i in range(50):
        event = parse_message(
            f"healer/v1/prod/w-{i}/heartbeat", PAYLOAD, prefix="healer/v1", now=1e9, max_payload=64
        )
        assert isinstance(event, NodeEvent) and event.kind is EventKind.HEARTBEAT
        assert len(mqtt_payload._TOPICS) <= 8
    # Cached under one prefix, the same topic is still checked against another.
    assert isinstance(
        parse_message(TOPIC, PAYLOAD, prefix="healer/v1", now=1e9, max_payload=64), NodeEvent
    )
    other = parse_message(TOPIC, PAYLOAD, prefix="other/v1", now=1e9, max_payload=64)
    assert isinstance(other, Rejection) and other.reason == BAD_TOPIC
