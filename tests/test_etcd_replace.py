"""Control-plane replacement against a real 3-member etcd (tests/etcd_cluster.py):

* the workflow removes the failed machine's member through a healthy member before the machine
  is fenced, and after the replacement joined (kubeadm-style) checks the membership whole: 3
  members, all healthy, the old id gone; killed before and after each etcd step and resumed,
  the same result;
* the planner judges quorum by etcd: a second control-plane failure waits for the first
  replacement, its refusal naming etcd's numbers; with etcd unreachable no control-plane
  remediation starts, and the refusal says why.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from healer import failpoints
from healer.clock import RealClock
from healer.cloud.machines import MachineRequest
from healer.etcd import DirectEndpoints, EtcdClient
from healer.kube.client import KubeClient
from healer.lab.apiserver.server import FakeApiServer
from healer.model import LABEL_CONTROL_PLANE, LABEL_POOL, EventKind, Role
from healer.naming import ownership_tags
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import RUNNING, SUCCEEDED, Store, WorkflowRecord
from healer.workflow.order import CONTROL_PLANE_STEPS
from healer.workflow.runner import WorkflowRunner
from providers.lab.plugin import LabProvider
from tests.etcd_cluster import EtcdCluster
from tests.etcd_cluster import etcd_cluster as etcd_cluster
from tests.helpers import lab_like_config
from tests.test_planner import Rig

OLD = "cp-1"
CP_LABELS = {LABEL_POOL: "control-plane", LABEL_CONTROL_PLANE: ""}


def config(endpoints: list[str]) -> Any:
    return lab_like_config(
        etcd={"mode": "direct", "endpoints": endpoints},
        remediation={
            "drainTimeout": "1s",
            "retry": {"attempts": 6, "initialDelay": 0.2, "maxDelay": 0.5},
        },
    )


def healer_client(etcd: EtcdCluster) -> EtcdClient:
    """healer's own client: its certificate minted from the test's etcd CA."""
    return EtcdClient(
        cluster="lab",
        endpoints=DirectEndpoints(etcd.endpoints()),
        tls=etcd.client_tls(),
        timeout=2.0,
    )


class World:
    def __init__(self, api: FakeApiServer, kube: KubeClient, provider: LabProvider, store: Store):
        self.api, self.kube, self.provider, self.store = api, kube, provider, store

    async def machines(self, etcd: EtcdCluster) -> None:
        """Plays the machines: a fenced (stopped) or destroyed one takes its etcd member down;
        a new one joins etcd as kubeadm join --control-plane does, then its Node is Ready."""
        while True:
            for m in await self.provider.list_machines({"healer.io/cluster": "lab"}):
                proc = etcd.procs.get(m.name)
                if str(m.state) != "running" and proc is not None and proc.running:
                    etcd.kill(m.name)
                if str(m.state) == "running" and m.name not in etcd.procs:
                    await etcd.join(m.name)
                    self.api.add_node(m.name, labels=CP_LABELS, ready=True)
            await asyncio.sleep(0.05)

    def workflow(self) -> WorkflowRecord:
        now = time.time()
        wf = WorkflowRecord(
            id="wfcp00000001",
            cluster="lab",
            pool="control-plane",
            node=OLD,
            role=Role.CONTROL_PLANE,
            state=RUNNING,
            step="cordon",
            reason="ReadyUnknownTimeout",
            evidence={},
            replacement_name="lab-control-plane-wfcp0000",
            started_at=now,
            updated_at=now,
        )
        self.store.create_workflow(wf)
        return wf

    def runner(self, cfg: Any, etcd: EtcdClient) -> WorkflowRunner:
        return WorkflowRunner(
            config=cfg,
            store=self.store,
            clock=RealClock(),
            kube={"lab": self.kube},
            providers={"lab": self.provider},
            user_data=render_user_data,
            join_poll_interval=0.1,
            etcd={"lab": etcd},
        )


@pytest.fixture
async def world(
    fake_api: FakeApiServer, kube: KubeClient, tmp_path: Path, etcd_cluster: EtcdCluster
) -> AsyncIterator[World]:
    provider = LabProvider(cluster="lab", options={}, credentials={}, state_dir=tmp_path)
    for name in ("cp-1", "cp-2", "cp-3"):
        await provider.create_machine(
            MachineRequest(
                name=name,
                size="medium",
                image="debian-12",
                tags=ownership_tags("lab", "control-plane"),
            )
        )
        fake_api.add_node(name, labels=CP_LABELS, ready=name != OLD)
    etcd_cluster.kill(OLD)  # the machine of cp-1 died: its member is down
    store = Store.open(tmp_path)
    w = World(fake_api, kube, provider, store)
    helper = asyncio.create_task(w.machines(etcd_cluster))
    yield w
    helper.cancel()
    await asyncio.gather(helper, return_exceptions=True)
    await provider.close()
    store.close()


async def _whole_after(world: World, etcd: EtcdCluster, wf: WorkflowRecord, old_id: int) -> None:
    final = world.store.workflow(wf.id)
    assert final is not None and final.state == SUCCEEDED, final and final.error
    done = [s["step"] for s in world.store.steps(wf.id) if s["status"] == "done"]
    assert done == ["created", *CONTROL_PLANE_STEPS]
    view = await etcd.client.view()
    assert len(view.members) == 3 and view.healthy == 3, view.describe()
    assert old_id not in {m.id for m in view.members}
    assert {m.name for m in view.members} == {"cp-2", "cp-3", wf.replacement_name}
    removal = next(
        s
        for s in world.store.steps(wf.id)
        if s["step"] == "etcd_remove_member" and s["status"] == "done"
    )
    assert removal["detail"]["member"] == f"{old_id:x}"
    assert removal["detail"]["members_before"] in (2, 3)  # 2 when resumed after the removal
    verify = next(
        s for s in world.store.steps(wf.id) if s["step"] == "etcd_verify" and s["status"] == "done"
    )
    assert verify["detail"]["members"] == 3 and verify["detail"]["healthy"] == 3


CRASHES = [
    (step, when) for step in ("etcd_remove_member", "etcd_verify") for when in ("before", "after")
]


@pytest.mark.parametrize(("step", "when"), [(None, None), *CRASHES])
async def test_a_control_plane_replacement_keeps_etcd_whole_and_resumes_after_a_kill(
    world: World,
    etcd_cluster: EtcdCluster,
    monkeypatch: pytest.MonkeyPatch,
    step: str | None,
    when: str | None,
) -> None:
    before = await etcd_cluster.client.view()
    old = before.member(OLD)
    assert old is not None and len(before.members) == 3 and before.healthy == 2
    cfg = config(etcd_cluster.endpoints())
    wf = world.workflow()
    client = healer_client(etcd_cluster)
    try:
        if step is not None:
            point = f"workflow.{step}.{when}"
            real_hit = failpoints.hit

            def crash(name: str) -> None:
                real_hit(name)
                if name == point:
                    raise asyncio.CancelledError  # the task dies here, as the process would

            monkeypatch.setattr(failpoints, "hit", crash)
            first = world.runner(cfg, client)
            await first.start(wf)
            async with asyncio.timeout(30):
                await first.wait_idle()
            halted = world.store.workflow(wf.id)
            assert halted is not None and halted.state == RUNNING and halted.step == step
            monkeypatch.setattr(failpoints, "hit", real_hit)
            second = world.runner(cfg, client)
            assert await second.resume_all() == 1
            runner = second
        else:
            runner = world.runner(cfg, client)
            await runner.start(wf)
        async with asyncio.timeout(30):
            await runner.wait_idle()
        await _whole_after(world, etcd_cluster, wf, old.id)
    finally:
        await client.close()


# -- the planner asks etcd ------------------------------------------------------------------


@pytest.fixture
async def etcd_rig(
    tmp_path: Path, etcd_cluster: EtcdCluster
) -> AsyncIterator[tuple[Rig, EtcdClient]]:
    rig = Rig(tmp_path, etcd={"mode": "direct", "endpoints": etcd_cluster.endpoints()})
    client = healer_client(etcd_cluster)
    rig.planner.watch_etcd({"lab": client})
    task = asyncio.create_task(rig.tracker.run())
    yield rig, client
    task.cancel()
    await client.close()
    rig.store.close()


def _refusals(rig: Rig, node: str) -> list[Any]:
    return [e for e in rig.store.audit_log(event="remediation.refused") if e.node == node]


async def test_a_second_control_plane_failure_waits_for_the_first_by_etcds_numbers(
    etcd_rig: tuple[Rig, EtcdClient], etcd_cluster: EtcdCluster
) -> None:
    rig, _ = etcd_rig
    await rig.cluster()
    etcd_cluster.kill("cp-1")
    await rig.fail("cp-1")
    await rig.clock.advance(6)
    await rig.planner.recheck()
    assert [wf.node for wf in rig.started] == ["cp-1"]

    # The first replacement removed cp-1's member; cp-2 fails before its replacement joined.
    view = await etcd_cluster.client.view()
    cp1 = view.member("cp-1")
    assert cp1 is not None
    await etcd_cluster.client.remove_member(view, cp1.id)
    await rig.fail("cp-2")
    await rig.clock.advance(6)
    await rig.planner.recheck()
    assert [wf.node for wf in rig.started] == ["cp-1"]  # the second waits
    refusal = _refusals(rig, "cp-2")[-1]
    assert refusal.reason == "ControlPlaneInFlight"
    assert "etcd: 2 members, 2 healthy, quorum 2" in refusal.message

    # The replacement joins (etcd member, then Node); cp-1's Node went with its machine.
    await etcd_cluster.join("cp-4")
    await rig.event("cp-1", EventKind.NODE_DELETED)
    await rig.event("cp-4", EventKind.NODE_ADDED, labels=CP_LABELS)
    await rig.event("cp-4", EventKind.CONDITION, condition="Ready", status="True")
    first = rig.store.workflow(rig.started[0].id)
    assert first is not None
    rig.store.update_workflow(first.with_(state=SUCCEEDED, finished_at=rig.clock.now()))
    etcd_cluster.kill("cp-2")  # now cp-2's machine is really gone
    await rig.planner.on_workflow_finished(first)
    assert [wf.node for wf in rig.started] == ["cp-1", "cp-2"]
    view = await etcd_cluster.client.view()
    assert len(view.members) == 3 and view.healthy == 2  # quorum (2) kept throughout


async def test_two_members_down_is_refused_by_etcds_quorum(
    etcd_rig: tuple[Rig, EtcdClient], etcd_cluster: EtcdCluster
) -> None:
    """The Node view thinks cp-3 alone is gone (cp-2's kubelet still reports Ready), but etcd
    has lost cp-2's member too: removing cp-3's would leave 1 healthy of 2."""
    rig, _ = etcd_rig
    await rig.cluster()
    etcd_cluster.kill("cp-2")
    etcd_cluster.kill("cp-3")
    await rig.fail("cp-3")
    await rig.clock.advance(6)
    await rig.planner.recheck()
    assert rig.started == []
    refusal = _refusals(rig, "cp-3")[-1]
    assert refusal.reason in ("EtcdWouldLoseQuorum", "EtcdUnreachable"), refusal.message
    assert "etcd" in refusal.message


async def test_etcd_unreachable_refuses_control_plane_remediation_and_says_why(
    etcd_rig: tuple[Rig, EtcdClient], etcd_cluster: EtcdCluster
) -> None:
    rig, _ = etcd_rig
    await rig.cluster()
    for name in list(etcd_cluster.procs):
        etcd_cluster.kill(name)
    await rig.fail("cp-1", "w-1")
    await rig.clock.advance(6)
    await rig.planner.recheck()
    assert [wf.node for wf in rig.started] == ["w-1"]  # workers are not etcd's business
    refusal = _refusals(rig, "cp-1")[-1]
    assert refusal.reason == "EtcdUnreachable"
    assert "etcd cannot be reached" in refusal.message
    assert "the Node view says 2 of 3 control-plane Nodes besides cp-1 healthy" in refusal.message


# -- healer status ---------------------------------------------------------------------------


def test_status_shows_members_leader_and_health(
    etcd_cluster: EtcdCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from healer.cli.main import main

    tls = etcd_cluster.client_tls()
    files = {}
    for name, data in (("ca", tls.ca_pem), ("cert", tls.cert_pem), ("key", tls.key_pem)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(data)
    cfg = tmp_path / "healer.yaml"
    cfg.write_text(
        json.dumps(
            {
                "clusters": [
                    {
                        "name": "lab",
                        "kubeconfig": str(tmp_path / "kubeconfig"),
                        "provider": {"plugin": "lab"},
                        "etcd": {
                            "mode": "direct",
                            "endpoints": etcd_cluster.endpoints()[:1],
                            "caFile": str(files["ca"]),
                            "certFile": str(files["cert"]),
                            "keyFile": str(files["key"]),
                        },
                        "pools": [{"name": "control-plane", "role": "control-plane", "size": 3}],
                    }
                ]
            }
        )
    )
    Store.open(tmp_path / "state").close()
    etcd_cluster.kill("cp-2")
    state = ["--state-dir", str(tmp_path / "state"), "-c", str(cfg)]
    assert main(["status", *state]) == 0
    out = capsys.readouterr().out
    assert "etcd lab: 3 members, 2 healthy, quorum 2, leader cp-" in out
    assert "cp-2" in out and "UNHEALTHY" in out and "(leader)" in out
    assert main(["status", "--json", *state]) == 0
    etcd = json.loads(capsys.readouterr().out)["etcd"]["lab"]
    assert etcd["reachable"] and len(etcd["members"]) == 3
    assert {m["name"]: m["healthy"] for m in etcd["members"]} == {
        "cp-1": True,
        "cp-2": False,
        "cp-3": True,
    }
