"""The circuit breakers in virtual time: a reset starts a fresh window (it holds through a
healthy life afterwards), the trip message names its reason once, and the bad-upgrade breaker
stops reboot grants and the replacement of reboot failures, and only those.

The planner, the tracker and the reboot arbiter run on one store and one virtual clock; the
runner is played by the test (a started workflow is finished when the test says so).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from healer.clock import VirtualClock
from healer.health.tracker import HealthTracker
from healer.model import (
    LABEL_CONTROL_PLANE,
    LABEL_POOL,
    EventKind,
    NodeEvent,
    Permit,
    RebootRequest,
)
from healer.planner import reboots
from healer.planner.planner import Planner
from healer.planner.reboots import RebootArbiter
from healer.store.sqlite import (
    BREAKER_BAD_UPGRADE,
    BREAKER_REMEDIATION,
    SUCCEEDED,
    Store,
    WorkflowRecord,
)
from healer.telemetry import metrics
from tests.helpers import lab_like_config

# Every test here runs on both state backends (tests/plugins/store.py).
pytestmark = pytest.mark.usefixtures("state_backend")

WORKERS = [f"w-{i}" for i in range(1, 6)]
CPS = [f"cp-{i}" for i in range(1, 4)]
REBOOT_TIMEOUT = 12.0  # lab_like_config's rebootTimeout


class Rig:
    def __init__(self, tmp_path: Path, **cluster: Any) -> None:
        self.clock = VirtualClock()
        self.store = Store.open(tmp_path)
        self.started: list[WorkflowRecord] = []
        self.config = lab_like_config(**cluster)
        box: list[Planner] = []

        async def on_change(obs, verdict, previous):  # type: ignore[no-untyped-def]
            await box[0].on_health_change(obs, verdict, previous)

        self.tracker = HealthTracker(
            config=self.config, store=self.store, clock=self.clock, on_change=on_change
        )

        async def start(wf: WorkflowRecord) -> None:
            self.started.append(wf)

        self.planner = Planner(
            config=self.config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            start=start,
        )
        box.append(self.planner)
        self.permits: list[tuple[str, Permit]] = []

        async def publish(cluster: str, node: str, permit: Permit) -> None:
            self.permits.append((node, permit))

        self.arbiter = RebootArbiter(
            config=self.config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            publish=publish,
            frozen=self.planner.frozen_reason,
        )

    async def event(self, node: str, kind: EventKind, source: str = "kube", **kw: Any) -> None:
        event = NodeEvent(
            cluster="lab", node=node, kind=kind, at=self.clock.now(), source=source, **kw
        )
        await self.tracker.handle(event)
        await self.arbiter.observe(event)

    async def cluster(self) -> None:
        """The cluster as the Kubernetes source lists it: one batch between the list markers
        (the planner decides nothing before the SYNCED marker)."""
        await self.tracker.handle(self._marker(EventKind.LIST_STARTED))
        for node in WORKERS + CPS:
            labels = {LABEL_POOL: "workers" if node.startswith("w") else "control-plane"}
            if node.startswith("cp"):
                labels[LABEL_CONTROL_PLANE] = ""
            await self.event(node, EventKind.NODE_ADDED, labels=labels)
            await self.event(node, EventKind.CONDITION, condition="Ready", status="True")
        await self.tracker.handle(self._marker(EventKind.SYNCED))

    def _marker(self, kind: EventKind) -> NodeEvent:
        return NodeEvent(cluster="lab", node="", kind=kind, at=self.clock.now(), source="kube")

    async def fail(self, *nodes: str) -> None:
        for node in nodes:
            await self.event(node, EventKind.CONDITION, condition="Ready", status="Unknown")

    async def finish_all(self) -> None:
        """Play the runner: every running workflow succeeds; its node is gone and its
        replacement joins Ready."""
        for wf in list(self.started):
            current = self.store.workflow(wf.id)
            if current is None or current.state != "running":
                continue
            now = self.clock.now()
            done = current.with_(state=SUCCEEDED, step="done", finished_at=now, updated_at=now)
            self.store.update_workflow(done)
            await self.event(wf.node, EventKind.NODE_DELETED)
            await self.event(
                wf.replacement_name, EventKind.NODE_ADDED, labels={LABEL_POOL: wf.pool or ""}
            )
            await self.event(
                wf.replacement_name, EventKind.CONDITION, condition="Ready", status="True"
            )
            await self.planner.on_workflow_finished(done)

    async def ask_reboot(self, node: str, request_id: str = "r1") -> reboots.Decision:
        return await self.arbiter.on_request(
            RebootRequest(cluster="lab", node=node, id=request_id, at=self.clock.now())
        )

    async def bad_reboot(self, node: str) -> None:
        """The agent got its grant and rebooted into a bad upgrade: it never comes back."""
        await self.event(node, EventKind.REBOOT_STARTED, source="mqtt")
        await self.clock.advance(0.1)
        await self.fail(node)

    def is_open(self, kind: str = BREAKER_REMEDIATION) -> bool:
        return "lab" in self.store.breakers(kind=kind)

    def refusals(self) -> list[tuple[str | None, str]]:
        return [(e.node, e.reason) for e in self.store.audit_log(event="remediation.refused")]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Any]:
    rigs: list[tuple[Rig, list[asyncio.Task[None]]]] = []

    def make(**cluster: Any) -> Rig:
        rig = Rig(tmp_path, **cluster)
        tasks = [asyncio.create_task(rig.tracker.run())]
        rigs.append((rig, tasks))
        return rig

    yield make
    for rig, tasks in rigs:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rig.store.close()


WIDE_LIMITS = {"maxUnhealthy": "100%", "maxInFlight": 10, "maxPerHour": 100}


async def test_a_reset_holds_through_30s_of_healthy_life(make_rig: Any) -> None:
    """Must show 6: `breaker reset`, then 30 s of healthy life, and the breaker stays closed.

    Before the fix the trip counted the same two `node.unhealthy` entries again as soon as the
    remediations the breaker had held back finished, and it re-opened seconds after the reset.
    """
    rig: Rig = make_rig(breaker={"maxNewUnhealthy": 2, "window": "10m"}, remediation=WIDE_LIMITS)
    await rig.cluster()
    await rig.fail("w-1", "w-2")
    await rig.clock.advance(6.0)
    assert rig.is_open()
    # w-1 and w-2 crossed their thresholds at the same instant and are decided together: the
    # two new unhealthy nodes trip the breaker before either is replaced.
    assert rig.started == []
    assert rig.refusals() == [("w-1", "BreakerOpen"), ("w-2", "BreakerOpen")]

    reset_at = rig.clock.now()
    assert rig.store.reset_breaker("lab", at=reset_at) == ["lab"]  # what the CLI does
    assert rig.store.breaker_reset_at("lab") == reset_at
    await rig.planner.recheck()  # the daemon's recheck job: what a CLI reset announces
    # 30 s of healthy life: the held-back remediations start, finish, their replacements join;
    # the rest of the cluster keeps reporting Ready.
    for second in range(30):
        await rig.clock.advance(1.0)
        await rig.finish_all()
        for node in WORKERS[2:] + CPS:
            await rig.event(node, EventKind.CONDITION, condition="Ready", status="True")
        assert not rig.is_open(), f"re-opened {second + 1}s after the reset"
    assert sorted(wf.node for wf in rig.started) == ["w-1", "w-2"]
    assert all(rig.store.workflow(wf.id).state == SUCCEEDED for wf in rig.started)  # type: ignore[union-attr]
    assert [e.event for e in rig.store.audit_log(event="breaker.opened")] == ["breaker.opened"]

    # A fresh window, not a disabled breaker: new trouble after the reset trips it again.
    await rig.fail("w-3", "w-4")
    await rig.clock.advance(6.0)
    assert rig.is_open()
    second_trip = rig.store.audit_log(event="breaker.opened")[-1]
    assert "2 nodes became unhealthy" in second_trip.message


async def test_failures_before_a_reset_do_not_count_after_it(make_rig: Any) -> None:
    rig: Rig = make_rig(breaker={"maxFailures": 2, "window": "10m"}, remediation=WIDE_LIMITS)
    await rig.cluster()
    await rig.fail("w-1", "w-2")
    await rig.clock.advance(6.0)
    for wf in rig.started:
        now = rig.clock.now()
        failed = wf.with_(state="failed", error="boom", finished_at=now, updated_at=now)
        rig.store.update_workflow(failed)
        await rig.planner.on_workflow_finished(failed)
    assert rig.is_open()
    assert rig.store.breakers()["lab"][0].startswith("TooManyFailures: 2 remediations failed")
    rig.store.reset_breaker("lab", at=rig.clock.now())
    await rig.clock.advance(1.0)
    await rig.fail("w-3")
    await rig.clock.advance(6.0)  # w-3 becomes unhealthy: the trip is evaluated again
    assert not rig.is_open()


async def test_the_trip_message_names_its_reason_once(make_rig: Any) -> None:
    rig: Rig = make_rig(breaker={"maxNewUnhealthy": 2, "window": "10m"}, remediation=WIDE_LIMITS)
    await rig.cluster()
    await rig.fail("w-1", "w-2")
    await rig.clock.advance(6.0)
    [entry] = rig.store.audit_log(event="breaker.opened")
    assert entry.reason == "TooManyNewUnhealthy"
    # `healer history` prints "reason: message"; the code must appear once in that line.
    line = f"{entry.reason}: {entry.message}"
    assert line.count("TooManyNewUnhealthy") == 1, line
    assert line.startswith("TooManyNewUnhealthy: 2 nodes became unhealthy in the last 600s")
    assert "until `healer breaker reset`" in line


async def test_bad_upgrade_breaker_stops_reboots_and_reboot_failure_replacements(
    make_rig: Any,
) -> None:
    rig: Rig = make_rig(
        breaker={"maxRebootFailures": 2, "rebootFailureWindow": "10m"}, remediation=WIDE_LIMITS
    )
    await rig.cluster()
    # First bad upgrade: granted, never back, replaced.
    assert (await rig.ask_reboot("w-1")).granted
    await rig.bad_reboot("w-1")
    await rig.clock.advance(REBOOT_TIMEOUT + 0.5)
    assert [(wf.node, wf.reason) for wf in rig.started] == [("w-1", "RebootTimeout")]
    assert not rig.is_open(BREAKER_BAD_UPGRADE)
    await rig.finish_all()

    # Second: the limit. The breaker opens; this one is not replaced.
    assert (await rig.ask_reboot("w-2")).granted
    await rig.bad_reboot("w-2")
    await rig.clock.advance(REBOOT_TIMEOUT + 0.5)
    assert rig.is_open(BREAKER_BAD_UPGRADE)
    assert not rig.is_open(BREAKER_REMEDIATION)  # the other breaker is not involved
    assert [wf.node for wf in rig.started] == ["w-1"]
    assert ("w-2", "BadUpgradeBreakerOpen") in rig.refusals()
    [opened] = rig.store.audit_log(event="breaker.bad_upgrade_opened")
    assert opened.reason == "TooManyRebootFailures"
    assert opened.message.startswith(
        "2 nodes did not come back from a planned reboot in the last 600s (limit 2)"
    )
    gauge = metrics.REGISTRY.get_sample_value("healer_bad_upgrade_breaker_open", {"cluster": "lab"})
    assert gauge == 1.0

    # No more reboots: the next agent is told why, and the refusal is on record.
    third = await rig.ask_reboot("w-3")
    assert (third.granted, third.reason) == (False, reboots.BAD_UPGRADE_BREAKER_OPEN)
    assert "bad-upgrade breaker of lab is open (TooManyRebootFailures" in third.message
    assert rig.permits[-1][1].reason == "BadUpgradeBreakerOpen"
    refused = rig.store.audit_log(event="reboot.refused")
    assert [(e.node, e.reason) for e in refused] == [("w-3", "BadUpgradeBreakerOpen")]

    # Other failures are still remediated: a crash is not a bad upgrade.
    await rig.fail("w-4")
    await rig.clock.advance(6.0)
    assert [wf.node for wf in rig.started] == ["w-1", "w-4"]
    await rig.clock.advance(120.0)
    assert [wf.node for wf in rig.started] == ["w-1", "w-4"]  # w-2 still waits for a human

    # The human resets it: w-2 is replaced, and the reset holds (the old failures do not count).
    assert rig.store.reset_breaker("lab", at=rig.clock.now(), kind=BREAKER_BAD_UPGRADE) == ["lab"]
    await rig.planner.recheck()  # the periodic `recheck` job sees the CLI's reset
    assert [wf.node for wf in rig.started] == ["w-1", "w-4", "w-2"]
    await rig.finish_all()
    await rig.clock.advance(30.0)
    assert not rig.is_open(BREAKER_BAD_UPGRADE)


async def test_reboot_failures_outside_the_window_do_not_trip(make_rig: Any) -> None:
    rig: Rig = make_rig(
        breaker={"maxRebootFailures": 2, "rebootFailureWindow": "60s"}, remediation=WIDE_LIMITS
    )
    await rig.cluster()
    await rig.bad_reboot("w-1")
    await rig.clock.advance(REBOOT_TIMEOUT + 0.5)
    await rig.finish_all()
    await rig.clock.advance(60.0)
    await rig.bad_reboot("w-2")
    await rig.clock.advance(REBOOT_TIMEOUT + 0.5)
    assert not rig.is_open(BREAKER_BAD_UPGRADE)
    assert [wf.node for wf in rig.started] == ["w-1", "w-2"]


def test_cli_reset_records_the_time_and_resets_both_breakers(tmp_path: Path) -> None:
    from healer.cli.main import main

    store = Store.open(tmp_path)
    try:
        store.open_breaker("lab", "TooManyNewUnhealthy: 10 nodes ...", 1.0)
        store.open_breaker(
            "lab", "TooManyRebootFailures: 2 nodes ...", 2.0, kind=BREAKER_BAD_UPGRADE
        )
        assert (
            main(["breaker", "reset", "--kind", "bad-upgrade", "--state-dir", str(tmp_path)]) == 0
        )
        assert store.breakers(kind=BREAKER_BAD_UPGRADE) == {} and "lab" in store.breakers()
        assert store.breaker_reset_at("lab", kind=BREAKER_BAD_UPGRADE) is not None
        assert store.breaker_reset_at("lab") is None
        assert main(["breaker", "reset", "--state-dir", str(tmp_path)]) == 0
        assert store.breakers() == {} and store.breaker_reset_at("lab") is not None
        resets = store.audit_log(event="breaker.reset")
        assert [e.evidence["breaker"] for e in resets] == ["bad-upgrade", "remediation"]
        assert all("a fresh window starts now" in e.message for e in resets)
    finally:
        store.close()


def test_status_shows_the_bad_upgrade_breaker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from healer.cli.main import main

    store = Store.open(tmp_path)
    try:
        why = "TooManyRebootFailures: 2 nodes did not come back from a planned reboot"
        store.open_breaker("lab", why, 2.0, kind=BREAKER_BAD_UPGRADE)
    finally:
        store.close()
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "breaker: closed" in out
    assert f"bad-upgrade breaker: lab OPEN ({why})" in out
    assert main(["status", "--json", "--state-dir", str(tmp_path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["breakers"] == {} and status["bad_upgrade_breakers"] == {"lab": why}
    assert main(["breaker", "show", "--state-dir", str(tmp_path)]) == 0
    assert "lab: bad-upgrade breaker OPEN since" in capsys.readouterr().out
