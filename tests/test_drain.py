"""The drain loop (healer/workflow/drain.py) against a fake of the workflow's NodeOps port, in
virtual time: its rounds, its backoff (tenacity on the clock), the typed blocked eviction, and
what it reports when the timeout passes."""

from __future__ import annotations

import asyncio

import pytest

from healer.clock import VirtualClock
from healer.errors import KubeUnavailable
from healer.kube.records import EvictResult, NodeInfo, PodInfo, Taint
from healer.workflow.drain import DrainReport, drain
from healer.workflow.ports import NodeOps

T0 = 1_700_000_000.0
PDB = "Cannot evict pod as it would violate the pod's disruption budget."


def pod(name: str, *, owner: str = "ReplicaSet", deleting: bool = False) -> PodInfo:
    return PodInfo(
        namespace="shop",
        name=name,
        node="n1",
        owner_kinds=(owner,),
        is_mirror=False,
        deleting=deleting,
        phase="Running",
    )


class FakeNodes:
    """One node and its pods. An evicted pod is gone by the next round when the node is Ready
    (its kubelet stops it); pods named in ``protected`` are refused by their budget."""

    def __init__(
        self,
        clock: VirtualClock,
        pods: list[PodInfo],
        *,
        ready: str = "True",
        protected: tuple[str, ...] = (),
    ) -> None:
        self.clock = clock
        self.pods = {p.name: p for p in pods}
        self.ready = ready
        self.protected = set(protected)
        self.exists = True
        self.rounds: list[float] = []  # when get_node was asked, since T0
        self.evictions: list[str] = []

    async def get_node(self, name: str) -> NodeInfo | None:
        self.rounds.append(self.clock.now() - T0)
        if not self.exists:
            return None
        return NodeInfo(
            name=name,
            labels={},
            unschedulable=True,
            conditions={"Ready": (self.ready, T0)},
            taints=(),
            created_at=T0,
            resource_version="1",
        )

    async def cordon(self, name: str) -> bool:
        return self.exists

    async def add_taint(self, name: str, taint: Taint) -> bool:
        return self.exists

    async def pods_on_node(self, name: str) -> list[PodInfo]:
        return list(self.pods.values())

    async def evict(self, namespace: str, name: str) -> tuple[EvictResult, str]:
        self.evictions.append(name)
        if name in self.protected:
            return EvictResult.BLOCKED, PDB
        if self.ready == "True":
            self.pods.pop(name)
        return EvictResult.EVICTED, f"pod {namespace}/{name} evicted"

    async def delete_node(self, name: str) -> bool:
        existed, self.exists = self.exists, False
        return existed


async def run(clock: VirtualClock, kube: NodeOps, *, timeout: float = 30.0) -> DrainReport:
    task = asyncio.create_task(drain(kube, "n1", clock=clock, timeout=timeout))
    await clock.advance(timeout + 60.0)
    return await task


async def test_a_budget_keeps_the_drain_backing_off_until_the_timeout() -> None:
    clock = VirtualClock(T0)
    kube = FakeNodes(clock, [pod("db-0"), pod("web-1")], protected=("db-0",))
    report = await run(clock, kube, timeout=30.0)
    # Waits of 1, 2, 4, 8, 10 (the cap), then 5: the last one ends at the deadline.
    assert kube.rounds == [0.0, 1.0, 3.0, 7.0, 15.0, 25.0, 30.0]
    assert report.timed_out and report.rounds == 7
    assert report.blocked == {"shop/db-0": PDB}
    assert report.evicted == ["shop/web-1"]
    assert report.node_ready is True


async def test_evicted_pods_on_a_ready_node_are_checked_gone_once_more() -> None:
    clock = VirtualClock(T0)
    kube = FakeNodes(clock, [pod("web-1"), pod("agent", owner="DaemonSet")])
    report = await run(clock, kube)
    assert kube.rounds == [0.0, 1.0]
    assert not report.timed_out and report.evicted == ["shop/web-1"]
    assert report.skipped == ["shop/agent (DaemonSet)"] * 2


async def test_an_unreachable_node_is_not_waited_for() -> None:
    clock = VirtualClock(T0)
    kube = FakeNodes(clock, [pod("web-1"), pod("old", deleting=True)], ready="Unknown")
    report = await run(clock, kube)
    assert kube.rounds == [0.0]
    assert report.evicted == ["shop/web-1"] and report.node_ready is False
    assert "shop/old (terminating on an unreachable node)" in report.skipped


async def test_terminating_pods_on_a_ready_node_are_waited_for() -> None:
    clock = VirtualClock(T0)
    kube = FakeNodes(clock, [pod("old", deleting=True)])
    report = await run(clock, kube, timeout=5.0)
    assert kube.rounds == [0.0, 1.0, 3.0, 5.0]
    assert report.timed_out and report.waiting == ["shop/old"]
    assert kube.evictions == []


async def test_a_node_that_is_gone_has_nothing_to_drain() -> None:
    clock = VirtualClock(T0)
    kube = FakeNodes(clock, [pod("web-1")])
    kube.exists = False
    report = await run(clock, kube)
    assert kube.rounds == [0.0] and report.rounds == 1 and not report.timed_out


async def test_api_errors_are_the_callers_to_retry() -> None:
    clock = VirtualClock(T0)

    class Down(FakeNodes):
        async def pods_on_node(self, name: str) -> list[PodInfo]:
            raise KubeUnavailable("the API is down")

    kube = Down(clock, [pod("web-1")])
    with pytest.raises(KubeUnavailable, match="down"):
        await drain(kube, "n1", clock=clock, timeout=30.0)
    assert kube.rounds == [0.0]
