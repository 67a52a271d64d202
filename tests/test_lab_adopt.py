"""Adoption end to end through `healer lab --scenario NAME --report FILE`: healer started on a
cluster older than nodeStartupTimeout with no (or a damaged, or a foreign) state database, and
with its state deleted mid-life. Nothing may be remediated or refused in a healthy node's name,
and every node must be adopted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_lab_scenarios import lab_config, ready_timeouts, run_scenario

pytestmark = pytest.mark.slow

NODES = 8  # config/lab.yaml: 3 control-plane + 5 workers
# The lab's nodeStartupTimeout is 20 s; each scenario waits for the cluster to age past it and
# then watches past it again. 8 s (still well above a lab node's boot, 1 s) proves the same in
# half the time.
STARTUP = "8s"
# Ready timeouts of 2 s (the lab's: 5 s) shorten the watch past them the same way.
HEALTH = {"nodeStartupTimeout": STARTUP, **ready_timeouts("2s")}


def adopt(name: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    return run_scenario(name, tmp_path, config=lab_config(tmp_path, health=HEALTH))


def assert_adopted_safely(report: dict[str, Any], output: str, *, reason: str) -> None:
    assert report["ok"], output[-6000:]
    assert report["remediations"] == []
    assert report["refusals"] == []
    assert report["unhealthy"] == []
    assert len(report["adopted"]) == NODES
    assert sorted(report["node_age_at_start_s"]) == report["adopted"]
    # The cluster really was older than nodeStartupTimeout when healer first saw it, and it
    # was watched past that timeout and the condition timeouts again.
    startup = report["thresholds"]["node_startup_timeout_s"]
    assert min(report["node_age_at_start_s"].values()) > startup
    assert report["watched_s"] > startup + report["thresholds"]["ready_unknown_timeout_s"]
    [first] = report["first_start"]
    assert first["reason"] == reason and "first start" in first["message"]
    inv = report["invariants"]
    assert inv["machines_in_cloud"] == inv["nodes_expected"] == inv["ready_nodes"] == NODES
    # Said in the daemon's log, in order: first start, the list folded whole, the adoption.
    for event in ("state.first_start", "health.synced", "node.adopted"):
        assert event in output, event
    assert output.index("state.first_start") < output.index("health.synced")
    assert "NodeStartupTimeout" not in output


def test_adopt_with_no_state(tmp_path: Path) -> None:
    report, output = adopt("adopt", tmp_path)
    assert_adopted_safely(report, output, reason="NoDatabase")


def test_adopt_with_a_zero_byte_database_the_operator_brought(tmp_path: Path) -> None:
    """As an operator would: `--state-dir` already holds a zero-byte healer.sqlite. The lab keeps
    it out of its own way and the daemon starts on it (`adopt-zero-byte` makes the same file
    itself)."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "healer.sqlite").write_bytes(b"")
    report, output = adopt("adopt", tmp_path)
    assert report["injected"][0]["state"] == "preserved"
    assert_adopted_safely(report, output, reason="EmptyDatabase")


def test_adopt_with_a_foreign_database(tmp_path: Path) -> None:
    report, output = adopt("adopt-foreign", tmp_path)
    assert_adopted_safely(report, output, reason="ForeignDatabase")
    [moved] = report["moved_aside"]
    assert moved["tables"] == ["songs"]
    assert moved["path"] in report["first_start"][0]["message"]


def test_lost_state_mid_life(tmp_path: Path) -> None:
    report, output = adopt("lost-state", tmp_path)
    assert_adopted_safely(report, output, reason="NoDatabase")
