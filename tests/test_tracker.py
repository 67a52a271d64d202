"""The health tracker in virtual time: verdicts change exactly at their deadlines, no polling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from healer.clock import VirtualClock
from healer.health.tracker import HealthTracker
from healer.model import (
    LABEL_POOL,
    EventKind,
    Health,
    NodeEvent,
    NodeKey,
    NodeObservation,
    Role,
    Verdict,
)
from healer.store.sqlite import RUNNING, Store, WorkflowRecord
from tests.helpers import lab_like_config


@pytest.fixture
async def tracked(tmp_path: Path):
    clock = VirtualClock()
    store = Store.open(tmp_path)
    changes: list[tuple[float, str, Health]] = []

    async def on_change(obs: NodeObservation, verdict: Verdict, previous: Verdict | None) -> None:
        changes.append((clock.now(), obs.node, verdict.health))

    tracker = HealthTracker(config=lab_like_config(), store=store, clock=clock, on_change=on_change)
    task = asyncio.create_task(tracker.run())
    yield clock, tracker, changes, store
    task.cancel()
    store.close()


def ev(clock: VirtualClock, kind: EventKind, node: str = "w-1", **kw: object) -> NodeEvent:
    return NodeEvent(cluster="lab", node=node, kind=kind, at=clock.now(), source="kube", **kw)  # type: ignore[arg-type]


async def join(clock: VirtualClock, tracker: HealthTracker, node: str = "w-1") -> None:
    await tracker.handle(ev(clock, EventKind.NODE_ADDED, node, labels={LABEL_POOL: "workers"}))
    await tracker.handle(ev(clock, EventKind.CONDITION, node, condition="Ready", status="True"))


async def test_unhealthy_exactly_at_the_threshold(tracked) -> None:
    clock, tracker, changes, _ = tracked
    await join(clock, tracker)
    t0 = clock.now()
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="Unknown"))
    await clock.advance(4.999)
    assert changes[-1][2] is Health.PENDING
    await clock.advance(0.001)
    assert changes[-1] == (t0 + 5.0, "w-1", Health.UNHEALTHY)


async def test_recovery_before_the_threshold_never_turns_unhealthy(tracked) -> None:
    clock, tracker, changes, _ = tracked
    await join(clock, tracker)
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="Unknown"))
    await clock.advance(4.0)
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="True"))
    await clock.advance(60.0)
    assert Health.UNHEALTHY not in [h for _, _, h in changes]
    assert changes[-1][2] is Health.HEALTHY


async def test_planned_reboot_is_not_a_failure_until_reboot_timeout(tracked) -> None:
    clock, tracker, changes, _ = tracked
    await join(clock, tracker)
    t0 = clock.now()
    await tracker.handle(ev(clock, EventKind.REBOOT_STARTED))
    await clock.advance(3.0)
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="Unknown"))
    await clock.advance(8.0)  # Ready=Unknown for 8s > 5s, but inside rebootTimeout (12s)
    assert changes[-1][2] is Health.REBOOTING
    await clock.advance(1.0)
    assert changes[-1] == (t0 + 12.0, "w-1", Health.UNHEALTHY)


async def test_reboot_that_comes_back_is_healthy(tracked) -> None:
    clock, tracker, changes, _ = tracked
    await join(clock, tracker)
    await tracker.handle(ev(clock, EventKind.REBOOT_STARTED))
    await clock.advance(2.0)
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="Unknown"))
    await clock.advance(3.0)
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="True"))
    await clock.advance(60.0)
    assert [h for _, _, h in changes][-2:] == [Health.REBOOTING, Health.HEALTHY]


async def test_startup_timeout_for_a_node_that_never_gets_ready(tracked) -> None:
    """nodeStartupTimeout is for machines healer created: counted from healer's request."""
    clock, tracker, changes, store = tracked
    t0 = clock.now()
    store.create_workflow(replacement_workflow("w-1", requested_at=t0 - 3.0))
    await clock.advance(3.0)
    await tracker.handle(ev(clock, EventKind.NODE_ADDED, labels={LABEL_POOL: "workers"}))
    assert changes[-1][2] is Health.STARTING
    await clock.advance(25.0)
    assert changes[-1] == (t0 + 17.0, "w-1", Health.UNHEALTHY)


async def test_a_node_healer_did_not_create_has_no_startup_clock(tracked) -> None:
    """Joined by someone else and never Ready: judged by its conditions, not its age."""
    clock, tracker, changes, _ = tracked
    await tracker.handle(
        ev(
            clock,
            EventKind.NODE_ADDED,
            labels={LABEL_POOL: "workers"},
            conditions={"Ready": ("False", clock.now())},
        )
    )
    assert changes[-1][2] is Health.PENDING
    await clock.advance(60.0)
    assert changes[-1] == (clock.now() - 55.0, "w-1", Health.UNHEALTHY)
    assert tracker.verdict(NodeKey("lab", "w-1")).reason == "ReadyFalseTimeout"  # type: ignore[union-attr]


def replacement_workflow(node: str, *, requested_at: float) -> WorkflowRecord:
    """The record of a workflow whose replacement machine ``node`` healer requested."""
    return WorkflowRecord(
        id=f"wf-{node}",
        cluster="lab",
        pool="workers",
        node="old-" + node,
        role=Role.WORKER,
        state=RUNNING,
        step="wait_for_join",
        reason="ReadyUnknownTimeout",
        evidence={},
        replacement_name=node,
        replacement={"id": "m-1", "name": node, "requested_at": requested_at},
        started_at=requested_at - 10.0,
        updated_at=requested_at,
    )


async def test_state_survives_a_restart(tracked, tmp_path: Path) -> None:
    clock, tracker, _changes, store = tracked
    await join(clock, tracker)
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="Unknown"))
    t0 = clock.now()
    # A new tracker on the same database resumes the timer from the persisted next_check_at.
    again: list[Health] = []

    async def on_change(obs: NodeObservation, verdict: Verdict, previous: Verdict | None) -> None:
        again.append(verdict.health)

    second = HealthTracker(config=lab_like_config(), store=store, clock=clock, on_change=on_change)
    task = asyncio.create_task(second.run())
    await clock.advance(5.0)
    task.cancel()
    assert again == [Health.UNHEALTHY]
    assert clock.now() == t0 + 5.0
    assert [e.event for e in store.audit_log(node="w-1")][-1] == "node.unhealthy"


async def test_late_events_do_not_resurrect_a_forgotten_node(tracked) -> None:
    clock, tracker, _changes, store = tracked
    await join(clock, tracker)
    tracker.forget(NodeKey("lab", "w-1"))
    await tracker.handle(ev(clock, EventKind.HEARTBEAT))
    await tracker.handle(ev(clock, EventKind.CONDITION, condition="Ready", status="Unknown"))
    assert not tracker.knows("lab", "w-1")
    assert store.nodes() == []
    # Only the API showing the node again brings it back.
    await join(clock, tracker)
    assert tracker.knows("lab", "w-1")
