"""`healer lab --kubeconfig REAL --scenario NAME` against the real control plane of
tests/realkube.py: each node scenario reports ``ok: true`` with its timing judged from the real
node-monitor grace, and a destroyed machine leaves no Node, no Lease and no kubelet behind.

A minute or two each, so not part of `make test`: `make realkube-lab` runs them
(HEALER_REALKUBE_LAB=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.realkube import RealKube

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("HEALER_REALKUBE_LAB") != "1",
        reason="lab scenarios against the real API server: `make realkube-lab`",
    ),
]

SCENARIO_TIMEOUT = 300


@pytest.mark.parametrize("scenario", ["crash", "hang", "partition", "provider-outage"])
def test_lab_scenario_on_the_real_server(realkube: RealKube, scenario: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    argv = [
        sys.executable,
        "-m",
        "healer.cli",
        "lab",
        "--kubeconfig",
        str(realkube.kubeconfig),
        "--node-grace",
        f"{realkube.node_grace:g}",
        "--node-monitor-period",
        f"{realkube.monitor_period:g}",
        "--scenario",
        scenario,
        "--state-dir",
        str(tmp_path / "state"),
        "--report",
        str(report),
    ]
    run = subprocess.run(
        argv, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT, cwd=tmp_path
    )
    out = run.stdout + run.stderr
    (tmp_path / "lab.out").write_text(out)
    print(out[-3000:])
    result = json.loads(report.read_text())
    assert result["thresholds"]["lease_grace_s"] == realkube.node_grace
    assert result["ok"], json.dumps(result["expectations"])
    assert run.returncode == 0
    # A replaced machine's Node and Lease are gone from the real server (the Lease through the
    # garbage collector: the lab's kubelets make their Node its owner).
    nodes = {n["metadata"]["name"] for n in realkube.request("GET", "/api/v1/nodes")[1]["items"]}
    leases = realkube.request(
        "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    )[1]["items"]
    for rem in result["remediations"]:
        assert rem["node"] not in nodes
        realkube.wait_for(
            lambda node=rem["node"]: (
                node
                not in {
                    lease["metadata"]["name"]
                    for lease in realkube.request(
                        "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
                    )[1]["items"]
                }
            ),
            timeout=20,
            what=f"{rem['node']}'s lease collected",
        )
    assert all(lease["metadata"].get("ownerReferences") for lease in leases)
