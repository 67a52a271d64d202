#!/usr/bin/env python3
"""healer node agent: tells healer how this machine is doing, and asks before rebooting it.

One file, Python 3.9+ standard library only; it uses paho-mqtt when installed (Debian:
python3-paho-mqtt, 1.x or 2.x) and a small built-in MQTT 3.1.1 client otherwise. Installed by
cloud-init as /usr/local/lib/healer/healer_agent.py with systemd/healer-agent.service and
systemd/healer-agent-shutdown.service. Configuration: /etc/healer/agent.env (KEY=VALUE lines;
the process environment overrides the file). See docs/agent.md.

Commands::

    healer_agent.py run                       the service: booted, heartbeats, reboot-required,
                                              and arbitrated reboots (HEALER_AUTO_REBOOT)
    healer_agent.py heartbeat                 one heartbeat
    healer_agent.py booted                    reboot/booted
    healer_agent.py rebooting                 reboot/started (run by healer-agent-shutdown.service
                                              when the machine goes down for a reboot)
    healer_agent.py reboot-required           reboot/required
    healer_agent.py upgrade started|finished|failed [PACKAGE...]
                                              upgrade results (unattended-upgrades hook)
    healer_agent.py health CONDITION True|False|Unknown [--reason R] [--message M]
    healer_agent.py request-reboot [--wait SECONDS]
                                              ask healer; exit 0 if granted, 3 if not

Messages follow healer's MQTT contract v1 (docs/mqtt.md): ``<prefix>/<cluster>/<node>/<channel>``
with a JSON object carrying ``"v": 1`` and ``ts``, published at QoS 1. Reboot arbitration: the
agent subscribes to ``.../reboot-permit``, publishes ``{"v": 1, "id": ...}`` on
``.../reboot-request`` and reboots only on an answer with the same ``id`` and ``"granted": true``
received before its ``expiresAt``; a refusal's ``retryAfter`` says when to ask again, and no
answer within HEALER_PERMIT_TIMEOUT means ask again. It never reboots without a grant.

Exit codes: 0 done, 1 bad configuration or usage, 2 MQTT failure, 3 reboot not granted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import queue
import random
import select
import shlex
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger("healer-agent")

DEFAULT_ENV_FILE = "/etc/healer/agent.env"
SCHEMA_VERSION = 1
EXIT_OK, EXIT_CONFIG, EXIT_MQTT, EXIT_REFUSED = 0, 1, 2, 3
_TRUE = ("1", "true", "yes", "on")


class AgentError(Exception):
    """A problem the agent reports in one line and exits for (or retries, in ``run``)."""


class ConfigError(AgentError):
    pass


class MqttError(AgentError):
    pass


# --- configuration ------------------------------------------------------------------------------


class Config:
    """Settings from the env file and the environment. Every key is HEALER_<NAME>."""

    def __init__(self, values: dict[str, str], source: str) -> None:
        self.source = source
        self._values = values
        self.host = self._required("MQTT_HOST")
        # HEALER_MQTT_CA is what healer's cloud-init writes; HEALER_MQTT_TLS_CA is accepted too.
        self.tls_ca = self._get("MQTT_CA") or self._get("MQTT_TLS_CA")
        self.tls_cert = self._get("MQTT_TLS_CERT")
        tls = self._get("MQTT_TLS")
        # TLS when asked for (system CAs unless a CA file is given) or when any TLS file is set.
        self.tls = (
            (tls or "").lower() in _TRUE if tls is not None else bool(self.tls_ca or self.tls_cert)
        )
        self.tls_key = self._get("MQTT_TLS_KEY")
        self.port = self._int("MQTT_PORT", 8883 if self.tls else 1883, 1, 65535)
        self.username = self._get("MQTT_USERNAME")
        self.password = self._password()
        self.transport = self._get("MQTT_TRANSPORT", "auto")
        if self.transport not in ("auto", "paho", "builtin"):
            raise ConfigError(f"{source}: HEALER_MQTT_TRANSPORT must be auto, paho or builtin")
        self.keepalive = self._int("MQTT_KEEPALIVE", 60, 5, 3600)
        self.cluster = self._required("CLUSTER")
        self.node = self._get("NODE") or socket.gethostname().lower()
        self.prefix = (self._get("TOPIC_PREFIX") or "healer/v1").rstrip("/")
        self.client_id = self._get("CLIENT_ID") or f"healer-agent-{self.cluster}-{self.node}"
        self.heartbeat_interval = self._float("HEARTBEAT_INTERVAL", 30.0, 0.05)
        self.check_interval = self._float("CHECK_INTERVAL", 60.0, 0.05)
        self.reboot_required_file = self._get("REBOOT_REQUIRED_FILE") or "/var/run/reboot-required"
        # On by default: the agent reboots only with healer's grant, and healer's cloud-init
        # turns unattended-upgrades' own reboot off when the agent is installed.
        self.auto_reboot = (self._get("AUTO_REBOOT", "true") or "").lower() in _TRUE
        self.reboot_command = shlex.split(self._get("REBOOT_COMMAND", "systemctl reboot") or "")
        if not self.reboot_command:
            raise ConfigError(f"{source}: HEALER_REBOOT_COMMAND is empty")
        self.permit_timeout = self._float("PERMIT_TIMEOUT", 30.0, 0.05)
        self.publish_timeout = self._float("PUBLISH_TIMEOUT", 10.0, 0.05)
        # On tmpfs: a marker here means "booted already announced during this boot".
        self.runtime_dir = self._get("RUNTIME_DIR", "/run/healer-agent") or "/run/healer-agent"

    def topic(self, channel: str) -> str:
        return f"{self.prefix}/{self.cluster}/{self.node}/{channel}"

    def _get(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get("HEALER_" + name)
        return value if value not in (None, "") else default

    def _required(self, name: str) -> str:
        value = self._get(name)
        if value is None:
            raise ConfigError(f"{self.source}: HEALER_{name} is required")
        return value

    def _int(self, name: str, default: int, low: int, high: int) -> int:
        raw = self._get(name)
        try:
            value = int(raw) if raw is not None else default
        except ValueError:
            raise ConfigError(
                f"{self.source}: HEALER_{name}={raw!r} is not a whole number"
            ) from None
        if not low <= value <= high:
            raise ConfigError(f"{self.source}: HEALER_{name}={value} is outside {low}..{high}")
        return value

    def _float(self, name: str, default: float, low: float) -> float:
        raw = self._get(name)
        try:
            value = float(raw) if raw is not None else default
        except ValueError:
            raise ConfigError(
                f"{self.source}: HEALER_{name}={raw!r} is not a number of seconds"
            ) from None
        if not value >= low:
            raise ConfigError(f"{self.source}: HEALER_{name}={value} must be at least {low}")
        return value

    def _password(self) -> str | None:
        path = self._get("MQTT_PASSWORD_FILE")
        if path is not None:
            try:
                with open(path, encoding="utf-8") as handle:
                    return handle.read().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{self.source}: HEALER_MQTT_PASSWORD_FILE {path}: {exc.strerror}"
                ) from None
        return self._get("MQTT_PASSWORD")


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; values may be quoted."""
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return values
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export ") :].lstrip()
        key, sep, value = text.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_config(path: str, environ: dict[str, str] | None = None) -> Config:
    values = read_env_file(path)
    env = os.environ if environ is None else environ
    values.update({k: v for k, v in env.items() if k.startswith("HEALER_")})
    return Config(values, path)


# --- MQTT: two transports behind one small interface ---------------------------------------------

Message = tuple[str, bytes]


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
            self._sock.sendall(bytes([header]) + _varint(len(body)) + body)
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
            parsed = _parse_packet(self._buffer)
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


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _parse_packet(buffer: bytes) -> tuple[int, bytes, int] | None:
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


def make_transport(config: Config) -> Any:
    if config.transport != "builtin":
        try:
            return PahoTransport(config)
        except ImportError:
            if config.transport == "paho":
                raise ConfigError(
                    f"{config.source}: HEALER_MQTT_TRANSPORT=paho but paho-mqtt is not installed"
                ) from None
    return BuiltinTransport(config)


# --- the agent ------------------------------------------------------------------------------------


class Agent:
    """Publishes the node's messages and, in :meth:`run`, arbitrates reboots with healer.

    ``transport_factory``, ``clock``, ``run_command`` and ``shutdown_kind`` are injectable for tests.
    """

    def __init__(
        self,
        config: Config,
        *,
        transport_factory: Callable[[Config], Any] = make_transport,
        clock: Callable[[], float] = time.time,
        run_command: Callable[[list[str]], int] | None = None,
    ) -> None:
        self.config = config
        self._factory = transport_factory
        self._clock = clock
        self._run_command = run_command or _run_command
        self._transport: Any = None
        self._stop = threading.Event()
        # arbitration state
        self._request_id: str | None = None
        self._request_sent = 0.0
        self._next_request = 0.0
        self._required: bool | None = None  # last reported reboot-required state
        self._rebooting = False

    # one-shot messages

    def send(self, channel: str, fields: dict[str, Any]) -> None:
        doc = {"v": SCHEMA_VERSION, "ts": round(self._clock(), 3)}
        doc.update(fields)
        self._ensure_connected()
        self._transport.publish(self.config.topic(channel), json.dumps(doc).encode(), 1)
        log.info("published %s %s", channel, json.dumps(fields, sort_keys=True))

    def close(self) -> None:
        if self._transport is not None:
            try:
                self._transport.close()
            except Exception as exc:
                log.debug("close failed: %s", exc)
            self._transport = None

    def stop(self) -> None:
        self._stop.set()

    def request_reboot(self, wait: float) -> dict[str, Any]:
        """Ask once (re-asking on silence) until an answer or ``wait`` seconds; the answer."""
        deadline = time.monotonic() + wait
        self._ensure_connected()
        while time.monotonic() < deadline:
            request_id = self._send_request("manual")
            answer_by = min(deadline, time.monotonic() + self.config.permit_timeout)
            while time.monotonic() < answer_by:
                permit = self._receive_permit(request_id, answer_by - time.monotonic())
                if permit is not None:
                    return permit
        return {"granted": False, "reason": "NoAnswer", "message": f"no answer within {wait:.0f}s"}

    # the service

    def run(self) -> None:
        cfg = self.config
        backoff = 1.0
        next_heartbeat = next_check = 0.0
        while not self._stop.is_set():
            try:
                self._ensure_connected()
                self._announce_boot()
                backoff = 1.0
                while not self._stop.is_set():
                    now = time.monotonic()
                    if now >= next_heartbeat:
                        self.send("heartbeat", {})
                        next_heartbeat = now + cfg.heartbeat_interval
                    if now >= next_check:
                        self._check_reboot_required()
                        next_check = now + cfg.check_interval
                    if (
                        self._request_id is not None
                        and now - self._request_sent >= cfg.permit_timeout
                    ):
                        log.warning(
                            "no answer to reboot request %s; asking again", self._request_id
                        )
                        self._request_id = None
                        self._next_request = now
                    if (
                        self._wants_reboot()
                        and self._request_id is None
                        and now >= self._next_request
                    ):
                        self._request_id = self._send_request("reboot-required")
                        self._request_sent = now
                    wake = min(next_heartbeat, next_check)
                    if self._request_id is not None:
                        wake = min(wake, self._request_sent + cfg.permit_timeout)
                    elif self._wants_reboot():
                        wake = min(wake, self._next_request)
                    message = self._transport.recv(max(0.0, min(1.0, wake - time.monotonic())))
                    if message is not None:
                        self._handle(message)
            except Exception as exc:
                # MQTT trouble is expected and retried; anything else is a bug, but the agent
                # is a service: log it with its traceback and carry on after the same backoff.
                self.close()
                delay = min(60.0, backoff) * random.uniform(0.5, 1.0)
                backoff *= 2
                if isinstance(exc, MqttError):
                    log.warning("MQTT: %s; retrying in %.1fs", exc, delay)
                else:
                    log.exception("unexpected error; retrying in %.1fs", delay)
                self._stop.wait(delay)
        self.close()

    # internals

    def _ensure_connected(self) -> None:
        if self._transport is not None:
            return
        transport = self._factory(self.config)
        transport.connect()
        self._transport = transport
        # Subscribed on every connection: the agent's session is clean, the broker forgets it.
        transport.subscribe(self.config.topic("reboot-permit"), 1)
        log.info(
            "connected to %s:%d as %s", self.config.host, self.config.port, self.config.client_id
        )

    def _announce_boot(self) -> None:
        """Publish ``booted`` once per boot, not on every restart of the agent: the marker lives
        on tmpfs, which a reboot empties."""
        marker = os.path.join(self.config.runtime_dir, "booted")
        if os.path.exists(marker):
            return
        self.send("reboot", {"event": "booted"})
        try:
            os.makedirs(self.config.runtime_dir, exist_ok=True)
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write(str(self._clock()))
        except OSError as exc:
            log.warning("cannot write %s (%s): booted will be announced again", marker, exc)

    def _wants_reboot(self) -> bool:
        return self.config.auto_reboot and self._required is True and not self._rebooting

    def _check_reboot_required(self) -> None:
        required = os.path.exists(self.config.reboot_required_file)
        if required == self._required:
            return
        if required:
            detail: dict[str, Any] = {"event": "required", "reason": "RebootRequired"}
            packages = _read_lines(self.config.reboot_required_file + ".pkgs")
            if packages:
                detail["message"] = "packages: " + " ".join(packages)[:1000]
            self.send("reboot", detail)
        else:
            # At start (the file is gone after a reboot) or when someone removed it: clear the
            # condition an earlier "required" set.
            self.send("health", {"condition": "RebootRequired", "status": "False"})
        self._required = required

    def _send_request(self, reason: str) -> str:
        request_id = uuid.uuid4().hex[:16]
        self.send("reboot-request", {"id": request_id, "reason": reason})
        return request_id

    def _receive_permit(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        message = self._transport.recv(timeout)
        if message is None:
            return None
        permit = self._parse_permit(message)
        if permit is None or permit.get("id") != request_id:
            return None
        return permit

    def _parse_permit(self, message: Message) -> dict[str, Any] | None:
        topic, payload = message
        if topic != self.config.topic("reboot-permit"):
            return None
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            log.warning("ignoring a reboot-permit that is not JSON")
            return None
        if not isinstance(doc, dict) or doc.get("v") != SCHEMA_VERSION:
            log.warning("ignoring a reboot-permit of an unknown schema")
            return None
        return doc

    def _handle(self, message: Message) -> None:
        permit = self._parse_permit(message)
        if permit is None or self._request_id is None or permit.get("id") != self._request_id:
            return  # an answer to an earlier request, or not for us
        self._request_id = None
        now = time.monotonic()
        if permit.get("granted") is True:
            expires = permit.get("expiresAt")
            if isinstance(expires, (int, float)) and expires <= self._clock():
                log.warning("reboot grant already expired; asking again")
                self._next_request = now
                return
            self._reboot(permit)
            return
        retry = permit.get("retryAfter")
        delay = float(retry) if isinstance(retry, (int, float)) and retry > 0 else 60.0
        delay = min(3600.0, max(1.0, delay))
        log.info(
            "reboot refused (%s: %s); asking again in %.0fs",
            permit.get("reason"),
            permit.get("message"),
            delay,
        )
        self._next_request = now + delay

    def _reboot(self, permit: dict[str, Any]) -> None:
        log.warning(
            "reboot granted (%s); rebooting with %s",
            permit.get("message"),
            self.config.reboot_command,
        )
        code = self._run_command(self.config.reboot_command)
        if code != 0:
            # Announce nothing: healer would otherwise wait for a reboot that is not happening.
            log.error(
                "reboot command %s exited with %d; not rebooting", self.config.reboot_command, code
            )
            self._next_request = time.monotonic() + 300.0
            return
        self.send("reboot", {"event": "started", "reason": "RebootRequired"})
        # Keep running until systemd stops us on the way down: exiting now would get the agent
        # restarted (Restart=always) and it would ask again.
        self._rebooting = True


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError:
        return []


def _run_command(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, timeout=120, check=False).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("cannot run %s: %s", argv, exc)
        return 127


def shutdown_is_reboot() -> bool | None:
    """True if systemd is shutting down for a reboot, False for a poweroff/halt, None if it
    cannot tell (no systemd): then the caller assumes a reboot, the safe side for healer."""
    try:
        out = subprocess.run(
            ["systemctl", "list-jobs", "--no-legend", "--no-pager"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    jobs = out.stdout
    if "reboot.target" in jobs or "kexec.target" in jobs:
        return True
    if "poweroff.target" in jobs or "halt.target" in jobs:
        return False
    return None if "shutdown.target" in jobs else False


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="healer_agent.py", description="healer node agent")
    parser.add_argument("--env-file", default=os.environ.get("HEALER_AGENT_ENV", DEFAULT_ENV_FILE))
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the service")
    sub.add_parser("heartbeat")
    sub.add_parser("booted")
    sub.add_parser("rebooting", help="announce a reboot (healer-agent-shutdown.service)")
    sub.add_parser("reboot-required")
    upgrade = sub.add_parser("upgrade", help="report an upgrade (unattended-upgrades hook)")
    upgrade.add_argument("event", choices=["started", "finished", "failed"])
    upgrade.add_argument("packages", nargs="*")
    upgrade.add_argument("--message")
    health = sub.add_parser("health", help="report a node condition")
    health.add_argument("condition")
    health.add_argument("status", choices=["True", "False", "Unknown"])
    health.add_argument("--reason")
    health.add_argument("--message")
    request = sub.add_parser("request-reboot", help="ask healer for permission to reboot")
    request.add_argument("--wait", type=float, default=300.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s healer-agent %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.env_file)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    agent = Agent(config)
    try:
        return _dispatch(agent, args)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except MqttError as exc:
        log.error("MQTT: %s", exc)
        return EXIT_MQTT
    finally:
        agent.close()


def _dispatch(agent: Agent, args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        import signal

        signal.signal(signal.SIGTERM, lambda *_: agent.stop())
        with contextlib.suppress(KeyboardInterrupt):
            agent.run()
        return EXIT_OK
    if command == "heartbeat":
        agent.send("heartbeat", {})
    elif command == "booted":
        agent.send("reboot", {"event": "booted"})
    elif command == "rebooting":
        if shutdown_is_reboot() is False:
            log.info("the machine is powering off, not rebooting: nothing to announce")
            return EXIT_OK
        agent.send("reboot", {"event": "started", "reason": "Shutdown"})
    elif command == "reboot-required":
        agent.send("reboot", {"event": "required", "reason": "RebootRequired"})
    elif command == "upgrade":
        fields: dict[str, Any] = {"event": args.event}
        if args.packages:
            fields["packages"] = args.packages[:512]
        if args.message:
            fields["message"] = args.message[:1024]
        agent.send("upgrade", fields)
    elif command == "health":
        fields = {"condition": args.condition, "status": args.status}
        if args.reason:
            fields["reason"] = args.reason[:128]
        if args.message:
            fields["message"] = args.message[:1024]
        agent.send("health", fields)
    elif command == "request-reboot":
        permit = agent.request_reboot(args.wait)
        print(json.dumps(permit, sort_keys=True))
        return EXIT_OK if permit.get("granted") is True else EXIT_REFUSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
