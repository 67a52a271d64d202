"""Fence, then delete; keep capacity: the order of a replacement's steps.

* pure: which order a workflow follows (table), what comes next, when a pool is short, and
  the shortfall ``healer status`` reads from a journal;
* the runner against the fake API server and the lab cloud: the replace order fences (powers
  off) before it deletes the Node and taints it out-of-service in between; surge creates first;
  a full quota falls back to replace; a provider that cannot power off is fenced by destroy;
* a crash (the task dies) before and after every step of both orders resumes exactly once;
* in virtual time: a create refused for longer than the retries is retried until the pool is
  whole, with waits capped at ``maxDelay``, and the shortfall is visible meanwhile;
* the planner's cooldown and drift repair never hold back a pool left short.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from healer import failpoints
from healer.clock import VirtualClock
from healer.cloud.machines import Machine, MachineRequest, can_check_capacity, can_power_off
from healer.kube.client import KubeClient
from healer.kube.records import TAINT_OUT_OF_SERVICE
from healer.lab.apiserver.server import FakeApiServer
from healer.model import Role
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import FAILED, POOL_SHORT, RUNNING, Store, WorkflowRecord
from healer.workflow import order
from healer.workflow.capacity import capacity_lines, capacity_report
from healer.workflow.order import REPLACE_STEPS, SURGE_STEPS
from healer.workflow.runner import WorkflowRunner
from providers.lab.driver import LabNodeDriver
from providers.lab.plugin import LabProvider
from tests.helpers import lab_cloud_with_worker, lab_like_config
from tests.test_workflow import OLD, World, config, run_to_end
from tests.test_workflow import world as world

# Every test here runs on both state backends (tests/plugins/store.py).
pytestmark = pytest.mark.usefixtures("state_backend")

# -- pure ----------------------------------------------------------------------------------

PLANS = [
    # strategy, role, node ready, provider can preflight -> strategy, reason
    ("replace", "worker", True, True, "replace", order.STRATEGY_REPLACE),
    ("replace", "worker", False, True, "replace", order.STRATEGY_REPLACE),
    ("surge", "worker", True, True, "surge", order.STRATEGY_SURGE),
    ("surge", "worker", False, True, "replace", order.NODE_NOT_READY),
    ("surge", "worker", True, False, "replace", order.NO_CAPACITY_PREFLIGHT),
    ("surge", "control-plane", True, True, "replace", order.CONTROL_PLANE_REPLACES),
]


@pytest.mark.parametrize(("strategy", "role", "ready", "preflight", "want", "reason"), PLANS)
def test_choose_plan(
    strategy: str, role: str, ready: bool, preflight: bool, want: str, reason: str
) -> None:
    plan = order.choose_plan(
        strategy=strategy, role=role, node_ready=ready, can_preflight=preflight, provider="p"
    )
    assert (plan.strategy, plan.reason) == (want, reason)
    assert plan.steps == (SURGE_STEPS if want == "surge" else REPLACE_STEPS)


def test_both_orders_fence_before_the_node_is_deleted_and_release_in_between() -> None:
    for steps in (REPLACE_STEPS, SURGE_STEPS):
        assert steps.index("fence") < steps.index("release") < steps.index("delete_node")
        assert steps.index("drain") < steps.index("fence")
    assert SURGE_STEPS.index("wait_for_join") < SURGE_STEPS.index("drain")
    assert REPLACE_STEPS.index("destroy_machine") < REPLACE_STEPS.index("create_machine")


def _line(step: str, status: str = "done", at: float = 0.0, **detail: Any) -> dict[str, Any]:
    return {"step": step, "status": status, "at": at, "detail": detail}


SHORT = [
    # steps done -> pool short?
    ((), False),
    (("cordon", "drain"), False),
    (("cordon", "drain", "fence"), True),
    (("cordon", "drain", "fence", "release", "delete_node", "destroy_machine"), True),
    (
        ("cordon", "drain", "fence", "release", "delete_node", "destroy_machine", "create_machine"),
        False,
    ),
    # a workflow from before fencing had destroy_machine as its point of no return
    (("cordon", "drain", "delete_node", "destroy_machine"), True),
]


@pytest.mark.parametrize(("done", "short"), SHORT)
def test_pool_short_in_the_replace_order(done: tuple[str, ...], short: bool) -> None:
    plan = order.choose_plan(
        strategy="replace", role="worker", node_ready=False, can_preflight=True
    )
    assert order.pool_short(plan, set(done)) is short


def test_surge_never_leaves_the_pool_short() -> None:
    plan = order.choose_plan(strategy="surge", role="worker", node_ready=True, can_preflight=True)
    done: set[str] = set()
    for step in plan.steps:
        done.add(step)
        assert not order.pool_short(plan, done)


def test_a_refused_preflight_switches_the_journal_to_the_replace_order() -> None:
    surge = order.choose_plan(strategy="surge", role="worker", node_ready=True, can_preflight=True)
    lines = [
        _line("plan", "decided", **surge.to_json()),
        _line("cordon"),
        _line("preflight", ok=False, reason="QuotaExceeded", message="5 of 5"),
    ]
    plan = order.plan_from_journal(lines)
    assert plan is not None and plan.strategy == "replace"
    assert plan.reason == order.PREFLIGHT_REFUSED and "QuotaExceeded" in plan.message
    assert order.next_step(plan, order.done_steps(lines)) == "drain"
    ok = [*lines[:2], _line("preflight", ok=True)]
    assert order.next_step(order.plan_from_journal(ok), order.done_steps(ok)) == "create_machine"  # type: ignore[arg-type]


def test_shortfall_names_the_replacement_its_retries_and_the_last_error() -> None:
    plan = order.choose_plan(
        strategy="replace", role="worker", node_ready=False, can_preflight=True
    )
    lines = [
        _line("plan", "decided", **plan.to_json()),
        *(_line(s, at=10.0) for s in ("cordon", "drain", "fence", "release", "delete_node")),
        _line("destroy_machine", at=11.0),
        _line("create_machine", "started", at=12.0),
        _line("create_machine", "retrying", at=13.0, error="503 first"),
        _line("create_machine", "retrying", at=20.0, error="503 second"),
    ]
    short = order.shortfall(
        cluster="c", pool="workers", node="old", replacement="new", workflow="wf", lines=lines
    )
    assert short is not None
    assert (short.step, short.attempts, short.last_error) == ("create_machine", 2, "503 second")
    assert (short.short_since, short.retrying_since) == (10.0, 13.0)
    assert "new for old being retried" in short.describe() and "503 second" in short.describe()
    whole = [*lines, _line("create_machine", at=30.0)]
    assert (
        order.shortfall(
            cluster="c", pool="workers", node="old", replacement="new", workflow="wf", lines=whole
        )
        is None
    )


# -- the runner against the fake API server and the lab cloud -----------------------------


def _done(world: World, wf_id: str) -> list[str]:
    return [s["step"] for s in world.store.steps(wf_id) if s["status"] == "done"]


def _done_at(world: World, wf_id: str) -> dict[str, float]:
    return {s["step"]: s["at"] for s in world.store.steps(wf_id) if s["status"] == "done"}


def _driver(world: World) -> LabNodeDriver:
    return LabNodeDriver(key=world.provider.db_path)


async def _dead(world: World) -> None:
    await world.kube.set_node_ready(OLD, "Unknown", "NodeStatusUnknown", "Kubelet stopped.")


async def test_replace_powers_off_then_taints_then_deletes(world: World) -> None:
    await _dead(world)
    world.api.add_pod("shop", "db-0", OLD, owner_kind="StatefulSet")
    final = await run_to_end(world, config(), world.workflow())
    assert final.state == "succeeded", final.error
    assert _done(world, final.id) == ["created", *REPLACE_STEPS]
    at = _done_at(world, final.id)
    assert at["fence"] < at["release"] < at["delete_node"] < at["destroy_machine"]
    # The machine was off when it was destroyed: fenced by a power-off, not by the delete.
    [destroy] = [d for d in _driver(world).ex_destroy_log() if d["name"] == OLD]
    assert destroy["state_before"] == "stopped" and not destroy["repeat"]
    release = next(
        s["detail"]
        for s in world.store.steps(final.id)
        if s["step"] == "release" and s["status"] == "done"
    )
    assert release["taint"].startswith(TAINT_OUT_OF_SERVICE) and release["pods_left"] == []
    assert world.api.pod("shop", "db-0") is None  # force-deleted once the machine was off
    plan = next(s for s in world.store.steps(final.id) if s["step"] == "plan")
    assert plan["detail"]["strategy"] == "replace"


async def test_surge_creates_and_joins_before_the_old_node_is_touched(world: World) -> None:
    final = await run_to_end(world, config(strategy="surge"), world.workflow())
    assert final.state == "succeeded", final.error
    assert _done(world, final.id) == ["created", *SURGE_STEPS]
    driver = _driver(world)
    [created] = [c for c in driver.ex_created_log() if c["name"] == final.replacement_name]
    [destroyed] = [d for d in driver.ex_destroy_log() if d["name"] == OLD]
    assert created["at"] < destroyed["at"]
    at = _done_at(world, final.id)
    assert at["wait_for_join"] < at["drain"] < at["fence"] < at["delete_node"]


async def test_surge_for_a_dead_node_fences_it_first(world: World) -> None:
    await _dead(world)
    final = await run_to_end(world, config(strategy="surge"), world.workflow())
    assert final.state == "succeeded", final.error
    assert _done(world, final.id) == ["created", *REPLACE_STEPS]
    plan = next(s for s in world.store.steps(final.id) if s["step"] == "plan")
    assert plan["detail"]["reason"] == order.NODE_NOT_READY


async def test_surge_without_room_falls_back_to_replace(world: World) -> None:
    _driver(world).ex_set_quota(1)  # the old machine fills it
    final = await run_to_end(world, config(strategy="surge"), world.workflow())
    assert final.state == "succeeded", final.error
    assert _done(world, final.id) == ["created", "cordon", "preflight", *REPLACE_STEPS[1:]]
    [refused] = [e for e in world.store.audit_log(event="remediation.surge_refused")]
    assert refused.reason == "QuotaExceeded"


class NoPowerProvider:
    """The lab cloud through the bare Provider contract: no power control, no preflight."""

    def __init__(self, inner: LabProvider) -> None:
        self._inner = inner
        self.name = "bare"

    async def create_machine(self, request: MachineRequest) -> Machine:
        return await self._inner.create_machine(request)

    async def destroy_machine(self, machine: Machine) -> bool:
        return await self._inner.destroy_machine(machine)

    async def get_machine(self, name: str) -> Machine | None:
        return await self._inner.get_machine(name)

    async def list_machines(self, tags: Any) -> list[Machine]:
        return await self._inner.list_machines(tags)

    async def close(self) -> None:
        return None


async def test_a_provider_that_cannot_power_off_is_fenced_by_destroy_once(world: World) -> None:
    bare = NoPowerProvider(world.provider)
    assert not can_power_off(bare) and not can_check_capacity(bare)
    assert can_power_off(world.provider) and can_check_capacity(world.provider)
    await _dead(world)
    runner = world.runner(config(strategy="surge"))
    runner._providers = {"lab": bare}  # type: ignore[assignment]
    wf = world.workflow()
    await runner.start(wf)
    async with asyncio.timeout(15):
        await runner.wait_idle()
    final = world.store.workflow(wf.id)
    assert final is not None and final.state == "succeeded", final and final.error
    steps = {s["step"]: s["detail"] for s in world.store.steps(wf.id) if s["status"] == "done"}
    assert steps["fence"]["fenced"] == "destroyed"
    assert steps["destroy_machine"]["note"] == "destroyed by fence"
    assert len([d for d in _driver(world).ex_destroy_log() if d["name"] == OLD]) == 1
    assert _done_at(world, wf.id)["fence"] < _done_at(world, wf.id)["delete_node"]


# -- crash at every step, both orders -------------------------------------------------------

CRASHES = [
    (strategy, step, when)
    for strategy, steps in (("replace", REPLACE_STEPS), ("surge", SURGE_STEPS))
    for step in steps
    for when in ("before", "after")
]


@pytest.mark.parametrize(("strategy", "step", "when"), CRASHES)
async def test_a_crash_at_any_step_resumes_exactly_once(
    world: World, monkeypatch: pytest.MonkeyPatch, strategy: str, step: str, when: str
) -> None:
    if strategy == "replace":
        await _dead(world)
    point = f"workflow.{step}.{when}"
    real_hit = failpoints.hit

    def crash(name: str) -> None:
        real_hit(name)
        if name == point:
            raise asyncio.CancelledError  # the task dies here, as the process would

    monkeypatch.setattr(failpoints, "hit", crash)
    cfg = config(strategy=strategy)
    first = world.runner(cfg)
    wf = world.workflow()
    await first.start(wf)
    async with asyncio.timeout(15):
        await first.wait_idle()
    halted = world.store.workflow(wf.id)
    assert halted is not None and halted.state == RUNNING and halted.step == step

    monkeypatch.setattr(failpoints, "hit", real_hit)
    second = world.runner(cfg)
    assert await second.resume_all() == 1
    async with asyncio.timeout(15):
        await second.wait_idle()
    final = world.store.workflow(wf.id)
    assert final is not None and final.state == "succeeded", final.error
    steps = SURGE_STEPS if strategy == "surge" else REPLACE_STEPS
    assert _done(world, wf.id) == ["created", *steps]
    driver = _driver(world)
    assert len([c for c in driver.ex_created_log() if c["name"] == wf.replacement_name]) == 1
    destroys = [d for d in driver.ex_destroy_log() if d["name"] == OLD]
    assert len(destroys) == 1 and destroys[0]["existed"] and not destroys[0]["repeat"]
    assert destroys[0]["state_before"] == "stopped"
    assert world.api.node(OLD) is None
    assert [p for p in world.api.nodes() if p["metadata"]["name"] == wf.replacement_name]


# -- in virtual time: a create refused for longer than the retries --------------------------


# Virtual time the test's ticks (0.5 s per 5 ms of real time) let pass while a cloud call runs in
# its thread: on a loaded machine a call can take tens of milliseconds. Kept below 8 s, so a wait
# that was not capped (the next one uncapped would be 16 s) still fails the test.
SLACK = 7.5


@pytest.fixture
async def vworld(
    fake_api_virtual: FakeApiServer, kube_virtual: KubeClient, tmp_path: Path
) -> AsyncIterator[tuple[FakeApiServer, KubeClient, LabProvider, Store]]:
    provider = await lab_cloud_with_worker(tmp_path, OLD)
    fake_api_virtual.add_node(OLD, labels={"healer.io/pool": "workers"}, ready=False)
    store = Store.open(tmp_path)
    yield fake_api_virtual, kube_virtual, provider, store
    await provider.close()
    store.close()


async def test_a_refused_create_is_retried_until_the_pool_is_whole(
    vworld: tuple[FakeApiServer, KubeClient, LabProvider, Store], virtual_clock: VirtualClock
) -> None:
    api, kube, provider, store = vworld
    clock = virtual_clock
    cfg = lab_like_config(
        remediation={
            "drainTimeout": "5s",
            "retry": {"attempts": 3, "initialDelay": "1s", "maxDelay": "8s"},
        }
    )
    driver = LabNodeDriver(key=provider.db_path)
    driver.ex_set_create_refusal(time.time() + 3600)  # far longer than three attempts
    finished: list[WorkflowRecord] = []

    async def on_finished(wf: WorkflowRecord) -> None:
        finished.append(wf)

    runner = WorkflowRunner(
        config=cfg,
        store=store,
        clock=clock,
        kube={"lab": kube},
        providers={"lab": provider},
        user_data=render_user_data,
        on_finished=on_finished,
        join_poll_interval=2.0,
    )
    now = clock.now()
    wf = WorkflowRecord(
        id="wfvirtual0001",
        cluster="lab",
        pool="workers",
        node=OLD,
        role=Role.WORKER,
        state=RUNNING,
        step="cordon",
        reason="ReadyUnknownTimeout",
        evidence={},
        replacement_name="lab-workers-wfvirtua",
        started_at=now,
        updated_at=now,
    )
    store.create_workflow(wf)
    await runner.start(wf)

    def retries() -> list[dict[str, Any]]:
        return [
            s
            for s in store.steps(wf.id)
            if s["step"] == "create_machine" and s["status"] == "retrying"
        ]

    async def advance_until(predicate: Any, limit: float) -> None:
        spent = 0.0
        while not predicate():
            assert spent < limit, f"nothing after {spent}s of virtual time"
            await clock.advance(0.5)
            await asyncio.sleep(0.005)  # real time for the HTTP and the cloud's threads
            spent += 0.5

    await advance_until(lambda: len(retries()) >= 12, 600.0)
    lines = retries()
    # Many more attempts than the policy's 3, each wait capped at maxDelay, and no failure.
    assert not finished and store.workflow(wf.id).state == RUNNING  # type: ignore[union-attr]
    assert all(line["detail"]["wait"] <= 8.0 for line in lines)
    assert all(line["detail"][POOL_SHORT] for line in lines)
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(lines)]
    # maxDelay, plus the virtual time the driver loop lets pass while a cloud call is in flight
    # in its thread (ticks of 0.5 s); tenacity's own waits are the journalled ones above.
    assert max(gaps) <= 8.0 + SLACK
    assert "InsufficientCapacity" in lines[-1]["detail"]["error"]
    pools = [{"cluster": "lab", "pool": "workers", "size": 5}]
    [row] = capacity_report(store, pools, cluster="lab")
    assert (row["pool"], row["machines"], row["size"]) == ("workers", 4, 5)
    [missing] = row["missing"]
    assert missing["replacement"] == wf.replacement_name and missing["attempts"] == len(lines)
    assert "4 of 5 machines" in capacity_lines([row])[0]
    assert api.node(OLD) is None  # fenced, tainted and deleted before the replacement exists

    # The cloud recovers: within one capped wait the replacement is made, then it joins.
    driver.ex_set_create_refusal(None)
    recovered_at = clock.now()

    def created() -> bool:
        return any(c["name"] == wf.replacement_name for c in driver.ex_created_log())

    await advance_until(created, 30.0)
    assert clock.now() - recovered_at <= 8.0 + SLACK
    api.add_node(wf.replacement_name, labels={"healer.io/pool": "workers"}, ready=True)
    await advance_until(lambda: bool(finished), 30.0)
    assert finished[-1].state == "succeeded", finished[-1].error
    assert capacity_report(store, pools, cluster="lab") == []


# -- the planner's cooldown and drift repair ----------------------------------------------


def _failed(store: Store, wf_id: str, node: str, *, short: bool, at: float) -> None:
    from tests.test_scheduler import workflow

    store.create_workflow(workflow(wf_id, node, at=at))
    wf = store.workflow(wf_id)
    assert wf is not None
    store.update_workflow(
        wf.with_(state=FAILED, error="boom", finished_at=at, updated_at=at),
        journal=("create_machine", "failed", {"error": "boom", POOL_SHORT: short}),
    )


async def test_the_cooldown_does_not_hold_back_a_node_whose_failure_left_the_pool_short(
    tmp_path: Path,
) -> None:
    from tests.test_planner import Rig

    rig = Rig(tmp_path)
    tasks = [asyncio.create_task(rig.tracker.run())]
    try:
        await rig.cluster()
        _failed(rig.store, "wfshort", "w-1", short=True, at=rig.clock.now())
        _failed(rig.store, "wflong", "w-2", short=False, at=rig.clock.now())
        assert rig.store.left_pool_short("wfshort") and not rig.store.left_pool_short("wflong")
        await rig.fail("w-1", "w-2")
        await rig.clock.advance(6.0)  # past the 5 s unhealthy timeout
        # w-1 is tried again once the retry cap (0.2 s in this config) has passed; w-2 waits
        # the hour for a human.
        assert [wf.node for wf in rig.started] == ["w-1"]
        reasons = dict(rig.refusals())
        assert reasons.get("w-2") == "RemediationFailedRecently"
    finally:
        for t in tasks:
            t.cancel()
        rig.store.close()


async def test_drift_repair_does_not_skip_a_pool_left_short(tmp_path: Path) -> None:
    from tests.test_scheduler import World as SchedulerWorld
    from tests.test_scheduler import make_config

    world = SchedulerWorld(tmp_path / "w", make_config())
    try:
        created = await world.build_pools()
        gone = next(m for m in created if m.tags["healer.io/pool"] == "workers")
        world.driver.destroy_node(world.driver.ex_get_node(gone.id))
        _failed(world.store, "wf1", gone.name, short=True, at=world.clock.now())
        repaired = await world.jobs.pools.repair_drift("lab")
        assert [m.tags["healer.io/pool"] for m in repaired] == ["workers"]
        assert world.events("drift.skipped") == []
    finally:
        await world.close()


async def test_a_permanent_create_error_after_the_fence_is_marked_pool_short(world: World) -> None:
    await _dead(world)
    cfg = lab_like_config(
        remediation={
            "drainTimeout": "1s",
            "retry": {"attempts": 3, "initialDelay": 0.05, "maxDelay": 0.1},
        },
        pools=[
            {"name": "control-plane", "role": "control-plane", "size": 3},
            {"name": "workers", "size": 5, "machine": {"image": "withdrawn-image"}},
        ],
    )
    final = await run_to_end(world, cfg, world.workflow())
    assert final.state == "failed" and final.step == "create_machine"
    assert "a machine short" in (final.error or "")
    assert world.store.left_pool_short(final.id)
    assert world.api.node(OLD) is None


async def test_a_failure_before_the_fence_is_not_marked_pool_short(world: World) -> None:
    _driver(world).ex_set_outage(time.time() + 3600)
    try:
        final = await run_to_end(world, config(), world.workflow())
    finally:
        _driver(world).ex_set_outage(None)
    assert final.state == "failed" and final.step == "fence"
    assert not world.store.left_pool_short(final.id)


def test_healer_status_shows_a_pool_short_with_its_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from healer.cli.main import main
    from tests.test_scheduler import workflow

    store = Store.open(tmp_path)
    plan = order.choose_plan(
        strategy="replace", role="worker", node_ready=False, can_preflight=True
    )
    wf = workflow("wfshort01", "lab-workers-old", at=100.0)
    store.create_workflow(wf)
    store.journal(wf.id, "plan", "decided", 100.0, plan.to_json())
    for step in ("cordon", "drain", "fence", "release", "delete_node", "destroy_machine"):
        store.journal(wf.id, step, "done", 101.0, {})
    for attempt in (1, 2, 3):
        store.journal(
            wf.id, "create_machine", "retrying", 110.0 + attempt, {"error": f"503 #{attempt}"}
        )
    other = workflow("wfwhole01", "lab-workers-two", at=100.0)  # just started: not short
    store.create_workflow(other)
    store.close()

    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "pool lab/workers: 1 machine(s) short (SHORT" in text
    assert "replacement lab-workers-wfshort01 for lab-workers-old being retried" in text
    assert "3 failed attempts" in text and "last error: 503 #3" in text

    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["capacity"]
    assert (row["pool"], row["short"]) == ("workers", 1)
    assert row["missing"][0]["attempts"] == 3 and row["missing"][0]["workflow"] == "wfshort01"
