"""The planner in virtual time: verdicts -> guards -> workflows or recorded refusals."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from healer.clock import VirtualClock
from healer.health.tracker import HealthTracker
from healer.model import LABEL_CONTROL_PLANE, LABEL_POOL, EventKind, NodeEvent
from healer.planner.planner import Planner
from healer.store.sqlite import FAILED, Store, WorkflowRecord, pause_scope
from healer.store.writable import recover
from tests.helpers import lab_like_config

WORKERS = [f"w-{i}" for i in range(1, 6)]
CPS = [f"cp-{i}" for i in range(1, 4)]


class Rig:
    def __init__(self, tmp_path: Path, *, dry_run: bool = False, **cluster: Any) -> None:
        self.clock = VirtualClock()
        self.store = Store.open(tmp_path)
        self.started: list[WorkflowRecord] = []
        self.config = lab_like_config(**cluster)
        box: list[Planner] = []

        async def on_change(obs, verdict, previous):  # type: ignore[no-untyped-def]
            await box[0].on_health_change(obs, verdict, previous)

        async def on_synced(cluster: str) -> None:  # as the daemon wires it
            await box[0].consider(cluster)

        self.tracker = HealthTracker(
            config=self.config,
            store=self.store,
            clock=self.clock,
            on_change=on_change,
            on_synced=on_synced,
        )

        async def start(wf: WorkflowRecord) -> None:
            self.started.append(wf)

        self.planner = Planner(
            config=self.config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            start=start,
            dry_run=dry_run,
        )
        box.append(self.planner)

    async def event(self, node: str, kind: EventKind, **kw: Any) -> None:
        await self.tracker.handle(
            NodeEvent(cluster="lab", node=node, kind=kind, at=self.clock.now(), source="kube", **kw)
        )

    async def cluster(self, labels: dict[str, dict[str, str]] | None = None) -> None:
        """The cluster as the Kubernetes source lists it: one batch between the list markers
        (the planner decides nothing before the SYNCED marker)."""
        await self.event("", EventKind.LIST_STARTED)
        for node in WORKERS + CPS:
            node_labels = {LABEL_POOL: "workers" if node.startswith("w") else "control-plane"}
            if node.startswith("cp"):
                node_labels[LABEL_CONTROL_PLANE] = ""
            node_labels.update((labels or {}).get(node, {}))
            await self.event(node, EventKind.NODE_ADDED, labels=node_labels)
            await self.event(node, EventKind.CONDITION, condition="Ready", status="True")
        await self.event("", EventKind.SYNCED)

    async def fail(self, *nodes: str, status: str = "Unknown") -> None:
        for node in nodes:
            await self.event(node, EventKind.CONDITION, condition="Ready", status=status)

    def refusals(self) -> list[tuple[str | None, str]]:
        return [(e.node, e.reason) for e in self.store.audit_log(event="remediation.refused")]


@pytest.fixture
async def rig(tmp_path: Path):
    r = Rig(tmp_path)
    tasks = [asyncio.create_task(r.tracker.run())]
    yield r
    for t in tasks:
        t.cancel()
    r.store.close()


async def with_rig(tmp_path: Path, **kw: Any) -> tuple[Rig, list[asyncio.Task[None]]]:
    r = Rig(tmp_path, **kw)
    return r, [asyncio.create_task(r.tracker.run())]


async def test_one_dead_worker_is_remediated_at_its_threshold(rig: Rig) -> None:
    await rig.cluster()
    t0 = rig.clock.now()
    await rig.fail("w-1")
    await rig.clock.advance(4.9)
    assert rig.started == []
    await rig.clock.advance(0.2)
    [wf] = rig.started
    assert wf.node == "w-1" and wf.reason == "ReadyUnknownTimeout"
    assert wf.started_at == pytest.approx(t0 + 5.0)
    assert rig.store.workflow(wf.id) is not None  # persisted before it was handed over
    assert [e.event for e in rig.store.audit_log(node="w-1")][-1] == "remediation.started"


async def test_partition_refused_once_per_node_with_its_reason(rig: Rig) -> None:
    await rig.cluster()
    await rig.fail("w-1", "w-2", "w-3")
    await rig.clock.advance(30.0)  # many planner rechecks
    assert rig.started == []
    refusals = rig.refusals()
    assert sorted(refusals) == [(n, "TooManyUnhealthyInPool") for n in ("w-1", "w-2", "w-3")]


class RefusalsLost:
    """The store's connection: the COMMIT of the first transaction that wrote a refusal fails
    with an I/O error (then it is itself again)."""

    def __init__(self, store: Store) -> None:
        self.store, self.inner, self.armed = store, store._db, False
        store._db = self  # type: ignore[assignment]

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if sql.startswith("INSERT INTO audit") and "remediation.refused" in parameters:
            self.armed = True
        if sql == "COMMIT" and self.armed:
            self.store._db = self.inner
            exc = sqlite3.OperationalError("disk I/O error")
            exc.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[attr-defined]
            raise exc
        return self.inner.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_refusals_of_a_lost_batch_are_held_and_recorded_once(rig: Rig) -> None:
    rig.store.writes.retrying = True  # the daemon: its store holds the rows of a lost batch
    await rig.cluster()
    RefusalsLost(rig.store)
    await rig.fail("w-1", "w-2", "w-3")
    await rig.clock.advance(30.0)
    assert rig.store.writes.problem is not None and rig.refusals() == []
    await rig.planner.recheck()  # the periodic recheck, while the database takes no writes
    recover(rig.store)
    await rig.planner.recheck()
    assert sorted(rig.refusals()) == [(n, "TooManyUnhealthyInPool") for n in ("w-1", "w-2", "w-3")]


async def test_pause_persisted_by_the_cli_is_honoured_then_lifted(rig: Rig) -> None:
    await rig.cluster()
    rig.store.set_paused(pause_scope("lab", "workers"), True, at=rig.clock.now())
    await rig.fail("w-1")
    await rig.clock.advance(10.0)
    assert rig.started == [] and rig.refusals() == [("w-1", "Paused")]
    rig.store.set_paused(pause_scope("lab", "workers"), False, at=rig.clock.now())
    await rig.clock.advance(1.5)
    assert rig.started == []  # no event announces the CLI's change...
    await rig.planner.recheck()  # ...the periodic `recheck` job sees it
    assert [wf.node for wf in rig.started] == ["w-1"]


async def test_excluded_node_is_never_remediated(rig: Rig) -> None:
    await rig.cluster(labels={"w-2": {"healer.io/exclude": "true"}})
    await rig.fail("w-2")
    await rig.clock.advance(10.0)
    assert rig.started == [] and rig.refusals() == [("w-2", "Excluded")]


async def test_control_plane_quorum_is_never_broken(rig: Rig) -> None:
    await rig.cluster()
    await rig.fail("cp-1", "cp-2")
    await rig.clock.advance(10.0)
    assert rig.started == []
    reasons = {reason for _, reason in rig.refusals()}
    assert reasons & {"WouldBreakQuorum", "TooManyUnhealthyInPool"}
    assert "WouldBreakQuorum" in reasons


async def test_dry_run_plans_and_changes_nothing(tmp_path: Path) -> None:
    r, tasks = await with_rig(tmp_path, dry_run=True)
    try:
        await r.cluster()
        await r.fail("w-1")
        await r.clock.advance(10.0)
        assert r.started == [] and r.store.workflows() == []
        [entry] = r.store.audit_log(event="remediation.would_remediate")
        assert entry.node == "w-1" and "would remediate" in entry.message
    finally:
        for t in tasks:
            t.cancel()
        r.store.close()


async def test_breaker_trips_on_too_many_new_unhealthy_and_stays_open(tmp_path: Path) -> None:
    r, tasks = await with_rig(
        tmp_path,
        breaker={"maxNewUnhealthy": 2, "window": "10m"},
        remediation={"maxUnhealthy": "100%", "maxInFlight": 10},
    )
    try:
        await r.cluster()
        await r.fail("w-1")
        await r.clock.advance(6.0)
        await r.fail("w-2")
        await r.clock.advance(6.0)
        assert "lab" in r.store.breakers()
        assert [wf.node for wf in r.started] == ["w-1"]
        await r.fail("w-3")
        await r.clock.advance(600.0)  # stays open even after the window passed
        assert [wf.node for wf in r.started] == ["w-1"]
        assert ("w-3", "BreakerOpen") in r.refusals()
        r.store.reset_breaker("lab")  # what `healer breaker reset` does
        await r.planner.recheck()  # the periodic `recheck` job
        assert {wf.node for wf in r.started} >= {"w-2", "w-3"}
    finally:
        for t in tasks:
            t.cancel()
        r.store.close()


async def test_failed_remediation_is_not_retried_automatically(rig: Rig) -> None:
    await rig.cluster()
    await rig.fail("w-1")
    await rig.clock.advance(6.0)
    [wf] = rig.started
    now = rig.clock.now()
    rig.store.update_workflow(wf.with_(state=FAILED, error="boom", finished_at=now, updated_at=now))
    await rig.planner.on_workflow_finished(rig.store.workflow(wf.id))  # type: ignore[arg-type]
    await rig.clock.advance(60.0)
    assert len(rig.started) == 1
    assert ("w-1", "RemediationFailedRecently") in rig.refusals()
