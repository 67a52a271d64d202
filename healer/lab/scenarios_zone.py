"""Lab scenarios for failure domains (issue 8, "zone short-circuit").

``zone-outage``: every node of one zone is cut off at once, as a zone losing its network looks
from the control plane (the machines keep running; a partition, not a crash). The lab spreads
every pool over the zones (:data:`healer.lab.harness.LAB_ZONES`), so the outage stays within each
pool's ``maxUnhealthy`` and only the zone limit (``maxUnhealthyPerZone``) sees it whole: healer
must refuse it (``TooManyUnhealthyInZone``) and replace nothing, and the nodes come back when
the zone does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from healer.lab.report import refusals, remediations
from healer.lab.scenario_kit import Context, Scenario, until
from healer.model import TAG_POOL

log = structlog.get_logger("healer.lab")

TOO_MANY_UNHEALTHY_IN_ZONE = "TooManyUnhealthyInZone"
# How long past the detection threshold the outage is watched before the zone comes back.
WATCH_MARGIN = 6.0


def _largest_zone(ctx: Context) -> str:
    zones = sorted(set(ctx.harness.zones.values()))
    if not zones:
        raise RuntimeError("the lab nodes carry no zone label")
    return max(zones, key=lambda z: (len(ctx.harness.zone_nodes(z)), -zones.index(z)))


async def scenario_zone_outage(ctx: Context) -> dict[str, Any]:
    zone = _largest_zone(ctx)
    cut = ctx.harness.zone_nodes(zone)
    pools = sorted({p for n in cut if (p := _pool_of(ctx, n)) is not None})
    injected_at = time.time()
    log.info("lab.injected", failure="zone-outage", zone=zone, nodes=",".join(cut))
    ctx.harness.partition(cut)
    t = ctx.thresholds
    # Past the point where every cut node is UNHEALTHY (lease grace + Ready=Unknown timeout),
    # with time for the planner to consider each of them.
    await asyncio.sleep(t["lease_grace_s"] + t["ready_unknown_timeout_s"] + WATCH_MARGIN)
    refused = refusals(ctx.store, ctx.cluster.name, injected_at)
    during = remediations(ctx.store, ctx.cluster.name, injected_at)
    log.info("lab.healing_zone", zone=zone, nodes=",".join(cut))
    ctx.harness.heal(cut)

    async def all_back() -> bool:
        return set(cut) <= await ctx.harness.ready_nodes()

    back = await until(all_back, timeout=30.0, what=f"zone {zone} back")
    rems = remediations(ctx.store, ctx.cluster.name, injected_at)
    in_zone = [r for r in rems if r["node"] in cut]
    zone_refusals = [r for r in refused if r["reason"] == TOO_MANY_UNHEALTHY_IN_ZONE]
    return {
        "injected": [
            {"node": n, "failure": "partition", "zone": zone, "at": injected_at} for n in cut
        ],
        "zone": zone,
        "zones": dict(sorted(ctx.harness.zones.items())),
        "pools_hit": pools,
        "remediations": rems,
        "remediations_during_outage": during,
        "refusals": refused,
        "expectations": {
            "no_remediation_in_zone": not in_zone,
            "no_remediation": not rems,
            "zone_refusal_recorded": bool(zone_refusals),
            "every_zone_node_refused_by_zone": {r["node"] for r in zone_refusals} == set(cut),
            "outage_spans_pools": len(pools) > 1,
            "nodes_back_after_heal": back,
        },
        "since": injected_at,
    }


def _pool_of(ctx: Context, node: str) -> str | None:
    m = ctx.harness.machine(node)
    if m is None:
        return None
    pool = m["tags"].get(TAG_POOL)
    return pool if isinstance(pool, str) else None


SCENARIOS_ZONE: dict[str, Scenario] = {"zone-outage": scenario_zone_outage}
