"""MqttSource, MqttPublisher and EmbeddedBroker against real brokers, plus the reconnect logic.

Broker tests isolate themselves by client id on a module-wide mosquitto; the one that restarts
the broker has its own. Every wait is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from healer.clock import RealClock, VirtualClock
from healer.config import MqttConfig, SecretRef
from healer.lab.broker import EmbeddedBroker
from healer.model import EventKind, NodeEvent
from healer.sources.mqtt import ConnectionState, MqttSource, Reconnect, stay_connected
from healer.sources.mqtt_publish import MqttPublisher
from healer.telemetry.metrics import REGISTRY
from tests.plugins.mqtt import MOSQUITTO_PASSWORD, MOSQUITTO_USER, MosquittoBroker

PREFIX = "healer/v1"
WAIT = 10.0  # generous upper bound for anything that should take milliseconds on loopback


def fast_reconnect() -> Reconnect:
    return Reconnect(first=0.05, cap=0.3, stable_after=5.0, rng=random.Random(7))


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "healer_events_rejected_total", {"source": "mqtt", "reason": reason}
    )
    return value or 0.0


class Harness:
    """Runs one MqttSource and records what it emits and reports."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        known_clusters: Iterable[str] = ("prod",),
        is_known_node: Callable[[str, str], bool] | None = None,
        emit: Callable[[NodeEvent], Any] | None = None,
    ) -> None:
        self.events: list[NodeEvent] = []
        self.states: list[ConnectionState] = []
        self._changed = asyncio.Event()
        self._custom_emit = emit
        self.source = MqttSource(
            config=config,
            known_clusters=tuple(known_clusters),
            clock=RealClock(),
            emit=self._emit,
            is_known_node=is_known_node,
            on_state=self._on_state,
            reconnect=fast_reconnect(),
        )

    async def _emit(self, event: NodeEvent) -> None:
        if self._custom_emit is not None:
            await self._custom_emit(event)
        self.events.append(event)
        self._changed.set()

    def _on_state(self, state: ConnectionState) -> None:
        self.states.append(state)
        self._changed.set()

    async def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_events(self, n: int) -> list[NodeEvent]:
        await self.wait(lambda: len(self.events) >= n)
        return self.events

    async def wait_subscribed(self) -> None:
        await self.wait(lambda: self.source.state.reason == "subscribed")

    def nodes(self) -> set[str]:
        return {e.node for e in self.events}

    @contextlib.asynccontextmanager
    async def running(self, *, wait_subscribed: bool = True) -> AsyncIterator[Harness]:
        task = asyncio.create_task(self.source.run())
        try:
            if wait_subscribed:
                await self.wait_subscribed()
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(WAIT):
                    await task
        assert self.source.state == ConnectionState(connected=False, reason="stopped")


def config_for(
    broker: MosquittoBroker | EmbeddedBroker, client_id: str, **extra: Any
) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=broker.port, clientId=client_id, **extra)


async def publish_raw(port: int, messages: Iterable[tuple[str, bytes]], **client_args: Any) -> None:
    async with asyncio.timeout(WAIT), aiomqtt.Client("127.0.0.1", port, **client_args) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def heartbeat(node: str, cluster: str = "prod") -> tuple[str, bytes]:
    return f"{PREFIX}/{cluster}/{node}/heartbeat", b'{"v": 1}'


# -- against mosquitto ---------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_events_flow_and_bad_messages_are_rejected(mosquitto: MosquittoBroker) -> None:
    reasons = [
        "bad_json",
        "unknown_cluster",
        "unknown_channel",
        "unknown_node",
        "too_large",
        "condition_not_owned",
    ]
    before = {r: rejected(r) for r in reasons}
    secret_junk = b"not json: do-not-log-this-payload"
    harness = Harness(
        config_for(mosquitto, "flow"), is_known_node=lambda cluster, node: node != "stranger"
    )
    with capture_logs() as logs:
        async with harness.running():
            await publish_raw(
                mosquitto.port,
                [
                    heartbeat("node-1"),
                    (f"{PREFIX}/prod/node-1/heartbeat", secret_junk),
                    heartbeat("node-1", cluster="staging"),
                    (f"{PREFIX}/prod/node-1/metrics", b'{"v": 1}'),
                    heartbeat("stranger"),
                    (
                        f"{PREFIX}/prod/node-1/heartbeat",
                        b'{"v": 1, "pad": "' + b"x" * 20000 + b'"}',
                    ),
                    # Only the Kubernetes API may set Ready (healer.config.provenance).
                    (
                        f"{PREFIX}/prod/node-2/health",
                        b'{"v": 1, "condition": "Ready", "status": "False", "reason": "Forged"}',
                    ),
                    (
                        f"{PREFIX}/prod/node-2/health",
                        b'{"v": 1, "condition": "RebootRequired", "status": "False", '
                        b'"reason": "Kubelet"}',
                    ),
                ],
            )
            events = await harness.wait_events(2)
    # Messages are handled in order, so every rejection was counted before the last event.
    assert [(e.node, e.kind) for e in events] == [
        ("node-1", EventKind.HEARTBEAT),
        ("node-2", EventKind.CONDITION),
    ]
    assert (events[1].condition, events[1].status) == ("RebootRequired", "False")
    assert events[1].detail == {"reason": "Kubelet"}
    assert {r: rejected(r) - before[r] for r in reasons} == dict.fromkeys(reasons, 1.0)
    rejections = [entry for entry in logs if entry["event"] == "mqtt.rejected"]
    assert sorted(entry["reason"] for entry in rejections) == sorted(reasons)
    for entry in rejections:
        assert entry["topic"].startswith(PREFIX) and entry["log_level"] == "warning"
        assert "payload" not in entry
    assert "do-not-log-this-payload" not in repr(logs)
    [forged] = [e for e in rejections if e["reason"] == "condition_not_owned"]
    assert (forged["cluster"], forged["node"], forged["condition"], forged["source"]) == (
        "prod",
        "node-2",
        "Ready",
        "mqtt",
    )


@pytest.mark.mosquitto
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_messages_sent_while_down_arrive_after_restart(
    mosquitto: MosquittoBroker, protocol: str
) -> None:
    config = config_for(mosquitto, f"offline-{protocol}", protocol=protocol)
    async with Harness(config).running():
        pass  # the first connection creates the persistent session and its subscription
    await publish_raw(mosquitto.port, [heartbeat(f"node-{i}") for i in range(5)])
    harness = Harness(config)
    async with harness.running():
        events = await harness.wait_events(5)
    assert [e.node for e in events] == [f"node-{i}" for i in range(5)]


@pytest.mark.mosquitto
async def test_message_is_acknowledged_only_after_emit_returns(mosquitto: MosquittoBroker) -> None:
    # The first source "crashes" (is cancelled) inside emit; had paho acknowledged the message
    # on receipt, the broker would consider it delivered and the second source would get nothing.
    config = config_for(mosquitto, "ack-after-emit")
    entered = asyncio.Event()

    async def hang(event: NodeEvent) -> None:
        entered.set()
        await asyncio.Event().wait()

    async with Harness(config, emit=hang).running():
        await publish_raw(mosquitto.port, [heartbeat("node-7")])
        async with asyncio.timeout(WAIT):
            await entered.wait()
    harness = Harness(config)
    async with harness.running():
        events = await harness.wait_events(1)
    assert events[0].node == "node-7"


@pytest.mark.mosquitto
async def test_broker_restart_loses_no_qos1_event(
    mosquitto_restartable: MosquittoBroker,
) -> None:
    broker = mosquitto_restartable
    config = config_for(broker, "restart")
    harness = Harness(config)
    publisher = MqttPublisher(
        host="127.0.0.1",
        port=broker.port,
        prefix=PREFIX,
        cluster="prod",
        client_id="restart-agent",
        reconnect=fast_reconnect(),
    )
    async with publisher:
        async with harness.running():
            for i in range(30):
                if i == 10:
                    # Mid-stream: the source and the publisher both lose the broker.
                    await asyncio.to_thread(broker.restart)
                async with asyncio.timeout(WAIT):
                    await publisher.publish(f"node-{i}", "heartbeat", {"seq": i})
            await harness.wait(lambda: len(harness.nodes()) == 30)
            assert any(s.reason == "connection_lost" for s in harness.states)
        # Queued for the absent source, then kept across a restart by mosquitto's persistence.
        for i in range(30, 40):
            async with asyncio.timeout(WAIT):
                await publisher.publish(f"node-{i}", "heartbeat", {"seq": i})
        await asyncio.to_thread(broker.restart)
        async with harness.running():
            await harness.wait(lambda: len(harness.nodes()) == 40)
    assert harness.nodes() == {f"node-{i}" for i in range(40)}


@pytest.mark.mosquitto
async def test_wrong_password_logs_clearly_and_keeps_retrying(
    mosquitto_secure: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-password-do-not-log"
    monkeypatch.setenv("HEALER_TEST_MQTT_PASSWORD", wrong)
    config = config_for(
        mosquitto_secure,
        "auth",
        username=MOSQUITTO_USER,
        password=SecretRef(env="HEALER_TEST_MQTT_PASSWORD"),
    )
    harness = Harness(config)
    with capture_logs() as logs:
        async with harness.running(wait_subscribed=False):

            def failures() -> list[MutableMapping[str, Any]]:
                return [e for e in logs if e["event"] == "mqtt.auth_failed"]

            async with asyncio.timeout(WAIT):
                # Repeated failures do not change the state, so there is nothing to wait on.
                while len(failures()) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert not harness.source.connected
            assert harness.source.state.reason == "auth_failed"
            entry = failures()[0]
            assert entry["log_level"] == "error"
            assert entry["broker"] == f"127.0.0.1:{mosquitto_secure.port}"
            assert entry["username"] == MOSQUITTO_USER
            assert entry["retry_in"] > 0
            # The secret is read on every attempt, so fixing it heals without a restart.
            monkeypatch.setenv("HEALER_TEST_MQTT_PASSWORD", MOSQUITTO_PASSWORD)
            await harness.wait_subscribed()
    assert wrong not in repr(logs)
    assert MOSQUITTO_PASSWORD not in repr(logs)


@pytest.mark.mosquitto
async def test_tls_with_password(mosquitto_secure: MosquittoBroker, tmp_path: Path) -> None:
    assert mosquitto_secure.tls_port is not None and mosquitto_secure.tls_ca is not None
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(MOSQUITTO_PASSWORD + "\n")
    config = MqttConfig(
        host="127.0.0.1",
        port=mosquitto_secure.tls_port,
        clientId="tls",
        username=MOSQUITTO_USER,
        password=SecretRef(file=password_file),
        tlsCa=mosquitto_secure.tls_ca,
    )
    harness = Harness(config)
    async with harness.running():
        await publish_raw(
            mosquitto_secure.tls_port,
            [heartbeat("node-tls")],
            username=MOSQUITTO_USER,
            password=MOSQUITTO_PASSWORD,
            tls_params=aiomqtt.TLSParameters(ca_certs=str(mosquitto_secure.tls_ca)),
        )
        events = await harness.wait_events(1)
    assert events[0].node == "node-tls"


# -- against the embedded amqtt broker ----------------------------------------------------


async def test_embedded_broker_end_to_end() -> None:
    async with EmbeddedBroker() as broker:
        assert broker.port > 0
        config = config_for(broker, "lab-healer", protocol="3.1.1", username="healer")
        harness = Harness(config)
        async with MqttPublisher(
            host="127.0.0.1",
            port=broker.port,
            prefix=PREFIX,
            cluster="prod",
            client_id="lab-agent",
            username="agent",
            reconnect=fast_reconnect(),
        ) as publisher:
            async with harness.running():
                await publisher.publish("node-1", "reboot", {"event": "started"})
                await harness.wait_events(1)
            # amqtt queues for a stopped subscriber only because it presented a user name.
            await publisher.publish("node-2", "upgrade", {"event": "finished"})
            async with harness.running():
                await harness.wait_events(2)
    assert [(e.node, e.kind) for e in harness.events] == [
        ("node-1", EventKind.REBOOT_STARTED),
        ("node-2", EventKind.UPGRADE_FINISHED),
    ]


# -- against a broker that never acknowledges what healer publishes ------------------------


async def test_publish_does_not_wait_for_the_brokers_puback() -> None:
    # The arbiter answers from inside the consumer: an answer that waited for a PUBACK which
    # never comes (the broker restarted unnoticed) held up every read for aiomqtt's 10 s.
    published = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind = (await reader.readexactly(1))[0] >> 4
                length, shift = 0, 0
                while (byte := (await reader.readexactly(1))[0]) & 0x80:
                    length, shift = length | (byte & 0x7F) << shift, shift + 7
                body = await reader.readexactly(length | byte << shift)
                if kind == 1:  # CONNECT: accepted, MQTT 5, no properties
                    writer.write(bytes([0x20, 3, 0, 0, 0]))
                elif kind == 8:  # SUBSCRIBE: granted QoS 1 for its packet id
                    writer.write(bytes([0x90, 4, body[0], body[1], 0, 1]))
                elif kind == 3:  # PUBLISH: never acknowledged
                    published.set()
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        harness = Harness(MqttConfig(host="127.0.0.1", port=port, client_id="no-puback"))
        async with harness.running():
            async with asyncio.timeout(2.0):
                await harness.source.publish(f"{PREFIX}/prod/node-1/reboot-permit", b"{}")
                await published.wait()


# -- reconnection logic, in virtual time ---------------------------------------------------


async def test_waits_grow_cap_jitter_and_restart_only_after_a_stable_connection() -> None:
    """Sessions that fail at once, then one that holds past stable_after, then one that flaps."""
    clock = VirtualClock(start=0.0)
    # How long each session stays connected before its link drops (None: never connects).
    plan: list[float | None] = [None, None, None, None, None, None, 5.0, 40.0, 1.0]
    retries: list[tuple[str | None, float]] = []

    async def session(connected: Callable[[], None]) -> None:
        up = plan.pop(0) if plan else None
        if up is None:
            raise aiomqtt.MqttError("refused")
        connected()
        await clock.sleep(up)
        raise aiomqtt.MqttError("lost")

    task = asyncio.create_task(
        stay_connected(
            session,
            clock=clock,
            reconnect=Reconnect(first=1.0, cap=8.0, jitter=0.5, stable_after=30.0),
            retry_on=(aiomqtt.MqttError,),
            on_retry=lambda exc, delay: retries.append((str(exc) if exc else None, delay)),
        )
    )
    for _ in range(40):
        await clock.advance(10.0)
        if len(retries) >= 10:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    bases = [
        1, 2, 4, 8, 8, 8,  # refused six times: doubling up to the cap
        8,  # up 5 s, less than stable_after: a flapping link keeps backing off
        1,  # up 40 s: stable, the next outage starts from the first wait again
        2,  # up 1 s after that: the count goes on from there
        4,
    ]  # fmt: skip
    assert len(retries) >= len(bases)
    for (_, delay), base in zip(retries, bases, strict=False):
        assert base * 0.5 <= delay <= base, (retries, bases)
    assert [e for e, _ in retries[:8]] == ["refused"] * 6 + ["lost"] * 2


async def test_stay_connected_waits_on_the_clock_between_attempts() -> None:
    clock = VirtualClock(start=0.0)
    attempts: list[float] = []
    retries: list[tuple[str | None, float]] = []

    async def session(connected: Callable[[], None]) -> None:
        attempts.append(clock.now())
        if len(attempts) == 3:
            return  # a session that simply ends is reconnected too, reported without an error
        raise aiomqtt.MqttError("refused")

    task = asyncio.create_task(
        stay_connected(
            session,
            clock=clock,
            reconnect=Reconnect(first=1.0, cap=4.0, jitter=0.0),
            retry_on=(aiomqtt.MqttError,),
            on_retry=lambda exc, delay: retries.append((str(exc) if exc else None, delay)),
        )
    )
    await clock.advance(20.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0]
    assert [d for _, d in retries][:5] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert [e for e, _ in retries][:3] == ["refused", "refused", None]


async def test_stay_connected_lets_bugs_through() -> None:
    async def session(connected: Callable[[], None]) -> None:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        await stay_connected(
            session,
            clock=VirtualClock(),
            reconnect=Reconnect(),
            retry_on=(aiomqtt.MqttError,),
            on_retry=lambda exc, delay: None,
        )
