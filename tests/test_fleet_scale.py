"""Fleet scale without wall time: the work per event, per batch, per recheck and per status round
is counted (verdicts computed, node statuses built, store reads and transactions, plans), so a
change that makes any of them O(every node) again fails here, however fast the machine.

The rig is the daemon's own wiring (``Daemon._health_changed`` / ``_synced`` /
``_consume_batch``) over a real store, on a virtual clock.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import healer.health.tracker as tracker_module
import healer.planner.planner as planner_module
from healer.app.daemon import Daemon
from healer.clock import VirtualClock
from healer.config import parse_config
from healer.health.tracker import FOLD_SLICE, HealthTracker
from healer.model import LABEL_POOL, EventKind, Health, NodeEvent, NodeKey
from healer.planner.planner import Planner
from healer.sources.events import EventQueue
from healer.store.sqlite import Store, WorkflowRecord

SMALL = 4  # nodes in each small cluster
BIG = 600  # nodes in the big cluster


def fleet_config(small_clusters: int) -> Any:
    cluster = {
        "provider": {"plugin": "lab"},
        "health": {
            "unhealthyConditions": [{"type": "Ready", "status": "Unknown", "timeout": "10s"}]
        },
        # Wide limits: a refusal here is a decision too, but the counts are the point.
        "remediation": {"maxUnhealthy": "100%", "maxInFlight": 1000, "maxPerHour": 10_000},
        "breaker": {"maxNewUnhealthy": 100_000, "maxFailures": 100_000},
    }
    clusters = [{"name": "big", "pools": [{"name": "a", "size": BIG}], **cluster}]
    clusters += [
        {"name": f"s{i:02d}", "pools": [{"name": "a", "size": SMALL}], **cluster}
        for i in range(small_clusters)
    ]
    return parse_config({"clusters": clusters})


class Fleet:
    """A daemon's tracker, planner and consumer over a real store; nothing started."""

    def __init__(self, tmp_path: Path, *, small_clusters: int = 3) -> None:
        self.clock = VirtualClock()
        self.config = fleet_config(small_clusters)
        self.store = Store.open(tmp_path)
        self.started: list[WorkflowRecord] = []
        self.daemon = daemon = Daemon(self.config, state_dir=tmp_path, clock=self.clock)
        daemon.store = self.store
        self.tracker = daemon.tracker = HealthTracker(
            config=self.config,
            store=self.store,
            clock=self.clock,
            on_changes=daemon._health_changed,
            on_synced=daemon._synced,
            lazy_heartbeats=True,
        )

        async def start(wf: WorkflowRecord) -> None:
            self.started.append(wf)

        self.planner = daemon.planner = Planner(
            config=self.config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            start=start,
        )

    def ev(self, cluster: str, node: str, kind: EventKind, **kw: Any) -> NodeEvent:
        source = kw.pop("source", "kube")
        return NodeEvent(
            cluster=cluster, node=node, kind=kind, at=self.clock.now(), source=source, **kw
        )

    def listing(self, cluster: str, size: int) -> list[NodeEvent]:
        return [
            self.ev(cluster, "", EventKind.LIST_STARTED),
            *(
                self.ev(
                    cluster,
                    f"{cluster}-{i:04d}",
                    EventKind.NODE_ADDED,
                    labels={LABEL_POOL: "a"},
                    conditions={"Ready": ("True", self.clock.now() - 60)},
                )
                for i in range(size)
            ),
            self.ev(cluster, "", EventKind.SYNCED),
        ]

    async def consume(self, events: list[NodeEvent]) -> None:
        for event in events:
            await self.daemon.emit(event)
        while not self.daemon._events.empty():
            await self.daemon._consume_batch()

    async def load(self) -> None:
        events = self.listing("big", BIG)
        for c in self.config.clusters[1:]:
            events += self.listing(c.name, SMALL)
        await self.consume(events)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
async def fleet(tmp_path: Path) -> Any:
    made: list[Fleet] = []

    def make(**kw: Any) -> Fleet:
        made.append(Fleet(tmp_path / f"f{len(made)}", **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


@contextmanager
def counting(
    monkeypatch: pytest.MonkeyPatch, target: Any, name: str, calls: Counter[str]
) -> Iterator[None]:
    """Count the calls of ``target.name`` (a module function or an object's method)."""
    original: Callable[..., Any] = getattr(target, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(target, name, counted)
        yield


class WalkCounter(dict):  # type: ignore[type-arg]
    """The tracker's table of every node, counting each walk over the whole of it."""

    walks = 0

    def _walk(self, how: Callable[[], Any]) -> Any:
        WalkCounter.walks += 1
        return how()

    def __iter__(self) -> Any:
        return self._walk(super().__iter__)

    def items(self) -> Any:
        return self._walk(super().items)

    def keys(self) -> Any:
        return self._walk(super().keys)

    def values(self) -> Any:
        return self._walk(super().values)


async def test_one_event_judges_one_node_and_plans_only_its_cluster(
    fleet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    f: Fleet = fleet()
    await f.load()
    for table in ("_obs", "_verdicts"):
        monkeypatch.setattr(f.tracker, table, WalkCounter(getattr(f.tracker, table)))
    WalkCounter.walks = 0
    calls: Counter[str] = Counter()
    with (
        counting(monkeypatch, tracker_module, "evaluate", calls),
        counting(monkeypatch, planner_module, "node_status", calls),
        counting(monkeypatch, f.tracker, "nodes", calls),
    ):
        # A heartbeat and a condition that changes nothing: no plan at all.
        await f.consume([f.ev("s00", "s00-0001", EventKind.HEARTBEAT, source="mqtt")])
        assert calls == {"evaluate": 1}
        # A node of a small cluster fails: judged alone; planned there, over its nodes only
        # (the big cluster's 600 are never walked: not by the plan, not by the gauges).
        calls.clear()
        await f.consume(
            [f.ev("s00", "s00-0001", EventKind.CONDITION, condition="Ready", status="Unknown")]
        )
        assert calls == {"evaluate": 1}  # pending: nobody to plan for yet
        calls.clear()
        await f.clock.advance(10.0)
        await asyncio.create_task(_one_timer_round(f))
        assert calls["evaluate"] == 1
        # One snapshot to decide, and the node counted as remediated after its launch.
        assert calls["node_status"] == SMALL
        assert calls["nodes"] == 1
    assert [wf.node for wf in f.started] == ["s00-0001"]
    assert WalkCounter.walks == 0  # no walk over every node of every cluster, ever


async def _one_timer_round(f: Fleet) -> None:
    """Let the tracker's timer loop run the deadlines that are due now, then stop it."""
    task = asyncio.create_task(f.tracker.run())
    await f.clock.settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_is_one_transaction_and_one_plan_per_changed_cluster(
    fleet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    f: Fleet = fleet(small_clusters=5)
    await f.load()
    # Two failing nodes in each of three clusters, plus heartbeats everywhere: one batch.
    failing = [
        f.ev(c, f"{c}-{i:04d}", EventKind.CONDITION, condition="Ready", status="Unknown")
        for c in ("s00", "s01", "big")
        for i in (1, 2)
    ]
    beats = [
        f.ev(c.name, f"{c.name}-{i:04d}", EventKind.HEARTBEAT, source="mqtt")
        for c in f.config.clusters
        for i in range(SMALL)
    ]
    calls: Counter[str] = Counter()
    with (
        counting(monkeypatch, f.store, "batch", calls),
        counting(monkeypatch, f.planner, "on_health_changes", calls),
        counting(monkeypatch, f.planner, "consider", calls),
    ):
        await f.consume([*beats, *failing])
    assert calls["batch"] == 1  # one store transaction for the whole drained batch
    assert calls["on_health_changes"] == 1  # told once
    assert calls["consider"] == 3  # once per cluster whose health changed, not per event
    # And 20 % of every cluster crossing its threshold at once: one timer round, one plan
    # per cluster, every node decided in it.
    storm = [
        f.ev(c.name, f"{c.name}-{i:04d}", EventKind.CONDITION, condition="Ready", status="Unknown")
        for c in f.config.clusters
        for i in range(0, BIG if c.name == "big" else SMALL, 5)
    ]
    await f.consume(storm)
    calls.clear()
    with (
        counting(monkeypatch, f.store, "batch", calls),
        counting(monkeypatch, f.planner, "consider", calls),
    ):
        await f.clock.advance(10.0)
        await _one_timer_round(f)
    assert calls["consider"] == len(f.config.clusters)
    unhealthy = sum(f.tracker.counts(c.name)[Health.UNHEALTHY] for c in f.config.clusters)
    assert len(f.started) == unhealthy == len(storm) + 6


async def test_a_list_is_folded_in_slices_with_the_loop_turning(fleet: Any) -> None:
    f: Fleet = fleet(small_clusters=0)
    turns = 0
    stop = False

    async def ticker() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    turns = 0
    await f.consume(f.listing("big", BIG))
    stop = True
    await task
    # The consumer yields after each batch, and the fold of the list between its slices.
    assert turns >= BIG // FOLD_SLICE + 1
    assert f.tracker.synced("big")
    assert f.tracker.counts("big")[Health.HEALTHY] == BIG


@contextmanager
def plan_reads(monkeypatch: pytest.MonkeyPatch, f: Fleet, calls: Counter[str]) -> Iterator[None]:
    """Count the node statuses a plan builds and its reads of the store."""
    with (
        counting(monkeypatch, planner_module, "node_status", calls),
        counting(monkeypatch, f.store, "workflows", calls),
        counting(monkeypatch, f.store, "pauses", calls),
        counting(monkeypatch, f.store, "breakers", calls),
    ):
        yield


async def test_recheck_reads_the_store_a_fixed_number_of_times(
    fleet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    f: Fleet = fleet(small_clusters=20)
    await f.load()
    calls: Counter[str] = Counter()
    with plan_reads(monkeypatch, f, calls):
        await f.planner.recheck()
    # A healthy fleet: no snapshot at all (the counts say there is no candidate).
    assert calls["node_status"] == 0
    assert calls["workflows"] == 2 and calls["pauses"] == 1 and calls["breakers"] == 2
    # One unhealthy node in three small clusters (dry run: refused, so they stay candidates).
    f.planner._dry_run = True
    for c in ("s00", "s01", "s02"):
        await f.consume(
            [f.ev(c, f"{c}-0000", EventKind.CONDITION, condition="Ready", status="Unknown")]
        )
    await f.clock.advance(10.0)
    await _one_timer_round(f)
    calls.clear()
    with plan_reads(monkeypatch, f, calls):
        await f.planner.recheck()
    assert calls["node_status"] == 3 * SMALL  # the clusters with a candidate, nothing else
    # Read once for the whole recheck, plus one read of failed workflows per planned cluster.
    assert calls["workflows"] == 2 + 3
    assert calls["pauses"] == 1 and calls["breakers"] == 2


async def test_status_and_gauges_read_counts_not_nodes(
    fleet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    f: Fleet = fleet()
    await f.load()
    await f.consume(
        [f.ev("big", "big-0003", EventKind.CONDITION, condition="Ready", status="Unknown")]
    )

    def walked(cluster: str) -> Any:
        raise AssertionError(f"walked every node of {cluster}")

    monkeypatch.setattr(f.tracker, "nodes", walked)
    line = f.daemon.status_line()
    f.daemon._refresh_nodes("big")
    total = BIG + 3 * SMALL
    assert f"{total} nodes" in line
    assert f.tracker.counts("big")[Health.PENDING] == 1
    assert f.tracker.pool_counts("big", "a")[Health.HEALTHY] == BIG - 1


async def test_counts_follow_pool_moves_deletions_and_forgetting(fleet: Any) -> None:
    f: Fleet = fleet(small_clusters=1)
    await f.load()
    await f.consume(
        [
            f.ev("s00", "s00-0000", EventKind.LABELS, labels={LABEL_POOL: "b"}),
            f.ev("s00", "s00-0001", EventKind.NODE_DELETED),
            f.ev("s00", "s00-0002", EventKind.CONDITION, condition="Ready", status="Unknown"),
        ]
    )
    f.tracker.forget(NodeKey("s00", "s00-0003"))
    for cluster in ("s00", "big"):
        walked = Counter(v.health for _, v in f.tracker.nodes(cluster))
        assert f.tracker.counts(cluster) == {h: walked[h] for h in Health}
        for pool in ("a", "b"):
            in_pool = Counter(v.health for o, v in f.tracker.nodes(cluster) if o.pool == pool)
            assert f.tracker.pool_counts(cluster, pool) == {h: in_pool[h] for h in Health}
    assert f.tracker.counts("s00") == {
        **dict.fromkeys(Health, 0),
        Health.HEALTHY: 1,
        Health.GONE: 1,
        Health.PENDING: 1,
    }


async def test_heartbeats_are_written_together_and_lost_at_most_since_the_flush(
    fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f: Fleet = fleet(small_clusters=1)
    await f.load()
    calls: Counter[str] = Counter()
    await f.clock.advance(1.0)
    first = f.clock.now()
    with (
        counting(monkeypatch, f.store, "save_node", calls),
        counting(monkeypatch, f.store, "save_heartbeats", calls),
    ):
        await f.consume(
            [f.ev("s00", f"s00-{i:04d}", EventKind.HEARTBEAT, source="mqtt") for i in range(SMALL)]
        )
        assert calls == {}  # nothing written per heartbeat
        assert f.tracker.pending_heartbeats() == SMALL
        assert f.daemon.flush_heartbeats() == SMALL
        assert calls == {"save_heartbeats": 1}  # all of them in one write
    await f.clock.advance(1.0)
    await f.consume([f.ev("s00", "s00-0000", EventKind.HEARTBEAT, source="mqtt")])
    # A crash now (no flush): a restart reads the heartbeat of the last flush, not this one.
    f.store.close()
    f.store = Store.open(tmp_path / "f0")
    again = HealthTracker(config=f.config, store=f.store, clock=f.clock)
    obs = again.observation(NodeKey("s00", "s00-0000"))
    assert obs is not None and obs.last_heartbeat == first
    # A heartbeat whose node's verdict changes is written with its record at once.
    assert again.pending_heartbeats() == 0


async def test_get_batch_takes_what_waits_in_order_up_to_the_limit() -> None:
    queue = EventQueue(limit=100)

    def ev(node: str, kind: EventKind) -> NodeEvent:
        return NodeEvent(cluster="c", node=node, kind=kind, at=1.0, source="kube")

    waiting = asyncio.create_task(queue.get_batch(10))
    await asyncio.sleep(0)
    assert not waiting.done()  # waits for at least one
    await queue.put(ev("a", EventKind.NODE_ADDED))
    assert [e.node for e in await waiting] == ["a"]
    for node in "bcdef":
        await queue.put(ev(node, EventKind.HEARTBEAT if node in "ce" else EventKind.NODE_ADDED))
    assert [e.node for e in await queue.get_batch(3)] == ["b", "c", "d"]
    assert [e.node for e in await queue.get_batch(10)] == ["e", "f"]
    with pytest.raises(ValueError):
        await queue.get_batch(0)
