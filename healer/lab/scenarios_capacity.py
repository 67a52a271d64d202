"""Lab scenarios for "fence, then delete; keep capacity" (issue 8).

``create-fails``
    A worker crashes while the cloud refuses every create for longer than a workflow's normal
    retries. The old machine is fenced and gone, so the pool is a machine short: the workflow
    must keep retrying (with backoff capped at ``retry.maxDelay``) until the cloud recovers,
    ``healer status`` must show the shortfall meanwhile, and the pool must be whole again soon
    after the cloud recovers, with no human action.
``partitioned-node``
    A worker is cut off from the API while its machine keeps running a StatefulSet pod. healer
    must power the machine off before it deletes the Node (step times in the report), and the
    pod must never run in two places: the scenario plays the StatefulSet controller (it starts
    ``db-0`` elsewhere as soon as the old pod object is gone) and the machine (the old copy runs
    until the cloud says the machine is off).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import structlog

from healer.lab.report import remediations
from healer.lab.scenario_kit import SETTLE_TIMEOUT, TARGET_POOL, Context, Scenario, until
from healer.workflow.capacity import capacity_lines, capacity_report

log = structlog.get_logger("healer.lab")

POLL = 0.02  # the watcher must not miss the short window between taint and delete
STS_NAMESPACE = "shop"
STS_POD = "db-0"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


def _retry_span(ctx: Context) -> float:
    """The longest a workflow's normal (bounded) retries of one step can take."""
    retry = ctx.cluster.remediation.retry
    waits = [
        min(retry.initial_delay * 2.0**i + retry.initial_delay, retry.max_delay)
        for i in range(retry.attempts - 1)
    ]
    return sum(waits)


def _not_after(first: float | None, then: float | None) -> bool:
    """``first`` was seen no later than ``then`` (either unseen: nothing to contradict)."""
    return first is None or then is None or first <= then


def _step_times(rem: dict[str, Any] | None) -> dict[str, float]:
    """Each step's "done" time (the first, should a step be journalled twice)."""
    out: dict[str, float] = {}
    for s in (rem or {}).get("steps", []):
        if s["status"] == "done":
            out.setdefault(s["step"], s["at"])
    return out


async def _cli_status(ctx: Context) -> str:
    """`healer status` as an operator runs it, in its own process, on the daemon's state."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "healer.cli",
        "status",
        "--state-dir",
        str(ctx.harness.state_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


async def scenario_create_fails(ctx: Context) -> dict[str, Any]:
    h = ctx.harness
    pool = ctx.cluster.pool(TARGET_POOL)
    assert pool is not None
    t = ctx.thresholds
    retry = ctx.cluster.remediation.retry
    detection = t["lease_grace_s"] + t["ready_unknown_timeout_s"]
    # Refused well past what the bounded retries of one step could sit out.
    refusal_s = detection + 2 * _retry_span(ctx) + 10.0
    target = h.pool_nodes(TARGET_POOL)[0]
    injected_at = time.time()
    h.refuse_creates(refusal_s)
    recovers_at = injected_at + refusal_s
    log.info("lab.injected", node=target, failure="crash; cloud refuses creates", s=refusal_s)
    h.crash(target)

    pools = [
        {"cluster": ctx.cluster.name, "pool": p.name, "size": p.size} for p in ctx.cluster.pools
    ]
    seen: dict[str, Any] = {}

    async def retried_past_bound() -> bool:
        report = capacity_report(ctx.store, pools, cluster=ctx.cluster.name)
        row = next((r for r in report if r["pool"] == TARGET_POOL), None)
        if row is None or not row["missing"]:
            return False
        seen["report"] = report
        return int(row["missing"][0]["attempts"]) > retry.attempts

    # During the refusal: the workflow keeps retrying past its normal attempts, and status says so.
    shown = await until(
        retried_past_bound,
        timeout=max(1.0, recovers_at - time.time() - 1.0),
        what="create retried past its normal attempts",
    )
    during = {
        "at": time.time(),
        "cloud_refusing": time.time() < recovers_at,
        "report": seen.get("report", []),
        "lines": capacity_lines(seen.get("report", [])),
        "cli": await _cli_status(ctx),
    }
    log.info("lab.status_during_outage", lines=during["lines"])

    async def whole() -> bool:
        wfs = ctx.workflows_for(target)
        if not wfs or wfs[-1].state == "running":
            return False
        ready = await h.ready_nodes()
        return len([n for n in h.pool_nodes(TARGET_POOL) if n in ready]) >= pool.size

    await until(whole, timeout=refusal_s + SETTLE_TIMEOUT, what="pool whole again")
    whole_at = time.time()
    rems = [
        r for r in remediations(ctx.store, ctx.cluster.name, injected_at) if r["node"] == target
    ]
    rem = rems[-1] if rems else None
    steps = _step_times(rem)
    ready = await h.ready_nodes()
    machines = h.pool_nodes(TARGET_POOL)
    operator = [
        e.event
        for e in ctx.store.audit_log(cluster=ctx.cluster.name, since=injected_at)
        if e.event.startswith("operator.")
    ]
    row = next((r for r in during["report"] if r["pool"] == TARGET_POOL), None)
    missing = row["missing"][0] if row and row["missing"] else {}
    expectations = {
        "one_remediation": len(rems) == 1,
        "succeeded": rem is not None and rem["result"] == "succeeded",
        "status_showed_shortfall": bool(
            shown
            and during["cloud_refusing"]
            and row is not None
            and row["machines"] == pool.size - 1
            and missing.get("replacement") == (rem or {}).get("replacement")
            and "InsufficientCapacity" in str(missing.get("last_error"))
            and "SHORT" in during["cli"]
            and str((rem or {}).get("replacement")) in during["cli"]
        ),
        "retried_past_normal_attempts": int(missing.get("attempts", 0)) > retry.attempts,
        "fenced_before_node_deleted": steps.get("fence", 1e18) < steps.get("delete_node", 0.0),
        "pool_whole_again": len(machines) == pool.size and all(n in ready for n in machines),
        "whole_soon_after_recovery": whole_at - recovers_at
        <= retry.max_delay + t["node_startup_timeout_s"],
        "no_human_action": not operator,
    }
    return {
        "injected": [
            {"node": target, "failure": "crash", "at": injected_at},
            {"failure": "cloud refuses creates", "at": injected_at, "seconds": refusal_s},
        ],
        "remediations": rems,
        "status_during_outage": during,
        "cloud_recovered_at": recovers_at,
        "pool_whole_at": whole_at,
        "step_done_at": steps,
        "expectations": expectations,
        "since": injected_at,
    }


async def scenario_partitioned_node(ctx: Context) -> dict[str, Any]:
    h = ctx.harness
    api = h.api
    if api is None:
        raise RuntimeError(
            "partitioned-node plays pods on the lab's own API server; no --kubeconfig"
        )
    target = h.pool_nodes(TARGET_POOL)[0]
    api.add_pod(STS_NAMESPACE, STS_POD, target, labels={"app": "db"}, owner_kind="StatefulSet")
    api.add_pod(
        STS_NAMESPACE, "web-7d9f-abcde", target, labels={"app": "web"}, owner_kind="ReplicaSet"
    )
    injected_at = time.time()
    log.info("lab.injected", node=target, failure="partition; machine keeps running")
    h.partition([target])

    # What really runs, as opposed to what the API says: the old copy of db-0 runs as long as
    # its machine runs; a new copy starts when the StatefulSet controller sees the old pod
    # object gone and creates it on another Ready node.
    seen: dict[str, Any] = {
        "machine_off_at": None,
        "node_deleted_at": None,
        "taint_seen_at": None,
        "old_pod_gone_at": None,
        "new_copy_started_at": None,
        "new_copy_node": None,
        "copies_running_max": 1,
    }

    async def watch() -> None:
        while True:
            now = time.time()
            state = h.machine_state(target)
            if seen["machine_off_at"] is None and state != "running":
                seen["machine_off_at"] = now
            node = api.node(target)
            if node is None and seen["node_deleted_at"] is None:
                seen["node_deleted_at"] = now
            taints = ((node or {}).get("spec") or {}).get("taints") or []
            if seen["taint_seen_at"] is None and any(
                t.get("key") == OUT_OF_SERVICE for t in taints
            ):
                seen["taint_seen_at"] = now
            pod = api.pod(STS_NAMESPACE, STS_POD)
            if seen["new_copy_started_at"] is None and pod is None:
                seen["old_pod_gone_at"] = now
                ready = sorted((await h.ready_nodes() & set(h.pool_nodes(TARGET_POOL))) - {target})
                if ready:
                    api.add_pod(
                        STS_NAMESPACE,
                        STS_POD,
                        ready[0],
                        labels={"app": "db"},
                        owner_kind="StatefulSet",
                    )
                    seen["new_copy_started_at"] = now
                    seen["new_copy_node"] = ready[0]
            old_running = seen["machine_off_at"] is None
            new_running = seen["new_copy_started_at"] is not None
            seen["copies_running_max"] = max(
                seen["copies_running_max"], int(old_running) + int(new_running)
            )
            await asyncio.sleep(POLL)

    watcher = asyncio.create_task(watch(), name="lab-statefulset")
    try:

        async def replaced() -> bool:
            wfs = ctx.workflows_for(target)
            if not wfs or wfs[-1].state == "running":
                return False
            return wfs[-1].state == "failed" or (
                wfs[-1].replacement_name in await h.ready_nodes()
                and seen["new_copy_started_at"] is not None
            )

        await until(replaced, timeout=SETTLE_TIMEOUT, what=f"{target} replaced")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    rems = [
        r for r in remediations(ctx.store, ctx.cluster.name, injected_at) if r["node"] == target
    ]
    rem = rems[-1] if rems else None
    steps = _step_times(rem)
    fence, release, delete = (steps.get(s) for s in ("fence", "release", "delete_node"))
    journal = ctx.store.steps(rem["workflow"]) if rem is not None else []
    done = {s["step"]: s.get("detail") or {} for s in journal if s["status"] == "done"}
    fenced_machine = done.get("fence", {}).get("machine")
    off_when_destroyed = any(
        d["node_id"] == fenced_machine and d["state_before"] == "stopped"
        for d in h.cloud.destroy_log()
    )
    release_tainted = OUT_OF_SERVICE in str(done.get("release", {}).get("taint", ""))
    expectations = {
        "one_remediation": len(rems) == 1,
        "succeeded": rem is not None and rem["result"] == "succeeded",
        # The cloud's own record says the machine was off when it was destroyed, and the
        # journal orders fence < release < delete_node. The watcher's samples (every POLL)
        # may see the three changes in one sample on a busy machine: they must then not
        # contradict it (off no later than the Node's deletion and the taint).
        "machine_off_before_node_deleted": fence is not None
        and delete is not None
        and fence < delete
        and off_when_destroyed
        and _not_after(seen["machine_off_at"], seen["node_deleted_at"]),
        "out_of_service_after_fence": release is not None
        and fence is not None
        and fence < release
        and release_tainted
        and _not_after(seen["machine_off_at"], seen["taint_seen_at"]),
        "statefulset_pod_restarted": seen["new_copy_started_at"] is not None,
        "no_pod_ran_twice": seen["copies_running_max"] == 1
        and seen["new_copy_started_at"] is not None
        and seen["machine_off_at"] is not None
        and seen["new_copy_started_at"] >= seen["machine_off_at"],
    }
    return {
        "injected": [{"node": target, "failure": "partition (machine running)", "at": injected_at}],
        "remediations": rems,
        "step_done_at": steps,
        "observed": seen,
        "expectations": expectations,
        "since": injected_at,
    }


SCENARIOS_CAPACITY: dict[str, Scenario] = {
    "create-fails": scenario_create_fails,
    "partitioned-node": scenario_partitioned_node,
}
