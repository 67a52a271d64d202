"""Operator commands against a running daemon in the lab: `healer status` (table and --json),
`history [NODE]`, `pause`/`resume`, `remediate NODE [--force]` and `breaker show|reset`.

The daemon runs in this process on the lab harness; every command is a real `healer` process
on the same state directory, as an operator would run it. The request/answer protocol behind
`remediate` is also tested on its own, in virtual time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.clock import VirtualClock
from healer.cloud.registry import load_provider
from healer.config import load_config
from healer.jobs.manual import MAX_AGE, RequestDesk, describe, request_remediation
from healer.lab.harness import LabHarness, LabTimings
from healer.model import Role
from healer.planner.guards import Refusal
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import (
    REQUEST_ANSWERED,
    REQUEST_CANCELLED,
    REQUEST_EXPIRED,
    REQUEST_PENDING,
    REQUEST_TAKEN,
    Store,
)
from tests.helpers import fast_lab_config
from tests.plugins.kube import wait_for

TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
POOLS = {"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER}
TUNING = Tuning(
    recheck_interval=0.3,
    join_poll_interval=0.2,
    watch_timeout=30,
    request_poll=0.1,
    status_interval=0.3,
)


def config_data(kubeconfig: Path) -> dict[str, Any]:
    return fast_lab_config(kubeconfig)


@dataclass
class Lab:
    harness: LabHarness
    daemon: Daemon
    store: Store
    config: Path

    @property
    def state(self) -> Path:
        return self.harness.state_dir

    async def healer(self, *args: str) -> tuple[int, str]:
        """Run `healer ARGS --state-dir STATE` as an operator would."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALER_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "healer.cli",
            *args,
            "--state-dir",
            str(self.state),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    def workflow_state(self, node: str) -> str | None:
        found = self.store.workflows(node=node)
        return found[-1].state if found else None

    def healthy_workers(self) -> list[str]:
        assert self.daemon.tracker is not None
        return sorted(
            obs.node
            for obs, verdict in self.daemon.tracker.nodes("lab")
            if obs.pool == "workers" and verdict.health == "healthy"
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    state = tmp_path_factory.mktemp("operator-lab")
    harness = LabHarness(state_dir=state, pool_roles=POOLS, timings=TIMINGS, with_broker=False)
    await harness.start()
    task: asyncio.Task[None] | None = None
    store: Store | None = None
    try:
        path = state / "healer.yaml"
        path.write_text(yaml.safe_dump(config_data(harness.kubeconfig)))
        config = load_config(path)
        provider = load_provider("lab", cluster="lab", options={}, credentials={}, state_dir=state)
        await ensure_pools(config.clusters[0], provider, user_data=render_user_data)
        await provider.close()
        await harness.wait_ready(4)
        daemon = Daemon(config, state_dir=state, tuning=TUNING, config_path=path)
        task = asyncio.create_task(daemon.run(), name="daemon")
        await wait_for(lambda: daemon.ready, timeout=30)
        store = Store.open(state)
        lab = Lab(harness=harness, daemon=daemon, store=store, config=path)
        await wait_for(lambda: len(lab.healthy_workers()) == 3, timeout=30)
        yield lab
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if store is not None:
            store.close()
        await harness.stop()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_status_table_and_json(lab: Lab) -> None:
    await wait_for(lambda: (lab.store.get_meta("daemon") or {}).get("ready"), timeout=10)
    rc, out = await lab.healer("status", "-c", str(lab.config))
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("daemon: running (pid ")
    assert "watching 1 cluster(s), 4 nodes, 0 workflows in flight" in lines[0]
    assert any(line.split()[:4] == ["lab", "workers", "3", "3"] for line in lines), out
    assert sum(" healthy " in f" {line} " for line in lines if line.startswith("lab ")) >= 4
    assert "workflows in flight: 0" in out and "breaker: closed" in out and "paused: no" in out

    rc, out = await lab.healer("status", "--json", "-c", str(lab.config))
    assert rc == 0, out
    status = json.loads(out)
    assert status["daemon"]["running"] is True and status["daemon"]["pid"] == os.getpid()
    assert len(status["nodes"]) == 4 and {n["health"] for n in status["nodes"]} == {"healthy"}
    pools = {p["pool"]: p for p in status["pools"]}
    assert pools["workers"]["size"] == 3 and pools["workers"]["health"] == {"healthy": 3}
    assert status["workflows"] == [] and status["breakers"] == {} and status["pauses"] == []


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_pause_refuses_then_resume_remediates_and_history_shows_it(lab: Lab) -> None:
    rc, out = await lab.healer("pause", "--cluster", "lab", "--pool", "workers")
    assert (rc, out.strip()) == (0, "paused pool:lab/workers")
    target = lab.healthy_workers()[0]
    lab.harness.crash(target)

    def refused() -> bool:
        return any(
            e.reason == "Paused"
            for e in lab.store.audit_log(node=target, event="remediation.refused")
        )

    await wait_for(refused, timeout=30)
    assert lab.workflow_state(target) is None
    rc, out = await lab.healer("status")
    assert "paused: pool:lab/workers" in out and f"{target}" in out and "unhealthy" in out

    rc, out = await lab.healer("history", target)
    assert rc == 0, out
    assert "node.unhealthy" in out and "remediation.refused" in out and "Paused" in out
    assert "evidence: triggered by" in out  # the evidence behind the verdict

    rc, out = await lab.healer("resume", "--cluster", "lab", "--pool", "workers")
    assert (rc, out.strip()) == (0, "resumed pool:lab/workers")
    await wait_for(lambda: lab.workflow_state(target) == "succeeded", timeout=40)

    rc, out = await lab.healer("history", target)
    assert "remediation.started" in out and "remediation.succeeded" in out
    assert "(succeeded)" in out and "wait_for_join" in out
    rc, out = await lab.healer("history", target, "--json")
    history = json.loads(out)
    [wf] = history["workflows"]
    assert wf["state"] == "succeeded" and [s["status"] for s in wf["steps"]][-1] == "done"
    rc, out = await lab.healer("history")
    assert "operator.paused" in out and "operator.resumed" in out


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_remediate_through_the_guards_force_and_breaker_reset(lab: Lab) -> None:
    await wait_for(lambda: len(lab.healthy_workers()) == 3, timeout=40)
    first, second = lab.healthy_workers()[:2]
    lab.store.open_breaker("lab", "TooManyFailures: 3 remediations failed (test)", time.time())

    rc, out = await lab.healer("breaker", "show")
    assert rc == 0 and "lab: OPEN since" in out and "TooManyFailures" in out
    # A healthy node: without a terminal the CLI needs --yes (tests/test_manual_remediation.py).
    rc, out = await lab.healer("remediate", first, "--cluster", "lab", "--yes")
    assert rc == 1, out
    assert "through the guards" in out and "refused (BreakerOpen)" in out
    rc, out = await lab.healer("status")
    assert "breaker: lab OPEN" in out

    # One cluster: --cluster optional. The CLI waits until the drain is done.
    rc, out = await lab.healer("remediate", first, "--force", "--yes")
    assert rc == 0, out
    assert "remediation started (forced past the guards): workflow" in out
    assert f"drained: {first} is drained; its replacement goes on" in out
    await wait_for(lambda: lab.workflow_state(first) == "succeeded", timeout=40)
    [forced] = lab.store.workflows(node=first)
    assert forced.forced and forced.reason == "Manual"  # it was healthy: replaced on request

    rc, out = await lab.healer("breaker", "reset")
    assert (rc, out.strip()) == (0, "breaker reset for: lab")
    rc, out = await lab.healer("breaker", "reset")
    assert out.strip() == "no breaker was open"

    # With the breaker closed, the same guards let a manual remediation through.
    rc, out = await lab.healer("remediate", second, "--cluster", "lab", "--json", "--yes")
    assert rc == 0, out
    answer = json.loads(out)
    assert answer["result"] == "started" and answer["forced"] is False
    assert answer["outcome"]["result"] in ("drained", "succeeded")
    await wait_for(lambda: lab.workflow_state(second) == "succeeded", timeout=40)

    # A name healer never saw is refused by the command, with the closest known names (exit 2),
    # before anything is asked of the daemon.
    rc, out = await lab.healer("remediate", "no-such-node", "--cluster", "lab")
    assert rc == 2 and "unknown node 'no-such-node' in cluster 'lab'" in out
    events = [e.event for e in lab.store.audit_log(event="operator.remediate")]
    assert len(events) == 3  # refused, forced, started: each request is on record


# -- the request protocol, without a lab ---------------------------------------------------


def test_remediate_unanswered_times_out_and_cancels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon holds the state directory but does not answer (stuck, or busy past
    --timeout): the request is cancelled. (With no daemon at all, remediate fails at once:
    tests/test_cli_names.py.)"""
    from healer.cli.main import main
    from healer.model import Health, NodeObservation, Verdict

    store = Store.open(tmp_path)
    unhealthy = Verdict(Health.UNHEALTHY, "ReadyFalseTimeout", "Ready=False for 6s", None)
    store.save_node(NodeObservation(cluster="lab", node="w-1", pool="w"), unhealthy, time.time())
    store.close()
    monkeypatch.setattr("healer.cli.remediate.is_claimed", lambda state_dir: True)
    started = time.monotonic()
    rc = main(
        ["remediate", "w-1", "--cluster", "lab", "--timeout", "0.3", "--state-dir", str(tmp_path)]
    )
    assert rc == 3 and time.monotonic() - started < 5
    store = Store.open(tmp_path)
    try:
        rows = store._db.execute("SELECT state FROM requests").fetchall()
        assert [r[0] for r in rows] == [REQUEST_CANCELLED]  # never acted on later
        assert store.pending_requests() == []
    finally:
        store.close()


class FakePlanner:
    def __init__(self) -> None:
        self.frozen: str | None = None
        self.calls: list[tuple[str, str, bool]] = []

    def frozen_reason(self, cluster: str) -> str | None:
        return self.frozen

    def owns(self, cluster: str) -> bool:
        return True  # one daemon (healer run --replicas is tests/test_replicas.py)

    async def remediate_now(
        self, cluster: str, node: str, *, force: bool, confirmed: bool = False
    ) -> Any:
        self.calls.append((cluster, node, force))
        return Refusal("MaxInFlight", f"{node}: 1 remediation already running", "pool:lab/w")


async def test_desk_expires_old_requests_and_refuses_on_a_frozen_cluster(tmp_path: Path) -> None:
    clock = VirtualClock(start=time.time())
    store = Store.open(tmp_path)
    planner = FakePlanner()
    desk = RequestDesk(store=store, planner=planner, clock=clock)  # type: ignore[arg-type]
    try:
        args = {"kind": "remediate", "cluster": "lab", "node": "w-1", "args": {"force": False}}
        store.add_request(request_id="old", at=clock.now() - MAX_AGE - 1, **args)
        store.add_request(request_id="new", at=clock.now(), **args)
        planner.frozen = "connection refused"
        await desk.serve_pending()
        old, new = store.request("old"), store.request("new")
        assert old is not None and old.state == REQUEST_EXPIRED
        assert new is not None and new.answer is not None
        assert new.answer["result"] == "refused" and new.answer["reason"] == "ApiUnreachable"
        assert planner.calls == []  # nothing decided on stale data

        planner.frozen = None
        store.add_request(request_id="forced", at=clock.now(), **(args | {"args": {"force": True}}))
        await desk.serve_pending()
        forced = store.request("forced")
        assert forced is not None and forced.answer is not None
        assert forced.answer["reason"] == "MaxInFlight" and planner.calls == [("lab", "w-1", True)]
        [entry] = [
            e for e in store.audit_log(event="operator.remediate") if e.reason == "OperatorForced"
        ]
        assert "refused (MaxInFlight)" in entry.message
    finally:
        store.close()


def test_client_returns_the_daemons_answer(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    now = [1000.0]

    def daemon_answers(seconds: float) -> None:  # stands in for the daemon's next poll
        now[0] += seconds
        for row in store.pending_requests():
            answer = {"result": "started", "workflow": "wf1", "replacement": "r1", "forced": False}
            store.move_request(row.id, to=REQUEST_ANSWERED, at=now[0], answer=answer)

    try:
        answer = request_remediation(
            store,
            cluster="lab",
            node="w-1",
            force=False,
            timeout=5,
            now=lambda: now[0],
            sleep=daemon_answers,
        )
        assert answer["workflow"] == "wf1"
        assert describe(answer) == "remediation started: workflow wf1, replacement r1"
    finally:
        store.close()


def test_client_gives_up_on_a_taken_request_that_is_never_answered(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    now = [1000.0]

    def daemon_takes_and_dies(seconds: float) -> None:
        now[0] += seconds
        for row in store.pending_requests():
            store.move_request(row.id, to=REQUEST_TAKEN, at=now[0], only_from=REQUEST_PENDING)

    try:
        answer = request_remediation(
            store,
            cluster="lab",
            node="w-1",
            force=False,
            timeout=5,
            now=lambda: now[0],
            sleep=daemon_takes_and_dies,
        )
        assert answer["result"] == "timeout" and "took request" in answer["message"]
        assert 1015.0 <= now[0] < 1016.0  # the timeout, then one extension of max(5, 10) s
    finally:
        store.close()
