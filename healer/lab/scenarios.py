"""Lab scenarios: inject one failure, wait until the daemon has dealt with it, judge the outcome.

Each scenario names what it expects (``expectations``), so a report says plainly whether healer
did the right thing: replaced a dead node, left a rebooting one alone, refused to act on a
partition. This module is the registry: the scenarios live in ``scenarios_*`` modules, written
with the kit in :mod:`healer.lab.scenario_kit`, and :func:`run_scenario` runs one by name and
adds the invariants every run must keep.
"""

from __future__ import annotations

import time
from typing import Any

from healer.lab.report import invariants, refusals
from healer.lab.scenario_kit import Context, Scenario
from healer.lab.scenarios_adopt import SCENARIOS_ADOPT, STARTS_ITS_OWN_DAEMON_ADOPT
from healer.lab.scenarios_breaker import SCENARIOS_BREAKER
from healer.lab.scenarios_capacity import SCENARIOS_CAPACITY
from healer.lab.scenarios_clock import SCENARIOS_CLOCK
from healer.lab.scenarios_etcd import SCENARIOS_ETCD
from healer.lab.scenarios_node import SCENARIOS_NODE
from healer.lab.scenarios_provenance import SCENARIOS_PROVENANCE
from healer.lab.scenarios_reboot import SCENARIOS_REBOOT
from healer.lab.scenarios_zone import SCENARIOS_ZONE

SCENARIOS: dict[str, Scenario] = {
    **SCENARIOS_NODE,
    **SCENARIOS_ADOPT,
    **SCENARIOS_PROVENANCE,
    **SCENARIOS_CAPACITY,
    **SCENARIOS_ZONE,
    **SCENARIOS_BREAKER,
    **SCENARIOS_CLOCK,
    **SCENARIOS_ETCD,
    **SCENARIOS_REBOOT,
}

# Scenarios that start the daemon themselves (``await ctx.control.start()``), after setting up
# the world it wakes up to (a cluster older than nodeStartupTimeout, say). For the others the
# daemon runs before the scenario begins.
STARTS_ITS_OWN_DAEMON: frozenset[str] = STARTS_ITS_OWN_DAEMON_ADOPT


async def run_scenario(name: str, ctx: Context) -> dict[str, Any]:
    started = time.time()
    result = await SCENARIOS[name](ctx)
    since = result.pop("since")
    result.setdefault("refusals", refusals(ctx.store, ctx.cluster.name, since))
    ready = await ctx.harness.ready_nodes()
    result["invariants"] = invariants(
        cluster=ctx.cluster,
        machines=ctx.harness.cloud.machines(include_terminated=True),
        destroy_log=ctx.harness.cloud.destroy_log(),
        ready_nodes=ready,
        store=ctx.store,
    )
    ok = all(result["expectations"].values()) and result["invariants"]["ok"]
    return {
        "scenario": name,
        "cluster": ctx.cluster.name,
        "ok": ok,
        "thresholds": ctx.thresholds,
        "started_at": started,
        "finished_at": time.time(),
        "duration_s": round(time.time() - started, 2),
        **result,
    }
