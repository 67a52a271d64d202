"""Heartbeat absence in virtual time: HeartbeatMissing=True exactly after N silent intervals,
False again on a fresh heartbeat, and what the tracker makes of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from healer import clock as clock_module
from healer.clock import VirtualClock
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, EventKind, Health, NodeEvent, NodeKey
from healer.sources.heartbeat import (
    HeartbeatPolicy,
    HeartbeatWatcher,
    is_fresh,
    missing_at,
    seed_from,
)
from healer.store.sqlite import Store
from tests.helpers import lab_like_config

POLICY = HeartbeatPolicy(interval=10.0, miss_after=3)
W1 = NodeKey("lab", "w-1")


@pytest.mark.parametrize(
    ("last_seen", "now", "missing", "fresh"),
    [
        (100.0, 100.0, False, True),
        (100.0, 129.999, False, True),
        (100.0, 130.0, True, False),  # the deadline is inclusive
        (100.0, 500.0, True, False),
    ],
)
def test_pure_rules(last_seen: float, now: float, missing: bool, fresh: bool) -> None:
    assert (now >= missing_at(last_seen, POLICY)) is missing
    assert is_fresh(last_seen, now, POLICY) is fresh


class Watched:
    def __init__(self, clock: VirtualClock, watcher: HeartbeatWatcher, events: list[NodeEvent]):
        self.clock, self.watcher, self.events = clock, watcher, events

    async def beat(self, node: str = "w-1", at: float | None = None) -> None:
        stamp = self.clock.now() if at is None else at
        await self.watcher.observe(NodeEvent("lab", node, EventKind.HEARTBEAT, stamp, "mqtt"))
        await self.clock.settle()

    def reports(self) -> list[tuple[float, str, str | None, float | None]]:
        return [(e.at, e.node, e.status, e.since) for e in self.events]


@pytest.fixture
async def watched() -> AsyncIterator[Watched]:
    clock = VirtualClock(start=1000.0)
    events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    watcher = HeartbeatWatcher(
        clock=clock, emit=emit, policy=POLICY, is_known_node=lambda c, n: n != "gone"
    )
    task = asyncio.create_task(watcher.run())
    yield Watched(clock, watcher, events)
    task.cancel()


async def test_missing_exactly_after_n_intervals_and_back(watched: Watched) -> None:
    await watched.beat()
    assert watched.reports() == [(1000.0, "w-1", "False", 1000.0)]
    await watched.clock.advance(29.999)
    assert len(watched.events) == 1
    await watched.clock.advance(0.001)
    assert watched.reports()[-1] == (1030.0, "w-1", "True", 1030.0)
    assert all(
        e.condition == "HeartbeatMissing" and e.kind is EventKind.CONDITION for e in watched.events
    )
    await watched.clock.advance(100.0)
    assert len(watched.events) == 2  # reported once, not on every tick
    await watched.beat()
    assert watched.reports()[-1] == (1130.0, "w-1", "False", 1130.0)
    await watched.clock.advance(29.0)
    assert len(watched.events) == 3


async def test_regular_heartbeats_are_never_missing(watched: Watched) -> None:
    await watched.beat()
    for _ in range(50):
        await watched.clock.advance(10.0)
        await watched.beat()
    assert [e.status for e in watched.events] == ["False"]


async def test_an_old_redelivered_heartbeat_does_not_clear_missing(watched: Watched) -> None:
    await watched.beat()
    await watched.clock.advance(40.0)
    assert watched.events[-1].status == "True"
    # Queued in the broker during an outage and delivered now: alive then, not necessarily now.
    await watched.beat(at=1005.0)
    await watched.beat(at=1009.0)
    assert watched.events[-1].status == "True"
    await watched.beat()
    assert watched.events[-1].status == "False"


async def test_nodes_are_independent(watched: Watched) -> None:
    await watched.beat("w-1")
    await watched.clock.advance(15.0)
    await watched.beat("w-2")
    await watched.clock.advance(15.0)  # t=1030: w-1 silent for 30 s, w-2 for 15 s
    assert [(e.node, e.status) for e in watched.events] == [
        ("w-1", "False"),
        ("w-2", "False"),
        ("w-1", "True"),
    ]
    await watched.clock.advance(15.0)
    assert watched.events[-1].node == "w-2" and watched.events[-1].status == "True"


async def test_a_flood_of_heartbeats_does_not_wake_the_watcher_per_heartbeat(
    watched: Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each wake-up of the watcher's deadline wait costs two futures (healer.clock); a heartbeat
    # only moves its node's "last heard" time, and a new node's deadline is later than the one
    # already awaited: the watcher sleeps through the whole flood.
    sleeps: list[float | None] = []
    real = clock_module.sleep_until_set

    async def counted(clock: object, deadline: float | None, event: asyncio.Event) -> None:
        sleeps.append(deadline)
        await real(clock, deadline, event)  # type: ignore[arg-type]

    monkeypatch.setattr(clock_module, "sleep_until_set", counted)
    await watched.beat("w-0")  # the first deadline: the watcher wakes once to sleep until it
    woken = len(sleeps)
    for round_ in range(5):
        for i in range(100):  # the loop runs between heartbeats, as between MQTT messages
            await watched.beat(f"w-{i}", at=watched.clock.now() + round_ * 0.01)
    assert len(sleeps) == woken, sleeps
    assert len(watched.events) == 100  # HeartbeatMissing=False once per node


async def test_a_node_no_longer_managed_is_dropped(watched: Watched) -> None:
    await watched.beat("gone")
    await watched.clock.advance(60.0)
    assert [e.status for e in watched.events] == ["False"]
    assert watched.watcher.watching() == {}


async def test_seeded_nodes_get_one_window_from_the_restart() -> None:
    clock = VirtualClock(start=5000.0)
    events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    seed = seed_from(
        [
            (NodeKey("lab", "ok"), {"Ready": "True", "HeartbeatMissing": "False"}),
            (NodeKey("lab", "silent"), {"HeartbeatMissing": "True"}),
            (NodeKey("lab", "no-agent"), {"Ready": "True"}),
        ]
    )
    watcher = HeartbeatWatcher(clock=clock, emit=emit, policy=POLICY, seed=seed)
    assert watcher.watching() == {NodeKey("lab", "ok"): False, NodeKey("lab", "silent"): True}
    task = asyncio.create_task(watcher.run())
    try:
        await clock.advance(29.0)
        assert events == []
        await clock.advance(1.0)
        assert [(e.node, e.status, e.since) for e in events] == [("ok", "True", 5030.0)]
        await watcher.observe(NodeEvent("lab", "silent", EventKind.HEARTBEAT, clock.now(), "mqtt"))
        assert [(e.node, e.status) for e in events][-1] == ("silent", "False")
    finally:
        task.cancel()


@pytest.mark.parametrize(
    ("with_rule", "health"),
    [(False, Health.HEALTHY), (True, Health.UNHEALTHY)],
    ids=["default: corroborating evidence only", "opted in as a trigger"],
)
async def test_what_the_tracker_makes_of_it(
    tmp_path: Path, with_rule: bool, health: Health
) -> None:
    rules = [{"type": "Ready", "status": "Unknown", "timeout": "5m"}]
    if with_rule:
        rules.append({"type": "HeartbeatMissing", "status": "True", "timeout": "1m"})
    config = lab_like_config(health={"unhealthyConditions": rules})
    clock = VirtualClock(start=1000.0)
    store = Store.open(tmp_path)
    tracker = HealthTracker(config=config, store=store, clock=clock)
    watcher = HeartbeatWatcher(
        clock=clock, emit=tracker.handle, policy=POLICY, is_known_node=tracker.knows
    )
    tasks = [asyncio.create_task(tracker.run()), asyncio.create_task(watcher.run())]
    try:
        await tracker.handle(
            NodeEvent(
                "lab",
                "w-1",
                EventKind.NODE_ADDED,
                clock.now(),
                "kube",
                labels={LABEL_POOL: "workers"},
            )
        )
        await tracker.handle(
            NodeEvent(
                "lab",
                "w-1",
                EventKind.CONDITION,
                clock.now(),
                "kube",
                condition="Ready",
                status="True",
            )
        )
        await watcher.observe(NodeEvent("lab", "w-1", EventKind.HEARTBEAT, clock.now(), "mqtt"))
        await clock.advance(30.0 + 60.0)
        obs = tracker.observation(W1)
        assert obs is not None and obs.conditions["HeartbeatMissing"].status == "True"
        assert obs.conditions["HeartbeatMissing"].since == 1030.0
        assert tracker.verdict(W1).health is health  # type: ignore[union-attr]
        # The persisted record seeds the next daemon's watcher.
        row = next(r for r in store.nodes() if r.observation.node == "w-1")
        conditions = {k: v.status for k, v in row.observation.conditions.items()}
        assert seed_from([(W1, conditions)]) == [(W1, True)]
    finally:
        for task in tasks:
            task.cancel()
        store.close()
