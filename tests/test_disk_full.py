"""A state database that takes no writes (a full disk, a read-only database, an I/O error):
nothing crashes, decisions freeze for every cluster, nothing is half-written, and everything
thaws by itself once a probe write works (healer.store.writable).

The failures are SQLite's own: ``PRAGMA max_page_count`` makes a write hit SQLITE_FULL
("database or disk is full"), ``PRAGMA query_only`` makes it hit SQLITE_READONLY. The real full
filesystem is in tests/faults/test_disk_full.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from healer.clock import VirtualClock
from healer.errors import StateUnwritable
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, EventKind, Health, NodeEvent, NodeKey
from healer.planner.alert_blocks import AlertBlocks
from healer.planner.planner import Planner
from healer.planner.reboots import Situation, decide
from healer.store.recorder import Recorder
from healer.store.sqlite import RUNNING, SUCCEEDED, Store, WorkflowRecord
from healer.store.writable import (
    DISK_FULL,
    IO_ERROR,
    READ_ONLY,
    STATE_UNWRITABLE,
    keep_trying,
    recover,
    unwritable,
)
from healer.telemetry import metrics
from tests.helpers import lab_like_config
from tests.test_workflow import World, world  # noqa: F401  (world: the fixture)

W1 = NodeKey("lab", "w-1")


def fill(store: Store) -> None:
    """No page more than the database has now: the next write that needs one hits SQLITE_FULL."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def free(store: Store) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def read_only(store: Store, on: bool) -> None:
    store._db.execute(f"PRAGMA query_only = {int(on)}")


def failures(kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value("healer_state_write_failures_total", {"kind": kind})
    return value or 0.0


def big_audit(store: Store, at: float = 1.0) -> None:
    store.audit(
        at=at, cluster="lab", event="test.big", reason="Big", message="x", evidence=["y" * 200_000]
    )


def io_error() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = 778  # type: ignore[attr-defined]  # SQLITE_IOERR_WRITE
    return exc


def constraint() -> sqlite3.IntegrityError:
    exc = sqlite3.IntegrityError("UNIQUE constraint failed: meta.key")
    exc.sqlite_errorcode = 2067  # type: ignore[attr-defined]  # SQLITE_CONSTRAINT_UNIQUE
    return exc


@pytest.mark.parametrize(
    ("error", "kind", "advice"),
    [
        (io_error(), IO_ERROR, "check the disk"),
        (constraint(), None, None),
        (sqlite3.OperationalError("no such table: x"), None, None),  # no code at all
    ],
)
def test_which_sqlite_errors_mean_unwritable(
    error: sqlite3.Error, kind: str | None, advice: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "healer.sqlite"
    found = unwritable(error, path)
    if kind is None:
        assert found is None
        return
    assert found is not None and found.kind == kind and found.path == str(path)
    assert str(path) in str(found) and advice is not None and advice in str(found)


def test_a_full_database_raises_state_unwritable_and_keeps_nothing_of_the_write(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path)
    try:
        store.audit(at=0.0, cluster="lab", event="test.small", reason="Small", message="fits")
        fill(store)
        before = failures(DISK_FULL)
        with pytest.raises(StateUnwritable) as caught:
            big_audit(store)
        problem = caught.value
        assert problem.kind == DISK_FULL and "database or disk is full" in str(problem)
        assert str(tmp_path / "healer.sqlite") in str(problem) and "free space" in str(problem)
        assert store.writes.problem is problem
        assert failures(DISK_FULL) == before + 1
        assert metrics.REGISTRY.get_sample_value("healer_state_writable") == 0
        # Nothing of the failed write, and the connection still works for reads and writes.
        assert [e.event for e in store.audit_log()] == ["test.small"]
        with pytest.raises(StateUnwritable):
            recover(store)  # the probe needs more room than there is
        assert store.writes.problem is not None  # a failed probe does not end the episode
        free(store)
        recover(store)
        assert store.writes.problem is None
        assert metrics.REGISTRY.get_sample_value("healer_state_writable") == 1
        big_audit(store, at=2.0)
        assert [e.event for e in store.audit_log()] == ["test.small", "test.big"]
    finally:
        store.close()


def test_a_read_only_database_is_an_episode_and_held_audit_rows_are_written_after(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path)
    record = Recorder(store, clock=VirtualClock(start=100.0)).record
    try:
        read_only(store, True)
        with pytest.raises(StateUnwritable) as caught:
            store.set_meta("k", 1)
        assert caught.value.kind == READ_ONLY and "writable" in str(caught.value)
        # In a command, which does not retry, the error goes up: the row would die with it.
        with pytest.raises(StateUnwritable):
            record("test.lost", cluster="lab", reason="Lost", message="nobody retries", at=0.5)
        # In the daemon (keep_trying runs) recording does not fail: the row is held, in order.
        store.writes.retrying = True
        record("test.one", cluster="lab", reason="One", message="first", at=1.0)
        record("test.two", cluster="lab", reason="Two", message="second", at=2.0)
        assert store.audit_log() == []
        read_only(store, False)
        recover(store)
        rows = store.audit_log()
        assert [(e.event, e.at) for e in rows] == [("test.one", 1.0), ("test.two", 2.0)]
    finally:
        store.close()


async def test_keep_trying_probes_on_backoff_until_writes_work(tmp_path: Path) -> None:
    clock = VirtualClock(start=0.0)
    store = Store.open(tmp_path)
    told: list[tuple[float, str | None]] = []

    async def on_change(problem: StateUnwritable | None) -> None:
        told.append((clock.now(), problem.kind if problem else None))

    task = asyncio.create_task(keep_trying(store, clock, on_change=on_change, first=1.0, cap=4.0))
    try:
        read_only(store, True)
        with pytest.raises(StateUnwritable):
            store.set_meta("k", 1)
        await clock.advance(0.0)
        assert told == [(0.0, READ_ONLY)]
        await clock.advance(20.0)  # probes after ~1, 2, 4, 4, 4... seconds: all fail
        assert store.writes.problem is not None and len(told) == 1
        read_only(store, False)
        await clock.advance(4.0)  # the next probe (waits capped at 4 s) works
        assert store.writes.problem is None
        assert len(told) == 2 and told[-1][1] is None and 20.0 < told[-1][0] <= 24.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


def test_a_blocking_alert_holds_at_once_and_is_saved_once_the_store_takes_writes(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path)
    try:
        blocks = AlertBlocks(store=store)
        read_only(store, True)
        assert blocks.fire(cluster="lab", alert="Etcd", fingerprint="f", since=0, now=0, ttl=60)
        assert blocks.active("lab", 1.0) == ("Etcd",)  # in force, though not saved
        assert store.alert_blocks() == []
        read_only(store, False)
        recover(store)
        blocks.save_unsaved()
        assert [b.alert for b in store.alert_blocks()] == ["Etcd"]
        assert [b.alert for b in AlertBlocks(store=store).blocks()] == ["Etcd"]  # a restart
    finally:
        store.close()


def test_no_reboot_is_granted_while_the_state_is_unwritable() -> None:
    situation = Situation(
        cluster="lab", node="w-1", pool="workers", known=True, now=0.0, state_unwritable="full"
    )
    decision = decide(situation, lab_like_config().clusters[0].reboots)
    assert not decision.granted and decision.reason == STATE_UNWRITABLE


# -- the tracker and the planner: judged, frozen, thawed --------------------------------------


def ev(clock: VirtualClock, kind: EventKind, node: str = "w-1", **kw: Any) -> NodeEvent:
    return NodeEvent(cluster="lab", node=node, kind=kind, at=clock.now(), source="kube", **kw)


async def test_tracker_and_planner_survive_a_full_disk_and_remediate_once_it_has_room(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    config = lab_like_config()  # Ready=False for 5 s is unhealthy
    store = Store.open(tmp_path)
    started: list[WorkflowRecord] = []

    async def start(wf: WorkflowRecord) -> None:
        started.append(wf)

    async def on_change(obs, verdict, previous):  # type: ignore[no-untyped-def]
        await planner.on_health_change(obs, verdict, previous)

    async def on_writability(problem: StateUnwritable | None) -> None:
        if problem is None:
            tracker.save_unsaved()
        await planner.on_state_writability(problem)

    tracker = HealthTracker(config=config, store=store, clock=clock, on_change=on_change)
    planner = Planner(config=config, store=store, clock=clock, tracker=tracker, start=start)
    tasks = [
        asyncio.create_task(tracker.run()),
        asyncio.create_task(keep_trying(store, clock, on_change=on_writability, cap=2.0)),
    ]
    try:
        await clock.advance(0.0)  # the daemon's retry loop is running before any event
        await tracker.handle(ev(clock, EventKind.LIST_STARTED))
        for i in range(1, 6):
            node = f"w-{i}"
            await tracker.handle(
                ev(clock, EventKind.NODE_ADDED, node, labels={LABEL_POOL: "workers"})
            )
            await tracker.handle(
                ev(clock, EventKind.CONDITION, node, condition="Ready", status="True")
            )
        await tracker.handle(ev(clock, EventKind.SYNCED))
        assert tracker.synced("lab")

        read_only(store, True)  # the disk fills: the next write fails
        await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="False"))
        await clock.advance(0.0)
        assert planner.frozen_reason("lab") is not None
        assert planner.frozen_code("lab") == STATE_UNWRITABLE
        # Past the threshold: the timer re-evaluation (which crashed the daemon) judges the node
        # unhealthy in memory, and nothing starts.
        await clock.advance(6.0)
        assert tracker.verdict(W1).health is Health.UNHEALTHY  # type: ignore[union-attr]
        assert started == []
        refused = await planner.remediate_now("lab", "w-1", force=True, confirmed=True)
        assert not isinstance(refused, WorkflowRecord) and refused.reason == STATE_UNWRITABLE
        saved = {r.observation.node: r.health for r in store.nodes()}
        assert saved["w-1"] is Health.HEALTHY  # the database has the last record it took

        read_only(store, False)  # space is back: the next probe thaws everything
        await clock.advance(2.0)
        await clock.advance(0.0)
        assert planner.frozen_reason("lab") is None
        assert [wf.node for wf in started] == ["w-1"]
        saved = {r.observation.node: r.health for r in store.nodes()}
        assert saved["w-1"] is Health.UNHEALTHY  # written once the database took writes
        events = [e.event for e in store.audit_log(cluster="lab")]
        # The rows held meanwhile are written in order, before what came after.
        assert events[-4:] == [
            "planner.frozen",
            "node.unhealthy",
            "planner.unfrozen",
            "remediation.started",
        ]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()


class CommitFailsOnce:
    """The store's connection, whose next COMMIT fails with an I/O error (then it is itself)."""

    def __init__(self, store: Store) -> None:
        self.store, self.inner = store, store._db
        store._db = self  # type: ignore[assignment]

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if sql == "COMMIT":
            self.store._db = self.inner
            raise io_error()
        return self.inner.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_tracker_batch_lost_at_commit_keeps_its_audit_rows_and_its_records(
    tmp_path: Path,
) -> None:
    """A drained batch whose COMMIT fails: its node records are written again
    (save_unsaved) and its audit rows (held by the store) once the database takes writes."""
    clock = VirtualClock()
    store = Store.open(tmp_path)
    tracker = HealthTracker(config=lab_like_config(), store=store, clock=clock)

    async def on_writability(problem: StateUnwritable | None) -> None:
        if problem is None:
            tracker.save_unsaved()

    task = asyncio.create_task(keep_trying(store, clock, on_change=on_writability, cap=2.0))
    try:
        await clock.advance(0.0)
        await tracker.handle_batch(
            [
                ev(clock, EventKind.LIST_STARTED),
                ev(clock, EventKind.NODE_ADDED, labels={LABEL_POOL: "workers"}),
                ev(clock, EventKind.CONDITION, condition="Ready", status="True"),
                ev(clock, EventKind.SYNCED),
            ]
        )
        CommitFailsOnce(store)
        await tracker.handle_batch(
            [ev(clock, EventKind.CONDITION, condition="Ready", status="False")]
        )
        assert store.writes.problem is not None
        assert tracker.verdict(W1).health is Health.PENDING  # type: ignore[union-attr]
        assert "node.degraded" not in [e.event for e in store.audit_log()]
        await clock.advance(2.0)
        await clock.advance(0.0)
        assert store.writes.problem is None
        assert [e.event for e in store.audit_log()].count("node.degraded") == 1
        assert [r.health for r in store.nodes()] == [Health.PENDING]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


# -- the workflow: suspended at its last journalled step, resumed, nothing half-written -------


@pytest.mark.parametrize("step", ["fence", "delete_node", "create_machine"])
async def test_a_step_whose_done_line_was_not_written_runs_again_after_the_disk_has_room(
    world: World,  # noqa: F811  (the fixture of tests/test_workflow.py)
    step: str,
) -> None:
    store = world.store
    runner = world.runner(
        lab_like_config(
            remediation={"drainTimeout": "1s", "retry": {"attempts": 3, "initialDelay": 0.05}}
        )
    )
    update = store.update_workflow
    filled = asyncio.Event()

    def update_workflow(wf: WorkflowRecord, *, journal: Any = None) -> None:
        if journal is not None and journal[:2] == (step, "done") and not filled.is_set():
            read_only(store, True)  # the disk is full just as the step's "done" line is saved
            filled.set()
        update(wf, journal=journal)

    store.update_workflow = update_workflow  # type: ignore[method-assign]
    wf = world.workflow()
    await runner.start(wf)
    async with asyncio.timeout(10):
        await filled.wait()
    await asyncio.sleep(0.3)
    # Suspended, not failed: the saved record is at the step whose "done" line was lost.
    saved = store.workflow(wf.id)
    assert saved is not None and saved.state == RUNNING and saved.step == step
    assert runner.in_flight == 1 and world.finished == [] and runner.untracked() == []
    assert not any(s["step"] == step and s["status"] == "done" for s in store.steps(wf.id))

    read_only(store, False)
    recover(store)
    async with asyncio.timeout(15):
        await runner.wait_idle()
    final = store.workflow(wf.id)
    assert final is not None and final.state == SUCCEEDED, final.error
    lines = store.steps(wf.id)
    assert [s["status"] for s in lines if s["step"] == step].count("done") == 1
    assert any(s["status"] == "resumed" for s in lines)
    machines = await world.provider.list_machines({"healer.io/cluster": "lab"})
    # One replacement, the old machine gone: the repeated step did nothing twice.
    assert [m.name for m in machines] == [wf.replacement_name]
    assert [f.state for f in world.finished] == [SUCCEEDED]
