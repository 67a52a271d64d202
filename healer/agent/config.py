"""The agent's settings: KEY=VALUE lines in /etc/healer/agent.env, the process environment
overriding the file. Every key is HEALER_<NAME>; a bad value names the file and the key."""

from __future__ import annotations

import os
import re
import shlex
import socket

from healer.agent.errors import ConfigError

DEFAULT_ENV_FILE = "/etc/healer/agent.env"
_TRUE = ("1", "true", "yes", "on")


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
        # Whether a reboot is needed, as kured decides it: the sentinel command's exit status
        # when one is set (0: required), else whether the sentinel file exists.
        # HEALER_REBOOT_REQUIRED_FILE is the file's older name.
        self.reboot_sentinel_file = (
            self._get("REBOOT_SENTINEL_FILE")
            or self._get("REBOOT_REQUIRED_FILE")
            or "/var/run/reboot-required"
        )
        # An argument list split like a shell would, run without one: for a pipeline or a test
        # with $VARIABLES, write sh -c '...'.
        try:
            self.reboot_sentinel_command = shlex.split(self._get("REBOOT_SENTINEL_COMMAND") or "")
        except ValueError as exc:
            raise ConfigError(f"{source}: HEALER_REBOOT_SENTINEL_COMMAND: {exc}") from None
        self.reboot_sentinel_timeout = self._float("REBOOT_SENTINEL_TIMEOUT", 30.0, 0.05)
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
            quote, value = value[0], value[1:-1]
            if quote == '"':  # as systemd reads it, and as healer's cloud-init writes it
                value = re.sub(r'\\([\\"$`])', r"\1", value)
        values[key.strip()] = value
    return values


def load_config(path: str, environ: dict[str, str] | None = None) -> Config:
    values = read_env_file(path)
    env = os.environ if environ is None else environ
    values.update({k: v for k, v in env.items() if k.startswith("HEALER_")})
    return Config(values, path)
