"""Lab scenario ``clock-jump``: the daemon's wall clock steps by an hour, forwards and back, while
the cluster is healthy and while a node's threshold is pending; nothing may fire or be lifted
by the step (healer/clock.py: durations run on a monotonic timeline).

Only the running daemon's clock object is stepped (:meth:`healer.clock.RealClock.step`): the lab's
API server, kubelets and cloud keep the true time, as the rest of a cluster does when one host's
NTP steps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from healer.lab.report import refusals, remediations
from healer.lab.scenario_kit import SETTLE_TIMEOUT, TARGET_POOL, Context, replaced, until
from healer.model import Health, NodeKey

log = structlog.get_logger("healer.lab")

STEP = 3600.0
EARLY_TOLERANCE = 0.25  # a remediation this much before its threshold is early
LATE_TOLERANCE = 2.5  # recheck and scheduling slack after the threshold


class _Jumper:
    """Steps the running daemon's wall clock and keeps the record for the report."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.steps: list[dict[str, Any]] = []

    @property
    def clock(self) -> Any:
        daemon = self.ctx.daemon
        assert daemon is not None, "clock-jump needs the daemon running"
        return daemon.clock

    def step(self, seconds: float, why: str) -> None:
        self.clock.step(seconds)
        offset = self.clock.wall() - self.clock.now()
        self.steps.append(
            {"at": time.time(), "seconds": seconds, "wall_minus_timeline": round(offset, 3)}
            | {"why": why}
        )
        log.info("lab.clock_jump", seconds=seconds, wall_minus_timeline=round(offset, 1), why=why)


def _verdict(ctx: Context, node: str) -> Any:
    daemon = ctx.daemon
    if daemon is None or daemon.tracker is None:
        return None
    return daemon.tracker.verdict(NodeKey(ctx.cluster.name, node))


def _pending_since(ctx: Context, node: str) -> float | None:
    """When the node's Ready=Unknown began on the daemon's timeline, once it is PENDING."""
    verdict = _verdict(ctx, node)
    if verdict is None or verdict.health is not Health.PENDING:
        return None
    assert ctx.daemon is not None and ctx.daemon.tracker is not None
    obs = ctx.daemon.tracker.observation(NodeKey(ctx.cluster.name, node))
    cond = obs.conditions.get("Ready") if obs is not None else None
    return cond.since if cond is not None and cond.status == "Unknown" else None


async def _crash_then_step(
    ctx: Context, jumper: _Jumper, node: str, seconds: float, threshold: float
) -> dict[str, Any]:
    """Crash ``node``, step the clock while its threshold is pending, wait for its remediation."""
    injected_at = time.time()
    log.info("lab.injected", node=node, failure="crash")
    ctx.harness.crash(node)

    async def pending() -> bool:
        return _pending_since(ctx, node) is not None

    seen = await until(pending, timeout=20.0, what=f"{node} pending")
    since = _pending_since(ctx, node)
    jumper.step(seconds, f"{node} pending")
    stepped_at = jumper.clock.now()
    # The old wall-clock daemon judged the node at once; give it time to show that mistake.
    await asyncio.sleep(min(1.0, max(0.0, (since or stepped_at) + threshold - stepped_at - 0.5)))
    early = bool(ctx.workflows_for(node))
    await until(lambda: replaced(ctx, node), timeout=SETTLE_TIMEOUT, what=f"{node} replaced")
    wfs = ctx.workflows_for(node)
    started = wfs[0].started_at if wfs else None
    hour = jumper.clock.now() - STEP
    counted = any(w.node == node for w in ctx.store.workflows(cluster=ctx.cluster.name, since=hour))
    return {
        "node": node,
        "injected_at": injected_at,
        "pending_seen": seen,
        "pending_since": since,
        "stepped_at": stepped_at,
        "remediation_started_at": started,
        "started_after_pending_s": (
            round(started - since, 3) if started is not None and since is not None else None
        ),
        "remediated_right_after_step": early,
        "counted_in_hourly_budget_after_step": counted,
        "result": wfs[-1].state if wfs else None,
    }


def _on_time(phase: dict[str, Any], threshold: float) -> bool:
    delay = phase["started_after_pending_s"]
    return delay is not None and threshold - EARLY_TOLERANCE <= delay <= threshold + LATE_TOLERANCE


async def scenario_clock_jump(ctx: Context) -> dict[str, Any]:
    jumper = _Jumper(ctx)
    threshold = ctx.thresholds["ready_unknown_timeout_s"]
    began = time.time()
    timeline0, mono0 = jumper.clock.now(), time.monotonic()
    pool = ctx.harness.pool_nodes(TARGET_POOL)
    a, b = pool[0], pool[1]

    # 1. A healthy cluster: +1 h, then -1 h back; nothing may follow either step. Watched past
    # every threshold (the lab's: lease grace 3 s + Ready=Unknown 5 s).
    healthy_watch = ctx.thresholds["lease_grace_s"] + threshold
    jumper.step(+STEP, "healthy cluster")
    await asyncio.sleep(healthy_watch)
    jumper.step(-STEP, "healthy cluster, back")
    await asyncio.sleep(healthy_watch / 2)
    healthy_rems = remediations(ctx.store, ctx.cluster.name, began)
    healthy_refusals = refusals(ctx.store, ctx.cluster.name, began)
    all_healthy = all(
        (v := _verdict(ctx, n)) is not None and v.health is Health.HEALTHY for n in pool
    )

    # 2. +1 h while a crashed node's Ready=Unknown threshold is pending; then back.
    first = await _crash_then_step(ctx, jumper, a, +STEP, threshold)
    jumper.step(-STEP, "back to the true time")

    # 3. -1 h (the wall clock ends an hour behind) while another node's threshold is pending.
    second = await _crash_then_step(ctx, jumper, b, -STEP, threshold)

    elapsed_timeline = jumper.clock.now() - timeline0
    elapsed_real = time.monotonic() - mono0
    rems = remediations(ctx.store, ctx.cluster.name, began)
    return {
        "injected": [
            {"node": a, "failure": "crash", "at": first["injected_at"]},
            {"node": b, "failure": "crash", "at": second["injected_at"]},
        ],
        "clock_steps": jumper.steps,
        "phases": {"healthy": {"remediations": len(healthy_rems)}, "plus": first, "minus": second},
        "timeline_elapsed_s": round(elapsed_timeline, 3),
        "real_elapsed_s": round(elapsed_real, 3),
        "remediations": rems,
        "expectations": {
            "no_remediation_after_steps_on_a_healthy_cluster": not healthy_rems,
            "no_refusal_after_steps_on_a_healthy_cluster": not healthy_refusals,
            "all_nodes_healthy_after_steps": all_healthy,
            "plus_step_fired_nothing_early": not first["remediated_right_after_step"],
            "plus_remediated_at_its_real_threshold": _on_time(first, threshold),
            "plus_still_counted_in_hourly_budget": first["counted_in_hourly_budget_after_step"],
            "minus_step_fired_nothing_early": not second["remediated_right_after_step"],
            "minus_remediated_at_its_real_threshold": _on_time(second, threshold),
            "minus_still_counted_in_hourly_budget": second["counted_in_hourly_budget_after_step"],
            "only_the_crashed_nodes_remediated": sorted(r["node"] for r in rems) == sorted([a, b]),
            "both_succeeded": [r["result"] for r in rems] == ["succeeded", "succeeded"],
            "timeline_did_not_step": abs(elapsed_timeline - elapsed_real) < 1.0,
        },
        "since": began,
    }


SCENARIOS_CLOCK = {"clock-jump": scenario_clock_jump}
