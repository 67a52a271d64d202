"""Slow lab tests for signal provenance: forged MQTT conditions on a running lab cluster.

Each runs a scenario of :mod:`healer.lab.scenarios_provenance` through the CLI and judges the
report, so they fail if MQTT could again set a Kubernetes condition.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_lab_scenarios import lab_config, ready_timeouts, run_scenario

pytestmark = pytest.mark.slow


def fast_config(tmp_path: Path) -> Path:
    """Ready timeouts of 2 s (the lab's: 5 s): the crash is detected after them."""
    return lab_config(tmp_path, health=ready_timeouts("2s"))


def test_forged_ready_is_rejected_and_nothing_is_remediated(tmp_path: Path) -> None:
    report, output = run_scenario("forged-ready", tmp_path)
    assert report["ok"], output[-6000:]
    assert report["remediations"] == []
    assert report["rejected_condition_not_owned"] >= 2
    # The daemon still believes the kubelet, not the forger.
    for view in report["daemon_view"].values():
        assert (view["ready"], view["ready_source"], view["health"]) == ("True", "kube", "healthy")
    assert "reason=condition_not_owned" in output
    assert report["invariants"]["ok"]


def test_forged_ready_true_does_not_hide_a_crashed_node(tmp_path: Path) -> None:
    report, output = run_scenario("forged-ready-crash", tmp_path, config=fast_config(tmp_path))
    assert report["ok"], output[-6000:]
    [rem] = report["remediations"]
    assert rem["result"] == "succeeded"
    assert rem["node"] == report["injected"][0]["node"]
    assert report["rejected_condition_not_owned"] >= 1


def test_one_signal_holds_two_signals_replace(tmp_path: Path) -> None:
    report, output = run_scenario("corroborate", tmp_path)
    assert report["ok"], output[-6000:]
    held = report["held_verdict"]
    assert (held["health"], held["reason"]) == ("pending", "Uncorroborated")
    assert "not corroborated: HeartbeatMissing=False" in held["message"]
    [rem] = report["remediations"]
    assert rem["result"] == "succeeded"
    assert rem["started_at"] >= report["injected"][1]["at"]  # only once the agent fell silent
    assert "corroborated: HeartbeatMissing=True" in report["unhealthy_message"]
    signals = report["started_signals"]
    assert [(s["condition"], s["source"]) for s in signals] == [
        ("Ready=Unknown", "kube"),
        ("HeartbeatMissing=True", "mqtt"),
    ]
    assert signals[0]["since"] < signals[1]["since"]
