"""The periodic jobs (healer.jobs): pure decisions table-driven, job bodies in virtual time
against the lab cloud, the APScheduler registration, and the orphan sweep in the lab."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.clock import VirtualClock
from healer.cloud.machines import Machine, MachineState
from healer.cloud.registry import load_provider
from healer.config import HealerConfig, parse_config
from healer.errors import KubeUnavailable
from healer.health.tracker import HealthTracker
from healer.jobs.orphans import find_orphans
from healer.jobs.periodic import PeriodicJobs
from healer.jobs.pools import census
from healer.jobs.scheduler import JOB_DEFAULTS, JobScheduler
from healer.kube.records import EvictResult, NodeInfo, PodInfo
from healer.lab.harness import LabHarness, LabTimings
from healer.model import LABEL_POOL, TAG_POOL, TAG_WORKFLOW, EventKind, NodeEvent, Role
from healer.naming import ownership_tags
from healer.planner.planner import Planner
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import FAILED, RUNNING, Store, WorkflowRecord
from healer.telemetry import metrics
from healer.workflow.runner import WorkflowRunner
from providers.lab.driver import LabNodeDriver
from tests.plugins.kube import wait_for


def make_config(**top: Any) -> HealerConfig:
    cluster = {
        "name": "lab",
        "provider": {"plugin": "lab"},
        "health": {"nodeStartupTimeout": "20s"},
        "pools": [
            {"name": "control-plane", "role": "control-plane", "size": 1},
            {"name": "workers", "size": 2},
        ],
    }
    cluster.update(top.pop("cluster", {}))
    return parse_config({"clusters": [cluster], **top})


def machine(name: str, pool: str = "workers", **tags: str) -> Machine:
    return Machine(
        id=f"id-{name}",
        name=name,
        state=MachineState.RUNNING,
        tags=ownership_tags("lab", pool) | tags,
    )


def workflow(
    wf_id: str, node: str, *, pool: str = "workers", state: str = RUNNING, at: float = 0.0
) -> WorkflowRecord:
    return WorkflowRecord(
        id=wf_id,
        cluster="lab",
        pool=pool,
        node=node,
        role=Role.WORKER,
        state=state,
        step="cordon",
        reason="ReadyUnknownTimeout",
        evidence={},
        replacement_name=f"lab-{pool}-{wf_id}",
        started_at=at,
        updated_at=at,
    )


# -- pure ----------------------------------------------------------------------------------


def test_census_counts_per_pool() -> None:
    cfg = make_config().clusters[0]
    machines = [machine("w1"), machine("w2"), machine("cp1", "control-plane")]
    pools = census(cfg, machines, ready_nodes={"w1", "cp1"}, running=[workflow("a", "w2")])
    by = {p.pool: p for p in pools}
    assert (by["workers"].desired, by["workers"].machines, by["workers"].ready) == (2, 2, 1)
    assert by["workers"].in_flight == 1 and not by["workers"].matches
    assert by["control-plane"].matches and by["control-plane"].missing == 0


ORPHAN_CASES = [
    # (what, machine, known nodes, running workflows, age, orphan?)
    ("unknown and old", machine("x"), set(), [], 3600.0, True),
    ("a known node", machine("x"), {"x"}, [], 3600.0, False),
    ("still booting", machine("x"), set(), [], 5.0, False),
    (
        "a running workflow's old machine",
        machine("old"),
        set(),
        [workflow("a", "old")],
        3600,
        False,
    ),
    (
        "a running workflow's replacement",
        machine("lab-workers-a"),
        set(),
        [workflow("a", "old")],
        3600.0,
        False,
    ),
    (
        "tagged with a running workflow",
        machine("y", **{TAG_WORKFLOW: "a"}),
        set(),
        [workflow("a", "old")],
        3600.0,
        False,
    ),
    ("tagged with a finished workflow", machine("y", **{TAG_WORKFLOW: "z"}), set(), [], 3600, True),
    (
        "another cluster's",
        Machine(id="i", name="x", state=MachineState.RUNNING, tags=ownership_tags("other", "w")),
        set(),
        [],
        3600.0,
        False,
    ),
]


@pytest.mark.parametrize(
    ("what", "m", "known", "running", "age", "expected"),
    ORPHAN_CASES,
    ids=[c[0] for c in ORPHAN_CASES],
)
def test_find_orphans(
    what: str,
    m: Machine,
    known: set[str],
    running: list[WorkflowRecord],
    age: float,
    expected: bool,
) -> None:
    cfg = make_config().clusters[0]
    found = find_orphans(cfg, [m], known_nodes=known, running=running, ages={m.id: age})
    assert bool(found) is expected


# -- job bodies in virtual time ----------------------------------------------------------------


class World:
    def __init__(self, tmp_path: Path, config: HealerConfig) -> None:
        self.tmp_path = tmp_path
        self.clock = VirtualClock(start=time.time())
        self.config = config
        self.store = Store.open(tmp_path)
        self.provider = load_provider(
            "lab", cluster="lab", options={}, credentials={}, state_dir=tmp_path
        )
        self.driver = LabNodeDriver(key=tmp_path / "lab-cloud.sqlite", clock=self.clock.now)
        self.tracker = HealthTracker(config=config, store=self.store, clock=self.clock)
        self.runner = WorkflowRunner(
            config=config,
            store=self.store,
            clock=self.clock,
            kube={},
            providers={"lab": self.provider},
            user_data=render_user_data,
        )
        self.planner = Planner(
            config=config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            start=self.runner.start,
        )
        self.scheduler = JobScheduler()
        self.jobs = self.new_jobs()

    def new_jobs(self) -> PeriodicJobs:
        return PeriodicJobs(
            scheduler=self.scheduler,
            config=self.config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            planner=self.planner,
            runner=self.runner,
            providers={"lab": self.provider},
            kube={},
            user_data=render_user_data,
        )

    async def build_pools(self) -> list[Machine]:
        created = await ensure_pools(
            self.config.clusters[0], self.provider, user_data=render_user_data
        )
        for m in created:
            await self.tracker.handle(
                NodeEvent(
                    cluster="lab",
                    node=m.name,
                    kind=EventKind.NODE_ADDED,
                    at=self.clock.now(),
                    source="test",
                    labels={LABEL_POOL: m.tags[TAG_POOL]},
                )
            )
        return created

    def stray(self, name: str = "lab-workers-stray001", pool: str = "workers") -> str:
        size, image = self.driver.list_sizes()[0], self.driver.list_images()[0]
        node = self.driver.create_node(name, size, image, ex_tags=ownership_tags("lab", pool))
        return str(node.id)

    def events(self, event: str) -> list[Any]:
        return self.store.audit_log(event=event)

    async def close(self) -> None:
        await self.provider.close()
        self.store.close()


@pytest_asyncio.fixture
async def make_world(tmp_path: Path) -> AsyncIterator[Callable[..., World]]:
    worlds: list[World] = []

    def make(**top: Any) -> World:
        world = World(tmp_path / f"w{len(worlds)}", make_config(**top))
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        await world.close()


async def test_drift_repair_fills_a_pool_below_its_size(make_world: Callable[..., World]) -> None:
    world = make_world()
    created = await world.build_pools()
    gone = next(m for m in created if m.tags[TAG_POOL] == "workers")
    world.driver.destroy_node(world.driver.ex_get_node(gone.id))  # lost outside healer

    repaired = await world.jobs.pools.repair_drift("lab")
    assert [m.tags[TAG_POOL] for m in repaired] == ["workers"]
    [entry] = world.events("drift.repaired")
    assert entry.pool == "workers" and "1 of 2" in entry.message
    assert await world.jobs.pools.repair_drift("lab") == []  # at size: nothing more


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("breaker", "BreakerOpen"),
        ("pause-cluster", "Paused"),
        ("pause-pool", "Paused"),
        ("in-flight", "RemediationInFlight"),
        ("failed", "RemediationFailedRecently"),
        ("dry-run", "DryRun"),
        ("frozen", "ApiUnreachable"),
    ],
)
async def test_drift_repair_respects_the_stop_switches(
    make_world: Callable[..., World], setup: str, reason: str
) -> None:
    world = make_world(dryRun=setup == "dry-run")
    if setup == "dry-run":
        world.jobs = world.new_jobs()
    created = await world.build_pools()
    gone = next(m for m in created if m.tags[TAG_POOL] == "workers")
    world.driver.destroy_node(world.driver.ex_get_node(gone.id))
    now = world.clock.now()
    if setup == "breaker":
        world.store.open_breaker("lab", "TooManyFailures: test", now)
    elif setup == "pause-cluster":
        world.store.set_paused("cluster:lab", True, at=now)
    elif setup == "pause-pool":
        world.store.set_paused("pool:lab/workers", True, at=now)
    elif setup == "in-flight":
        world.store.create_workflow(workflow("wf1", gone.name, at=now))
    elif setup == "failed":
        world.store.create_workflow(workflow("wf1", gone.name, at=now))
        failed = world.store.workflow("wf1")
        assert failed is not None
        world.store.update_workflow(failed.with_(state=FAILED, finished_at=now, updated_at=now))
    elif setup == "frozen":
        await world.planner.on_api_availability("lab", False, "connection refused")

    assert await world.jobs.pools.repair_drift("lab") == []
    assert await world.jobs.pools.repair_drift("lab") == []
    skipped = world.events("drift.skipped")
    assert [e.reason for e in skipped] == [reason]  # said once, not at every run
    assert (
        len(world.provider and await world.provider.list_machines(ownership_tags("lab", "workers")))
        == 1
    )


async def test_orphan_is_reported_then_destroyed_after_the_grace(
    make_world: Callable[..., World],
) -> None:
    world = make_world(orphans={"destroy": True, "grace": "30m"})
    await world.build_pools()
    orphan_id = world.stray()

    assert await world.jobs.orphans.sweep("lab") == []  # 0 s old: may still be booting
    await world.clock.advance(30)
    [orphan] = await world.jobs.orphans.sweep("lab")
    assert orphan.machine.id == orphan_id
    [found] = world.events("orphan.found")
    assert found.evidence["machine"]["id"] == orphan_id and found.reason == "NotInState"
    assert metrics.REGISTRY.get_sample_value("healer_orphan_machines", {"cluster": "lab"}) == 1

    await world.clock.advance(20 * 60)
    await world.jobs.orphans.sweep("lab")
    assert world.driver.ex_destroy_log() == []  # inside the grace period
    assert len(world.events("orphan.found")) == 1  # reported once

    await world.clock.advance(11 * 60)
    await world.jobs.orphans.sweep("lab")
    [destroyed] = world.driver.ex_destroy_log()
    assert destroyed["node_id"] == orphan_id
    assert [e.node for e in world.events("orphan.destroyed")] == ["lab-workers-stray001"]
    assert await world.jobs.orphans.sweep("lab") == []


async def test_orphan_grace_survives_a_restart(make_world: Callable[..., World]) -> None:
    world = make_world(orphans={"destroy": True, "grace": "30m"})
    await world.build_pools()
    world.stray()
    await world.clock.advance(30)
    await world.jobs.orphans.sweep("lab")
    await world.clock.advance(31 * 60)
    world.jobs = world.new_jobs()  # a new process: the first report is read from the audit log
    await world.jobs.orphans.sweep("lab")
    assert len(world.driver.ex_destroy_log()) == 1


async def test_orphans_are_only_reported_unless_destroy_is_on(
    make_world: Callable[..., World],
) -> None:
    world = make_world()
    await world.build_pools()
    world.stray()
    await world.clock.advance(30)
    await world.jobs.orphans.sweep("lab")
    await world.clock.advance(24 * 3600)
    assert len(await world.jobs.orphans.sweep("lab")) == 1
    assert world.driver.ex_destroy_log() == []
    assert "reported only" in world.events("orphan.found")[0].message


async def test_no_sweep_without_state(make_world: Callable[..., World]) -> None:
    world = make_world(orphans={"destroy": True, "grace": "30m"})
    await ensure_pools(world.config.clusters[0], world.provider, user_data=render_user_data)
    await world.clock.advance(3600)
    # healer knows no node: a lost database must not make every machine an orphan.
    assert await world.jobs.orphans.sweep("lab") == []
    assert world.events("orphan.found") == []


async def test_too_many_orphans_are_not_destroyed(make_world: Callable[..., World]) -> None:
    world = make_world(orphans={"destroy": True, "grace": "1m"})
    await world.build_pools()  # three known nodes
    for i in range(3):
        world.stray(f"lab-workers-stray00{i}")
    await world.clock.advance(30)
    await world.jobs.orphans.sweep("lab")
    await world.clock.advance(120)
    await world.jobs.orphans.sweep("lab")
    assert world.driver.ex_destroy_log() == []
    assert [e.reason for e in world.events("orphan.destroy_skipped")] == ["TooManyOrphans"]


async def test_orphans_are_not_destroyed_while_paused(make_world: Callable[..., World]) -> None:
    world = make_world(orphans={"destroy": True, "grace": "1m"})
    await world.build_pools()
    world.stray()
    world.store.set_paused("*", True, at=world.clock.now())
    await world.clock.advance(30)
    await world.jobs.orphans.sweep("lab")
    await world.clock.advance(120)
    await world.jobs.orphans.sweep("lab")
    assert world.driver.ex_destroy_log() == []
    assert [e.reason for e in world.events("orphan.destroy_skipped")] == ["Paused"]


async def test_stale_workflows_are_failed_with_a_reason(make_world: Callable[..., World]) -> None:
    world = make_world(schedule={"staleAfter": "1h"})
    now = world.clock.now()
    world.store.create_workflow(workflow("stale", "w-old", at=now))
    world.store.create_workflow(workflow("busy", "w-busy", at=now))
    await world.clock.advance(50 * 60)
    world.store.journal("busy", "drain", "started", world.clock.now(), {})  # progress
    await world.clock.advance(20 * 60)

    assert await world.jobs.stale.expire() == ["stale"]
    stale = world.store.workflow("stale")
    assert stale is not None and stale.state == FAILED
    assert stale.error is not None and "no progress for 4200s at step cordon" in stale.error
    assert world.store.steps("stale")[-1]["status"] == "failed"
    [failed] = world.events("remediation.failed")
    assert failed.reason == "StaleWorkflow"
    busy = world.store.workflow("busy")
    assert busy is not None and busy.state == RUNNING


class KubeAway:
    """The Kubernetes API of a workflow's cluster: away (every call fails) until ``back``; once
    back, the drain's first read never returns, so the workflow stays on its drain step."""

    def __init__(self) -> None:
        self.back = False
        self.cordoned: list[str] = []

    async def cordon(self, name: str) -> bool:
        if not self.back:
            raise KubeUnavailable("cannot reach the Kubernetes API")
        self.cordoned.append(name)
        return True

    async def get_node(self, name: str) -> None:
        await asyncio.Event().wait()


def away_world(world: World, kube: Any, wf_id: str) -> WorkflowRecord:
    """``world`` with a runner whose cluster API is ``kube``, and a workflow ``wf_id`` for it."""
    world.runner = WorkflowRunner(
        config=world.config,
        store=world.store,
        clock=world.clock,
        kube={"lab": kube},
        providers={"lab": world.provider},
        user_data=render_user_data,
    )
    world.jobs = world.new_jobs()
    wf = workflow(wf_id, f"w-{wf_id}", at=world.clock.now())
    world.store.create_workflow(wf)
    return wf


def journal(world: World, wf_id: str, step: str) -> list[str]:
    return [line["status"] for line in world.store.steps(wf_id) if line["step"] == step]


async def test_a_workflow_waiting_for_the_api_is_paused_not_stale(
    make_world: Callable[..., World],
) -> None:
    world = make_world(schedule={"staleAfter": "1h"})
    kube = KubeAway()
    wf = away_world(world, kube, "away")
    await world.runner.start(wf)
    await world.clock.advance(3 * 3600)  # far past staleAfter and the retry budget
    assert world.runner.waiting_for_api("away")
    assert await world.jobs.stale.expire() == []
    away = world.store.workflow("away")
    assert away is not None and away.state == RUNNING
    assert journal(world, "away", "cordon") == ["started", "retrying"]  # once, not per try

    kube.back = True
    await world.clock.advance(60)  # maxDelay (30s by default) at most between tries
    assert kube.cordoned == ["w-away"]
    assert not world.runner.waiting_for_api("away")
    assert journal(world, "away", "cordon") == ["started", "retrying", "resumed", "done"]
    await world.runner.stop()
    away = world.store.workflow("away")
    assert away is not None and away.state == RUNNING and away.step == "drain"


async def test_stopping_the_daemon_ends_a_wait_for_the_api_at_once(
    make_world: Callable[..., World],
) -> None:
    world = make_world()
    wf = away_world(world, KubeAway(), "away")
    await world.runner.start(wf)
    await world.clock.advance(600)
    assert world.runner.waiting_for_api("away")
    async with asyncio.timeout(5):  # real seconds: the wait must not run to its next try
        await world.runner.stop()
    assert not world.runner.waiting_for_api("away")
    assert journal(world, "away", "cordon") == ["started", "retrying", "suspended"]
    away = world.store.workflow("away")
    assert away is not None and away.state == RUNNING and away.step == "cordon"


class KubeFlapping:
    """A NotReady node whose pod a PodDisruptionBudget holds; the API is away while ``away``."""

    def __init__(self) -> None:
        self.away = False

    def answer(self) -> None:
        if self.away:
            raise KubeUnavailable("cannot reach the Kubernetes API")

    async def cordon(self, name: str) -> bool:
        self.answer()
        return True

    async def get_node(self, name: str) -> NodeInfo:
        self.answer()
        ready = {"Ready": ("Unknown", 0.0)}
        return NodeInfo(name, {}, True, ready, (), 0.0, "1")

    async def pods_on_node(self, name: str) -> list[PodInfo]:
        self.answer()
        return [PodInfo("shop", "web-0", name, ("ReplicaSet",), False, False, "Running")]

    async def evict(self, namespace: str, name: str) -> tuple[EvictResult, str]:
        self.answer()
        return EvictResult.BLOCKED, "Cannot evict pod as it would violate the budget."


async def test_an_api_outage_does_not_count_against_drain_timeout(
    make_world: Callable[..., World],
) -> None:
    world = make_world(cluster={"remediation": {"drainTimeout": "100s"}})
    kube = KubeFlapping()
    wf = away_world(world, kube, "flap")
    t0 = world.clock.now()
    await world.runner.start(wf)
    await world.clock.advance(50)
    kube.away = True
    await world.clock.advance(1000)
    kube.away = False
    await world.clock.advance(200)
    await world.runner.stop()
    [done] = [line for line in world.store.steps("flap") if line["step"] == "drain"][-1:]
    assert done["status"] == "done"
    assert done["detail"]["timed_out"] is True
    # 50s drained before the outage, the rest (40-50s) after it, which the step notices within
    # maxDelay (30s); a drain started again with the full timeout would end at 1150s or later.
    assert 1090 <= done["at"] - t0 < 1145


async def test_maintenance_window_transitions_are_recorded(
    make_world: Callable[..., World],
) -> None:
    world = make_world(
        cluster={"reboots": {"windows": [{"start": "02:00", "end": "04:00", "timezone": "UTC"}]}}
    )
    world.clock._now = datetime(2024, 3, 5, 1, 0, tzinfo=UTC).timestamp()
    assert await world.jobs.windows.check() == {"lab": False}
    assert not world.jobs.windows.reboots_allowed("lab")
    await world.clock.advance(90 * 60)
    assert await world.jobs.windows.check() == {"lab": True}
    assert world.jobs.windows.reboots_allowed("lab")
    await world.clock.advance(2 * 3600)
    await world.jobs.windows.check()
    events = [e.event for e in world.store.audit_log(cluster="lab")]
    assert events == ["maintenance.window_opened", "maintenance.window_closed"]
    opened = world.store.audit_log(event="maintenance.window_opened")[0]
    assert "until 2024-03-05T04:00:00+00:00" in opened.message
    assert (
        metrics.REGISTRY.get_sample_value("healer_maintenance_window_open", {"cluster": "lab"}) == 0
    )


async def test_the_scheduler_keeps_jobs_registered_before_and_after_start() -> None:
    """The daemon registers its rounds before APScheduler starts; a reload replaces a job, and
    a step of the wall clock plans every job again from now."""
    scheduler = JobScheduler()

    async def body() -> None:
        pass

    scheduler.every("recheck", 15.0, body)
    scheduler.every("operator-requests", 1.0, body)
    assert scheduler.jobs() == []  # nothing runs before start
    scheduler.start()
    try:
        jobs = {j.id: j for j in scheduler.jobs()}
        assert set(jobs) == {"recheck", "operator-requests"}
        assert jobs["operator-requests"].trigger.interval.total_seconds() == 1.0
        scheduler.every("recheck", 30.0, body)  # replaced, not added
        scheduler.every("resync:lab", 60.0, body, timeout=60.0)
        jobs = {j.id: j for j in scheduler.jobs()}
        assert set(jobs) == {"recheck", "operator-requests", "resync:lab"}
        assert jobs["recheck"].trigger.interval.total_seconds() == 30.0
        planned = jobs["resync:lab"].next_run_time
        scheduler.remove("operator-requests")
        scheduler.reschedule()
        jobs = {j.id: j for j in scheduler.jobs()}
        assert set(jobs) == {"recheck", "resync:lab"} == set(scheduler.ids())
        assert jobs["resync:lab"].next_run_time >= planned
        assert jobs["resync:lab"].args[2] == 60.0  # the timeout of a run survives it
    finally:
        scheduler.shutdown()
    assert scheduler.jobs() == []


async def test_jobs_are_registered_coalesced_one_instance_each(
    make_world: Callable[..., World],
) -> None:
    world = make_world(schedule={"orphanSweep": 0, "resync": "2m"})
    world.scheduler.start()
    try:
        jobs = {j.id: j for j in world.scheduler.jobs()}
        assert set(jobs) == {"resync:lab", "drift:lab", "maintenance", "stale-workflows"}
        for job in jobs.values():
            assert job.coalesce is True and job.max_instances == 1
        assert jobs["resync:lab"].trigger.interval.total_seconds() == 120
        assert JOB_DEFAULTS["coalesce"] and JOB_DEFAULTS["max_instances"] == 1

        # A reload changes the intervals (and can turn a job on or off).
        world.jobs.reconfigure(make_config(schedule={"resync": "10m", "driftRepair": 0}))
        jobs = {j.id: j for j in world.scheduler.jobs()}
        assert "drift:lab" not in jobs and "orphans:lab" in jobs
        assert jobs["resync:lab"].trigger.interval.total_seconds() == 600
    finally:
        world.scheduler.shutdown()


async def test_a_failing_job_is_logged_and_counted_not_raised() -> None:
    async def boom() -> None:
        raise RuntimeError("cloud on fire")

    before = (
        metrics.REGISTRY.get_sample_value(
            "healer_scheduler_job_runs_total", {"job": "drift", "outcome": "error"}
        )
        or 0.0
    )
    merge = structlog.contextvars.merge_contextvars
    with structlog.testing.capture_logs(processors=[merge]) as logs:
        await JobScheduler.run_job("drift:lab", boom, timeout=60.0)
    assert (
        metrics.REGISTRY.get_sample_value(
            "healer_scheduler_job_runs_total", {"job": "drift", "outcome": "error"}
        )
        == before + 1
    )
    [line] = [e for e in logs if e["event"] == "scheduler.job_failed"]
    assert line["error"] == "cloud on fire" and line["cluster"] == "lab" and line["job"] == "drift"


# -- the orphan sweep in the lab ---------------------------------------------------------------


async def test_orphan_sweep_in_the_lab(tmp_path: Path) -> None:
    """A healer-tagged machine created behind healer's back is found and reported by the
    daemon that watches the lab cluster, and shows up in `healer history`."""
    timings = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
    roles = {"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER}
    harness = LabHarness(state_dir=tmp_path, pool_roles=roles, timings=timings, with_broker=False)
    await harness.start()
    daemon_task: asyncio.Task[None] | None = None
    try:
        config = harness.daemon_config(make_config(logFormat="json"))
        provider = load_provider(
            "lab", cluster="lab", options={}, credentials={}, state_dir=tmp_path
        )
        await ensure_pools(config.clusters[0], provider, user_data=render_user_data)
        await provider.close()
        await harness.wait_ready(3)
        ready = asyncio.Event()

        async def on_ready() -> None:
            ready.set()

        daemon = Daemon(
            config,
            state_dir=tmp_path,
            tuning=Tuning(recheck_interval=0.5, join_poll_interval=0.2, watch_timeout=30),
            on_ready=on_ready,
        )
        daemon_task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(ready.wait(), 20)
        assert daemon.tracker is not None and daemon.jobs is not None
        tracker = daemon.tracker
        await wait_for(lambda: len(tracker.nodes("lab")) == 3, timeout=20)

        # Made an hour ago, straight in the cloud, with healer's tags; it never joins (powered
        # off before the lab boots a kubelet for it: no await in between).
        driver = LabNodeDriver(key=tmp_path / "lab-cloud.sqlite", clock=lambda: time.time() - 3600)
        size, image = driver.list_sizes()[0], driver.list_images()[0]
        stray = driver.create_node(
            "lab-workers-stray001", size, image, ex_tags=ownership_tags("lab", "workers")
        )
        harness.cloud.power_off(stray.id)

        # The full resync sees the same picture: the stray machine is one too many for its
        # pool and not a Ready node; the control plane matches.
        pools = {p.pool: p for p in await daemon.jobs.pools.resync("lab") or []}
        assert (pools["workers"].desired, pools["workers"].machines) == (2, 3)
        assert pools["workers"].ready == 2 and pools["control-plane"].matches
        ready = metrics.REGISTRY.get_sample_value(
            "healer_pool_machines", {"cluster": "lab", "pool": "workers", "kind": "ready"}
        )
        assert ready == 2
        assert daemon.store is not None
        [mismatch] = daemon.store.audit_log(event="resync.pool_mismatch")
        assert mismatch.pool == "workers" and "2 desired, 3 machines" in mismatch.message

        orphans = await daemon.jobs.orphans.sweep("lab")
        assert [o.machine.name for o in orphans] == ["lab-workers-stray001"]
        assert daemon.store is not None
        [entry] = daemon.store.audit_log(event="orphan.found")
        assert entry.node == "lab-workers-stray001" and entry.pool == "workers"
        assert entry.evidence["machine"]["id"] == stray.id

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "healer.cli", "history", "--state-dir", str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out.decode()
        assert "orphan.found" in out.decode() and "lab-workers-stray001" in out.decode()
        assert harness.machine("lab-workers-stray001") is not None  # reported, not destroyed
    finally:
        if daemon_task is not None:
            daemon_task.cancel()
            await asyncio.gather(daemon_task, return_exceptions=True)
        await harness.stop()


async def test_policy_reconcile_job_puts_pod_security_drift_back(
    tmp_path: Path, fake_api: Any, kube: Any
) -> None:
    """Clusters that configure Pod Security (or RBAC) get a periodic reconcile job."""
    config = make_config(
        cluster={"podSecurity": {"default": {"enforce": "baseline", "version": "latest"}}}
    )
    world = World(tmp_path, config)
    try:
        assert "policy:lab" in world.jobs.intervals()
        assert "policy:lab" not in World(tmp_path / "plain", make_config()).jobs.intervals()
        world.jobs.policy.kube = {"lab": kube}  # the daemon passes its clients the same way
        fake_api.add_namespace("shop")
        changes = await world.jobs.policy.reconcile("lab")
        assert any("shop" in c for c in changes)
        labels = fake_api.namespace("shop")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
        await kube.patch_namespace_labels(
            "shop", {"pod-security.kubernetes.io/enforce": "privileged"}
        )
        await world.jobs.policy.reconcile("lab")
        labels = fake_api.namespace("shop")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    finally:
        await world.close()
