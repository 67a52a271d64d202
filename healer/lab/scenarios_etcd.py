"""The control plane's etcd kept whole: a control-plane machine crashes and is replaced, its
etcd member removed through a healthy member before the machine is fenced, the replacement
added as a new member (kubeadm join --control-plane), etcd 3 members before and after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from healer.lab.etcd import ELECTION_TIMEOUT, FakeLabEtcd, LabEtcd
from healer.lab.report import remediations
from healer.lab.scenario_kit import SETTLE_TIMEOUT, Context, Scenario, replaced, until
from healer.planner.etcd_quorum import EtcdView, quorum

log = structlog.get_logger("healer.lab")

# Real time, as etcd runs: two of the lab members' election timeouts.
ELECTION_SETTLE = 2 * ELECTION_TIMEOUT


async def _view(ctx: Context) -> EtcdView:
    etcd = ctx.harness.etcd
    if isinstance(etcd, LabEtcd):
        return await etcd.client.view()
    if isinstance(etcd, FakeLabEtcd):
        return await etcd.view()
    return EtcdView(error="the lab has no control plane")


async def _whole(ctx: Context, size: int) -> bool:
    view = await _view(ctx)
    return len(view.members) == size and view.healthy == size


async def scenario_crash_control_plane(ctx: Context) -> dict[str, Any]:
    pool = ctx.cluster.control_plane_pool()
    assert pool is not None, "crash-control-plane needs a control-plane pool"
    # The lab's members join one at a time as their machines boot: start from a whole etcd.
    await until(lambda: _whole(ctx, pool.size), timeout=60.0, what="etcd whole before")
    before = await _view(ctx)
    target = sorted(ctx.harness.pool_nodes(pool.name))[0]
    old = before.member(target)
    injected_at = time.time()
    log.info("lab.injected", node=target, failure="crash", etcd=before.describe())
    ctx.harness.crash(target)
    lowest: list[int] = []  # healthy members minus quorum, sampled while healer works

    async def done() -> bool:
        view = await _view(ctx)
        if view.reachable and view.healthy < quorum(len(view.members)):
            # Not healer's doing, and over in a moment: a member's health probe timing out on
            # a loaded host, and the election that follows the leader's crash (no member
            # answers healthy without a leader; seen: both looks at once fell inside one). A
            # loss of quorum is counted when a look after two election timeouts still shows
            # it (a real one lasts).
            await asyncio.sleep(ELECTION_SETTLE)
            view = await _view(ctx)
        if view.reachable:
            lowest.append(view.healthy - quorum(len(view.members)))
        return await replaced(ctx, target)

    await until(done, timeout=SETTLE_TIMEOUT, what=f"{target} replaced")
    await until(lambda: _whole(ctx, pool.size), timeout=30.0, what="etcd whole after")
    after = await _view(ctx)
    rems = [
        r for r in remediations(ctx.store, ctx.cluster.name, injected_at) if r["node"] == target
    ]
    steps = [s["step"] for s in rems[-1]["steps"] if s["status"] == "done"] if rems else []
    replacement = rems[-1]["replacement"] if rems else None
    removal = [
        s["detail"]
        for s in (ctx.store.steps(rems[-1]["workflow"]) if rems else [])
        if s["step"] == "etcd_remove_member" and s["status"] == "done"
    ]
    expectations = {
        "remediated_once": len(rems) == 1,
        "succeeded": bool(rems) and rems[-1]["result"] == "succeeded",
        "etcd_members_before_3": len(before.members) == 3 and before.healthy == 3,
        "member_removed_before_fence": "etcd_remove_member" in steps
        and steps.index("etcd_remove_member") < steps.index("fence"),
        "membership_verified": "etcd_verify" in steps,
        "etcd_members_after_3": len(after.members) == 3 and after.healthy == 3,
        "old_member_gone": old is not None and all(m.id != old.id for m in after.members),
        "replacement_is_member": after.member(replacement or "") is not None,
        "quorum_kept": all(margin >= 0 for margin in lowest),
    }
    return {
        "injected": [{"node": target, "failure": "crash", "at": injected_at}],
        "remediations": rems,
        "etcd": {
            "real": isinstance(ctx.harness.etcd, LabEtcd),
            "before": before.to_json(),
            "after": after.to_json(),
            "member_removal": removal,
            "describe_before": before.describe(),
            "describe_after": after.describe(),
        },
        "expectations": expectations,
        "since": injected_at,
    }


SCENARIOS_ETCD: dict[str, Scenario] = {"crash-control-plane": scenario_crash_control_plane}
