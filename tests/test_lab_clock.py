"""Wall-clock steps in a running lab (healer/clock.py): a step of +1 h or -1 h fires no pending
threshold and lifts no guard, in the running daemon and across a restart.

Only the daemon's wall clock is stepped (``RealClock.step``, or a ``RealClock.resume`` given a
stepped wall clock): the lab's API server, kubelets and cloud keep the true time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.clock import RESUMED_SAME_BOOT, RealClock
from healer.cloud.registry import load_provider
from healer.config import parse_config
from healer.lab.harness import LabHarness, LabTimings
from healer.model import Health, NodeKey, Role
from healer.planner.guards import HOURLY_BUDGET_EXHAUSTED
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import Store
from tests.helpers import fast_lab_config
from tests.plugins.kube import wait_for
from tests.test_lab_scenarios import lab_config, ready_timeouts, run_scenario, seconds

pytestmark = pytest.mark.slow

HOUR = 3600.0
TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
TUNING = Tuning(recheck_interval=0.3, join_poll_interval=0.2, watch_timeout=30, status_interval=0.3)
THRESHOLD = 1.0  # fast_lab_config: Ready=Unknown for 1 s
WATCH = 4.0  # past lease grace + threshold + rechecks


def test_clock_jump_scenario(tmp_path: Path) -> None:
    # Ready timeouts of 2 s (the lab's are 5 s): each phase waits on one, judged by the report's.
    config = lab_config(tmp_path, health=ready_timeouts("2s"))
    report, output = run_scenario("clock-jump", tmp_path, config=config)
    assert report["ok"], output[-6000:]
    assert all(report["expectations"].values()), report["expectations"]
    assert [s["seconds"] for s in report["clock_steps"]] == [HOUR, -HOUR, HOUR, -HOUR, -HOUR]
    threshold = report["thresholds"]["ready_unknown_timeout_s"]
    for phase in ("plus", "minus"):
        p = report["phases"][phase]
        # Remediated when its threshold ran out in real time, not when the clock stepped.
        assert p["started_after_pending_s"] >= threshold - 0.25
        assert seconds(p["remediation_started_at"]) - seconds(p["stepped_at"]) > 1.0
    assert report["phases"]["healthy"]["remediations"] == 0
    assert abs(report["timeline_elapsed_s"] - report["real_elapsed_s"]) < 1.0
    assert "clock.stepped" in output  # the daemon noticed and said so


@dataclass
class Lab:
    harness: LabHarness
    state: Path
    config: Any
    daemon: Daemon
    task: asyncio.Task[None]
    store: Store

    async def start(self, clock: RealClock | None = None) -> None:
        self.daemon = Daemon(self.config, state_dir=self.state, tuning=TUNING, clock=clock)
        self.task = asyncio.create_task(self.daemon.run(), name="daemon")
        await wait_for(lambda: self.daemon.ready, timeout=30)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def workers(self) -> list[str]:
        return sorted(n for n in self.harness.pool_nodes("workers"))

    def health(self, node: str) -> Health | None:
        assert self.daemon.tracker is not None
        verdict = self.daemon.tracker.verdict(NodeKey("lab", node))
        return verdict.health if verdict is not None else None

    def started(self, node: str) -> list[Any]:
        return self.store.workflows(cluster="lab", node=node)

    def refused(self, node: str) -> list[str]:
        return [e.reason for e in self.store.audit_log(node=node, event="remediation.refused")]


@pytest_asyncio.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    state = tmp_path / "state"
    harness = LabHarness(
        state_dir=state,
        pool_roles={"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER},
        timings=TIMINGS,
        with_broker=False,
    )
    await harness.start()
    lab: Lab | None = None
    try:
        data = fast_lab_config(harness.kubeconfig)
        data["clusters"][0]["remediation"]["maxPerHour"] = 1  # a guard a step could lift
        config = parse_config(data)
        provider = load_provider("lab", cluster="lab", options={}, credentials={}, state_dir=state)
        await ensure_pools(config.clusters[0], provider, user_data=render_user_data)
        await provider.close()
        await harness.wait_ready(4)
        lab = Lab(harness, state, config, None, None, Store.open(state))  # type: ignore[arg-type]
        await lab.start()
        await wait_for(
            lambda: all(lab.health(n) is Health.HEALTHY for n in lab.workers()), timeout=30
        )
        yield lab
    finally:
        if lab is not None:
            await lab.stop()
            lab.store.close()
        await harness.stop()


async def test_a_plus_one_hour_step_in_a_running_lab_is_followed_by_no_remediation(
    lab: Lab,
) -> None:
    """Must show 8: a healthy lab, a crashed node pending its threshold, and the hourly budget
    used up; the daemon's wall clock steps +1 h; no remediation follows, and a restart with the
    host's wall clock stepped +1 h more changes nothing either."""
    first, pending, spare = lab.workers()[:3]
    # Use up the hourly budget (maxPerHour 1) with a real remediation.
    lab.harness.crash(first)
    await wait_for(lambda: [w.state for w in lab.started(first)] == ["succeeded"], timeout=40)
    began = lab.daemon.clock.now()

    # A second crash: pending, then refused by the budget.
    lab.harness.crash(pending)
    await wait_for(lambda: lab.health(pending) is Health.PENDING, timeout=10)
    lab.daemon.clock.step(+HOUR)  # type: ignore[attr-defined]
    await asyncio.sleep(WATCH)
    assert lab.health(pending) is Health.UNHEALTHY
    assert lab.started(pending) == [], "the step lifted the hourly budget"
    assert HOURLY_BUDGET_EXHAUSTED in lab.refused(pending)
    assert lab.health(spare) is Health.HEALTHY and lab.started(spare) == []
    # The timeline did not follow the step; the stored start is still inside the hour.
    assert lab.daemon.clock.now() - began < WATCH + 2.0
    assert [w.node for w in lab.store.workflows(cluster="lab", since=began - HOUR)] == [first]

    # Restart: the host's wall clock is now an hour ahead (stepped while healer was stopped).
    before = lab.daemon.clock.now()
    await lab.stop()
    stepped = RealClock.resume(lab.state, wall=lambda: time.time() + HOUR)
    assert stepped.resumed == RESUMED_SAME_BOOT
    assert abs(stepped.now() - before) < 2.0  # continued, not moved by the step
    await lab.start(clock=stepped)
    await asyncio.sleep(WATCH)
    assert [w.node for w in lab.store.workflows(cluster="lab")] == [first]
    assert lab.started(pending) == [] and lab.started(spare) == []
    assert lab.health(spare) is Health.HEALTHY
