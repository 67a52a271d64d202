"""The planned reboot as a workflow (healer/workflow/reboot.py) in virtual time, against a fake
of the cluster's nodes and pods: cordon, drain, hand-over, wait, uncordon, release; a drain a
PodDisruptionBudget holds; and a crash (a failpoint) at every step, then a restart that finishes
the reboot exactly once with the node uncordoned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from healer import failpoints
from healer.clock import VirtualClock
from healer.health.tracker import HealthTracker
from healer.kube.records import EvictResult, NodeInfo, PodInfo, Taint
from healer.model import EventKind, NodeEvent, NodeKey, Permit, RebootRequest
from healer.planner import reboots
from healer.planner.reboots import RebootArbiter
from healer.store.sqlite import Store
from healer.workflow.reboot import DONE, STEPS, RebootWorkflows, next_step
from tests.helpers import lab_like_config
from tests.test_reboot_arbiter import NOON, Arb, arb  # noqa: F401 (the fixture)

PDB = "The disruption budget web-pdb needs 1 healthy pods and has 1 currently"


@dataclass
class FakeNode:
    unschedulable: bool = False
    ready: str = "True"
    ready_since: float = NOON - 3600


@dataclass
class FakeKube:
    """Nodes and their pods. An evicted pod is gone at once; ``protected`` pods are refused by
    their budget (a PDB at 0 disruptions)."""

    clock: VirtualClock
    nodes: dict[str, FakeNode] = field(default_factory=dict)
    pods: dict[str, list[str]] = field(default_factory=dict)
    protected: set[str] = field(default_factory=set)
    cordons: list[str] = field(default_factory=list)
    uncordons: list[str] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)  # metadata patches, in order

    async def get_node(self, name: str) -> NodeInfo | None:
        n = self.nodes.get(name)
        if n is None:
            return None
        return NodeInfo(
            name=name,
            labels={},
            unschedulable=n.unschedulable,
            conditions={"Ready": (n.ready, n.ready_since)},
            taints=(),
            created_at=NOON - 7200,
            resource_version="1",
        )

    async def cordon(self, name: str) -> bool:
        self.cordons.append(name)
        self.nodes[name].unschedulable = True
        return True

    async def uncordon(self, name: str) -> bool:
        self.uncordons.append(name)
        self.nodes[name].unschedulable = False
        return True

    async def add_taint(self, name: str, taint: Taint) -> bool:
        return True

    async def patch_node_metadata(self, what: str, name: str, metadata: dict[str, Any]) -> bool:
        self.marks.append(metadata)
        return name in self.nodes

    async def pods_on_node(self, name: str) -> list[PodInfo]:
        return [
            PodInfo("shop", p, name, ("ReplicaSet",), False, False, "Running")
            for p in self.pods.get(name, [])
        ]

    async def evict(self, namespace: str, name: str) -> tuple[EvictResult, str]:
        if name in self.protected:
            return EvictResult.BLOCKED, PDB
        for pods in self.pods.values():
            if name in pods:
                pods.remove(name)
        return EvictResult.EVICTED, ""

    async def delete_node(self, name: str) -> bool:
        return self.nodes.pop(name, None) is not None


@dataclass
class World:
    clock: VirtualClock
    store: Store
    tracker: HealthTracker
    kube: FakeKube
    answers: list[tuple[str, Permit]]
    arbiter: RebootArbiter
    flows: RebootWorkflows
    rebooted: list[str] = field(default_factory=list)  # what the agent rebooted, in order

    async def ask(self, node: str, request_id: str) -> reboots.Decision:
        decision = await self.arbiter.on_request(
            RebootRequest("lab", node, request_id, self.clock.now())
        )
        await self.clock.settle()
        return decision

    async def event(self, node: str, kind: EventKind) -> None:
        event = NodeEvent("lab", node, kind, self.clock.now(), "mqtt")
        await self.tracker.handle(event)
        await self.arbiter.observe(event)
        await self.clock.settle()

    async def reboot(self, node: str) -> None:
        """The agent got its grant: it reboots the machine, which comes back Ready."""
        self.rebooted.append(node)
        await self.event(node, EventKind.REBOOT_STARTED)
        self.kube.nodes[node].ready = "Unknown"
        await self.clock.advance(8)  # within rebootTimeout (12 s)
        self.kube.nodes[node].ready, self.kube.nodes[node].ready_since = "True", self.clock.now()
        await self.event(node, EventKind.BOOTED)
        await self.clock.advance(5)

    def granted(self, node: str) -> list[Permit]:
        return [p for n, p in self.answers if n == node and p.granted]

    def start(self) -> None:
        """A daemon (re)starting: a new arbiter from the audit log, a new workflow runner."""
        config = self.tracker._config
        self.flows = RebootWorkflows(
            config=config,
            store=self.store,
            clock=self.clock,
            kube={"lab": self.kube},
            arbiter=lambda: self.arbiter,
            poll_interval=1.0,
        )
        self.arbiter = RebootArbiter(
            config=config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            publish=self._publish,
            start_reboot=self.flows.start,
        )

    async def _publish(self, cluster: str, node: str, permit: Permit) -> None:
        self.answers.append((node, permit))


@pytest.fixture
async def world(arb: Arb) -> AsyncIterator[World]:  # noqa: F811 (the fixture above)
    """The arbiter's world (tests/test_reboot_arbiter.py: w-1, w-2 of pool workers, c-1),
    restarted with the reboot workflow wired in."""
    nodes = {n: FakeNode() for n in ("w-1", "w-2", "c-1")}
    kube = FakeKube(arb.clock, nodes=nodes, pods={"w-1": ["web-1", "api-1"]})
    w = World(arb.clock, arb.store, arb.tracker, kube, [], arb.arbiter, None)  # type: ignore[arg-type]
    w.start()
    yield w
    await w.flows.stop()


def test_next_step_skips_the_reboot_after_a_failed_drain() -> None:
    def done(step: str, **detail: object) -> dict[str, object]:
        return {"step": step, "status": DONE, "detail": detail}

    assert next_step([]) == "cordon"
    assert next_step([done("cordon")]) == "drain"
    assert next_step([done("cordon"), done("drain", outcome="DrainTimeout")]) == "uncordon"
    assert next_step([done(s) for s in STEPS]) == DONE


async def test_a_reboot_is_drained_first_then_handed_over(world: World) -> None:
    first = await world.ask("w-1", "a")
    assert (first.granted, first.reason) == (False, reboots.DRAINING)
    await world.clock.advance(2)  # a drain round to see the evicted pods gone
    # The drain ran: the node is cordoned and empty, and the grant went out on the pending id.
    assert world.kube.nodes["w-1"].unschedulable and world.kube.pods["w-1"] == []
    assert [p.id for p in world.granted("w-1")] == ["a"]
    # The next ask gets it too; a peer of the pool waits (the grant counts as out of service).
    assert (await world.ask("w-1", "b")).granted
    assert (await world.ask("w-2", "c")).reason == reboots.POOL_BUSY
    await world.reboot("w-1")
    assert not world.kube.nodes["w-1"].unschedulable
    assert world.arbiter.grant(NodeKey("lab", "w-1")) is None
    released = world.store.audit_log(event="reboot.released")
    assert [(e.node, e.reason) for e in released] == [("w-1", "Rebooted")]
    assert (await world.ask("w-2", "d")).reason == reboots.DRAINING


async def test_a_pdb_at_zero_holds_the_reboot_and_the_node_is_uncordoned(world: World) -> None:
    world.kube.protected.add("web-1")
    assert (await world.ask("w-1", "a")).reason == reboots.DRAINING
    assert world.kube.nodes["w-1"].unschedulable
    await world.clock.advance(300)
    assert (await world.ask("w-1", "b")).reason == reboots.DRAINING  # still draining
    await world.clock.advance(301)  # past drainTimeout (600 s, the default)
    assert not world.kube.nodes["w-1"].unschedulable  # uncordoned again
    assert world.arbiter.grant(NodeKey("lab", "w-1")) is None
    assert world.granted("w-1") == []  # never told to reboot
    refused = await world.ask("w-1", "c")
    assert refused.reason == reboots.DRAIN_TIMEOUT
    assert "shop/web-1" in refused.message and "web-pdb" in refused.message
    assert 200 < (refused.retry_after or 0) <= 300
    released = world.store.audit_log(event="reboot.released")
    assert [(e.node, e.reason) for e in released] == [("w-1", "DrainTimeout")]
    assert "web-pdb" in released[0].message
    # After drainRetryAfter it tries again (and, the budget still at 0, waits again).
    await world.clock.advance(300)
    assert (await world.ask("w-1", "d")).reason == reboots.DRAINING
    assert world.kube.nodes["w-1"].unschedulable


CRASH_POINTS = [f"reboot.{step}.{when}" for step in STEPS for when in ("before", "after")]


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_crash_at_any_step_resumes_and_reboots_once(
    world: World, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failpoints, "_points", {point: "raise"})
    await world.ask("w-1", "a")
    await world.clock.advance(2)
    if world.granted("w-1"):
        await world.reboot("w-1")
    # The daemon dies there (its task ends, nothing more is written) and a new one starts.
    await world.flows.stop()
    monkeypatch.setattr(failpoints, "_points", {})
    world.start()
    assert await world.flows.resume_all() <= 1
    await world.clock.settle()
    for attempt in range(3):  # the agent keeps asking until it has rebooted
        if world.rebooted:
            break
        await world.ask("w-1", f"r{attempt}")
        await world.clock.advance(2)
        if world.granted("w-1"):
            await world.reboot("w-1")
    await world.clock.advance(5)
    assert world.rebooted == ["w-1"]
    assert len(world.store.audit_log(event="reboot.handed")) == 1
    assert not world.kube.nodes["w-1"].unschedulable
    assert world.arbiter.grant(NodeKey("lab", "w-1")) is None
    released = world.store.audit_log(event="reboot.released")
    assert [(e.node, e.reason) for e in released] == [("w-1", "Rebooted")]
    assert world.flows.in_flight == 0


async def test_pre_and_post_reboot_labels_are_set_at_cordon_and_uncordon(world: World) -> None:
    labels = {
        "preRebootNodeLabels": {"healer.io/rebooting": "true"},
        "postRebootNodeLabels": {"healer.io/rebooted": "yes"},
    }
    world.flows.reconfigure(lab_like_config(reboots=labels))
    await world.ask("w-1", "a")
    await world.clock.advance(2)
    assert world.kube.marks == [{"labels": {"healer.io/rebooting": "true"}}]
    await world.reboot("w-1")
    assert world.kube.marks[1:] == [
        {"labels": {"healer.io/rebooting": None, "healer.io/rebooted": "yes"}}
    ]
    assert not world.kube.nodes["w-1"].unschedulable
