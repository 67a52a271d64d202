"""Manual remediation respects the cluster.

`healer remediate` of a node that is not unhealthy needs a confirmation (a prompt on a terminal,
or --yes), and its drain never overrides a PodDisruptionBudget unless --force: a budget that
blocks past drainTimeout stops the workflow before anything destructive, and the CLI's exit code
and message say why. A node healer judged UNHEALTHY keeps the old semantics (the pods go with
the node after drainTimeout) as long as it is not Ready, with an audit line that says so.

Three levels: the pure decision after a drain timeout (table), the workflow runner against the
fake API server and the lab cloud, and the real `healer` CLI against a running lab daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.cloud.registry import load_provider
from healer.config import load_config
from healer.kube.client import KubeClient
from healer.lab.apiserver.server import FakeApiServer
from healer.lab.harness import LabHarness, LabTimings
from healer.model import Role
from healer.planner.planner import MANUAL
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import REQUEST_PENDING, RUNNING, Store, WorkflowRecord
from healer.workflow.drain import DrainReport, after_timeout
from healer.workflow.runner import STEPS
from tests.helpers import fast_lab_config, lab_cloud_with_worker
from tests.plugins.kube import wait_for
from tests.test_breaker import make_rig  # noqa: F401 (a fixture used below)
from tests.test_workflow import World, config, run_to_end

OLD = "lab-workers-old00001"
BLOCKED = {"shop/db-0": "Cannot evict pod as it would violate the pod's disruption budget."}


# -- the decision after a drain timeout (pure) ------------------------------------------------


def report(*, node_ready: bool, blocked: bool = True, waiting: bool = False) -> DrainReport:
    return DrainReport(
        blocked=dict(BLOCKED) if blocked else {},
        waiting=["shop/web-1"] if waiting else [],
        timed_out=True,
        node_ready=node_ready,
    )


@pytest.mark.parametrize(
    ("name", "drained", "unhealthy_at_start", "forced", "proceed", "reason", "says"),
    [
        (
            "a healthy node: the budget holds",
            report(node_ready=True),
            None,
            False,
            False,
            "DrainBlockedByPdb",
            "the node was not unhealthy when its replacement was asked for",
        ),
        (
            "a healthy node that went NotReady meanwhile: still the budget holds",
            report(node_ready=False),
            None,
            False,
            False,
            "DrainBlockedByPdb",
            "does not override a PodDisruptionBudget",
        ),
        (
            "a healthy node, forced: overridden, and said so",
            report(node_ready=True),
            None,
            True,
            True,
            "DrainTimeoutForced",
            "an operator forced this remediation",
        ),
        (
            "an unhealthy node that is not Ready: its pods cannot run there anyway",
            report(node_ready=False),
            "ReadyUnknownTimeout",
            False,
            True,
            "DrainTimeout",
            "healer judged the node unhealthy (ReadyUnknownTimeout) and it is not Ready",
        ),
        (
            "an unhealthy node that is Ready again: its pods may be serving, the budget holds",
            report(node_ready=True),
            "KernelDeadlockTimeout",
            False,
            False,
            "DrainBlockedByPdb",
            "because the node is Ready",
        ),
        (
            "an unhealthy Ready node with pods only terminating: not waited for, as before",
            report(node_ready=True, blocked=False, waiting=True),
            "KernelDeadlockTimeout",
            False,
            True,
            "DrainTimeout",
            "no PodDisruptionBudget holds these pods, whose grace period is cut short",
        ),
        (
            "a Ready node with pods still terminating: their grace period is kept",
            report(node_ready=True, blocked=False, waiting=True),
            None,
            False,
            False,
            "DrainIncomplete",
            "shop/web-1 (still terminating)",
        ),
    ],
)
def test_after_a_drain_timeout(
    name: str,
    drained: DrainReport,
    unhealthy_at_start: str | None,
    forced: bool,
    proceed: bool,
    reason: str,
    says: str,
) -> None:
    decision = after_timeout(
        drained, node="w-1", timeout=5.0, unhealthy_at_start=unhealthy_at_start, forced=forced
    )
    assert (decision.proceed, decision.reason) == (proceed, reason), name
    assert says in decision.message, decision.message
    assert "the node is already unhealthy" not in decision.message  # the old, false claim
    if proceed:
        assert decision.error is None
    else:
        assert decision.error is not None and type(decision.error).__name__ == reason
        assert "Nothing was deleted; w-1 stays cordoned" in decision.message
        assert "shop/db-0" in decision.message or "shop/web-1" in decision.message


# -- the workflow against the fake API server ----------------------------------------------------


@pytest.fixture
async def world(fake_api: FakeApiServer, kube: KubeClient, tmp_path: Path) -> AsyncIterator[World]:
    provider = await lab_cloud_with_worker(tmp_path, OLD)
    fake_api.add_node(OLD, labels={"healer.io/pool": "workers"}, ready=True)
    # A StatefulSet pod whose budget allows 0 disruptions: no eviction may take it.
    fake_api.add_pod("shop", "db-0", OLD, labels={"app": "db"}, owner_kind="StatefulSet")
    fake_api.add_pdb("shop", "db", {"app": "db"}, min_available=1)
    store = Store.open(tmp_path)
    w = World(fake_api, kube, provider, store)
    helper = asyncio.create_task(w.kubelet_for_replacements())
    yield w
    helper.cancel()
    await provider.close()
    store.close()


def workflow(world: World, *, reason: str, forced: bool = False) -> WorkflowRecord:
    now = time.time()
    wf = WorkflowRecord(
        id="wf0123456789",
        cluster="lab",
        pool="workers",
        node=OLD,
        role=Role.WORKER,
        state=RUNNING,
        step=STEPS[0],
        reason=reason,
        evidence={},
        replacement_name="lab-workers-wf012345",
        started_at=now,
        updated_at=now,
        forced=forced,
    )
    world.store.create_workflow(wf)
    return wf


def pod_untouched(api: FakeApiServer) -> bool:
    pod = api.pod("shop", "db-0")
    return pod is not None and "deletionTimestamp" not in pod["metadata"]


async def test_a_ready_node_with_a_blocking_budget_is_not_replaced(world: World) -> None:
    final = await run_to_end(world, config(), workflow(world, reason=MANUAL))

    assert final.state == "failed" and final.step == "drain"
    assert "DrainBlockedByPdb" not in (final.error or "")  # the class is the reason, not text
    assert "shop/db-0 (blocked:" in (final.error or "")
    assert "stopped before anything destructive" in (final.error or "")
    assert pod_untouched(world.api)
    node = world.api.node(OLD)
    assert node is not None and node["spec"].get("unschedulable") is True  # left cordoned
    assert await world.provider.get_machine(OLD) is not None  # nothing destroyed
    assert world.api.node("lab-workers-wf012345") is None  # nothing created
    entries = {e.event: e for e in world.store.audit_log(node=OLD)}
    assert entries["remediation.drain_timed_out"].reason == "DrainBlockedByPdb"
    assert entries["remediation.drain_timed_out"].evidence["blocked"].keys() == {"shop/db-0"}
    assert entries["remediation.failed"].reason == "DrainBlockedByPdb"
    assert not any("already unhealthy" in e.message for e in world.store.audit_log(node=OLD))
    steps = [(s["step"], s["status"]) for s in world.store.steps(final.id)]
    assert ("drain", "stopped") in steps and ("drain", "failed") in steps
    assert not any(step in ("delete_node", "destroy_machine") for step, _ in steps)


async def test_forced_overrides_the_budget_and_says_so(world: World) -> None:
    final = await run_to_end(world, config(), workflow(world, reason=MANUAL, forced=True))

    assert final.state == "succeeded", final.error
    [timed_out] = world.store.audit_log(node=OLD, event="remediation.drain_timed_out")
    assert timed_out.reason == "DrainTimeoutForced"
    assert "an operator forced this remediation" in timed_out.message
    assert world.api.node(OLD) is None


async def test_an_unhealthy_node_that_is_not_ready_keeps_the_old_semantics(world: World) -> None:
    await world.kube.set_node_ready(
        OLD, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
    )
    final = await run_to_end(world, config(), workflow(world, reason="ReadyUnknownTimeout"))

    assert final.state == "succeeded", final.error
    [timed_out] = world.store.audit_log(node=OLD, event="remediation.drain_timed_out")
    assert timed_out.reason == "DrainTimeout"
    assert (
        "continuing: healer judged the node unhealthy (ReadyUnknownTimeout) and it is not Ready"
        in timed_out.message
    )


async def test_an_unhealthy_node_that_is_ready_again_keeps_its_budget(world: World) -> None:
    wf = workflow(world, reason="ReadyUnknownTimeout")  # the node is Ready (the fixture's)
    final = await run_to_end(world, config(), wf)
    assert final.state == "failed" and final.step == "drain"
    assert pod_untouched(world.api)
    assert "because the node is Ready" in (final.error or "")


# -- confirmation, in the CLI ------------------------------------------------------------------


def _store_with_a_healthy_node(tmp_path: Path) -> None:
    from healer.model import Health, NodeObservation, Verdict

    store = Store.open(tmp_path)
    try:
        store.save_node(
            NodeObservation(cluster="lab", node="w-1", pool="workers"),
            Verdict(Health.HEALTHY, "Healthy", "no unhealthy condition present", None),
            time.time(),
        )
    finally:
        store.close()


def _requests(tmp_path: Path) -> list[dict[str, Any]]:
    import json
    import sqlite3

    with sqlite3.connect(tmp_path / "healer.sqlite") as db:
        return [json.loads(r[0]) for r in db.execute("SELECT args FROM requests")]


def test_a_healthy_node_without_a_terminal_or_yes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from healer.cli.main import main
    from healer.cli.remediate import EXIT_NOT_CONFIRMED

    _store_with_a_healthy_node(tmp_path)
    monkeypatch.setattr("healer.cli.remediate.is_claimed", lambda state_dir: True)  # a daemon
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    rc = main(["remediate", "w-1", "--cluster", "lab", "--state-dir", str(tmp_path)])
    assert rc == EXIT_NOT_CONFIRMED == 5
    err = capsys.readouterr().err
    assert "not remediating lab/w-1: it is healthy (Healthy), not unhealthy" in err
    assert "no terminal to ask on: pass --yes" in err
    assert _requests(tmp_path) == []  # nothing was asked of the daemon


@pytest.mark.parametrize(("typed", "asked"), [("n", False), ("y", True)])
def test_a_healthy_node_asks_on_a_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    typed: str,
    asked: bool,
) -> None:
    from healer.cli.main import main
    from healer.cli.remediate import EXIT_NO_ANSWER, EXIT_NOT_CONFIRMED

    _store_with_a_healthy_node(tmp_path)
    # As if a daemon held the state directory (without one, remediate stops before asking).
    monkeypatch.setattr("healer.cli.remediate.is_claimed", lambda state_dir: True)
    prompts: list[str] = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda q: prompts.append(q) or typed)
    args = ["remediate", "w-1", "--cluster", "lab", "--timeout", "0.3"]
    rc = main([*args, "--state-dir", str(tmp_path)])
    [prompt] = prompts
    assert "lab/w-1 is healthy (Healthy), not unhealthy. Replace it anyway" in prompt
    assert "its drain respects PodDisruptionBudgets" in prompt
    if asked:
        assert rc == EXIT_NO_ANSWER  # no daemon here: the request was filed and cancelled
        assert _requests(tmp_path) == [{"force": False, "confirmed": True}]
    else:
        assert rc == EXIT_NOT_CONFIRMED
        assert "not confirmed" in capsys.readouterr().err
        assert _requests(tmp_path) == []


# -- Must show 5: the real CLI against a running lab daemon ------------------------------------

TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
TUNING = Tuning(
    recheck_interval=0.3,
    join_poll_interval=0.2,
    watch_timeout=30,
    request_poll=0.1,
    status_interval=0.3,
)


async def _healer(state: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "healer.cli",
        *args,
        "--state-dir",
        str(state),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,  # no terminal: as from a script or CI
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_must_show_5_remediate_a_ready_node_whose_pdb_allows_no_disruption(
    tmp_path: Path,
) -> None:
    harness = LabHarness(
        state_dir=tmp_path,
        pool_roles={"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER},
        timings=TIMINGS,
        with_broker=False,
    )
    await harness.start()
    task: asyncio.Task[None] | None = None
    try:
        path = tmp_path / "healer.yaml"
        path.write_text(yaml.safe_dump(fast_lab_config(harness.kubeconfig)))
        cfg = load_config(path)
        provider = load_provider(
            "lab", cluster="lab", options={}, credentials={}, state_dir=tmp_path
        )
        await ensure_pools(cfg.clusters[0], provider, user_data=render_user_data)
        await provider.close()
        await harness.wait_ready(4)
        daemon = Daemon(cfg, state_dir=tmp_path, tuning=TUNING, config_path=path)
        task = asyncio.create_task(daemon.run(), name="daemon")
        await wait_for(lambda: daemon.ready, timeout=30)
        # The daemon's own store: a second Store.open in this process would probe the file
        # with another connection (healer.store.sqlite.examine_state) beside the daemon's.
        store = daemon.store
        assert store is not None
        target = harness.pool_nodes("workers")[0]
        await wait_for(
            lambda: any(
                n.observation.node == target and str(n.health) == "healthy"
                for n in store.nodes("lab")  # type: ignore[union-attr]
            ),
            timeout=30,
        )
        assert harness.api is not None
        harness.api.add_pod("shop", "db-0", target, labels={"app": "db"}, owner_kind="StatefulSet")
        harness.api.add_pdb("shop", "db", {"app": "db"}, min_available=1)
        machine = harness.machine(target)
        assert machine is not None

        # No terminal and no --yes: refused before the daemon is even asked.
        rc, out, err = await _healer(tmp_path, "remediate", target, "--cluster", "lab")
        assert rc == 5, (out, err)
        assert "replacing it needs a confirmation (no terminal to ask on: pass --yes)" in err
        assert store.pending_requests() == [] and store.workflows(node=target) == []

        # Confirmed: the daemon starts, the budget blocks the drain, and the workflow stops.
        rc, out, err = await _healer(tmp_path, "remediate", target, "--cluster", "lab", "--yes")
        assert rc == 4, (out, err)
        assert "its drain respects PodDisruptionBudgets" in out
        assert "stopped (DrainBlockedByPdb): step drain failed" in out
        assert "shop/db-0 (blocked:" in out and "disruption budget" in out
        assert "stopped before anything destructive" in out and "Nothing was deleted" in out
        pod = harness.api.pod("shop", "db-0")
        assert pod is not None and "deletionTimestamp" not in pod["metadata"]  # not deleted
        assert harness.api.node(target) is not None  # the Node is still there
        assert harness.machine(target) == machine  # the machine too
        [wf] = store.workflows(node=target)
        assert (wf.state, wf.step, wf.reason, wf.forced) == ("failed", "drain", MANUAL, False)
        reasons = [(e.event, e.reason) for e in store.audit_log(node=target)]
        assert ("remediation.drain_timed_out", "DrainBlockedByPdb") in reasons
        assert ("remediation.failed", "DrainBlockedByPdb") in reasons
        assert not any("already unhealthy" in e.message for e in store.audit_log(node=target))
        assert store.pending_requests() == [] and all(r["confirmed"] for r in _requests(tmp_path))
        assert REQUEST_PENDING not in {
            row[0] for row in store._db.execute("SELECT state FROM requests").fetchall()
        }
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await harness.stop()


# -- the daemon's side: the planner decides with its own, current verdict (virtual time) -------


async def test_the_planner_asks_for_confirmation_by_its_own_verdict(
    make_rig: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    from healer.model import EventKind
    from healer.planner.guards import Refusal
    from healer.planner.planner import CONFIRMATION_REQUIRED, NOT_SYNCED

    rig = make_rig(remediation={"maxInFlight": 5})
    await rig.tracker.handle(rig._marker(EventKind.LIST_STARTED))
    await rig.event("w-1", EventKind.NODE_ADDED, labels={"healer.io/pool": "workers"})
    await rig.event("w-1", EventKind.CONDITION, condition="Ready", status="True")
    before_sync = await rig.planner.remediate_now("lab", "w-1", force=False, confirmed=True)
    assert isinstance(before_sync, Refusal) and before_sync.reason == NOT_SYNCED
    await rig.tracker.handle(rig._marker(EventKind.SYNCED))
    for node in ("w-2", "w-3"):
        await rig.event(node, EventKind.NODE_ADDED, labels={"healer.io/pool": "workers"})
        await rig.event(node, EventKind.CONDITION, condition="Ready", status="True")

    refused = await rig.planner.remediate_now("lab", "w-1", force=True)
    assert isinstance(refused, Refusal) and refused.reason == CONFIRMATION_REQUIRED
    assert "lab/w-1 is healthy (Healthy), not unhealthy" in refused.message
    assert "with --force its drain overrides PodDisruptionBudgets" in refused.message
    assert rig.started == []

    started = await rig.planner.remediate_now("lab", "w-1", force=False, confirmed=True)
    assert isinstance(started, WorkflowRecord)
    assert (started.reason, started.forced) == (MANUAL, False)

    # An unhealthy node needs no confirmation; its workflow carries the verdict's reason.
    await rig.fail("w-2")
    await rig.clock.advance(6.0)
    await rig.finish_all()
    assert [wf.node for wf in rig.started] == ["w-1", "w-2"]
    assert rig.started[-1].reason == "ReadyUnknownTimeout"


@pytest.mark.parametrize(("tty", "typed"), [(False, ""), (True, "y")])
def test_the_daemons_verdict_wins_over_a_stale_database(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tty: bool,
    typed: str,
) -> None:
    """The database says unhealthy (a few seconds old); the daemon's verdict says healthy and
    answers ConfirmationRequired: the CLI asks then (or refuses without a terminal)."""
    import threading

    from healer.cli.main import main
    from healer.cli.remediate import EXIT_NOT_CONFIRMED
    from healer.model import Health, NodeObservation, Verdict
    from healer.store.sqlite import REQUEST_ANSWERED, REQUEST_TAKEN

    store = Store.open(tmp_path)
    store.save_node(
        NodeObservation(cluster="lab", node="w-1", pool="workers"),
        Verdict(Health.UNHEALTHY, "ReadyUnknownTimeout", "Ready=Unknown for 6s", None),
        time.time(),
    )
    stop = threading.Event()

    def desk() -> None:  # plays the daemon's RequestDesk
        own = Store.open(tmp_path)
        try:
            while not stop.is_set():
                for row in own.pending_requests():
                    own.move_request(row.id, to=REQUEST_TAKEN, at=time.time())
                    if row.args.get("confirmed"):
                        answer = {"result": "started", "workflow": "wf1", "replacement": "r1"}
                    else:
                        answer = {
                            "result": "refused",
                            "reason": "ConfirmationRequired",
                            "message": "lab/w-1 is healthy (Healthy), not unhealthy: ...",
                        }
                    own.move_request(row.id, to=REQUEST_ANSWERED, at=time.time(), answer=answer)
                stop.wait(0.05)
        finally:
            own.close()

    thread = threading.Thread(target=desk)
    thread.start()
    try:
        # The desk plays the daemon; a real one would also hold the state directory.
        monkeypatch.setattr("healer.cli.remediate.is_claimed", lambda state_dir: True)
        monkeypatch.setattr(sys.stdin, "isatty", lambda: tty)
        prompts: list[str] = []
        monkeypatch.setattr("builtins.input", lambda q: prompts.append(q) or typed)
        args = ["remediate", "w-1", "--cluster", "lab", "--no-wait", "--timeout", "5"]
        rc = main([*args, "--state-dir", str(tmp_path)])
    finally:
        stop.set()
        thread.join()
    asked = [json.loads(r[0]) for r in store._db.execute("SELECT args FROM requests ORDER BY at")]
    store.close()
    if tty:
        assert rc == 0
        assert prompts == [
            "lab/w-1 is not unhealthy by the daemon's current verdict. Replace it anyway (its "
            "drain respects PodDisruptionBudgets; its machine is destroyed)? [y/N] "
        ]
        assert asked == [{"force": False, "confirmed": False}, {"force": False, "confirmed": True}]
    else:
        assert rc == EXIT_NOT_CONFIRMED
        assert "it is not unhealthy by the daemon's current verdict" in capsys.readouterr().err
        assert asked == [{"force": False, "confirmed": False}]
