"""Lab scenario of planned reboots (issue 17): ``upgrade-wave``.

Every machine of the lab cluster installs an upgrade at once and needs a reboot. The scenario
plays each node's agent (the reboot protocol over MQTT through the embedded broker, as in
``bad-upgrade-wave``): it asks for a permit, asks again while the answer is "not now"
(``Draining``, ``PoolBusy``, ...), and reboots (the simulated kubelet goes silent and comes back
Ready) only on a grant. healer runs each granted reboot as its workflow: cordon, drain through
the Eviction API, hand the grant over, wait for the node Ready again, uncordon, release.

So that the drains are real, the workers run a ``web`` workload with a PodDisruptionBudget
(``minAvailable``: one fewer than the replicas) and a stand-in for its ReplicaSet controller that starts a replacement on
a schedulable node for every pod evicted. A sampler watches the API the whole time: how many
nodes are cordoned at once (per pool and in all), and how many ``web`` pods are running and not
terminating (never fewer than the budget allows).

Expected: every node rebooted exactly once, each drained before it rebooted and uncordoned
after, never more nodes cordoned at once than ``reboots.concurrency`` allows, the budget never
violated, every node Ready and schedulable at the end, and no remediation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from healer.lab.report import remediations
from healer.lab.scenario_kit import POLL, Context, Scenario, until
from healer.model import LABEL_POOL

log = structlog.get_logger("healer.lab")

NAMESPACE = "shop"
APP = {"app": "web"}
ASK_EVERY_MAX = 1.0  # the agents' retryAfter, capped so the wave runs in lab time
WAVE_TIMEOUT = 300.0
DOWNTIME_MAX = 3.0


def _pool(node: dict[str, Any]) -> str:
    return str(node["metadata"].get("labels", {}).get(LABEL_POOL, ""))


def _cordoned(ctx: Context) -> dict[str, str]:
    """Cordoned node -> its pool, read from the API now."""
    assert ctx.harness.api is not None
    return {
        n["metadata"]["name"]: _pool(n)
        for n in ctx.harness.api.nodes()
        if n.get("spec", {}).get("unschedulable")
    }


def _web_pods(ctx: Context) -> list[dict[str, Any]]:
    api = ctx.harness.api
    assert api is not None
    return [
        p
        for n in api.nodes()
        for p in api.pods_on(n["metadata"]["name"])
        if p["metadata"].get("namespace") == NAMESPACE
        and p["metadata"].get("labels", {}).get("app") == APP["app"]
    ]


def _running(pods: list[dict[str, Any]]) -> int:
    return sum(
        1
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and p.get("status", {}).get("phase") == "Running"
    )


def _evicted(ctx: Context, evidence: Any) -> list[str]:
    """The pods the reboot workflow's drain evicted (its journal)."""
    wf = evidence.get("workflow") if isinstance(evidence, dict) else None
    if not wf:
        return []
    for line in ctx.store.steps(str(wf)):
        if line["step"] == "drain" and line["status"] == "done":
            return list(line["detail"].get("drain", {}).get("evicted", []))
    return []


class _Workload:
    """The ``web`` pods, their budget, and a stand-in ReplicaSet controller."""

    def __init__(self, ctx: Context, workers: list[str]) -> None:
        self._ctx = ctx
        self._workers = workers
        self.replicas = len(workers)
        self._made = 0

    def create(self) -> None:
        api = self._ctx.harness.api
        assert api is not None
        for node in self._workers:
            self._add(node)
        # An integer minAvailable counts the pods that exist (a maxUnavailable budget would
        # count the ReplicaSet's replicas, and the pods name one that is never created).
        api.add_pdb(NAMESPACE, "web-pdb", dict(APP), min_available=self.replicas - 1)

    def _add(self, node: str) -> None:
        assert self._ctx.harness.api is not None
        self._made += 1
        self._ctx.harness.api.add_pod(
            NAMESPACE, f"web-{self._made}", node, labels=dict(APP), owner_kind="ReplicaSet"
        )

    def reconcile(self) -> None:
        """Start a replacement for every pod gone or terminating, on the schedulable worker
        with the fewest ``web`` pods."""
        api = self._ctx.harness.api
        assert api is not None
        pods = _web_pods(self._ctx)
        missing = self.replicas - _running(pods)
        cordoned = _cordoned(self._ctx)
        for _ in range(max(0, missing)):
            load = {n: 0 for n in self._workers if n not in cordoned}
            for p in pods:
                node = p.get("spec", {}).get("nodeName")
                if node in load and not p["metadata"].get("deletionTimestamp"):
                    load[node] += 1
            if not load:
                return
            target = min(load, key=lambda n: (load[n], n))
            self._add(target)
            pods = _web_pods(self._ctx)


async def scenario_upgrade_wave(ctx: Context) -> dict[str, Any]:
    harness = ctx.harness
    pools = {p.name: harness.pool_nodes(p.name) for p in ctx.cluster.pools}
    nodes = sorted(n for members in pools.values() for n in members)
    workers = pools.get("workers", [])
    workload = _Workload(ctx, workers)
    workload.create()
    concurrency = ctx.cluster.reboots.concurrency
    downtime = min(harness.timings.reboot_downtime, DOWNTIME_MAX)
    injected_at = time.time()
    log.info("lab.injected", failure="upgrade-wave", nodes=",".join(nodes))

    samples = {"max_cordoned": 0, "min_running_web": workload.replicas}
    max_per_pool: dict[str, int] = {name: 0 for name in pools}
    cordon_order: list[str] = []

    async def sampler() -> None:
        while True:
            # Counted before the stand-in controller replaces what the drains evicted.
            pods = _web_pods(ctx)
            running = _running(pods)
            samples["min_running_web"] = min(samples["min_running_web"], running)
            workload.reconcile()
            cordoned = _cordoned(ctx)
            for node in sorted(cordoned):
                if node not in cordon_order:
                    cordon_order.append(node)
            samples["max_cordoned"] = max(samples["max_cordoned"], len(cordoned))
            for name in pools:
                count = sum(1 for pool in cordoned.values() if pool == name)
                max_per_pool[name] = max(max_per_pool[name], count)
            await asyncio.sleep(POLL / 2)

    reboots: list[dict[str, Any]] = []

    async def agent(node: str) -> None:
        asked = 0
        while True:
            asked += 1
            answer = await harness.ask_reboot_permit(node, f"upgrade-{asked}", timeout=5.0)
            if answer is not None and answer.get("granted"):
                break
            wait = float((answer or {}).get("retryAfter") or ASK_EVERY_MAX)
            await asyncio.sleep(min(wait, ASK_EVERY_MAX))
        assert harness.api is not None
        info = harness.api.node(node) or {}
        left = [
            p["metadata"]["name"]
            for p in harness.api.pods_on(node)
            if not p["metadata"].get("deletionTimestamp")
        ]
        reboots.append(
            {
                "node": node,
                "granted_at": time.time(),
                "asked": asked,
                "cordoned_at_grant": bool(info.get("spec", {}).get("unschedulable")),
                "pods_left_at_grant": left,
            }
        )
        log.info("lab.rebooting", node=node, asked=asked)
        await harness.reboot(node, downtime=downtime, upgrade=True)

    sampling = asyncio.create_task(sampler(), name="upgrade-wave-sampler")
    try:
        async with asyncio.timeout(WAVE_TIMEOUT):
            await asyncio.gather(*(agent(n) for n in nodes))

        async def released() -> bool:
            done = {
                e.node
                for e in ctx.store.audit_log(cluster=ctx.cluster.name, event="reboot.released")
                if e.at >= injected_at
            }
            return set(nodes) <= done and not _cordoned(ctx)

        await until(released, timeout=60.0, what="every reboot released and uncordoned")

        async def all_ready() -> bool:
            return set(nodes) <= await harness.ready_nodes()

        back = await until(all_ready, timeout=60.0, what="every node Ready")
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling

    audit = [e for e in ctx.store.audit_log(cluster=ctx.cluster.name) if e.at >= injected_at]
    handed = [e for e in audit if e.event == "reboot.handed"]
    releases = [e for e in audit if e.event == "reboot.released"]
    order = [
        {
            "node": e.node,
            "pool": e.pool,
            "handed_at": e.at,
            "released_at": next((r.at for r in releases if r.node == e.node), None),
            "released_reason": next((r.reason for r in releases if r.node == e.node), None),
            "evicted": _evicted(ctx, e.evidence),
        }
        for e in sorted(handed, key=lambda e: e.at)
    ]
    rems = remediations(ctx.store, ctx.cluster.name, injected_at)
    per_node = {n: sum(1 for r in reboots if r["node"] == n) for n in nodes}
    handed_per_node = {n: sum(1 for e in handed if e.node == n) for n in nodes}
    limit_pool = concurrency.per_pool
    limit_cluster = concurrency.per_cluster
    budget_floor = workload.replicas - 1  # the budget's minAvailable
    expectations = {
        "every_node_rebooted_once": all(c == 1 for c in per_node.values())
        and all(c == 1 for c in handed_per_node.values()),
        "drained_before_reboot": all(
            r["cordoned_at_grant"] and not r["pods_left_at_grant"] for r in reboots
        ),
        "concurrency_respected": all(c <= limit_pool for c in max_per_pool.values())
        and (limit_cluster is None or samples["max_cordoned"] <= limit_cluster),
        "no_pdb_violated": samples["min_running_web"] >= budget_floor,
        "all_uncordoned": not _cordoned(ctx),
        "released_after_reboot": all(r["released_reason"] == "Rebooted" for r in order),
        "all_back_ready": back,
        "no_remediation": not rems,
    }
    return {
        "injected": [
            {"node": n, "failure": "upgrade needing a reboot", "at": injected_at} for n in nodes
        ],
        "concurrency": {"perPool": limit_pool, "perCluster": limit_cluster},
        "order": order,
        "cordon_order": cordon_order,
        "max_cordoned": {"total": samples["max_cordoned"], "per_pool": max_per_pool},
        "web": {
            "replicas": workload.replicas,
            "pdb": f"web-pdb minAvailable={budget_floor}",
            "min_running": samples["min_running_web"],
        },
        "reboots": reboots,
        "reboots_per_node": per_node,
        "remediations": rems,
        "expectations": expectations,
        "since": injected_at,
    }


SCENARIOS_REBOOT: dict[str, Scenario] = {"upgrade-wave": scenario_upgrade_wave}
