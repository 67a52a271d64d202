"""The lab's control plane runs real etcd members: `healer lab --scenario crash-control-plane`
replaces a control-plane machine with its member removed through a healthy member before the
fence, the replacement joined as a new member, etcd 3 members before and after. Without an etcd
binary the lab says so and uses its fake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from healer.lab.etcd import etcd_binary
from tests.test_lab_scenarios import run_scenario

pytestmark = pytest.mark.slow


def _check(report: dict, output: str) -> None:  # type: ignore[type-arg]
    assert report["ok"], output[-6000:]
    [rem] = report["remediations"]
    done = [s["step"] for s in rem["steps"] if s["status"] == "done"]
    assert done.index("drain") < done.index("etcd_remove_member") < done.index("fence")
    assert done[-2:] == ["wait_for_join", "etcd_verify"]
    etcd = report["etcd"]
    for when in ("before", "after"):
        assert len(etcd[when]["members"]) == 3
        assert all(m["healthy"] for m in etcd[when]["members"])
    [removal] = etcd["member_removal"]
    assert removal["removed"] is True and removal["members_before"] == 3
    assert removal["member"] not in {m["id"] for m in etcd["after"]["members"]}
    assert rem["replacement"] in {m["name"] for m in etcd["after"]["members"]}


def test_crash_control_plane_keeps_etcd_whole(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("no etcd binary (Debian package etcd-server)")
    report, output = run_scenario("crash-control-plane", tmp_path)
    _check(report, output)
    assert report["etcd"]["real"] is True


def test_without_etcd_the_lab_says_so_and_uses_its_fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(os.environ, "HEALER_ETCD_BINARY", "none")
    report, output = run_scenario("crash-control-plane", tmp_path)
    _check(report, output)
    assert report["etcd"]["real"] is False
    assert "lab.etcd_fake" in output
