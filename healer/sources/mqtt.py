"""The MQTT source: a thin adapter from a broker subscription to :class:`NodeEvent`.

Owns the connection to the broker (protocol, persistent session, credentials, TLS), the
reconnection loop with backoff, and message acknowledgement. What a message means is decided in
:mod:`healer.sources.mqtt_payload`; this module only moves bytes and reports.

Delivery is at least once. Messages are subscribed at QoS 1 in a persistent session (MQTT 5:
clean start off plus a Session Expiry Interval; 3.1.1: clean session off), so the broker keeps
queueing while healer is away. aiomqtt 2.5 has no acknowledgement API and paho, by default,
sends PUBACK as soon as its ``on_message`` callback returns, that is when aiomqtt puts the message
on its in-memory queue, before healer has looked at it. We therefore switch the underlying paho
client to manual acknowledgement (paho >= 2.0, ``manual_ack_set``/``ack``; the workaround from
aiomqtt issue #345) and acknowledge only after ``emit`` has returned (or the message has been
rejected). A crash or disconnect mid-handling leaves the message unacknowledged and the broker
redelivers it on the next connection, so downstream must tolerate a repeated event. Because the
broker stops sending once its in-flight window (mosquitto: ``max_inflight_messages``, 20 by
default) is full of unacknowledged messages, a slow ``emit`` also applies back-pressure.

Memory stays bounded under any message rate (:class:`_Incoming`, the client's incoming queue):
a heartbeat waiting there is replaced by a newer one on the same topic (the older one is
acknowledged and counted as ``superseded``); past ``_INCOMING_LIMIT`` messages a QoS 0 message
is dropped and counted as ``overflow`` (its sender chose at-most-once), while a QoS 1 one is
always kept: those are bounded by the broker's in-flight window, which an MQTT 5 session sets
to ``_RECEIVE_MAXIMUM`` (Receive Maximum) and 3.1.1 leaves to the broker (mosquitto:
``max_inflight_messages``, 20 by default).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Final, NoReturn

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tenacity import RetryCallState

from healer.backoff import retrying
from healer.clock import Clock
from healer.config import MqttConfig
from healer.config.provenance import Ownership
from healer.errors import ConfigError
from healer.model import EventKind, NodeEvent, RebootRequest
from healer.sources.mqtt_payload import (
    SOURCE,
    UNKNOWN_NODE,
    Rejection,
    heartbeat_filter,
    parse_message,
    subscription_filter,
)
from healer.sources.mqtt_reboot import (
    REBOOT_REQUEST,
    control_channel,
    parse_reboot_request,
)
from healer.sources.reconnect import first_failure, reconnect_forever, stop_if_cancelling
from healer.telemetry.metrics import EVENTS_DROPPED, EVENTS_RECEIVED, EVENTS_REJECTED

log = structlog.get_logger(__name__)

Emit = Callable[[NodeEvent], Awaitable[None]]

# CONNACK codes that mean "your credentials were refused": MQTT 3.1.1 return codes 4 and 5 and
# their MQTT 5 reason codes 0x86/0x87 (paho reports 3.1.1 codes as the latter).
_AUTH_REFUSED: Final = frozenset({4, 5, 0x86, 0x87})
# Long enough that an idle link is not chatty, short enough that a dead broker behind a
# silent network (no RST) is noticed within a minute or so.
_KEEPALIVE: Final = 30
_MAX_SESSION_EXPIRY: Final = 0xFFFFFFFF  # the MQTT 5 property is a four-byte integer
_LOG_TOPIC_MAX: Final = 200  # topics are sender-controlled; keep log lines bounded
# Messages waiting in the client before a QoS 0 one is dropped (each at most mqtt.maxPayload).
_INCOMING_LIMIT: Final = 1000
# QoS 1 messages an MQTT 5 broker may have in flight to us, unacknowledged (we acknowledge after
# handling): well under _INCOMING_LIMIT, so those are never dropped.
_RECEIVE_MAXIMUM: Final = 100
_HEARTBEAT_TOPIC_END: Final = "/heartbeat"
# Messages taken from the incoming queue in a row before the source lets the event loop run.
_YIELD_EVERY: Final = 32
# Packets read from the socket in one wake-up of the event loop's reader (_read_in_bursts).
_READ_BURST: Final = 32
# Under per-cluster ownership: the channels that change a node's observation, heard by every
# replica for every cluster (a warm view, as from the Kubernetes watches); heartbeats, the bulk
# of the stream, go to the owner only.
_VIEW_CHANNELS: Final = ("health", "reboot", "upgrade")
# The counters of the per-message path, resolved once (a labels() lookup per message costs more
# than the rest of the counting).
_RECEIVED: Final = EVENTS_RECEIVED.labels(source=SOURCE)
_DROPPED: Final = {
    reason: EVENTS_DROPPED.labels(source=SOURCE, reason=reason)
    for reason in ("superseded", "overflow", "not_owned")
}
# What paho hands out as the properties of an MQTT 5 PUBLISH that carries none (see
# _lean_publish); never mutated.
_NO_PROPERTIES: Final = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Reconnect:
    """How an MQTT client waits between connection attempts (:func:`stay_connected`).

    Capped, jittered exponential waits (:func:`healer.backoff.retrying`): from ``first`` up to
    ``cap``, the last ``jitter`` fraction of each wait random so a fleet restarted together does
    not reconnect in lockstep. The waits start again from ``first`` only after a connection that
    stayed up for ``stable_after`` seconds: a broker that accepts and then immediately drops us
    (a duplicate client id, a broken ACL) still gets slower and slower retries instead of a
    tight loop.
    """

    first: float = 0.5
    cap: float = 30.0
    jitter: float = 0.5
    stable_after: float = 30.0
    rng: random.Random | None = None


async def stay_connected(
    session: Callable[[Callable[[], None]], Awaitable[None]],
    *,
    clock: Clock,
    reconnect: Reconnect,
    retry_on: tuple[type[Exception], ...],
    on_retry: Callable[[Exception | None, float], None],
) -> NoReturn:
    """Run ``session`` again and again, waiting as ``reconnect`` says (on ``clock``) between runs.

    ``session(connected)`` calls ``connected()`` once it is connected. Errors of the types in
    ``retry_on`` (and a session that simply returns) lead to a retry, reported first to
    ``on_retry(error or None, wait)``; anything else propagates, because it is a bug to fix
    rather than an outage to ride out. Cancellation stops the loop.
    """
    up_since: float | None = None

    def connected() -> None:
        nonlocal up_since
        up_since = clock.now()

    async def attempt() -> None:
        nonlocal up_since
        up_since = None
        await session(connected)

    def held() -> bool:
        return up_since is not None and clock.now() - up_since >= reconnect.stable_after

    def report(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        on_retry(error if isinstance(error, Exception) else None, state.upcoming_sleep)

    policy = retrying(
        clock,
        first=reconnect.first,
        cap=reconnect.cap,
        jitter=reconnect.jitter,
        rng=reconnect.rng,
        retry_on=retry_on,
        retry_result=lambda _: True,  # a session that ends without an error is reconnected too
        before_sleep=report,
    )
    await reconnect_forever(attempt, policy=policy, held=held)


@dataclass(frozen=True)
class ConnectionState:
    """What :class:`MqttSource` reports to its ``on_state`` hook.

    ``reason`` is one of ``connected`` (CONNACK received), ``subscribed`` (SUBACK received:
    fully working), ``connection_lost``, ``connect_failed``, ``auth_failed``,
    ``subscribe_failed``, ``secret_unavailable``, ``stopped``.
    """

    connected: bool
    reason: str
    error: str | None = None


class _SubscribeFailed(aiomqtt.MqttError):
    """The broker refused the subscription (an ACL, usually); retried with backoff."""


class MqttSource:
    """Subscribe to ``<prefix>/+/+/+`` and pass each valid message on as a :class:`NodeEvent`.

    ``known_clusters`` limits accepted topics to configured clusters; ``is_known_node``
    (cluster, node) -> bool, when given, rejects nodes the daemon does not manage.
    ``on_state`` is called whenever :attr:`state` changes (from the event loop; keep it quick).

    With ``sharedGroup`` set the subscription is ``$share/<group>/<prefix>/+/+/+``: the broker
    hands each message to one member of the group. ``on_reboot_request`` receives the agents'
    reboot requests (:mod:`healer.sources.mqtt_reboot`); in a shared group the daemon that has
    it also subscribes to ``<prefix>/+/+/reboot-request`` directly, so it sees every request
    (possibly twice: the arbiter answers idempotently). :meth:`publish` sends on the live
    connection (the arbiter's answers).

    With ``owned`` given (per-cluster ownership, ``healer run --replicas``) the source
    subscribes instead to ``<prefix>/<cluster>/+/heartbeat`` for each cluster this replica owns
    and to the ``health``, ``reboot`` and ``upgrade`` channels of every cluster (and, with
    ``on_reboot_request``, ``reboot-request``); :meth:`set_clusters` changes the owned set on
    the live connection and on every reconnect; ``sharedGroup`` is not used. A heartbeat about a
    cluster not owned (in flight or queued in the persistent session when the cluster was lost)
    is acknowledged, counted (``healer_events_dropped_total{reason="not_owned"}``) and dropped.
    """

    def __init__(
        self,
        *,
        config: MqttConfig,
        known_clusters: Collection[str],
        clock: Clock,
        emit: Emit,
        is_known_node: Callable[[str, str], bool] | None = None,
        on_state: Callable[[ConnectionState], None] | None = None,
        reconnect: Reconnect | None = None,
        on_reboot_request: Callable[[RebootRequest], Awaitable[None]] | None = None,
        owned: Collection[str] | None = None,
    ) -> None:
        self._config = config
        self._owned = frozenset(owned) if owned is not None else None
        self._owned_changed = asyncio.Event()
        self._on_reboot_request = on_reboot_request
        self._client: aiomqtt.Client | None = None
        self._known_clusters = frozenset(known_clusters)
        self._clock = clock
        self._emit = emit
        self._is_known_node = is_known_node
        self.on_state = on_state
        self._reconnect = reconnect if reconnect is not None else Reconnect()
        self._broker = f"{config.host}:{config.port}"
        self._state = ConnectionState(connected=False, reason="stopped")
        # Which conditions a message may set: the agent's own and mqtt.conditions, never a
        # Kubernetes one (healer.config.provenance).
        self._owners = Ownership.of(mqtt_conditions=config.conditions)

    @property
    def connected(self) -> bool:
        return self._state.connected

    @property
    def state(self) -> ConnectionState:
        return self._state

    async def run(self) -> NoReturn:
        """Consume messages until cancelled, reconnecting with backoff whenever the link fails."""
        try:
            await stay_connected(
                self._session,
                clock=self._clock,
                reconnect=self._reconnect,
                # OSError covers TLS and socket errors aiomqtt lets through; ConfigError a
                # password file that is missing now but may be restored (or rotated) later.
                retry_on=(aiomqtt.MqttError, OSError, ConfigError),
                on_retry=self._on_retry,
            )
        finally:
            self._set_state(ConnectionState(connected=False, reason="stopped"))

    # -- one connection ---------------------------------------------------------------------

    async def _session(self, connected: Callable[[], None]) -> None:
        client = self._new_client()
        try:
            async with client:
                self._client = client
                connected()
                self._set_state(ConnectionState(connected=True, reason="connected"))
                log.info(
                    "mqtt.connected",
                    broker=self._broker,
                    client_id=self._config.client_id,
                    protocol=self._config.protocol,
                )
                # Consume while subscribing: on a resumed session the broker may send the
                # queued messages first and (amqtt does) wait for their PUBACK before it reads
                # our SUBSCRIBE, so waiting for SUBACK before handling anything would stall.
                # Side by side, a link that drops before SUBACK ends the subscribe at once
                # instead of after aiomqtt's ten-second timeout; the first failure ends the
                # connection and goes to the retry loop to classify.
                await first_failure(self._subscribe(client), self._consume(client))
        finally:
            self._client = None
            # aiomqtt leaves the socket open when CONNACK never arrives (its timeout); without
            # this every such retry would leak a socket. A no-op when already disconnected.
            _paho(client).disconnect()

    def _new_client(self) -> aiomqtt.Client:
        cfg = self._config
        # Read on every attempt so a rotated password file is picked up on reconnect.
        password = cfg.password.reveal() if cfg.password is not None else None
        tls: aiomqtt.TLSParameters | None = None
        if cfg.tls_ca is not None or cfg.tls_cert is not None:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(cfg.tls_ca) if cfg.tls_ca is not None else None,
                certfile=str(cfg.tls_cert) if cfg.tls_cert is not None else None,
                keyfile=str(cfg.tls_key) if cfg.tls_key is not None else None,
            )
        session: dict[str, Any]
        if cfg.protocol == "5":
            # Clean start off resumes the session; the broker only keeps it past the disconnect
            # if the CONNECT also carries a Session Expiry Interval (MQTT 5 defaults it to 0).
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = min(int(cfg.session_expiry), _MAX_SESSION_EXPIRY)
            props.ReceiveMaximum = _RECEIVE_MAXIMUM
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": False,
                "properties": props,
            }
        else:
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=password,
            identifier=cfg.client_id,
            tls_params=tls,
            keepalive=_KEEPALIVE,
            queue_type=_Incoming,
            max_queued_incoming_messages=_INCOMING_LIMIT,
            **session,
        )
        # Before connecting, so nothing the broker sends right after CONNACK is auto-acked.
        _paho(client).manual_ack_set(True)
        _trim(_paho(client))
        return client

    def set_clusters(self, owned: Collection[str]) -> None:
        """Per-cluster ownership: from now on subscribe to the clusters in ``owned`` only.

        Applied at once on the live connection (SUBSCRIBE for a cluster gained, UNSUBSCRIBE for
        one lost) and again on every reconnect. A source built without ``owned`` (one daemon)
        refuses: it subscribes to the whole stream.
        """
        if self._owned is None:
            raise ValueError("set_clusters needs a source built with owned=...")
        owned = frozenset(owned)
        if owned != self._owned:
            self._owned = owned
            self._owned_changed.set()

    @property
    def owned(self) -> frozenset[str] | None:
        """The clusters whose events this source subscribes to; None: every cluster."""
        return self._owned

    def subscriptions(self) -> list[str]:
        """The topic filters this source subscribes to."""
        cfg = self._config
        topic = subscription_filter(cfg.topic_prefix)
        if self._owned is not None:
            prefix = cfg.topic_prefix.rstrip("/")
            topics = [f"{prefix}/+/+/{channel}" for channel in _VIEW_CHANNELS]
            if self._on_reboot_request is not None:
                topics.append(f"{prefix}/+/+/{REBOOT_REQUEST}")
            return topics + [heartbeat_filter(prefix, c) for c in sorted(self._owned)]
        if cfg.shared_group is None:
            return [topic]
        topics = [f"$share/{cfg.shared_group}/{topic}"]
        if self._on_reboot_request is not None:
            topics.append(f"{cfg.topic_prefix.rstrip('/')}/+/+/{REBOOT_REQUEST}")
        return topics

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Send on the current connection; raises ``aiomqtt.MqttError`` when there is none.

        Returns once the message is handed to the connection, without waiting for the broker's
        PUBACK. The arbiter answers from inside :meth:`_consume`, and aiomqtt's ``publish``
        waits for that PUBACK even after the link is gone (its 10 s timeout, per answer): a
        broker restarted while healer was busy stalled every read and the reconnect behind it,
        and behind a long backlog each answer cost a round trip. Answers need no more: paho
        resends within the connection, and an agent without an answer asks again.
        """
        client = self._client
        if client is None or not self._state.connected:
            raise aiomqtt.MqttError(f"not connected to {self._broker}")
        info = _paho(client).publish(topic, payload, qos=qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise MqttCodeError(info.rc, f"could not publish to {self._broker}")

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        if self._owned is None:
            for topic in self.subscriptions():
                await self._subscribe_one(client, topic)
            self._set_state(ConnectionState(connected=True, reason="subscribed"))
            return
        # Per-cluster ownership: what a resumed session holds is unknown (a previous run of this
        # client id may have owned other clusters, or subscribed to the whole stream), so the
        # first round unsubscribes every filter this source could have left behind.
        cfg = self._config
        stream = subscription_filter(cfg.topic_prefix)
        leftovers = {stream, *(heartbeat_filter(cfg.topic_prefix, c) for c in self._known_clusters)}
        if cfg.shared_group is not None:
            leftovers.add(f"$share/{cfg.shared_group}/{stream}")
        held: set[str] | None = None  # what this connection subscribed to; None: not yet
        while True:
            self._owned_changed.clear()
            wanted = self.subscriptions()
            gone = sorted((leftovers if held is None else held) - set(wanted))
            if gone:
                await client.unsubscribe(gone)
                stop_if_cancelling(None)
                log.info("mqtt.unsubscribed", broker=self._broker, topics=gone)
            for topic in wanted:
                if held is None or topic not in held:
                    await self._subscribe_one(client, topic)
            held = set(wanted)
            self._set_state(ConnectionState(connected=True, reason="subscribed"))
            await self._owned_changed.wait()

    async def _subscribe_one(self, client: aiomqtt.Client, topic: str) -> None:
        # Subscribing again on every connection is harmless with a resumed session and needed
        # for a new one (first start, or the broker forgot the session).
        granted = await client.subscribe(topic, qos=1)
        stop_if_cancelling(None)  # SUBACK came with a stop (healer.sources.reconnect)
        code = _code(granted[0]) if granted else 0x80
        if code >= 0x80:
            log.error(
                "mqtt.subscribe_failed",
                broker=self._broker,
                topic=topic,
                code=code,
                hint="check the broker's ACL for this user",
            )
            raise _SubscribeFailed(f"subscription to {topic} refused with code {code}")
        if code < 1:
            log.warning(
                "mqtt.subscribe_downgraded",
                broker=self._broker,
                topic=topic,
                granted_qos=code,
                hint="messages sent while healer is down will be lost",
            )
        log.info("mqtt.subscribed", broker=self._broker, topic=topic, qos=code)

    async def _consume(self, client: aiomqtt.Client) -> None:
        incoming = _incoming(client)
        wrapped = _paho(client)
        messages = aiter(client.messages)
        taken = 0
        while True:
            # aiomqtt's iterator starts a task and an asyncio.wait per message; the messages
            # already waiting are taken straight from the queue, and the iterator is only
            # awaited when it is empty (it also ends the session once the link is gone).
            if incoming.empty() or not wrapped.is_connected():
                message = await anext(messages)
                taken = 0
            else:
                message = incoming.get_nowait()
                taken += 1
                if taken % _YIELD_EVERY == 0:
                    # Let the loop run now and then: the acknowledgements go out (the broker
                    # refills its in-flight window), the consumer and /healthz get their turn.
                    await asyncio.sleep(0)
            await self._handle(client, message)
            # Superseded while waiting: acknowledged only now, after the newer one was handled,
            # so a crash in between has the broker send the newer one again (never neither).
            if incoming.superseded:
                for mid, qos in incoming.take_superseded():
                    wrapped.ack(mid, qos)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            # aiomqtt types payload loosely; from the wire it is always bytes.
            payload = str(payload).encode()
        channel = control_channel(topic, self._config.topic_prefix)
        if channel is not None:
            await self._control(channel, topic, bytes(payload))
            if message.qos > 0:
                _paho(client).ack(message.mid, message.qos)
            return
        result = parse_message(
            topic,
            payload,
            prefix=self._config.topic_prefix,
            now=self._plausible_now(),
            max_payload=self._config.max_payload,
            known_clusters=self._known_clusters,
            owners=self._owners,
            timeline=self._clock.from_wall,  # 'ts' is the agent's wall clock: onto ours
        )
        if (
            isinstance(result, NodeEvent)
            and result.kind is EventKind.HEARTBEAT
            and self._owned is not None
            and result.cluster not in self._owned
        ):
            # Its owner, another replica, watches it (and gets this on its own subscription).
            _DROPPED["not_owned"].inc()
            log.debug("mqtt.not_owned", cluster=result.cluster, node=result.node)
            if message.qos > 0:
                _paho(client).ack(message.mid, message.qos)
            return
        if (
            isinstance(result, NodeEvent)
            and self._is_known_node is not None
            and not self._is_known_node(result.cluster, result.node)
        ):
            result = Rejection(UNKNOWN_NODE, f"node {result.key} is not managed by healer")
        if isinstance(result, Rejection):
            _rejected(result, topic, len(payload))
        else:
            _RECEIVED.inc()
            await self._emit(result)
        # Only now: a crash before this line leaves the message to be redelivered. Rejections
        # are acknowledged too, or they would block the in-flight window and come back forever.
        if message.qos > 0:
            _paho(client).ack(message.mid, message.qos)

    def _plausible_now(self) -> float:
        # 'ts' is the agent's wall clock. After a step either of our clocks may be the right
        # one; a 'ts' ahead of both is the agent's error (rejected), one ahead of only one of
        # them is not (and from_wall then places it no later than now).
        return max(self._clock.now(), self._clock.wall())

    async def _control(self, channel: str, topic: str, payload: bytes) -> None:
        # reboot-permit messages are answers (ours, echoed back by the wildcard subscription, or
        # another daemon's); reboot-request messages go to the arbiter if this daemon runs one.
        if channel != REBOOT_REQUEST or self._on_reboot_request is None:
            return
        request = parse_reboot_request(
            topic,
            payload,
            prefix=self._config.topic_prefix,
            now=self._plausible_now(),
            max_payload=self._config.max_payload,
            known_clusters=self._known_clusters,
        )
        if isinstance(request, RebootRequest):
            request = replace(request, at=self._clock.from_wall(request.at))
        if isinstance(request, Rejection):
            _rejected(request, topic, len(payload))
            return
        _RECEIVED.inc()
        await self._on_reboot_request(request)

    # -- reporting -----------------------------------------------------------------------------

    def _on_retry(self, error: Exception | None, delay: float) -> None:
        was_connected = self._state.connected
        text = str(error) if error is not None else "the session ended"
        if isinstance(error, MqttConnectError) and _code(error.rc) in _AUTH_REFUSED:
            reason = "auth_failed"
            # The password itself is never logged; the user name says which one to check.
            log.error(
                "mqtt.auth_failed",
                broker=self._broker,
                username=self._config.username,
                error=text,
                retry_in=round(delay, 2),
            )
        elif isinstance(error, _SubscribeFailed):
            reason = "subscribe_failed"  # already logged with the details
        elif isinstance(error, ConfigError):
            reason = "secret_unavailable"
            log.error("mqtt.secret_unavailable", broker=self._broker, error=text)
        elif was_connected:
            reason = "connection_lost"
            log.warning(
                "mqtt.disconnected", broker=self._broker, error=text, retry_in=round(delay, 2)
            )
        else:
            reason = "connect_failed"
            log.warning(
                "mqtt.connect_failed", broker=self._broker, error=text, retry_in=round(delay, 2)
            )
        self._set_state(ConnectionState(connected=False, reason=reason, error=text))

    def _set_state(self, state: ConnectionState) -> None:
        if state == self._state:
            return
        self._state = state
        if self.on_state is not None:
            self.on_state(state)


class _Incoming(asyncio.Queue[aiomqtt.Message]):
    """The client's incoming queue (aiomqtt's ``queue_type``): FIFO, with a heartbeat waiting
    replaced by a newer one on the same topic and QoS 0 messages dropped past the limit
    (``max_queued_incoming_messages``); see the module docstring. The QoS 1 messages it let go
    are kept, as (mid, qos), for the consumer to acknowledge (:meth:`take_superseded`)."""

    def _init(self, maxsize: int) -> None:
        self._limit = maxsize if maxsize > 0 else _INCOMING_LIMIT
        # Insertion-ordered: topic -> a heartbeat, a number -> any other message. Named as
        # asyncio.Queue's own store, which its empty() and qsize() read.
        self._queue: dict[str | int, aiomqtt.Message] = {}
        self._numbers = itertools.count()
        self._superseded: list[tuple[int, int]] = []

    def full(self) -> bool:
        # Never refuse: aiomqtt would drop the message uncounted (and, at QoS 1, unacknowledged,
        # holding an in-flight slot for ever). _put decides what to keep.
        return False

    def _put(self, item: aiomqtt.Message) -> None:
        topic = item.topic.value
        heartbeat = topic.endswith(_HEARTBEAT_TOPIC_END)
        if heartbeat and (older := self._queue.pop(topic, None)) is not None:
            _DROPPED["superseded"].inc()
            if older.qos > 0:
                self._superseded.append((older.mid, older.qos))
        elif len(self._queue) >= self._limit and item.qos == 0:
            _DROPPED["overflow"].inc()
            return
        # A replacing heartbeat goes to the end, as the newest message waiting.
        self._queue[topic if heartbeat else next(self._numbers)] = item

    def _get(self) -> aiomqtt.Message:
        key = next(iter(self._queue))
        return self._queue.pop(key)

    @property
    def superseded(self) -> bool:
        """Whether QoS 1 messages superseded while waiting await their acknowledgement."""
        return bool(self._superseded)

    def take_superseded(self) -> list[tuple[int, int]]:
        taken, self._superseded = self._superseded, []
        return taken


def _incoming(client: aiomqtt.Client) -> _Incoming:
    # aiomqtt builds its queue from ``queue_type`` and keeps it to itself.
    queue = client._queue
    assert isinstance(queue, _Incoming)
    return queue


def _paho(client: aiomqtt.Client) -> paho.Client:
    # aiomqtt 2.5 does not expose paho's manual acknowledgement (aiomqtt issue #345, PR #346);
    # reaching for the wrapped paho client is the documented workaround until it does.
    return client._client


# The paho 2.x internals _lean_publish and _read_in_bursts use: if a paho release renames one,
# the source runs on paho's own (slower) path rather than fail.
_PAHO_INTERNALS: Final = (
    "_handle_publish",
    "_handle_on_message",
    "_in_packet",
    "_manual_ack",
    "_send_puback",
    "_protocol",
    "_packet_read",
    "_loop_rc_handle",
    "_sock",
)


def _trim(client: paho.Client) -> None:
    """The per-message trims of the read path (:func:`_lean_publish`, :func:`_read_in_bursts`),
    when this paho has the internals they use."""
    missing = [name for name in _PAHO_INTERNALS if not hasattr(client, name)]
    if missing:
        log.warning(
            "mqtt.paho_untrimmed",
            missing=missing,
            hint="this paho-mqtt release changed its internals: messages take paho's own path",
        )
        return
    _lean_publish(client)
    _read_in_bursts(client)


def _lean_publish(client: paho.Client) -> None:
    """Have ``client`` decode the common PUBLISH (QoS 0 or 1, a topic, no MQTT 5 properties)
    without paho's per-message ``Properties`` object; anything else goes to paho's own decoder.

    paho 2.x builds a ``Properties`` (two dicts of every property name and type) for each MQTT 5
    PUBLISH, whether it has properties or not: a third of the source's CPU per heartbeat. The
    result is the same message paho would hand to ``on_message``, with the shared empty
    :data:`_NO_PROPERTIES`; acknowledgement (manual here) and callbacks stay paho's.
    """
    full = client._handle_publish
    v5 = client._protocol == paho.MQTTv5

    def handle_publish() -> MQTTErrorCode:
        command = client._in_packet["command"]
        data: bytes | bytearray = client._in_packet["packet"]
        qos = (command & 0x06) >> 1
        topic_end = 2 + int.from_bytes(data[:2], "big")
        body = topic_end + (2 if qos else 0)
        # QoS 2, an empty topic (MQTT 5 topic aliases), properties, or a short packet: paho's.
        if qos == 2 or topic_end == 2 or len(data) < body + v5 or (v5 and data[body] != 0):
            return full()
        mid = int.from_bytes(data[topic_end:body], "big") if qos else 0
        message = paho.MQTTMessage(mid=mid, topic=bytes(data[2:topic_end]))
        message.dup = bool(command & 0x08)
        message.qos = qos
        message.retain = bool(command & 0x01)
        message.properties = _NO_PROPERTIES if v5 else None
        message.payload = data[body + v5 :]
        message.timestamp = time.monotonic()
        client._handle_on_message(message)
        if qos == 1 and not client._manual_ack:
            return client._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_publish = handle_publish  # type: ignore[method-assign]


def _read_in_bursts(client: paho.Client) -> None:
    """Have ``client.loop_read`` (aiomqtt's socket reader callback) read up to ``_READ_BURST``
    packets while the socket has them, instead of paho's one packet per call.

    paho 2.x reads one packet per ``loop_read`` unless it has QoS 2 (or outgoing) messages in
    flight, so a backlog cost one event-loop round (epoll, callback) per message. This is paho's
    own loop, with a bound of its own; it stops at the first read that would block, as paho's
    does, and hands errors to paho's handler the same way.
    """
    read_packet = client._packet_read
    handle_error = client._loop_rc_handle

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        for _ in range(_READ_BURST):
            if client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = read_packet()
            if rc > 0:
                return handle_error(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client.loop_read = loop_read  # type: ignore[method-assign]


def _code(rc: Any) -> int:
    """paho hands out ``ReasonCode`` objects or plain ints depending on protocol and call."""
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else 0x80


def _rejected(rejection: Rejection, topic: str, size: int) -> None:
    """A message refused: counted by reason and logged with what it was about."""
    EVENTS_REJECTED.labels(source=SOURCE, reason=rejection.reason).inc()
    about = {
        k: v
        for k, v in (
            ("cluster", rejection.cluster),
            ("node", rejection.node),
            ("condition", rejection.condition),
        )
        if v is not None
    }
    log.warning(
        "mqtt.rejected",
        reason=rejection.reason,
        topic=_clip(topic),
        error=rejection.message,
        size=size,
        source=SOURCE,
        **about,
    )


def _clip(text: str) -> str:
    return text if len(text) <= _LOG_TOPIC_MAX else text[:_LOG_TOPIC_MAX] + "..."
