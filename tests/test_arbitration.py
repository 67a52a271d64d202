"""Issue 8, "one arbiter": reboot grants and repairs see each other in both directions.

The arbiter refuses a reboot while a pool peer is out of service (being replaced, rebooting,
unhealthy, pending, starting) or while the zone or cluster budget has no room; the repair guards
count the nodes holding a grant. Pure decisions table-tested; the arbiter and the planner in
virtual time."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from healer.clock import VirtualClock
from healer.config import ClusterConfig, RebootPolicy, Threshold
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, LABEL_ZONE, EventKind, NodeEvent, Permit, RebootRequest
from healer.planner import guards, reboots
from healer.planner.disruption import Budget
from healer.planner.planner import Planner
from healer.planner.reboots import Decision, RebootArbiter, Situation, decide
from healer.store.sqlite import Store, WorkflowRecord
from tests.helpers import lab_like_config

NOON = dt.datetime(2023, 11, 15, 12, 0, tzinfo=dt.UTC).timestamp()
OK = Situation(cluster="lab", node="w-1", pool="workers", known=True, now=NOON)


def budget(count: int, limit: int, total: int = 8, scope: str = "cluster:lab") -> Budget:
    out = (*((f"n-{i}", "unhealthy") for i in range(count - 1)), ("w-1", "asking"))
    return Budget(scope, scope.replace(":", " "), total, out, Threshold(count=limit), limit)


@pytest.mark.parametrize(
    ("situation", "reason"),
    [
        (OK, reboots.GRANTED),
        (replace(OK, degraded_in_pool=("w-2",)), reboots.POOL_DEGRADED),
        (replace(OK, budgets=(budget(count=4, limit=3),)), reboots.DISRUPTION_BUDGET),
        (replace(OK, budgets=(budget(count=3, limit=3),)), reboots.GRANTED),
        # A lone reboot is within any budget, even a limit of 0 (a 2-node cluster at 40%).
        (replace(OK, budgets=(budget(count=1, limit=0, total=2),)), reboots.GRANTED),
        (replace(OK, budgets=(budget(count=2, limit=0, total=2),)), reboots.DISRUPTION_BUDGET),
        (
            replace(OK, budgets=(budget(2, 3), budget(2, 1, 3, "zone:lab/a"))),
            reboots.DISRUPTION_BUDGET,
        ),
        # order: replaced, then busy, then degraded, then the budgets
        (
            replace(OK, remediating_in_pool=("w-2",), degraded_in_pool=("w-3",)),
            reboots.REMEDIATION_IN_FLIGHT,
        ),
        (replace(OK, busy_in_pool=("w-2",), degraded_in_pool=("w-3",)), reboots.POOL_BUSY),
        (
            replace(OK, degraded_in_pool=("w-3",), budgets=(budget(4, 3),)),
            reboots.POOL_DEGRADED,
        ),
    ],
)
def test_decide(situation: Situation, reason: str) -> None:
    decision = decide(situation, RebootPolicy())
    assert decision.reason == reason
    assert decision.granted is (reason == reboots.GRANTED)
    if not decision.granted:
        assert decision.retry_after == reboots.RETRY_AFTER[reason]


def test_a_budget_refusal_says_which_scope_and_why() -> None:
    decision = decide(
        replace(OK, budgets=(budget(2, 3), budget(2, 1, 3, "zone:lab/a"))), RebootPolicy()
    )
    assert decision.message == (
        "not rebooting lab/w-1 now: with it, 2 of 3 nodes in zone lab/a are out of service "
        "(1 unhealthy, 1 asking; limit 1)"
    )


# -- the arbiter and the planner in virtual time ---------------------------------------------------

NODES = (  # name, pool, zone
    ("c-1", "control-plane", "a"),
    ("c-2", "control-plane", "b"),
    ("c-3", "control-plane", "c"),
    ("w-1", "workers", "a"),
    ("w-2", "workers", "b"),
    ("w-3", "workers", "c"),
)


@dataclass
class World:
    clock: VirtualClock
    store: Store
    tracker: HealthTracker
    arbiter: RebootArbiter
    planner: Planner
    cluster: ClusterConfig

    async def ask(self, node: str, request_id: str = "r1") -> Decision:
        return await self.arbiter.on_request(
            RebootRequest("lab", node, request_id, self.clock.now())
        )

    async def ready(self, node: str, status: str) -> None:
        await self.tracker.handle(
            NodeEvent(
                "lab",
                node,
                EventKind.CONDITION,
                self.clock.now(),
                "kube",
                condition="Ready",
                status=status,
            )
        )

    async def add(self, node: str, pool: str, zone: str) -> None:
        await self.tracker.handle(
            NodeEvent(
                "lab",
                node,
                EventKind.NODE_ADDED,
                self.clock.now(),
                "kube",
                labels={LABEL_POOL: pool, LABEL_ZONE: zone},
            )
        )


async def _noop(cluster: str, node: str, permit: Permit) -> None:
    pass


async def _no_start(wf: WorkflowRecord) -> None:
    raise AssertionError("no remediation may start in these tests")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    config = lab_like_config(
        reboots={"permitTtl": "10m"},
        pools=[
            {"name": "control-plane", "role": "control-plane", "size": 3},
            {"name": "workers", "size": 3},
        ],
    )
    clock = VirtualClock(start=NOON)
    store = Store.open(tmp_path)
    tracker = HealthTracker(config=config, store=store, clock=clock)
    arbiter = RebootArbiter(config=config, store=store, clock=clock, tracker=tracker, publish=_noop)
    planner = Planner(config=config, store=store, clock=clock, tracker=tracker, start=_no_start)
    planner.watch_reboot_grants(arbiter.granted_nodes)
    w = World(clock, store, tracker, arbiter, planner, config.clusters[0])
    await tracker.handle(NodeEvent("lab", "", EventKind.LIST_STARTED, clock.now(), "kube"))
    for node, pool, zone in NODES:
        await w.add(node, pool, zone)
        await w.ready(node, "True")
    await tracker.handle(NodeEvent("lab", "", EventKind.SYNCED, clock.now(), "kube"))
    yield w
    store.close()


async def test_an_unhealthy_or_pending_peer_blocks_the_pool_until_it_is_back(world: World) -> None:
    await world.ready("w-2", "False")  # PENDING now, UNHEALTHY after 5 s
    first = await world.ask("w-1")
    assert (first.granted, first.reason) == (False, reboots.POOL_DEGRADED)
    assert "lab/w-2 of pool workers is not in service" in first.message
    await world.clock.advance(6)
    assert (await world.ask("w-1", "r2")).reason == reboots.POOL_DEGRADED
    await world.ready("w-2", "True")
    assert (await world.ask("w-1", "r3")).granted


async def test_trouble_in_the_zone_blocks_a_reboot_there_not_elsewhere(world: World) -> None:
    await world.ready("c-1", "Unknown")  # zone a; another pool
    refused = await world.ask("w-1")  # zone a
    assert refused.reason == reboots.DISRUPTION_BUDGET
    assert "2 of 2 nodes in zone lab/a are out of service" in refused.message
    assert (await world.ask("w-2")).granted  # zone b: one pending elsewhere fits the cluster


async def test_the_cluster_budget_counts_other_pools_reboots(world: World) -> None:
    # 6 nodes, maxUnhealthy 40%: 2 may be out. c-2 (zone b) may reboot, c-3 (zone c) fails.
    assert (await world.ask("c-2")).granted
    await world.ready("w-3", "False")
    decision = await world.ask("w-1")
    # w-3 is a pool peer: the pool rule answers first.
    assert decision.reason == reboots.POOL_DEGRADED
    await world.ready("w-3", "True")
    await world.ready("c-3", "False")  # w-1 (zone a) would make 3 of 6 out
    decision = await world.ask("w-1", "r2")
    assert decision.reason == reboots.DISRUPTION_BUDGET
    assert "3 of 6 nodes in cluster lab are out of service" in decision.message
    assert "1 granted a reboot" in decision.message


async def test_the_guards_count_a_granted_reboot_before_it_starts(world: World) -> None:
    assert (await world.ask("w-2")).granted
    cluster = world.cluster
    snapshot = world.planner.snapshot(cluster)
    status = {n.node: n for n in snapshot.nodes}
    assert status["w-2"].reboot_granted and not status["w-1"].reboot_granted
    assert status["w-1"].zone == "a"
    # w-1 fails: with w-2 about to reboot, 2 of 3 workers would be out (limit 40% = 1).
    await world.ready("w-1", "False")
    snapshot = world.planner.snapshot(cluster)
    candidate = next(n for n in snapshot.nodes if n.node == "w-1")
    refusal = guards.check(candidate, snapshot, cluster)
    assert refusal is not None and refusal.reason == guards.TOO_MANY_UNHEALTHY_IN_POOL
    assert "1 pending, 1 granted a reboot" in refusal.message
    # The grant lapses unused: the repair may go.
    await world.clock.advance(600)
    snapshot = world.planner.snapshot(cluster)
    candidate = next(n for n in snapshot.nodes if n.node == "w-1")
    assert guards.check(candidate, snapshot, cluster) is None


async def test_the_guards_count_a_rebooting_peer(world: World) -> None:
    await world.tracker.handle(
        NodeEvent("lab", "w-2", EventKind.REBOOT_STARTED, world.clock.now(), "mqtt")
    )
    await world.ready("w-1", "False")
    cluster = world.cluster
    snapshot = world.planner.snapshot(cluster)
    candidate = next(n for n in snapshot.nodes if n.node == "w-1")
    refusal = guards.check(candidate, snapshot, cluster)
    assert refusal is not None and refusal.reason == guards.TOO_MANY_UNHEALTHY_IN_POOL
    assert "1 pending, 1 rebooting" in refusal.message
