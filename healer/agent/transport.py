"""What the agent needs from an MQTT client: connect, publish and subscribe at QoS 1, receive with
a timeout, close. Two implementations: :mod:`healer.agent.paho_mqtt` (paho-mqtt 1.x or 2.x, when
installed) and :mod:`healer.agent.builtin_mqtt` (a small MQTT 3.1.1 client on the standard
library); :func:`healer.agent.service.make_transport` picks one as HEALER_MQTT_TRANSPORT says."""

from __future__ import annotations

from typing import Protocol

Message = tuple[str, bytes]  # (topic, payload)


class Transport(Protocol):
    def connect(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None: ...

    def subscribe(self, topic: str, qos: int = 1) -> None: ...

    def recv(self, timeout: float) -> Message | None: ...

    def close(self) -> None: ...
