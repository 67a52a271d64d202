"""Fence, then delete; keep capacity, end to end through `healer lab --scenario NAME`.

``create-fails``: the cloud refuses creates for longer than a workflow's retries; the pool must be
whole again once it recovers, with no human action, and `healer status` must show the shortfall
meanwhile. ``partitioned-node``: a node cut off from the API while its machine runs a StatefulSet
pod; the machine must be off before its Node is deleted, and the pod must never run twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_lab_scenarios import lab_config, run_scenario, seconds

pytestmark = pytest.mark.slow

RETRY = {"attempts": 4, "initialDelay": "0.5s", "maxDelay": "1s"}  # config/lab.yaml: 8, 0.5 s, 3 s


def _done_at(rem: dict) -> dict[str, float]:  # type: ignore[type-arg]
    out: dict[str, float] = {}
    for s in rem["steps"]:
        if s["status"] == "done":
            out.setdefault(s["step"], s["at"])
    return out


def test_create_fails_pool_is_whole_again_without_a_human(tmp_path: Path) -> None:
    # The cloud refuses creates for longer than two bursts of the step's retries: short bursts
    # (RETRY) make that seconds, not the lab config's ~50 s.
    config = lab_config(tmp_path, remediation={"retry": RETRY})
    report, output = run_scenario("create-fails", tmp_path, config=config)
    assert report["ok"], output[-6000:]
    [rem] = report["remediations"]
    assert rem["result"] == "succeeded"
    at = _done_at(rem)
    assert at["fence"] < at["delete_node"] < at["create_machine"]
    # The create was only done after the cloud recovered, and soon after.
    assert at["create_machine"] >= report["cloud_recovered_at"]
    assert seconds(report["pool_whole_at"]) - seconds(report["cloud_recovered_at"]) < 60.0
    # What the operator saw while the pool was short.
    during = report["status_during_outage"]
    assert during["cloud_refusing"] is True
    assert during["lines"][0].startswith("pool lab/workers: 4 of 5 machines")
    assert rem["replacement"] in during["lines"][1] and "InsufficientCapacity" in during["lines"][1]
    assert "SHORT" in during["cli"] and rem["replacement"] in during["cli"]
    [row] = during["report"]
    assert row["missing"][0]["attempts"] > RETRY["attempts"]  # more than one burst
    inv = report["invariants"]
    assert inv["ok"] and inv["machines_in_cloud"] == inv["nodes_expected"] == 8


def test_partitioned_node_is_fenced_before_its_node_is_deleted(tmp_path: Path) -> None:
    report, output = run_scenario("partitioned-node", tmp_path)
    assert report["ok"], output[-6000:]
    [rem] = report["remediations"]
    at = _done_at(rem)
    assert at["drain"] < at["fence"] < at["release"] < at["delete_node"] < at["destroy_machine"]
    seen = report["observed"]
    assert seen["machine_off_at"] <= seen["taint_seen_at"] <= seen["node_deleted_at"]
    assert seen["machine_off_at"] < seen["node_deleted_at"]
    # The StatefulSet pod started again elsewhere, only after the old machine was off.
    assert seen["new_copy_started_at"] >= seen["machine_off_at"]
    assert seen["copies_running_max"] == 1
    assert report["expectations"]["no_pod_ran_twice"] is True
    assert report["invariants"]["ok"]
