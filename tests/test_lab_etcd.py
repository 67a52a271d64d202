"""The lab's control plane runs real etcd members: `healer lab --scenario crash-control-plane`
replaces a control-plane machine with its member removed through a healthy member before the
fence, the replacement joined as a new member, etcd 3 members before and after. Without an etcd
binary the lab says so and uses its fake."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from healer.lab.etcd import LabEtcd, etcd_binary, wait_healthy
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


@pytest.mark.skipif(etcd_binary() is None, reason="needs etcd (Debian etcd-server)")
async def test_a_restarted_lab_gets_its_members_back_together(tmp_path: Path) -> None:
    """A restarted lab starts its members again on their data. Alone, the first cannot be healthy
    (no quorum); it used to wait for that holding the lock the others start behind, and a lab
    restart lost its 20 s timeout (`lab.etcd_join_failed`) before the second member started."""
    binary = etcd_binary()
    assert binary is not None
    names = ["lab-cp-a", "lab-cp-b", "lab-cp-c"]

    async def up(etcd: LabEtcd) -> float:
        started = time.monotonic()
        etcd.sync([(name, "running") for name in names])
        await wait_healthy(etcd.client, names, timeout=60.0)
        return time.monotonic() - started

    first = LabEtcd(binary=binary, state_dir=tmp_path, cluster="lab", pool_size=3)
    try:
        await up(first)
    finally:
        await first.stop()
    again = LabEtcd(binary=binary, state_dir=tmp_path, cluster="lab", pool_size=3)
    try:
        assert all((again.root / "members" / name / "member").is_dir() for name in names)
        took = await up(again)
    finally:
        await again.stop()
    assert took < 15.0, f"the members came back in {took:.1f}s"


async def test_a_member_that_exits_ends_the_wait_at_once_saying_how(tmp_path: Path) -> None:
    # A member process that dies at start (a port taken meanwhile, a bad flag) used to be waited
    # for until the timeout (20 s), the join failing only then; now at once, with its log's tail.
    from healer.lab.etcd import EtcdProcess
    from healer.planner.etcd_quorum import EtcdView

    class Unreachable:
        async def view(self) -> EtcdView:
            return EtcdView(error="no member answered")

    script = tmp_path / "etcd"
    script.write_text(
        "#!/bin/sh\necho 'listen tcp 127.0.0.1:1: bind: address already in use'\nexit 1\n"
    )
    script.chmod(0o755)
    proc = EtcdProcess(
        binary=str(script),
        name="m-1",
        data_dir=tmp_path / "members" / "m-1",
        tls_dir=tmp_path / "tls",
        client_port=1,
        peer_port=2,
    )
    proc.start(initial_cluster="m-1=https://127.0.0.1:2", state="new")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"m-1 exited with 1: .*address already in use"):
        await wait_healthy(Unreachable(), ["m-1"], timeout=30.0, procs=[proc])  # type: ignore[arg-type]
    assert time.monotonic() - started < 5.0
    with pytest.raises(TimeoutError):  # without the process to watch: the timeout, as before
        await wait_healthy(Unreachable(), ["m-1"], timeout=0.3)  # type: ignore[arg-type]
