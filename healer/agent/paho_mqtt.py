"""The agent's transport on paho-mqtt (1.x or 2.x), when the machine has it (Debian:
python3-paho-mqtt)."""

from __future__ import annotations

import queue
import ssl
import threading
from typing import Any

from healer.agent.config import Config
from healer.agent.errors import MqttError
from healer.agent.transport import Message


class PahoTransport:
    """The same interface on paho-mqtt (1.x or 2.x), MQTT 3.1.1, clean session."""

    def __init__(self, config: Config) -> None:
        import paho.mqtt.client as mqtt

        self._config = config
        self._mqtt = mqtt
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._rc: Any = None
        self._topics: dict[str, int] = {}
        version = getattr(mqtt, "CallbackAPIVersion", None)
        if version is not None:  # paho 2.x
            self._client = mqtt.Client(
                version.VERSION2,
                client_id=config.client_id,
                clean_session=True,
                protocol=mqtt.MQTTv311,
            )
        else:  # paho 1.x (Debian 12's python3-paho-mqtt)
            self._client = mqtt.Client(
                client_id=config.client_id, clean_session=True, protocol=mqtt.MQTTv311
            )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        if config.tls:
            self._client.tls_set(
                ca_certs=config.tls_ca, certfile=config.tls_cert, keyfile=config.tls_key
            )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, *rest: Any) -> None:
        self._rc = rc
        self._connected.set()
        # paho reconnects by itself after a broker restart, but the session is clean: without
        # subscribing again the permits would never arrive.
        if not getattr(rc, "value", rc):
            for topic, qos in self._topics.items():
                client.subscribe(topic, qos)

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._inbox.put((message.topic, bytes(message.payload)))

    def connect(self) -> None:
        cfg = self._config
        try:
            self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive)
        except (OSError, ssl.SSLError) as exc:
            raise MqttError(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(cfg.publish_timeout):
            self.close()
            raise MqttError(f"no answer from {cfg.host}:{cfg.port}")
        code = getattr(self._rc, "value", self._rc)
        if code:
            self.close()
            raise MqttError(f"broker {cfg.host}:{cfg.port} refused the connection: {self._rc}")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        try:
            info = self._client.publish(topic, payload, qos=qos)
            info.wait_for_publish(self._config.publish_timeout)
        except (RuntimeError, ValueError, OSError) as exc:
            # paho 2 raises RuntimeError for "not currently connected" (a broker restart).
            raise MqttError(f"publishing to {topic} failed: {exc}") from None
        if not info.is_published():
            raise MqttError(f"publishing to {topic} was not acknowledged")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._topics[topic] = qos
        self._subscribed.clear()
        result, _ = self._client.subscribe(topic, qos)
        if result != self._mqtt.MQTT_ERR_SUCCESS or not self._subscribed.wait(
            self._config.publish_timeout
        ):
            raise MqttError(f"subscribing to {topic} failed")

    def recv(self, timeout: float) -> Message | None:
        try:
            return self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
