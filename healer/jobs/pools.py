"""The pool jobs: ``resync`` (the census of each pool: configured size, machines, Ready nodes)
and ``drift`` (create the machines a pool is missing, where nothing says not to).

``resync`` compares the pools of the configuration with the machines the provider lists (by
healer's ownership tags) and the Ready nodes Kubernetes lists, sets the
``healer_pool_machines`` gauges and records ``resync.pool_mismatch`` / ``resync.pool_matched``
when a pool's picture changes. ``drift`` never acts for a pool with a remediation in flight (its
replacement is on the way) or one that failed within the planner's cooldown (a human looks
first) -- unless that failure left the pool a machine short: restoring capacity is never held
back by the cooldown -- and never past the guards' stop switches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from healer.cloud.machines import Machine, Provider
from healer.config import ClusterConfig
from healer.jobs.context import JobContext, owned
from healer.kube.client import KubeClient
from healer.model import TAG_POOL
from healer.planner.planner import FAILED_COOLDOWN
from healer.provisioning.keydelivery import KeyDelivery, KeyDeliveryError
from healer.provisioning.pools import UserData, ensure_pools
from healer.store.sqlite import FAILED, RUNNING, WorkflowRecord
from healer.telemetry import metrics

log = structlog.get_logger("healer.jobs.pools")


@dataclass(frozen=True)
class PoolCensus:
    pool: str
    desired: int
    machines: int  # non-terminated machines tagged for the pool
    ready: int  # Ready nodes among those machines
    in_flight: int  # remediations running in the pool

    @property
    def missing(self) -> int:
        return max(0, self.desired - self.machines)

    @property
    def matches(self) -> bool:
        return self.desired == self.machines == self.ready


def census(
    cluster: ClusterConfig,
    machines: Iterable[Machine],
    ready_nodes: Iterable[str],
    running: Iterable[WorkflowRecord],
) -> list[PoolCensus]:
    """Each configured pool: desired size, machines, Ready nodes, remediations in flight."""
    machines = list(machines)
    ready = set(ready_nodes)
    running = list(running)
    out = []
    for pool in cluster.pools:
        mine = [m for m in machines if m.tags.get(TAG_POOL) == pool.name]
        out.append(
            PoolCensus(
                pool=pool.name,
                desired=pool.size,
                machines=len(mine),
                ready=sum(1 for m in mine if m.name in ready),
                in_flight=sum(1 for wf in running if wf.pool == pool.name),
            )
        )
    return out


class PoolJobs:
    """``resync`` and ``drift`` for every cluster."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        providers: Mapping[str, Provider],
        kube: Mapping[str, KubeClient],
        user_data: UserData,
        keys: KeyDelivery | None = None,
    ) -> None:
        self._ctx = ctx
        self._providers = providers
        self.kube = kube
        self._user_data = user_data
        self._keys = keys
        self._census: dict[str, list[PoolCensus]] = {}
        self._mismatch: dict[tuple[str, str], bool] = {}
        self._drift_skip: dict[tuple[str, str], str] = {}

    # -- resync ----------------------------------------------------------------------------
    async def resync(self, cluster_name: str) -> list[PoolCensus] | None:
        ctx = self._ctx
        cluster = ctx.config.cluster(cluster_name)
        if cluster is None:
            return None
        if (frozen := ctx.planner.frozen_reason(cluster_name)) is not None:
            log.info("resync.skipped", reason=ctx.planner.frozen_code(cluster_name), detail=frozen)
            return None
        machines = await self._providers[cluster_name].list_machines(owned(cluster_name))
        nodes, _ = await self.kube[cluster_name].list_nodes()
        ready = {n.name for n in nodes if n.conditions.get("Ready", ("", 0.0))[0] == "True"}
        running = ctx.store.workflows(cluster=cluster_name, state=RUNNING)
        pools = census(cluster, machines, ready, running)
        self._census[cluster_name] = pools
        now = ctx.clock.now()
        for p in pools:
            metrics.POOL_MACHINES.labels(cluster_name, p.pool, "desired").set(p.desired)
            metrics.POOL_MACHINES.labels(cluster_name, p.pool, "machines").set(p.machines)
            metrics.POOL_MACHINES.labels(cluster_name, p.pool, "ready").set(p.ready)
            key = (cluster_name, p.pool)
            matches = p.matches or p.in_flight > 0  # a replacement under way explains a gap
            previous = self._mismatch.get(key)
            self._mismatch[key] = not matches
            if previous == (not matches) or (previous is None and matches):
                continue  # unchanged, or fine from the first look: nothing to record
            ctx.recorder.record(
                "resync.pool_matched" if matches else "resync.pool_mismatch",
                at=now,
                cluster=cluster_name,
                pool=p.pool,
                reason="Resync",
                message=f"pool {cluster_name}/{p.pool}: {p.desired} desired, {p.machines} "
                f"machines, {p.ready} Ready nodes, {p.in_flight} remediations in flight",
                evidence=p.__dict__,
                level="info" if matches else "warning",
                desired=p.desired,
                machines=p.machines,
                ready=p.ready,
                in_flight=p.in_flight,
            )
        log.info("resync.done", pools=len(pools), machines=len(machines), nodes=len(nodes))
        return pools

    # -- drift repair ----------------------------------------------------------------------
    async def repair_drift(self, cluster_name: str) -> list[Machine]:
        """Create the machines pools are missing, where nothing says not to."""
        ctx = self._ctx
        cluster = ctx.config.cluster(cluster_name)
        if cluster is None:
            return []
        provider = self._providers[cluster_name]
        machines = await provider.list_machines(owned(cluster_name))
        running = ctx.store.workflows(cluster=cluster_name, state=RUNNING)
        pools = census(cluster, machines, (), running)
        below = [p for p in pools if p.missing > 0]
        if not below:
            for p in pools:
                self._drift_skip.pop((cluster_name, p.pool), None)
            return []
        stop = ctx.stop_switch(cluster)
        now = ctx.clock.now()
        # A failure that left its pool short is exactly what drift repair is for: it does not
        # count (the planner's cooldown is for a human to look at a node, not at a gap).
        recently_failed = {
            wf.pool
            for wf in ctx.store.workflows(cluster=cluster_name, state=FAILED)
            if (wf.finished_at or 0.0) >= now - FAILED_COOLDOWN
            and not ctx.store.left_pool_short(wf.id)
        }
        paused_pools = ctx.planner.snapshot(cluster).paused_pools
        eligible = []
        for p in below:
            reason = stop
            if reason is None and p.pool in paused_pools:
                reason = "Paused"
            elif reason is None and p.in_flight:
                reason = "RemediationInFlight"
            elif reason is None and p.pool in recently_failed:
                reason = "RemediationFailedRecently"
            elif reason is None and ctx.dry_run:
                reason = "DryRun"
            if reason is None:
                eligible.append(p)
            else:
                self._skip_drift(cluster_name, p, reason)
        if not eligible:
            return []
        names = {p.pool for p in eligible}
        subset = cluster.model_copy(
            update={"pools": tuple(p for p in cluster.pools if p.name in names)}
        )
        created = await ensure_pools(subset, provider, user_data=self._user_data)
        for machine in created:
            pool = machine.tags.get(TAG_POOL, "")
            self._drift_skip.pop((cluster_name, pool), None)
            ctx.recorder.record(
                "drift.repaired",
                cluster=cluster_name,
                pool=pool,
                node=machine.name,
                reason="PoolBelowSize",
                message=f"pool {cluster_name}/{pool} was below its size "
                f"({next(p for p in eligible if p.pool == pool).machines} of "
                f"{next(p for p in eligible if p.pool == pool).desired}); created {machine.name}",
                evidence={"machine": machine.id, "name": machine.name},
                level="warning",
                metric=metrics.DRIFT_MACHINES.labels(cluster_name, pool),
                machine=machine.name,
                machine_id=machine.id,
            )
        if self._keys is not None and created:
            # New control-plane machines wait for their keys (never in their user data). A
            # failure is logged (provisioning.keys_undelivered); `healer apply` pushes again.
            with contextlib.suppress(KeyDeliveryError):
                await self._keys.deliver_pending(subset, provider)
        return created

    def _skip_drift(self, cluster: str, pool: PoolCensus, reason: str) -> None:
        key = (cluster, pool.pool)
        if self._drift_skip.get(key) == reason:
            return  # said once; the audit log gets one line per change of reason
        self._drift_skip[key] = reason
        message = (
            f"pool {cluster}/{pool.pool} has {pool.machines} of {pool.desired} machines; "
            f"not repairing ({reason})"
        )
        self._ctx.recorder.record(
            "drift.skipped",
            cluster=cluster,
            pool=pool.pool,
            reason=reason,
            message=message,
            evidence=pool.__dict__,
            level="warning",
        )
