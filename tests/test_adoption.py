"""Adoption in virtual time: the synced barrier, adopted nodes, healer's own replacements.

healer meeting a cluster it has no record of must fold the whole node list before deciding
anything, judge every node it finds by its conditions (never by its age) and keep
``nodeStartupTimeout`` for the machines it created itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from healer.health.observe import apply_event
from healer.model import (
    LABEL_CONTROL_PLANE,
    LABEL_POOL,
    EventKind,
    Health,
    NodeEvent,
    NodeKey,
    NodeObservation,
)
from healer.store.sqlite import RUNNING, WorkflowRecord
from tests.test_planner import CPS, WORKERS, Rig

DAY = 86_400.0


@pytest.fixture
async def rig(tmp_path: Path):
    r = Rig(tmp_path)
    tasks = [asyncio.create_task(r.tracker.run())]
    yield r
    for t in tasks:
        t.cancel()
    r.store.close()


def labels(node: str) -> dict[str, str]:
    if node.startswith("cp"):
        return {LABEL_POOL: "control-plane", LABEL_CONTROL_PLANE: ""}
    return {LABEL_POOL: "workers"}


async def added(
    r: Rig, node: str, *, created: float, conditions: dict[str, tuple[str, float]] | None = None
) -> None:
    """A node as the Kubernetes source first reports it: labels and conditions in one event."""
    await r.event(
        node,
        EventKind.NODE_ADDED,
        labels=labels(node),
        conditions=conditions if conditions is not None else {},
        detail={"created_at": created},
    )


async def listed(
    r: Rig, conditions: dict[str, dict[str, tuple[str, float]]], *, created: float
) -> None:
    """One list of the cluster: every node, between the markers."""
    await r.event("", EventKind.LIST_STARTED)
    for node in WORKERS + CPS:
        await added(r, node, created=created, conditions=conditions.get(node))
    await r.event("", EventKind.SYNCED)


def ready_since(t: float) -> dict[str, tuple[str, float]]:
    return {"Ready": ("True", t)}


def health(r: Rig) -> dict[str, Health]:
    return {obs.node: v.health for obs, v in r.tracker.nodes("lab")}


async def test_nothing_is_judged_or_decided_before_the_list_is_in(rig: Rig) -> None:
    r = rig
    old = r.clock.now() - DAY
    await r.event("", EventKind.LIST_STARTED)
    # A dead worker listed first: judged alone it would be replaced at once.
    await added(r, "w-1", created=old, conditions={"Ready": ("Unknown", old)})
    await r.clock.advance(30.0)  # the planner's periodic pass and the tracker's timers run
    assert r.tracker.nodes("lab") == [] and not r.tracker.synced("lab")
    assert r.started == [] and r.refusals() == []
    for node in WORKERS[1:] + CPS:
        await added(r, node, created=old, conditions=ready_since(old))
    assert r.started == []
    await r.event("", EventKind.SYNCED)
    assert r.tracker.synced("lab")
    assert [wf.node for wf in r.started] == ["w-1"]
    assert health(r) == {n: Health.HEALTHY for n in WORKERS[1:] + CPS} | {"w-1": Health.UNHEALTHY}


async def test_the_guards_see_every_node_of_the_first_list(rig: Rig) -> None:
    """Every node down when healer starts: maxUnhealthy refuses; nothing is replaced (judged
    node by node as the list arrived, the first ones would have been)."""
    r = rig
    old = r.clock.now() - DAY
    await listed(r, {n: {"Ready": ("Unknown", old + 10)} for n in WORKERS + CPS}, created=old)
    await r.clock.advance(5.0)
    assert r.started == []
    reasons = {reason for _, reason in r.refusals()}
    assert reasons & {"TooManyUnhealthyInCluster", "TooManyUnhealthyInPool"}


async def test_old_nodes_are_adopted_and_never_judged_by_age(rig: Rig) -> None:
    r = rig
    old = r.clock.now() - DAY  # far older than nodeStartupTimeout (20s)
    # Some nodes healthy, some without any condition yet: none was ever Ready in healer's eyes.
    await listed(r, {n: ready_since(old) for n in WORKERS[:3]}, created=old)
    await r.clock.advance(60.0)  # past nodeStartupTimeout and the condition timeouts
    assert set(health(r).values()) == {Health.HEALTHY}
    assert r.started == [] and r.refusals() == []
    assert r.store.count_audit(cluster="lab", event="node.unhealthy", since=0) == 0
    adopted = {e.node for e in r.store.audit_log(event="node.adopted")}
    assert adopted == set(WORKERS + CPS)
    obs = r.tracker.observation(NodeKey("lab", "w-5"))
    assert obs is not None and obs.adopted and obs.machine_requested_at is None


async def test_adopted_nodes_are_judged_by_their_conditions(rig: Rig) -> None:
    r = rig
    now = r.clock.now()
    conditions = {n: ready_since(now - DAY) for n in WORKERS + CPS}
    conditions["w-2"] = {"Ready": ("False", now - 2.0)}  # NotReady for 2s of its 5s
    await listed(r, conditions, created=now - DAY)
    assert health(r)["w-2"] is Health.PENDING
    await r.clock.advance(3.0)
    assert health(r)["w-2"] is Health.UNHEALTHY
    assert [wf.node for wf in r.started] == ["w-2"]


async def test_adoption_is_logged_once_per_cluster_and_audited_per_node(rig: Rig) -> None:
    r = rig
    old = r.clock.now() - DAY
    with capture_logs() as logs:
        await listed(r, {n: ready_since(old) for n in WORKERS + CPS}, created=old)
    [line] = [e for e in logs if e["event"] == "node.adopted"]
    assert line["count"] == 8 and line["nodes"] == sorted(WORKERS + CPS)
    [synced] = [e for e in logs if e["event"] == "health.synced"]
    assert synced["adopted"] == 8 and synced["first"] is True
    entry = r.store.audit_log(event="node.adopted", node="w-1")[0]
    assert entry.reason == "Adopted" and "never by its age" in entry.message


async def test_a_node_joining_after_the_list_is_judged_with_its_conditions(rig: Rig) -> None:
    r = rig
    old = r.clock.now() - DAY
    await listed(r, {n: ready_since(old) for n in WORKERS + CPS}, created=old)
    changes: list[tuple[str, Health]] = []
    inner = r.tracker._on_change

    async def spy(obs: NodeObservation, verdict: Any, previous: Any) -> None:
        changes.append((obs.node, verdict.health))
        assert inner is not None
        await inner(obs, verdict, previous)

    r.tracker._on_change = spy
    # Created a day ago, shown by the watch only now: never a NodeStartupTimeout, no
    # transient verdict without conditions.
    await added(r, "w-6", created=old, conditions=ready_since(old))
    assert changes == [("w-6", Health.HEALTHY)]
    obs = r.tracker.observation(NodeKey("lab", "w-6"))
    assert obs is not None and not obs.adopted and obs.ever_ready


async def test_healers_own_replacement_keeps_the_startup_timeout(rig: Rig) -> None:
    """nodeStartupTimeout counts from healer's request of the machine, found in the workflow."""
    r = rig
    old = r.clock.now() - DAY
    await listed(r, {n: ready_since(old) for n in WORKERS + CPS}, created=old)
    requested = r.clock.now()
    r.store.create_workflow(
        WorkflowRecord(
            id="wf1",
            cluster="lab",
            pool="workers",
            node="w-gone",
            role=r.tracker.observation(NodeKey("lab", "w-1")).role,  # type: ignore[union-attr]
            state=RUNNING,
            step="wait_for_join",
            reason="ReadyUnknownTimeout",
            evidence={},
            replacement_name="w-new",
            replacement={"id": "m1", "name": "w-new", "requested_at": requested},
            started_at=requested - 30.0,
            updated_at=requested,
        )
    )
    await r.clock.advance(8.0)
    await added(r, "w-new", created=r.clock.now(), conditions={"Ready": ("False", r.clock.now())})
    key = NodeKey("lab", "w-new")
    obs = r.tracker.observation(key)
    assert obs is not None and obs.machine_requested_at == requested and not obs.adopted
    # Ready=False past its own 5s timeout, but a machine healer is waiting for is STARTING...
    await r.clock.advance(11.0)
    assert r.tracker.verdict(key).health is Health.STARTING  # type: ignore[union-attr]
    # ...until nodeStartupTimeout (20s) after healer requested it.
    await r.clock.advance(1.0)
    verdict = r.tracker.verdict(key)
    assert verdict is not None and verdict.reason == "NodeStartupTimeout"
    assert r.clock.now() == requested + 20.0


async def test_a_relist_is_folded_whole_before_anyone_is_judged(rig: Rig) -> None:
    r = rig
    now = r.clock.now()
    await listed(r, {n: ready_since(now - DAY) for n in WORKERS + CPS}, created=now - DAY)
    await r.fail("w-1")  # Ready=Unknown: pending, unhealthy in 5s
    await r.clock.advance(1.0)
    await r.event("", EventKind.LIST_STARTED)  # a 410: the source lists again
    assert not r.tracker.synced("lab")
    await r.clock.advance(10.0)  # w-1's deadline passes while the list is being folded
    assert health(r)["w-1"] is Health.PENDING and r.started == []
    # The new list shows w-1 back, and w-3 gone.
    for node in WORKERS + CPS:
        if node != "w-3":
            await added(r, node, created=now - DAY, conditions=ready_since(now - DAY))
    await r.event("w-3", EventKind.NODE_DELETED)
    await r.event("", EventKind.SYNCED)
    assert health(r)["w-1"] is Health.HEALTHY and health(r)["w-3"] is Health.GONE
    assert r.started == [] and r.refusals() == []
    # Adopted once, at the first list: a re-list does not adopt known nodes again.
    assert len(r.store.audit_log(event="node.adopted")) == 8


async def test_losing_the_api_waits_for_the_next_list_logged_once(rig: Rig) -> None:
    r = rig
    old = r.clock.now() - DAY
    await listed(r, {n: ready_since(old) for n in WORKERS + CPS}, created=old)
    r.tracker.unsync("lab", "503 from the API")
    with capture_logs() as logs:
        await r.fail("w-1")
        await r.clock.advance(10.0)  # w-1 unhealthy; the planner is asked again and again
        assert r.started == []
        await r.event("", EventKind.LIST_STARTED)
        await added(r, "w-1", created=old, conditions={"Ready": ("Unknown", r.clock.now() - 9)})
        await r.event("", EventKind.SYNCED)
    assert [wf.node for wf in r.started] == ["w-1"]
    waits = [e for e in logs if e["event"] == "planner.waiting_for_sync"]
    assert len(waits) == 1 and waits[0]["reason"] == "NotSynced"
    assert [e["event"] for e in logs].count("planner.synced") == 1


def test_first_sight_folds_the_conditions_with_one_evidence_line() -> None:
    event = NodeEvent(
        cluster="lab",
        node="w-1",
        kind=EventKind.NODE_ADDED,
        at=100.0,
        source="kube",
        labels={LABEL_POOL: "workers"},
        conditions={"Ready": ("True", 10.0), "DiskPressure": ("False", 5.0)},
        detail={"created_at": 1.0},
    )
    obs = apply_event(None, event, exclude_label="healer.io/exclude", pool_roles={})
    assert obs.ever_ready and obs.exists and obs.pool == "workers"
    assert {k: (c.status, c.since) for k, c in obs.conditions.items()} == {
        "Ready": ("True", 10.0),
        "DiskPressure": ("False", 5.0),
    }
    [evidence] = obs.recent
    assert evidence["kind"] == "node_added"
    assert evidence["conditions"] == {"Ready": "True", "DiskPressure": "False"}


def test_observation_json_keeps_adoption_and_request_time() -> None:
    obs = NodeObservation(cluster="lab", node="w-1", adopted=True, machine_requested_at=12.5)
    again = NodeObservation.from_json(obs.to_json())
    assert again == obs
    legacy = obs.to_json()
    del legacy["adopted"], legacy["machine_requested_at"]
    old = NodeObservation.from_json(legacy)
    assert not old.adopted and old.machine_requested_at is None


async def test_after_an_api_outage_the_planner_waits_for_the_new_list(
    fake_api_virtual: Any,
    kube_virtual: Any,
    virtual_clock: Any,
    tmp_path: Path,
    eventually: Any,
) -> None:
    """A node judged unhealthy on stale data during an outage, that recovered meanwhile, is not
    replaced when the API comes back: the planner waits until the new list is folded in.

    Wired as the daemon wires it (healer.app): the source's availability hook unsyncs the
    tracker and freezes the planner; the tracker's on_synced asks the planner again."""
    import random

    from healer.health.tracker import HealthTracker
    from healer.planner.planner import Planner
    from healer.sources.kube_watch import KubeWatchSource
    from healer.store.sqlite import Store
    from tests.helpers import lab_like_config

    clock, api = virtual_clock, fake_api_virtual
    config = lab_like_config()
    store = Store.open(tmp_path)
    started: list[WorkflowRecord] = []
    w1 = NodeKey("lab", "w-1")

    async def start(wf: WorkflowRecord) -> None:
        started.append(wf)

    async def on_change(obs, verdict, previous):  # type: ignore[no-untyped-def]
        await planner.on_health_change(obs, verdict, previous)

    async def on_synced(cluster: str) -> None:
        await planner.consider(cluster)

    async def on_availability(up: bool, why: str) -> None:
        if not up:
            tracker.unsync("lab", why)
        await planner.on_api_availability("lab", up, why)

    tracker = HealthTracker(
        config=config, store=store, clock=clock, on_change=on_change, on_synced=on_synced
    )
    planner = Planner(config=config, store=store, clock=clock, tracker=tracker, start=start)
    source = KubeWatchSource(
        cluster="lab",
        client=kube_virtual,
        clock=clock,
        emit=tracker.handle,
        on_availability=on_availability,
        backoff_max=2.0,
        rng=random.Random(3),
    )
    for i in range(1, 6):
        api.add_node(f"w-{i}", {LABEL_POOL: "workers"})
    tasks = [asyncio.create_task(tracker.run()), asyncio.create_task(source.run())]
    try:
        await eventually(lambda: tracker.synced("lab") and len(tracker.nodes("lab")) == 5)
        await eventually(lambda: api.request_count("WATCH", "nodes") >= 1)
        assert await kube_virtual.set_node_ready("w-1", "False", "KubeletNotReady", "PLEG")
        await eventually(lambda: tracker.verdict(w1).health is Health.PENDING)  # type: ignore[union-attr]
        api.set_unreachable(True)
        await eventually(lambda: planner.frozen_reason("lab") is not None)
        assert not tracker.synced("lab")
        await clock.advance(6.0)  # stale: w-1 is judged unhealthy while nobody can see it
        assert tracker.verdict(w1).health is Health.UNHEALTHY  # type: ignore[union-attr]
        # Let a retry woken by the advance fail and go back to sleep on the virtual clock.
        failed = -1
        while failed != api.request_count("LIST", "nodes"):
            failed = api.request_count("LIST", "nodes")
            await asyncio.sleep(0.1)
        # The API is back and w-1 recovered meanwhile; the source has not listed yet.
        api.set_unreachable(False)
        assert await kube_virtual.set_node_ready("w-1", "True", "KubeletReady", "ok")
        lists = api.request_count("LIST", "nodes")
        for _ in range(20):  # the source retries on its (virtual) backoff
            if planner.frozen_reason("lab") is None:
                break
            await clock.advance(1.0)
            await asyncio.sleep(0.02)
        await eventually(lambda: api.request_count("LIST", "nodes") > lists)
        await eventually(lambda: planner.frozen_reason("lab") is None and tracker.synced("lab"))
        await clock.advance(3.0)
        assert started == []
        assert tracker.verdict(w1).health is Health.HEALTHY  # type: ignore[union-attr]
        assert store.audit_log(event="remediation.started") == []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()
