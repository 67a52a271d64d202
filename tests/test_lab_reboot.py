"""The upgrade-wave lab scenario, run through the CLI (issue 17, must show 1): every node needs a
reboot at once; each is drained before it reboots (a PodDisruptionBudget in the lab makes the
drains real), rebooted exactly once, uncordoned after, never more cordoned at once than
``reboots.concurrency`` allows, and nothing is remediated."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_lab_scenarios import run_scenario

pytestmark = pytest.mark.slow  # about 35 s


def test_an_upgrade_wave_reboots_every_node_once_drained_and_uncordoned(tmp_path: Path) -> None:
    report, output = run_scenario("upgrade-wave", tmp_path)
    assert report["ok"], output[-6000:]
    nodes = {i["node"] for i in report["injected"]}
    assert len(nodes) == 8  # config/lab.yaml: 3 control-plane + 5 workers
    assert report["reboots_per_node"] == dict.fromkeys(sorted(nodes), 1)
    assert sorted(o["node"] for o in report["order"]) == sorted(nodes)
    assert {o["released_reason"] for o in report["order"]} == {"Rebooted"}
    # One per pool (the lab's reboots.concurrency default) and both pools at once.
    assert report["concurrency"]["perPool"] == 1
    assert report["max_cordoned"]["per_pool"] == {"control-plane": 1, "workers": 1}
    # The web pods were evicted (every worker had at least one), never below the budget.
    evicted = [p for o in report["order"] if o["pool"] == "workers" for p in o["evicted"]]
    assert len(evicted) >= 5
    assert report["web"]["min_running"] >= report["web"]["replicas"] - 1
    assert report["remediations"] == []
