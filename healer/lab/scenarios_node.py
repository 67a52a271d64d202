"""The node failures every lab run starts with: a worker that crashes, hangs, reboots (and comes
back), never comes back from an upgrade, crashes during a provider outage, or a partition that
cuts off most of a pool (healer must refuse to act on it)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import structlog

from healer.lab.report import refusals, remediations
from healer.lab.scenario_kit import SETTLE_TIMEOUT, TARGET_POOL, Context, Scenario, replaced, until

log = structlog.get_logger("healer.lab")

PARTITION_FRACTION = 0.6
# The cloud API stays down this long past the crash's detection: several retries with backoff
# (0.5 s, 1 s, 2 s, ... in config/lab.yaml) before it is back.
OUTAGE_SECONDS = 4.0


async def _single_node_replaced(
    ctx: Context,
    inject: Callable[[str], Any],
    failure: str,
    expected_detection: float,
    *,
    slack: float = 0.0,
) -> dict[str, Any]:
    target = ctx.harness.pool_nodes(TARGET_POOL)[0]
    injected_at = time.time()
    log.info("lab.injected", node=target, failure=failure)
    result = inject(target)
    if asyncio.iscoroutine(result):
        await result
    await until(
        lambda: replaced(ctx, target),
        timeout=SETTLE_TIMEOUT + expected_detection,  # a real cluster's grace may be long
        what=f"{target} replaced",
    )
    rems = [
        r for r in remediations(ctx.store, ctx.cluster.name, injected_at) if r["node"] == target
    ]
    ready = await ctx.harness.ready_nodes()
    for r in rems:
        r["failure_injected_at"] = injected_at
        r["expected_start_at"] = injected_at + expected_detection
        # From the unhealthy verdict to the remediation: never negative. How the start compares
        # with the estimate is signed (the lease the verdict counts from was renewed up to a
        # renewal interval before the failure, so it may come a little early).
        detected = r["detected_at"] if r["detected_at"] is not None else r["expected_start_at"]
        r["start_delay_s"] = round(max(0.0, r["started_at"] - detected), 3)
        r["start_vs_estimate_s"] = round(r["started_at"] - r["expected_start_at"], 3)
        r["replacement_ready"] = r["replacement"] in ready
    old = ctx.harness.machine(target)
    expectations = {
        "remediated_once": len(rems) == 1,
        "succeeded": bool(rems) and rems[-1]["result"] == "succeeded",
        "replacement_ready": bool(rems) and rems[-1]["replacement_ready"],
        "old_machine_gone": old is None,
        # Within 1 s of the estimate, plus however late the cluster's node controller may
        # notice (its period: the lab's is short, a real cluster's seconds).
        "started_within_1s_of_threshold": bool(rems)
        and -1.0 <= rems[0]["start_vs_estimate_s"] <= 1.0 + slack,
    }
    return {
        "injected": [{"node": target, "failure": failure, "at": injected_at}],
        "remediations": rems,
        "expectations": expectations,
        "since": injected_at,
    }


async def scenario_crash(ctx: Context) -> dict[str, Any]:
    t = ctx.thresholds
    return await _single_node_replaced(
        ctx,
        ctx.harness.crash,
        "crash",
        t["lease_grace_s"] + t["ready_unknown_timeout_s"],
        slack=t["detection_slack_s"],
    )


async def scenario_hang(ctx: Context) -> dict[str, Any]:
    t = ctx.thresholds
    return await _single_node_replaced(
        ctx,
        ctx.harness.hang,
        "hang",
        t["lease_grace_s"] + t["ready_unknown_timeout_s"],
        slack=t["detection_slack_s"],
    )


async def scenario_bad_upgrade(ctx: Context) -> dict[str, Any]:
    return await _single_node_replaced(
        ctx, ctx.harness.bad_upgrade, "bad-upgrade", ctx.thresholds["reboot_timeout_s"]
    )


async def scenario_provider_outage(ctx: Context) -> dict[str, Any]:
    t = ctx.thresholds
    ctx.harness.provider_outage(OUTAGE_SECONDS + t["lease_grace_s"] + t["ready_unknown_timeout_s"])
    out = await _single_node_replaced(
        ctx,
        ctx.harness.crash,
        "crash during a provider outage",
        t["lease_grace_s"] + t["ready_unknown_timeout_s"],
        slack=t["detection_slack_s"],
    )
    out["provider_outage_s"] = OUTAGE_SECONDS
    return out


async def scenario_reboot(ctx: Context) -> dict[str, Any]:
    target = ctx.harness.pool_nodes(TARGET_POOL)[0]
    injected_at = time.time()
    downtime = ctx.harness.timings.reboot_downtime
    log.info("lab.injected", node=target, failure="reboot", downtime=downtime)
    await ctx.harness.reboot(target, downtime=downtime, upgrade=True)
    # Watch past the reboot timeout: a planned reboot that comes back is never remediated.
    horizon = ctx.thresholds["reboot_timeout_s"] + 3.0
    await asyncio.sleep(horizon)
    back = target in await ctx.harness.ready_nodes()
    rems = remediations(ctx.store, ctx.cluster.name, injected_at)
    return {
        "injected": [
            {"node": target, "failure": "reboot", "at": injected_at, "downtime_s": downtime}
        ],
        "remediations": rems,
        "expectations": {"no_remediation": not rems, "node_back_ready": back},
        "since": injected_at,
    }


async def scenario_partition(ctx: Context) -> dict[str, Any]:
    pool = ctx.harness.pool_nodes(TARGET_POOL)
    cut = pool[: math.ceil(len(pool) * PARTITION_FRACTION)]
    injected_at = time.time()
    log.info("lab.injected", failure="partition", nodes=",".join(cut))
    ctx.harness.partition(cut)
    t = ctx.thresholds
    horizon = t["lease_grace_s"] + t["detection_slack_s"] + t["ready_unknown_timeout_s"] + 4.0
    await asyncio.sleep(horizon)
    refused = refusals(ctx.store, ctx.cluster.name, injected_at)
    log.info("lab.healing_partition", nodes=",".join(cut))
    ctx.harness.heal(cut)

    async def all_back() -> bool:
        return set(cut) <= await ctx.harness.ready_nodes()

    back = await until(all_back, timeout=30.0, what="partitioned nodes back")
    rems = remediations(ctx.store, ctx.cluster.name, injected_at)
    return {
        "injected": [{"node": n, "failure": "partition", "at": injected_at} for n in cut],
        "partitioned_fraction": len(cut) / len(pool),
        "remediations": rems,
        "refusals": refused,
        "expectations": {
            "no_remediation": not rems,
            "refusal_recorded": any(r["reason"] == "TooManyUnhealthyInPool" for r in refused),
            "nodes_back_after_heal": back,
        },
        "since": injected_at,
    }


SCENARIOS_NODE: dict[str, Scenario] = {
    "crash": scenario_crash,
    "hang": scenario_hang,
    "reboot": scenario_reboot,
    "bad-upgrade": scenario_bad_upgrade,
    "partition": scenario_partition,
    "provider-outage": scenario_provider_outage,
}
