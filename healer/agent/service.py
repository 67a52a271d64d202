"""The agent itself: publishes the node's messages and, in :meth:`Agent.run`, the service loop:
``booted`` once per boot, heartbeats, reboot-required, and reboots arbitrated by healer."""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from healer.agent.builtin_mqtt import BuiltinTransport
from healer.agent.config import Config
from healer.agent.errors import ConfigError, MqttError
from healer.agent.paho_mqtt import PahoTransport
from healer.agent.system import read_lines, run_command, sentinel_says_reboot
from healer.agent.transport import Message, Transport

log = logging.getLogger("healer-agent")

SCHEMA_VERSION = 1


def make_transport(config: Config) -> Transport:
    """paho-mqtt when installed (or asked for), the built-in client otherwise."""
    if config.transport != "builtin":
        try:
            return PahoTransport(config)
        except ImportError:
            if config.transport == "paho":
                raise ConfigError(
                    f"{config.source}: HEALER_MQTT_TRANSPORT=paho but paho-mqtt is not installed"
                ) from None
    return BuiltinTransport(config)


class Agent:
    """Publishes the node's messages and, in :meth:`run`, arbitrates reboots with healer.

    ``transport_factory``, ``clock`` and ``run_command`` are injectable for tests.
    """

    def __init__(
        self,
        config: Config,
        *,
        transport_factory: Callable[[Config], Transport] = make_transport,
        clock: Callable[[], float] = time.time,
        run_command: Callable[[list[str]], int] = run_command,
    ) -> None:
        self.config = config
        self._factory = transport_factory
        self._clock = clock
        self._run_command = run_command
        self._transport: Transport | None = None
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
        transport = self._ensure_connected()
        transport.publish(self.config.topic(channel), json.dumps(doc).encode(), 1)
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
                transport = self._ensure_connected()
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
                    message = transport.recv(max(0.0, min(1.0, wake - time.monotonic())))
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

    def _ensure_connected(self) -> Transport:
        if self._transport is not None:
            return self._transport
        transport = self._factory(self.config)
        transport.connect()
        self._transport = transport
        # Subscribed on every connection: the agent's session is clean, the broker forgets it.
        transport.subscribe(self.config.topic("reboot-permit"), 1)
        log.info(
            "connected to %s:%d as %s", self.config.host, self.config.port, self.config.client_id
        )
        return transport

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
        cfg = self.config
        if cfg.reboot_sentinel_command:
            required = sentinel_says_reboot(
                cfg.reboot_sentinel_command, cfg.reboot_sentinel_timeout
            )
        else:
            required = os.path.exists(cfg.reboot_sentinel_file)
        if required == self._required:
            return
        if required:
            detail: dict[str, Any] = {"event": "required", "reason": "RebootRequired"}
            if cfg.reboot_sentinel_command:
                detail["message"] = "sentinel: " + shlex.join(cfg.reboot_sentinel_command)[:1000]
            elif packages := read_lines(cfg.reboot_sentinel_file + ".pkgs"):
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
        message = self._ensure_connected().recv(timeout)
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
