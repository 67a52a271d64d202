"""Configuration: validated up front, errors that name the file and the field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from healer.config import ConfigError, SecretRef, Threshold, load_config, parse_duration

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "healer.yaml"
    path.write_text(text)
    return path


MINIMAL = """
clusters:
  - name: prod
    provider: {plugin: lab}
    pools:
      - {name: workers, size: 3}
"""


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (MINIMAL.replace("size: 3", "size: many"), "clusters[0].pools[0].size", "integer"),
        (
            MINIMAL.replace("size: 3}", "size: 3, remediation: {maxUnhealthy: 140%}}"),
            "clusters[0].pools[0].remediation.maxUnhealthy",
            "percentage",
        ),
        (
            MINIMAL.replace("pools:", "health: {nodeStartupTimeout: soon}\n    pools:"),
            "clusters[0].health.nodeStartupTimeout",
            "duration",
        ),
        (
            MINIMAL.replace("name: workers", "name: Workers_1"),
            "clusters[0].pools[0].name",
            "pattern",
        ),
        (
            MINIMAL.replace("provider: {plugin: lab}", "provider: {plugin: lab}\n    colour: blue"),
            "clusters[0].colour",
            "unknown key 'colour'",
        ),
        (
            MINIMAL + "      - {name: cp, role: control-plane, size: 2}\n",
            "clusters[0]",
            "odd number",
        ),
        (MINIMAL + "      - {name: workers, size: 1}\n", "clusters[0]", "unique"),
        ("clusters: []\n", "clusters", "at least 1"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path))
    # Each problem: "  FILE:LINE:COLUMN: FIELD: what is wrong" (the field's place in the file).
    assert re.search(rf"^  {re.escape(str(path))}:\d+:\d+: {re.escape(field)}:", message, re.M)
    assert words in message


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"healer.yaml:3:12: not valid YAML: mapping values"):
        load_config(write(tmp_path, "clusters:\n  - name: a\n    pools: : x\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_defaults_and_inheritance(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "pools:",
        "health: {rebootTimeout: 20m}\n    pools:",
    ).replace("size: 3}", "size: 3, health: {nodeStartupTimeout: 3m}}")
    cluster = load_config(write(tmp_path, text)).clusters[0]
    health = cluster.health_for("workers")
    assert health.reboot_timeout == 1200 and health.node_startup_timeout == 180
    assert [(c.type, c.status, c.timeout) for c in health.unhealthy_conditions] == [
        ("Ready", "False", 300.0),
        ("Ready", "Unknown", 300.0),
    ]
    assert str(cluster.remediation_for("workers").max_unhealthy) == "40%"  # on by default


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0), ("250ms", 0.25)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "total", "limit"), [("40%", 5, 2), ("40%", 3, 1), (2, 10, 2), ("0%", 9, 0)]
)
def test_threshold_limits(value: object, total: int, limit: int) -> None:
    assert Threshold.parse(value).limit_for(total) == limit


def test_secrets_are_references_never_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALER_TEST_SECRET", "s3cr3t")
    ref = SecretRef(env="HEALER_TEST_SECRET")
    assert ref.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(ref)
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    assert SecretRef(file=secret_file).reveal() == "from-file"
    with pytest.raises(ConfigError, match="HEALER_NOT_SET"):
        SecretRef(env="HEALER_NOT_SET").reveal()


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    bad = write(tmp_path, MINIMAL.replace("size: 3", "size: -1"))
    proc = subprocess.run(
        [sys.executable, "-m", "healer.cli", "validate", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "clusters[0].pools[0].size" in proc.stderr
    good = subprocess.run(
        [sys.executable, "-m", "healer.cli", "validate", "-c", str(REPO / "config" / "lab.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    unknown = write(tmp_path, MINIMAL.replace("plugin: lab", "plugin: nimbus"))
    proc = subprocess.run(
        [sys.executable, "-m", "healer.cli", "validate", "-c", str(unknown)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "nimbus" in proc.stderr and "lab" in proc.stderr
