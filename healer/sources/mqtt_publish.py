"""The sending side of the MQTT contract: what the lab's simulated node agents use to publish.

Owns one reconnecting connection per publisher; topics and payload framing come from
:mod:`healer.sources.mqtt_payload`, so the lab speaks exactly the schema the daemon parses.
Delivery is at least once: a publish that fails because the link dropped is sent again once
the connection is back, and :meth:`MqttPublisher.publish` returns only after the broker's PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Self

import aiomqtt
import structlog
from tenacity import RetryCallState

from healer.backoff import retrying
from healer.clock import Clock, RealClock
from healer.sources.mqtt import Reconnect, stay_connected
from healer.sources.mqtt_payload import CHANNELS, SCHEMA_VERSION, topic_for
from healer.sources.reconnect import stop_if_cancelling

log = structlog.get_logger(__name__)

_RETRY_PAUSE = 0.2  # seconds between attempts to resend one message


class MqttPublisher:
    """Publish v1 messages for the nodes of one cluster, at QoS 1.

    Use as ``async with MqttPublisher(...) as pub: await pub.publish("node-1", "heartbeat", {})``
    or call :meth:`start` and :meth:`stop`. ``"v": 1`` is added to payloads that lack it.
    The default protocol is 3.1.1, which both mosquitto and the embedded amqtt broker speak.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        prefix: str,
        cluster: str,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        protocol: Literal["5", "3.1.1"] = "3.1.1",
        clock: Clock | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._prefix = prefix
        self._cluster = cluster
        self._client_id = client_id
        self._username = username
        self._password = password
        self._protocol = protocol
        self._clock: Clock = clock if clock is not None else RealClock()
        self._reconnect = reconnect if reconnect is not None else Reconnect(first=0.1, cap=5.0)
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start connecting in the background; :meth:`publish` waits for the connection."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._keep_connected(), name=f"mqtt-pub-{self._client_id}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready.clear()
        self._client = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(self, node: str, channel: str, payload: dict[str, Any]) -> None:
        """Send ``payload`` for ``node`` on ``channel``; returns once the broker has it.

        Waits through disconnections; bound it with ``asyncio.timeout`` if that matters.
        """
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; expected one of {sorted(CHANNELS)}")
        if self._task is None:
            raise RuntimeError("MqttPublisher.publish() called before start()")
        topic = topic_for(self._prefix, self._cluster, node, channel)
        data = json.dumps({"v": SCHEMA_VERSION, **payload}).encode()

        async def attempt() -> None:
            await self._ready.wait()
            client = self._client
            assert client is not None
            await client.publish(topic, data, qos=1)

        def report(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.debug("mqtt_publish.retry", topic=topic, error=str(error))

        # The background task notices a dead link on its own and clears _ready; until it does
        # (or if only the PUBACK timed out), retry at a modest pace.
        await retrying(
            self._clock,
            first=_RETRY_PAUSE,
            cap=_RETRY_PAUSE,
            retry_on=(aiomqtt.MqttError,),
            before_sleep=report,
        )(attempt)

    async def _keep_connected(self) -> None:
        await stay_connected(
            self._session,
            clock=self._clock,
            reconnect=self._reconnect,
            retry_on=(aiomqtt.MqttError, OSError),
            on_retry=self._on_retry,
        )

    async def _session(self, connected: Callable[[], None]) -> None:
        kwargs: dict[str, Any] = (
            {"protocol": aiomqtt.ProtocolVersion.V5}
            if self._protocol == "5"
            else {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": True}
        )
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=self._client_id,
            username=self._username,
            password=self._password,
            **kwargs,
        )
        try:
            async with client:
                stop_if_cancelling(None)  # a stop that came with CONNACK (healer.sources.reconnect)
                connected()
                self._client = client
                self._ready.set()
                # Nothing is subscribed, so this only ends when the connection does.
                async for _ in client.messages:
                    pass
        finally:
            if self._client is client:
                self._ready.clear()
                self._client = None

    def _on_retry(self, error: Exception | None, delay: float) -> None:
        log.info(
            "mqtt_publish.reconnecting",
            broker=f"{self._host}:{self._port}",
            client_id=self._client_id,
            error=str(error) if error else None,
            retry_in=round(delay, 2),
        )
