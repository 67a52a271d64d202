"""The remediation workflow against the fake API server (over HTTP) and the lab cloud.

Drain semantics (kubectl drain through the Eviction API), failure escalation, and the safety
checks on the machine a workflow destroys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from healer.clock import RealClock
from healer.kube.client import KubeClient
from healer.lab.apiserver.server import FakeApiServer
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import Store, WorkflowRecord
from healer.workflow.runner import STEPS, WorkflowRunner
from providers.lab.plugin import LabProvider
from tests.helpers import lab_cloud_with_worker, lab_like_config, running_workflow

# Every test here runs on both state backends (tests/plugins/store.py).
pytestmark = pytest.mark.usefixtures("state_backend")

OLD = "lab-workers-old00001"


def config(**remediation: Any):  # type: ignore[no-untyped-def]
    return lab_like_config(
        remediation={
            "drainTimeout": "1s",
            "retry": {"attempts": 3, "initialDelay": 0.05, "maxDelay": 0.1},
            **remediation,
        }
    )


class World:
    def __init__(self, api: FakeApiServer, kube: KubeClient, provider: LabProvider, store: Store):
        self.api, self.kube, self.provider, self.store = api, kube, provider, store
        self.finished: list[WorkflowRecord] = []

    def runner(self, cfg: Any, **extra: Any) -> WorkflowRunner:
        async def on_finished(wf: WorkflowRecord) -> None:
            self.finished.append(wf)

        return WorkflowRunner(
            config=cfg,
            store=self.store,
            clock=RealClock(),
            kube={"lab": self.kube},
            providers={"lab": self.provider},
            user_data=render_user_data,
            on_finished=on_finished,
            join_poll_interval=0.05,
            **extra,
        )

    def workflow(self, node: str = OLD) -> WorkflowRecord:
        return running_workflow(self.store, node, "lab-workers-wf012345")

    async def kubelet_for_replacements(self) -> None:
        """Plays the replacement's kubelet: once its machine exists, its Node turns up Ready."""
        while True:
            for m in await self.provider.list_machines({"healer.io/cluster": "lab"}):
                if m.name != OLD and self.api.node(m.name) is None:
                    self.api.add_node(m.name, labels={"healer.io/pool": "workers"}, ready=True)
            await asyncio.sleep(0.05)


@pytest.fixture
async def world(fake_api: FakeApiServer, kube: KubeClient, tmp_path: Path) -> AsyncIterator[World]:
    provider = await lab_cloud_with_worker(tmp_path, OLD)
    fake_api.add_node(OLD, labels={"healer.io/pool": "workers"}, ready=True)
    store = Store.open(tmp_path)
    w = World(fake_api, kube, provider, store)
    helper = asyncio.create_task(w.kubelet_for_replacements())
    yield w
    helper.cancel()
    await provider.close()
    store.close()


async def run_to_end(world: World, cfg: Any, wf: WorkflowRecord) -> WorkflowRecord:
    runner = world.runner(cfg)
    await runner.start(wf)
    async with asyncio.timeout(15):
        await runner.wait_idle()
    final = world.store.workflow(wf.id)
    assert final is not None
    return final


async def test_dead_node_is_drained_kubectl_style_and_replaced(world: World) -> None:
    api, kube = world.api, world.kube
    await kube.set_node_ready(
        OLD, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
    )
    api.add_pod("shop", "web-1", OLD, labels={"app": "web"}, owner_kind="ReplicaSet")
    api.add_pod("shop", "db-0", OLD, labels={"app": "db"}, owner_kind="StatefulSet")
    api.add_pdb("shop", "db", {"app": "db"}, min_available=1)
    api.add_pod("kube-system", "proxy-x", OLD, owner_kind="DaemonSet")
    api.add_pod("kube-system", "etcd-old", OLD, annotations={"kubernetes.io/config.mirror": "x"})

    final = await run_to_end(world, config(), world.workflow())

    assert final.state == "succeeded", final.error
    drain = next(
        s for s in world.store.steps(final.id) if s["step"] == "drain" and s["status"] == "done"
    )
    detail = drain["detail"]
    assert detail["evicted"] == ["shop/web-1"]
    assert (
        "shop/db-0" in detail["blocked"] and "disruption budget" in detail["blocked"]["shop/db-0"]
    )
    assert detail["timed_out"] is True and detail["rounds"] > 1  # the 429 was retried
    assert any("DaemonSet" in s for s in detail["skipped"])
    assert any("mirror" in s for s in detail["skipped"])
    # DaemonSet and mirror pods were never asked to leave.
    assert (
        api.pod("kube-system", "proxy-x") is None
        or "deletionTimestamp" not in api.pod("kube-system", "proxy-x")["metadata"]
    )
    events = [e.event for e in world.store.audit_log(node=OLD)]
    assert "remediation.drain_timed_out" in events and events[-1] == "remediation.succeeded"
    assert api.node(OLD) is None
    assert await world.provider.get_machine(OLD) is None
    assert api.node("lab-workers-wf012345") is not None
    assert [s["step"] for s in world.store.steps(final.id) if s["status"] == "done"] == [
        "created",
        *STEPS,
    ]


async def test_reachable_node_drain_waits_until_pods_are_gone(world: World) -> None:
    world.api.add_pod("shop", "web-1", OLD, owner_kind="ReplicaSet")
    final = await run_to_end(world, config(), world.workflow())
    assert final.state == "succeeded", final.error
    drain = next(
        s for s in world.store.steps(final.id) if s["step"] == "drain" and s["status"] == "done"
    )
    assert drain["detail"]["evicted"] == ["shop/web-1"] and drain["detail"]["timed_out"] is False


async def test_provider_outage_exhausts_retries_then_fails_without_looping(world: World) -> None:
    world.provider_driver = world.provider  # readability
    from providers.lab.driver import LabNodeDriver

    LabNodeDriver(key=world.provider.db_path).ex_set_outage(time.time() + 3600)
    final = await run_to_end(world, config(), world.workflow())
    assert final.state == "failed"
    # Fencing comes before the Node is deleted: an outage stops the workflow with the Node
    # still there and the machine untouched, so the pool has lost nothing.
    assert final.step == "fence"
    assert world.api.node(OLD) is not None
    assert "retries exhausted" in (final.error or "") and "outage" in (final.error or "")
    failed = [e for e in world.store.audit_log(node=OLD) if e.event == "remediation.failed"]
    assert len(failed) == 1
    assert world.finished and world.finished[-1].state == "failed"
    LabNodeDriver(key=world.provider.db_path).ex_set_outage(None)
    assert await world.provider.get_machine(OLD) is not None  # nothing was destroyed


async def test_a_machine_without_healer_tags_is_never_destroyed(
    world: World, tmp_path: Path
) -> None:
    from providers.lab.driver import LabNodeDriver

    driver = LabNodeDriver(key=world.provider.db_path)
    old = next(m for m in driver.list_nodes() if m.name == OLD)
    driver.ex_set_tags(old.id, {"owner": "someone-else"})
    final = await run_to_end(world, config(), world.workflow())
    assert final.state == "failed"
    assert final.step == "fence"
    assert "refusing to fence or destroy" in (final.error or "")
    assert world.api.node(OLD) is not None  # its Node is kept too
    assert driver.ex_get_node(old.id).state.value == "running"


async def test_the_replacement_gets_its_keys_before_the_join_is_waited_for(world: World) -> None:
    """The runner's key hook (healer.provisioning.keydelivery in the daemon) sees the new machine
    and its provider before wait_for_join polls; its answer is journalled."""
    seen: list[tuple[str, str, str, bool]] = []

    async def deliver_keys(cluster: Any, pool: str, machine: Any, provider: Any) -> bool:
        node_there = world.api.node(machine.name) is not None
        seen.append((cluster.name, pool, machine.name, node_there))
        return True

    runner = world.runner(config(), deliver_keys=deliver_keys)
    wf = world.workflow()
    await runner.start(wf)
    async with asyncio.timeout(15):
        await runner.wait_idle()
    final = world.store.workflow(wf.id)
    assert final is not None and final.state == "succeeded", final
    assert len(seen) == 1 and seen[0][:3] == ("lab", "workers", "lab-workers-wf012345")
    join = next(
        s
        for s in world.store.steps(wf.id)
        if s["step"] == "wait_for_join" and s["status"] == "done"
    )
    assert join["detail"]["keys_pushed"] is True
