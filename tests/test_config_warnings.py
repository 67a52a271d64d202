"""Issue 8: warnings for a valid but unsafe configuration (unarbitrated automatic reboots), and
the zone limit's setting. ``healer validate`` prints warnings and exits 0; ``healer run`` logs
them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from healer.config import ConfigError, Threshold, load_config, parse_config
from healer.config.warnings import config_warnings

AGENT = {"brokerHost": "mqtt.internal", "tls": False}
MQTT = {"host": "127.0.0.1"}


def config(
    *, upgrades: dict[str, Any] | None = None, agent: bool = False, mqtt: dict[str, Any] | None
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": "prod",
        "provider": {"plugin": "lab"},
        "pools": [
            {"name": "cp", "role": "control-plane", "size": 3},
            {"name": "workers", "size": 3},
        ],
    }
    if upgrades is not None:
        cluster["upgrades"] = upgrades
    if agent:
        cluster["agent"] = AGENT
    doc: dict[str, Any] = {"clusters": [cluster]}
    if mqtt is not None:
        doc["mqtt"] = mqtt
    return doc


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # The default: reboots only through the agent, and nothing to warn about either way.
        (config(mqtt=None), []),
        (config(agent=True, mqtt=MQTT), []),
        (config(upgrades={"automaticReboot": False}, mqtt=None), []),
        (config(upgrades={"enabled": False, "automaticReboot": True}, mqtt=None), []),
        (config(upgrades={"automaticReboot": True}, agent=True, mqtt=MQTT), []),
        # An explicit opt-in without the agent: every machine reboots itself, the control
        # plane too.
        (
            config(upgrades={"automaticReboot": True}, mqtt=MQTT),
            ["reboots every machine on its own at 02:00", "control-plane pool cp (3 members)"],
        ),
        # The agent asks, nobody answers: reboots wait.
        (config(agent=True, mqtt=None), ["there is no 'mqtt' section"]),
        (
            config(agent=True, mqtt={**MQTT, "rebootArbiter": False}),
            ["mqtt.rebootArbiter is false"],
        ),
        (config(upgrades={"automaticReboot": False}, agent=True, mqtt=None), []),
    ],
)
def test_config_warnings(doc: dict[str, Any], expected: list[str]) -> None:
    warnings = config_warnings(parse_config(doc))
    assert len(warnings) == len(expected), warnings
    for warning, words in zip(warnings, expected, strict=True):
        assert warning.startswith("cluster prod: ")
        assert words in warning


def test_validate_prints_warnings_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "healer.yaml"
    path.write_text(yaml.safe_dump(config(upgrades={"automaticReboot": True}, mqtt=None)))
    proc = subprocess.run(
        [sys.executable, "-m", "healer.cli", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: OK" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if ": warning: " in line]
    assert len(lines) == 2
    assert "upgrades.automaticReboot is true and there is no node agent" in lines[0]
    assert "control-plane pool cp (3 members) reboots unarbitrated" in lines[1]


def test_validate_without_warnings_prints_none(tmp_path: Path) -> None:
    path = tmp_path / "healer.yaml"
    path.write_text(yaml.safe_dump(config(mqtt=None)))
    proc = subprocess.run(
        [sys.executable, "-m", "healer.cli", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "warning" not in proc.stderr


def test_run_logs_the_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import healer.app.daemon
    import healer.telemetry.logs
    from healer.cli import run as cli_run

    path = tmp_path / "healer.yaml"
    path.write_text(yaml.safe_dump(config(upgrades={"automaticReboot": True}, mqtt=None)))

    class Stub:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def run(self) -> None:
            return None

        async def reload(self) -> None:
            return None

    monkeypatch.setattr(healer.app.daemon, "Daemon", Stub)
    monkeypatch.setattr(healer.telemetry.logs, "configure", lambda *a, **k: None)
    args = argparse.Namespace(config=str(path), state_dir=str(tmp_path / "state"), dry_run=False)
    with structlog.testing.capture_logs() as logs:
        assert cli_run.cmd_run(args) == 0
    warned = [e for e in logs if e["event"] == "config.warning"]
    assert len(warned) == 2 and warned[0]["log_level"] == "warning"


def test_max_unhealthy_per_zone_defaults_to_half_and_parses_like_max_unhealthy(
    tmp_path: Path,
) -> None:
    default = parse_config(config(mqtt=None)).clusters[0].remediation
    assert default.max_unhealthy_per_zone == Threshold(percent=50)
    doc = config(mqtt=None)
    doc["clusters"][0]["remediation"] = {"maxUnhealthyPerZone": 2}
    assert parse_config(doc).clusters[0].remediation.max_unhealthy_per_zone == Threshold(count=2)
    doc["clusters"][0]["remediation"] = {"maxUnhealthyPerZone": "140%"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.remediation\.maxUnhealthyPerZone"):
        load_config(path)


def test_automatic_reboot_is_unset_by_default() -> None:
    upgrades = parse_config(config(mqtt=None)).clusters[0].upgrades
    assert upgrades.automatic_reboot is None
    assert not upgrades.reboots_unarbitrated(agent=False)
    assert upgrades.reboots_through_agent(agent=True)


def test_a_single_control_plane_machine_is_warned_about() -> None:
    doc = config(mqtt=None)
    doc["clusters"][0]["pools"][0]["size"] = 1
    [warning] = config_warnings(parse_config(doc))
    assert "control-plane pool cp has size 1" in warning
    assert "SingleControlPlane" in warning
