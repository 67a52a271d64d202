"""Configuration errors as `healer validate` shows them: a duplicated key is an error at its line,
every validation problem carries FILE:LINE:COLUMN of its field, and an unknown key gets the
closest keys the configuration takes at that place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from healer.cli.main import main
from healer.config import ConfigError, load_config

GOOD = """\
clusters:
  - name: prod
    provider: {plugin: lab}
    remediation:
      maxUnhealthy: 40%
    pools:
      - name: workers
        size: 3
"""


def _errors(tmp_path: Path, text: str) -> str:
    path = tmp_path / "healer.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value).replace(f"{path}", "F")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("        size: 3\n", "        size: 3\n        size: 4\n"),
            "F:9:9: not valid YAML: duplicate key 'size' (first at line 8, column 9)",
        ),
        (
            GOOD.replace("  - name: prod\n", "  - name: prod\n    name: other\n"),
            "F:3:5: not valid YAML: duplicate key 'name' (first at line 2, column 5)",
        ),
        ("clusters: []\nclusters: []\n", "F:2:1: not valid YAML: duplicate key 'clusters'"),
        (  # flow mappings too
            GOOD.replace("{plugin: lab}", "{plugin: lab, plugin: lab}"),
            "F:3:29: not valid YAML: duplicate key 'plugin'",
        ),
    ],
    ids=["pool", "cluster", "top", "flow"],
)
def test_a_duplicated_key_is_an_error_at_its_line(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _errors(tmp_path, text)


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "healer.yaml"
    path.write_text(
        "x-machine: &machine {size: small, image: debian-12}\n"
        + GOOD.replace(
            "        size: 3\n", "        size: 3\n        machine: {<<: *machine, size: big}\n"
        )
    )
    with pytest.raises(ConfigError, match="x-machine"):  # an unknown top-level key, no duplicate
        load_config(path)
    path.write_text(
        GOOD.replace(
            "        size: 3\n",
            "        size: 3\n        machine: {<<: {size: small, image: debian-12}, size: big}\n",
        )
    )
    assert load_config(path).clusters[0].pools[0].machine.size == "big"


def test_every_problem_carries_its_line_and_column(tmp_path: Path) -> None:
    text = """\
clusters:
  - name: prod
    provider: {plugin: lab}
    remediation:
      maxUnhealty: 40%
      maxInFlight: 0
    health:
      nodeStartupTimeout: soon
    pools:
      - name: workers
        sise: 3
"""
    lines = _errors(tmp_path, text).splitlines()
    assert lines[0] == "F: invalid configuration (5 problem(s))"
    assert lines[1:] == [
        "  F:5:7: clusters[0].remediation.maxUnhealty: unknown key 'maxUnhealty'; "
        "did you mean 'maxUnhealthy' or 'maxUnhealthyPerZone'?",
        "  F:6:7: clusters[0].remediation.maxInFlight: Input should be greater than or equal to 1",
        lines[3],  # the duration parser's own words
        "  F:10:9: clusters[0].pools[0].size: Field required",  # at the mapping that lacks it
        "  F:11:9: clusters[0].pools[0].sise: unknown key 'sise'; did you mean 'size'?",
    ]
    assert lines[3].startswith("  F:8:7: clusters[0].health.nodeStartupTimeout: ")


def test_an_unknown_top_level_key_suggests_the_top_level_keys(tmp_path: Path) -> None:
    message = _errors(tmp_path, GOOD + "logFromat: json\n")
    assert "F:9:1: logFromat: unknown key 'logFromat'; did you mean 'logFormat'?" in message


def test_validate_prints_them_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "healer.yaml"
    path.write_text(GOOD.replace("        size: 3\n", "        size: 3\n        size: 4\n"))
    assert main(["validate", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^healer: {re.escape(str(path))}:9:9: .*duplicate key 'size'", err, re.M)
    path.write_text(GOOD)
    assert main(["validate", "-c", str(path)]) == 0
