"""Every number in the configuration is bounded (healer/config/types.py): a huge, infinite or
not-a-number value is a configuration error naming its field, never an OverflowError
traceback (issue 10, item 7: ``rebootTimeout: 1e400``-style values crashed ``validate``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from healer.cli.main import main
from healer.config import load_config, parse_config
from healer.config.types import MAX_DURATION, MAX_NUMBER
from healer.errors import ConfigError

HUGE = 10**400  # no float holds it: float(HUGE) raises OverflowError


def config_with(section: str, key: str, value: Any) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": "c",
        "provider": {"plugin": "lab"},
        "pools": [{"name": "workers", "size": 1}],
    }
    cluster[section] = {key: value}
    return {"clusters": [cluster]}


CASES = [
    # (section, key, value)
    ("health", "rebootTimeout", HUGE),
    ("health", "rebootTimeout", -HUGE),
    ("health", "rebootTimeout", math.inf),
    ("health", "rebootTimeout", math.nan),
    ("health", "rebootTimeout", "1e400"),
    ("health", "rebootTimeout", "9" * 400 + "s"),
    ("health", "rebootTimeout", "400d"),
    ("health", "nodeStartupTimeout", MAX_DURATION + 1),
    ("remediation", "drainTimeout", HUGE),
    ("remediation", "maxPerHour", HUGE),
    ("remediation", "maxPerHour", MAX_NUMBER + 1),
    ("remediation", "maxInFlight", HUGE),
    ("remediation", "maxUnhealthy", HUGE),
    ("remediation", "maxUnhealthy", str(HUGE)),
    ("remediation", "maxUnhealthy", "1e400%"),
    ("remediation", "maxUnhealthy", "nan%"),
    ("breaker", "maxFailures", HUGE),
    ("breaker", "window", math.inf),
]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    CASES,
    ids=[f"{s}.{k}={str(v)[:12]}" for s, k, v in CASES],
)
def test_an_out_of_range_number_names_its_field(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(config_with(section, key, value), source="healer.yaml")
    message = str(refused.value)
    assert f"clusters[0].{section}.{key}:" in message, message
    assert len(message) < 400, message  # a 400-digit number is not printed whole


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("health", "rebootTimeout", "365d"),
        ("health", "rebootTimeout", MAX_DURATION),
        ("remediation", "maxPerHour", MAX_NUMBER),
        ("remediation", "maxUnhealthy", "100%"),
    ],
)
def test_the_largest_allowed_values_are_accepted(section: str, key: str, value: Any) -> None:
    parse_config(config_with(section, key, value))


def test_a_field_with_a_large_bound_of_its_own_keeps_it() -> None:
    data = config_with("health", "rebootTimeout", "1h") | {
        "webhook": {"maxBody": 64 * 1024 * 1024, "token": {"env": "HEALER_TEST_TOKEN"}}
    }
    webhook = parse_config(data).webhook
    assert webhook is not None and webhook.max_body == 64 * 1024 * 1024


@pytest.mark.parametrize(
    "text",
    [
        "rebootTimeout: 1" + "0" * 400,
        "rebootTimeout: 1.0e+400",
        "rebootTimeout: .nan",
        "rebootTimeout: .inf",
        "rebootTimeout: 1e400",
    ],
    ids=["400-digits", "1.0e+400", "nan", "inf", "1e400"],
)
def test_healer_validate_says_which_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "healer.yaml"
    path.write_text(
        "clusters:\n"
        "  - name: c\n"
        "    provider: {plugin: lab}\n"
        "    pools: [{name: workers, size: 1}]\n"
        f"    health:\n      {text}\n"
    )
    assert main(["validate", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: invalid configuration" in err
    assert "clusters[0].health.rebootTimeout:" in err
    assert "Traceback" not in err and "OverflowError" not in err
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.health\.rebootTimeout"):
        load_config(path)


def test_a_number_too_long_for_python_to_read_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "healer.yaml"
    path.write_text(
        "clusters:\n  - name: c\n    provider: {plugin: lab}\n"
        "    pools: [{name: workers, size: 1}]\n"
        f"    health: {{rebootTimeout: 1{'0' * 5000}}}\n"
    )
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)
