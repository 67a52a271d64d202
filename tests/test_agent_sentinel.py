"""The node agent's reboot sentinel (kured's ``--reboot-sentinel`` and
``--reboot-sentinel-command``): a command's exit status 0 means "reboot required", run without a
shell, killed at its timeout; a command that cannot run or times out counts as "not required".
Real commands (true, false, sleep, sh) and the agent's own config parsing; the MQTT side is a
recording transport (tests/test_agent.py runs the agent against mosquitto)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml

from healer.agent import bundle
from healer.agent.config import Config, load_config, read_env_file
from healer.agent.errors import ConfigError
from healer.agent.service import Agent
from healer.agent.system import sentinel_says_reboot
from healer.agent.transport import Message
from healer.config import parse_config
from healer.provisioning.userdata import AGENT_ENV, UserDataBuilder
from tests.provisioning_support import fake_agent, files

BASE = {"HEALER_MQTT_HOST": "127.0.0.1", "HEALER_CLUSTER": "lab", "HEALER_NODE": "n1"}


@pytest.mark.parametrize(
    ("argv", "required"),
    [
        (["true"], True),
        (["false"], False),
        (["sh", "-c", "exit 0"], True),
        (["sh", "-c", "exit 3"], False),
        (["test", "-e", "/"], True),
        (["/nonexistent/healer-sentinel"], False),  # cannot start: not required
    ],
)
def test_exit_status_zero_means_required(argv: list[str], required: bool) -> None:
    assert sentinel_says_reboot(argv, 10.0) is required


def test_no_shell_between_the_agent_and_the_command(tmp_path: Path) -> None:
    # Without a shell, "; touch ..." is two more arguments to `true`, not a second command.
    marker = tmp_path / "ran"
    assert sentinel_says_reboot(["true", ";", "touch", str(marker)], 10.0) is True
    assert not marker.exists()


def test_a_command_past_its_timeout_is_killed_with_its_children(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "child.pid"
    # The shell starts a background child and waits: the whole session must go.
    script = f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait"
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="healer-agent"):
        assert sentinel_says_reboot(["sh", "-c", script], 0.5) is False
    assert time.monotonic() - started < 10
    assert "killed after 0.5s: taken as not required" in caplog.text
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not reaped (its parent, the shell, was killed with it).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_settings_from_the_env_file(tmp_path: Path) -> None:
    config = Config(BASE, "agent.env")
    assert config.reboot_sentinel_command == []
    assert config.reboot_sentinel_file == "/var/run/reboot-required"
    assert config.reboot_sentinel_timeout == 30.0
    older = Config({**BASE, "HEALER_REBOOT_REQUIRED_FILE": "/a"}, "agent.env")
    assert older.reboot_sentinel_file == "/a"
    both = {**BASE, "HEALER_REBOOT_REQUIRED_FILE": "/a", "HEALER_REBOOT_SENTINEL_FILE": "/b"}
    assert Config(both, "agent.env").reboot_sentinel_file == "/b"
    env = tmp_path / "agent.env"
    # As healer's cloud-init writes it: shlex-quoted, then double-quoted with \ " $ escaped.
    env.write_text('HEALER_REBOOT_SENTINEL_COMMAND="sh -c \'test -n \\"\\$X\\"\'"\n')
    assert read_env_file(str(env)) == {"HEALER_REBOOT_SENTINEL_COMMAND": "sh -c 'test -n \"$X\"'"}
    config = load_config(str(env), {**BASE, "HEALER_REBOOT_SENTINEL_TIMEOUT": "2.5"})
    assert config.reboot_sentinel_command == ["sh", "-c", 'test -n "$X"']
    assert config.reboot_sentinel_timeout == 2.5
    with pytest.raises(
        ConfigError, match=re.escape("agent.env: HEALER_REBOOT_SENTINEL_COMMAND: No closing")
    ):
        Config({**BASE, "HEALER_REBOOT_SENTINEL_COMMAND": "sh -c 'oops"}, "agent.env")
    with pytest.raises(ConfigError, match="HEALER_REBOOT_SENTINEL_TIMEOUT='soon'"):
        Config({**BASE, "HEALER_REBOOT_SENTINEL_TIMEOUT": "soon"}, "agent.env")


class Recorder:
    """A transport that keeps what the agent publishes."""

    def __init__(self, config: Config) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []

    def connect(self) -> None:
        pass

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.sent.append((topic.rsplit("/", 1)[1], json.loads(payload)))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        pass

    def recv(self, timeout: float) -> Message | None:
        return None

    def close(self) -> None:
        pass


def test_the_command_decides_instead_of_the_file(tmp_path: Path) -> None:
    flag = tmp_path / "needs-reboot"
    present = tmp_path / "reboot-required"  # exists, but the command decides
    present.write_text("")
    config = Config(
        {
            **BASE,
            "HEALER_REBOOT_SENTINEL_FILE": str(present),
            "HEALER_REBOOT_SENTINEL_COMMAND": shlex.join(["test", "-e", str(flag)]),
        },
        "agent.env",
    )
    transports: list[Recorder] = []

    def factory(cfg: Config) -> Recorder:
        transports.append(Recorder(cfg))
        return transports[-1]

    agent = Agent(config, transport_factory=factory)
    agent._check_reboot_required()
    flag.write_text("")
    agent._check_reboot_required()
    agent._check_reboot_required()  # unchanged: nothing more published
    flag.unlink()
    agent._check_reboot_required()
    [transport] = transports
    assert [
        (channel, {k: v for k, v in doc.items() if k not in ("v", "ts")})
        for channel, doc in transport.sent
    ] == [
        ("health", {"condition": "RebootRequired", "status": "False"}),
        (
            "reboot",
            {
                "event": "required",
                "reason": "RebootRequired",
                "message": f"sentinel: test -e {flag}",
            },
        ),
        ("health", {"condition": "RebootRequired", "status": "False"}),
    ]


def test_the_cluster_config_reaches_the_agent_env_file(tmp_path: Path) -> None:
    agent = {
        "brokerHost": "mqtt.example",
        "rebootSentinelFile": "/run/needs-reboot",
        "rebootSentinelCommand": "sh -c 'test -e /run/a && test \"$(cat /run/b)\" = yes'",
        "rebootSentinelTimeout": "5s",
    }
    cluster = parse_config(
        {
            "clusters": [
                {
                    "name": "demo",
                    "provider": {"plugin": "lab"},
                    "agent": agent,
                    "pools": [{"name": "workers", "size": 1}],
                }
            ]
        }
    ).clusters[0]
    assert cluster.agent is not None
    assert cluster.agent.reboot_sentinel_command == (
        "sh",
        "-c",
        'test -e /run/a && test "$(cat /run/b)" = yes',
    )
    builder = UserDataBuilder(None, agent=fake_agent(tmp_path))
    doc = yaml.safe_load(builder.render(cluster, "workers", "demo-workers-1"))
    written = tmp_path / "agent.env"
    written.write_bytes(files(doc)[AGENT_ENV][0])
    config = load_config(str(written), {})
    assert config.reboot_sentinel_command == list(cluster.agent.reboot_sentinel_command)
    assert config.reboot_sentinel_file == "/run/needs-reboot"
    assert config.reboot_sentinel_timeout == 5.0


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ("sh -c 'oops", "No closing quotation"),
        (["", "x"], "program is empty"),
        (["sh", "-c", "a\nb"], "line break"),
    ],
)
def test_bad_sentinel_commands_are_config_errors(command: object, error: str) -> None:
    doc = {
        "name": "demo",
        "provider": {"plugin": "lab"},
        "pools": [{"name": "w", "size": 1}],
        "agent": {"brokerHost": "b", "rebootSentinelCommand": command},
    }
    with pytest.raises(Exception, match=error):
        parse_config({"clusters": [doc]})


def test_the_bundle_still_builds() -> None:
    assert b"def sentinel_says_reboot(" in bundle.build()
