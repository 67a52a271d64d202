"""A minimal MQTT 3.1.1 client on the standard library, for machines without paho-mqtt."""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import ssl
import struct
import time

from healer.agent.config import Config
from healer.agent.errors import MqttError
from healer.agent.transport import Message


class BuiltinTransport:
    """A minimal MQTT 3.1.1 client: clean session, QoS 0/1, one thread, blocking with timeouts.

    Enough for an agent that publishes a few messages a minute and waits for one answer."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._inbox: collections.deque[Message] = collections.deque()
        self._next_id = 0
        self._last_sent = 0.0

    def connect(self) -> None:
        cfg = self._config
        try:
            raw = socket.create_connection((cfg.host, cfg.port), timeout=cfg.publish_timeout)
        except OSError as exc:
            raise MqttError(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from None
        sock: socket.socket = raw
        if cfg.tls:
            ctx = ssl.create_default_context(cafile=cfg.tls_ca)
            if cfg.tls_cert:
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            try:
                sock = ctx.wrap_socket(raw, server_hostname=cfg.host)
            except (OSError, ssl.SSLError) as exc:
                raw.close()
                raise MqttError(f"TLS with {cfg.host}:{cfg.port} failed: {exc}") from None
        self._sock = sock
        self._buffer = b""
        flags = 0x02  # clean session: the agent keeps no state at the broker
        payload = _mqtt_str(cfg.client_id)
        if cfg.username is not None:
            flags |= 0x80
            payload += _mqtt_str(cfg.username)
            if cfg.password is not None:
                flags |= 0x40
                payload += _mqtt_str(cfg.password)
        variable = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack(">H", cfg.keepalive)
        self._send(0x10, variable + payload)
        packet = self._wait_for(0x20, None, time.monotonic() + cfg.publish_timeout)
        code = packet[1] if len(packet) >= 2 else 255
        if code != 0:
            self.close()
            meanings = {
                1: "unacceptable protocol version",
                2: "client id rejected",
                3: "server unavailable",
                4: "bad user name or password",
                5: "not authorized",
            }
            raise MqttError(
                f"broker {cfg.host}:{cfg.port} refused the connection: "
                f"{meanings.get(code, f'code {code}')}"
            )

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        packet_id = self._packet_id()
        body = _mqtt_str(topic) + (struct.pack(">H", packet_id) if qos else b"") + payload
        self._send(0x30 | (qos << 1), body)
        if qos:
            self._wait_for(0x40, packet_id, time.monotonic() + self._config.publish_timeout)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        packet_id = self._packet_id()
        self._send(0x82, struct.pack(">H", packet_id) + _mqtt_str(topic) + bytes([qos]))
        granted = self._wait_for(0x90, packet_id, time.monotonic() + self._config.publish_timeout)
        if granted[2:3] == b"\x80":
            raise MqttError(f"the broker refused the subscription to {topic}")

    def recv(self, timeout: float) -> Message | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._inbox:
            self._keepalive()
            packet = self._read_packet(min(deadline, time.monotonic() + 1.0))
            if packet is not None:
                self._dispatch(packet)
            elif time.monotonic() >= deadline:
                return None
        return self._inbox.popleft()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT: a clean goodbye, no will message
        sock.close()

    # wire level

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _send(self, header: int, body: bytes) -> None:
        if self._sock is None:
            raise MqttError("not connected")
        try:
            self._sock.sendall(bytes([header]) + varint(len(body)) + body)
        except OSError as exc:
            raise MqttError(f"connection lost: {exc}") from None
        self._last_sent = time.monotonic()

    def _keepalive(self) -> None:
        if time.monotonic() - self._last_sent > self._config.keepalive / 2:
            self._send(0xC0, b"")  # PINGREQ

    def _wait_for(self, kind: int, packet_id: int | None, deadline: float) -> bytes:
        while True:
            packet = self._read_packet(deadline)
            if packet is None:
                raise MqttError("timed out waiting for the broker")
            header, body = packet
            if header & 0xF0 == kind and (
                packet_id is None or body[:2] == struct.pack(">H", packet_id)
            ):
                return body
            self._dispatch(packet)

    def _dispatch(self, packet: tuple[int, bytes]) -> None:
        header, body = packet
        if header & 0xF0 != 0x30:
            return  # PINGRESP, stray acks
        qos = (header >> 1) & 0x03
        (length,) = struct.unpack(">H", body[:2])
        topic = body[2 : 2 + length].decode("utf-8", "replace")
        rest = body[2 + length :]
        if qos:
            self._send(0x40, rest[:2])  # PUBACK before handing it on: the agent acts at most once
            rest = rest[2:]
        self._inbox.append((topic, rest))

    def _read_packet(self, deadline: float) -> tuple[int, bytes] | None:
        while True:
            parsed = parse_packet(self._buffer)
            if parsed is not None:
                header, body, used = parsed
                self._buffer = self._buffer[used:]
                return header, body
            if self._sock is None:
                raise MqttError("not connected")
            pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0
            remaining = deadline - time.monotonic()
            if not pending:
                if remaining <= 0:
                    return None
                ready, _, _ = select.select([self._sock], [], [], remaining)
                if not ready:
                    return None
            try:
                chunk = self._sock.recv(65536)
            except (OSError, ssl.SSLError) as exc:
                raise MqttError(f"connection lost: {exc}") from None
            if not chunk:
                raise MqttError("the broker closed the connection")
            self._buffer += chunk


def _mqtt_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">H", len(data)) + data


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def parse_packet(buffer: bytes) -> tuple[int, bytes, int] | None:
    """(header, body, bytes used) for the first complete packet in ``buffer``, or None."""
    if len(buffer) < 2:
        return None
    length, multiplier, index = 0, 1, 1
    while True:
        if index >= len(buffer):
            return None
        byte = buffer[index]
        length += (byte & 0x7F) * multiplier
        index += 1
        if not byte & 0x80:
            break
        multiplier *= 128
        if multiplier > 128**3:
            raise MqttError("malformed packet from the broker")
    if len(buffer) < index + length:
        return None
    return buffer[0], buffer[index : index + length], index + length
