"""Periodic jobs: full resync, drift repair, the orphan sweep, maintenance windows and the expiry
of stale workflows, run by APScheduler 3.x (``AsyncIOScheduler``, ``coalesce=True``,
``max_instances=1``).

This is housekeeping around the remediation engine, never the engine itself: remediations are
started by the planner from health verdicts, and a job here never replaces a node. What the jobs
do, per cluster unless said otherwise (intervals in ``schedule:``, ``0`` turns a job off):

``resync``
    Compares the pools of the configuration with the machines the provider lists (by healer's
    ownership tags) and the Ready nodes Kubernetes lists. Sets the ``healer_pool_machines``
    gauges and writes ``resync.pool_mismatch`` / ``resync.pool_matched`` to the audit log when a
    pool's picture changes.
``drift``
    A pool with fewer machines than its size gets new ones (:func:`ensure_pools`). Never for a
    pool with a remediation in flight (its replacement is on the way) or one that failed within
    the planner's cooldown (a human looks first) -- unless that failure left the pool a machine
    short (its old machine fenced, no replacement): restoring capacity is never held back by
    the cooldown -- and never past the guards' stop switches:
    an open breaker, a pause, a blocking alert, an unreachable API, a dry run.
``orphans``
    A machine tagged as healer's for the cluster that is neither a node healer knows nor part of
    a running remediation is an orphan: reported (``orphan.found``, audit and log) once it is
    older than its pool's ``nodeStartupTimeout`` (younger ones may still be booting), and, only
    with ``orphans: {destroy: true}``, destroyed once reported for ``orphans.grace``. The first
    report is kept in the audit log, so the grace period survives a restart. Safety: no sweep
    without state for the cluster (a lost database must not make every machine an orphan), no
    destroy past the stop switches, none when orphans are at least as many as known nodes, and
    at most one destroy per sweep.
``maintenance`` (all clusters)
    Re-evaluates the reboot maintenance windows (:mod:`healer.planner.maintenance`), records when one
    opens or closes and sets ``healer_maintenance_window_open``. Other code asks
    :meth:`PeriodicJobs.reboots_allowed` (or :func:`healer.planner.maintenance.in_window`) directly.
``stale-workflows`` (all clusters)
    A running remediation with no progress (no journal line, no saved step) for longer than
    ``schedule.staleAfter`` is cancelled and failed with that reason.

Each job body is a plain coroutine method taking ``now`` from the injected clock, so tests call
it directly in virtual time; APScheduler only decides *when* they run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from healer.clock import Clock
from healer.cloud.machines import Machine, Provider
from healer.config import ClusterConfig, HealerConfig
from healer.health.tracker import HealthTracker
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL, TAG_WORKFLOW
from healer.planner.maintenance import in_window, next_change, reboots_allowed
from healer.planner.planner import FAILED_COOLDOWN, Planner
from healer.provisioning.cluster_policy import reconcile_cluster_policy
from healer.provisioning.pools import UserData, ensure_pools
from healer.store.sqlite import FAILED, RUNNING, Store, WorkflowRecord
from healer.telemetry import metrics
from healer.workflow.runner import WorkflowRunner

__all__ = ["JOB_DEFAULTS", "Orphan", "PeriodicJobs", "PoolCensus", "census", "find_orphans"]
__all__ += ["in_window", "reboots_allowed"]

log = structlog.get_logger("healer.jobs.scheduler")

JOB_DEFAULTS: dict[str, Any] = {
    "coalesce": True,  # runs missed while the loop was busy collapse into one
    "max_instances": 1,  # a slow run is never overlapped by the next
    "misfire_grace_time": None,  # late is better than never for housekeeping
}


# -- pure decisions ----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Orphan:
    machine: Machine
    workflow: str | None  # the (finished) workflow whose tag it carries, if any

    def evidence(self) -> dict[str, Any]:
        m = self.machine
        return {
            "machine": {
                "id": m.id,
                "name": m.name,
                "state": str(m.state),
                "tags": dict(m.tags),
                "created_at": m.created_at,
            },
            "workflow": self.workflow,
        }


def find_orphans(
    cluster: ClusterConfig,
    machines: Iterable[Machine],
    *,
    known_nodes: Iterable[str],
    running: Iterable[WorkflowRecord],
    ages: Mapping[str, float],
) -> list[Orphan]:
    """Machines tagged as healer's for ``cluster`` that healer has no record of.

    ``ages`` maps a machine id to how long it has existed (from the cloud's creation time, or
    from when healer first listed it); a machine younger than its pool's ``nodeStartupTimeout``
    may still be booting and is not an orphan yet.
    """
    known = set(known_nodes)
    claimed_names: set[str] = set()
    claimed_ids: set[str] = set()
    running_ids: set[str] = set()
    for wf in running:
        running_ids.add(wf.id)
        claimed_names.update({wf.node, wf.replacement_name})
        for record in (wf.machine, wf.replacement):
            if record and record.get("id"):
                claimed_ids.add(str(record["id"]))
    out = []
    for m in machines:
        if m.tags.get(TAG_MANAGED) != "true" or m.tags.get(TAG_CLUSTER) != cluster.name:
            continue
        if m.name in known or m.name in claimed_names or m.id in claimed_ids:
            continue
        workflow = m.tags.get(TAG_WORKFLOW)
        if workflow in running_ids:
            continue
        startup = cluster.health_for(m.tags.get(TAG_POOL)).node_startup_timeout
        if ages.get(m.id, 0.0) < startup:
            continue
        out.append(Orphan(machine=m, workflow=workflow))
    return sorted(out, key=lambda o: o.machine.name)


# -- the jobs ----------------------------------------------------------------------------------


def _has_policy(cluster: ClusterConfig) -> bool:
    return any(
        getattr(cluster, name, None) is not None for name in ("pod_security", "rbac", "kubernetes")
    )


class PeriodicJobs:
    """The daemon's periodic jobs and the APScheduler that runs them."""

    def __init__(
        self,
        *,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        tracker: HealthTracker,
        planner: Planner,
        runner: WorkflowRunner,
        providers: Mapping[str, Provider],
        kube: Mapping[str, Any],
        user_data: UserData,
        dry_run: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        self._config = config
        self._state_dir = state_dir
        self._store = store
        self._clock = clock
        self._tracker = tracker
        self._planner = planner
        self._runner = runner
        self._providers = providers
        self._kube = kube
        self._user_data = user_data
        self._dry_run = dry_run or config.dry_run
        self._scheduler: AsyncIOScheduler | None = None
        self._started_at = clock.now()
        self._census: dict[str, list[PoolCensus]] = {}
        self._mismatch: dict[tuple[str, str], bool] = {}
        self._drift_skip: dict[tuple[str, str], str] = {}
        self._first_listed: dict[str, float] = {}  # machine id -> first time a sweep listed it
        self._orphans_found: dict[str, dict[str, float]] = {}  # cluster -> machine id -> at
        self._orphans: dict[str, list[Orphan]] = {}
        self._destroy_skip: dict[str, str] = {}
        self._windows: dict[str, bool] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._scheduler = AsyncIOScheduler(
            event_loop=asyncio.get_running_loop(), timezone=UTC, job_defaults=JOB_DEFAULTS
        )
        self._add_jobs()
        self._scheduler.start()
        log.info("scheduler.started", jobs=sorted(self.intervals()))

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None

    def reconfigure(self, config: HealerConfig) -> None:
        """New intervals and policies; a job already running finishes with the old ones."""
        self._config = config
        self._dry_run = self._dry_run or config.dry_run
        if self._scheduler is not None:
            self._scheduler.remove_all_jobs()
            self._add_jobs()

    def intervals(self) -> dict[str, float]:
        """Job id -> interval in seconds, for the jobs the configuration turns on."""
        s = self._config.schedule
        jobs: dict[str, float] = {}
        for cluster in self._config.clusters:
            for name, every in (
                ("resync", s.resync),
                ("drift", s.drift_repair),
                ("orphans", s.orphan_sweep),
                ("policy", s.policy_reconcile if _has_policy(cluster) else 0.0),
            ):
                if every > 0:
                    jobs[f"{name}:{cluster.name}"] = every
        if s.maintenance > 0:
            jobs["maintenance"] = s.maintenance
        if s.stale_workflows > 0:
            jobs["stale-workflows"] = s.stale_workflows
        return jobs

    def jobs(self) -> list[Any]:
        """The scheduled APScheduler jobs (for tests and status)."""
        return self._scheduler.get_jobs() if self._scheduler is not None else []

    def _add_jobs(self) -> None:
        assert self._scheduler is not None
        bodies: dict[str, Callable[..., Awaitable[Any]]] = {
            "resync": self.resync,
            "drift": self.repair_drift,
            "orphans": self.sweep_orphans,
            "policy": self.reconcile_policy,
        }
        for job_id, every in self.intervals().items():
            kind, _, cluster = job_id.partition(":")
            if kind == "maintenance":
                body: Callable[..., Awaitable[Any]] = self.check_windows
                args: tuple[Any, ...] = ()
            elif kind == "stale-workflows":
                body, args = self.expire_stale, ()
            else:
                body, args = bodies[kind], (cluster,)
            self._scheduler.add_job(
                self._run_job,
                IntervalTrigger(seconds=every, timezone=UTC),
                args=(job_id, every, body, *args),
                id=job_id,
                name=job_id,
                replace_existing=True,
            )

    async def _run_job(
        self, job_id: str, every: float, body: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        kind, _, cluster = job_id.partition(":")
        context = {"job": kind} | ({"cluster": cluster} if cluster else {})
        with structlog.contextvars.bound_contextvars(**context):
            try:
                # A job that takes longer than its interval is stuck, not slow: bounded so
                # max_instances=1 cannot keep the next run out forever.
                async with asyncio.timeout(max(30.0, every)):
                    await body(*args)
            except Exception as exc:
                metrics.JOB_RUNS.labels(kind, "error").inc()
                log.error("scheduler.job_failed", error=str(exc), exc_type=type(exc).__name__)
            else:
                metrics.JOB_RUNS.labels(kind, "ok").inc()

    # -- cluster policy (Pod Security labels, RBAC, the join token) -------------------------
    async def reconcile_policy(self, cluster_name: str) -> list[str]:
        """Put back drift in the cluster's Pod Security labels and RBAC objects."""
        cluster = self._config.cluster(cluster_name)
        kube = self._kube.get(cluster_name)
        if cluster is None or kube is None:
            return []
        changes = await reconcile_cluster_policy(
            cluster, kube, dry_run=self._dry_run, state_dir=self._state_dir, clock=self._clock
        )
        for change in changes:
            log.info("policy.reconciled", change=change)
        return changes

    # -- resync ----------------------------------------------------------------------------
    async def resync(self, cluster_name: str) -> list[PoolCensus] | None:
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            return None
        if (frozen := self._planner.frozen_reason(cluster_name)) is not None:
            log.info("resync.skipped", reason="ApiUnreachable", detail=frozen)
            return None
        machines = await self._providers[cluster_name].list_machines(_owned(cluster_name))
        nodes, _ = await self._kube[cluster_name].list_nodes()
        ready = {n.name for n in nodes if n.conditions.get("Ready", ("", 0.0))[0] == "True"}
        running = self._store.workflows(cluster=cluster_name, state=RUNNING)
        pools = census(cluster, machines, ready, running)
        self._census[cluster_name] = pools
        now = self._clock.now()
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
            self._store.audit(
                at=now,
                cluster=cluster_name,
                pool=p.pool,
                event="resync.pool_matched" if matches else "resync.pool_mismatch",
                reason="Resync",
                message=f"pool {cluster_name}/{p.pool}: {p.desired} desired, {p.machines} "
                f"machines, {p.ready} Ready nodes, {p.in_flight} remediations in flight",
                evidence=p.__dict__,
            )
            (log.info if matches else log.warning)(
                "resync.pool_matched" if matches else "resync.pool_mismatch",
                pool=p.pool,
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
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            return []
        provider = self._providers[cluster_name]
        machines = await provider.list_machines(_owned(cluster_name))
        running = self._store.workflows(cluster=cluster_name, state=RUNNING)
        pools = census(cluster, machines, (), running)
        below = [p for p in pools if p.missing > 0]
        if not below:
            for p in pools:
                self._drift_skip.pop((cluster_name, p.pool), None)
            return []
        stop = self._stop_switch(cluster)
        now = self._clock.now()
        # A failure that left its pool short is exactly what drift repair is for: it does not
        # count (the planner's cooldown is for a human to look at a node, not at a gap).
        recently_failed = {
            wf.pool
            for wf in self._store.workflows(cluster=cluster_name, state=FAILED)
            if (wf.finished_at or 0.0) >= now - FAILED_COOLDOWN
            and not self._store.left_pool_short(wf.id)
        }
        paused_pools = self._planner.snapshot(cluster).paused_pools
        eligible = []
        for p in below:
            reason = stop
            if reason is None and p.pool in paused_pools:
                reason = "Paused"
            elif reason is None and p.in_flight:
                reason = "RemediationInFlight"
            elif reason is None and p.pool in recently_failed:
                reason = "RemediationFailedRecently"
            elif reason is None and self._dry_run:
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
            metrics.DRIFT_MACHINES.labels(cluster_name, pool).inc()
            self._drift_skip.pop((cluster_name, pool), None)
            self._store.audit(
                at=self._clock.now(),
                cluster=cluster_name,
                pool=pool,
                node=machine.name,
                event="drift.repaired",
                reason="PoolBelowSize",
                message=f"pool {cluster_name}/{pool} was below its size "
                f"({next(p for p in eligible if p.pool == pool).machines} of "
                f"{next(p for p in eligible if p.pool == pool).desired}); created {machine.name}",
                evidence={"machine": machine.id, "name": machine.name},
            )
            log.warning("drift.repaired", pool=pool, machine=machine.name, machine_id=machine.id)
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
        log.warning("drift.skipped", pool=pool.pool, reason=reason, detail=message)
        self._store.audit(
            at=self._clock.now(),
            cluster=cluster,
            pool=pool.pool,
            event="drift.skipped",
            reason=reason,
            message=message,
            evidence=pool.__dict__,
        )

    def _stop_switch(self, cluster: ClusterConfig) -> str | None:
        """The guards' stop switches that hold for a whole cluster: the first that is on."""
        if self._planner.frozen_reason(cluster.name) is not None:
            return "ApiUnreachable"
        snap = self._planner.snapshot(cluster)
        if snap.breaker_open:
            return "BreakerOpen"
        if snap.global_paused or snap.cluster_paused:
            return "Paused"
        if getattr(snap, "blocking_alerts", ()):
            return "BlockedByAlert"
        return None

    # -- orphan sweep ----------------------------------------------------------------------
    async def sweep_orphans(self, cluster_name: str) -> list[Orphan]:
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            return []
        if (frozen := self._planner.frozen_reason(cluster_name)) is not None:
            log.info("orphan_sweep.skipped", reason="ApiUnreachable", detail=frozen)
            return []
        known = [obs.node for obs, _ in self._tracker.nodes(cluster_name)]
        if not known:
            # Without state every machine would look like an orphan; a fresh or lost state
            # directory must never turn into "destroy the cluster".
            log.warning(
                "orphan_sweep.skipped",
                reason="NoState",
                detail=f"healer knows no node of cluster {cluster_name} yet",
            )
            return []
        provider = self._providers[cluster_name]
        machines = await provider.list_machines(_owned(cluster_name))
        now = self._clock.now()
        ages = {}
        for m in machines:
            first = self._first_listed.setdefault(m.id, now)
            # created_at is the cloud's wall clock: onto our timeline (healer/clock.py).
            born = self._clock.from_wall(m.created_at) if m.created_at is not None else first
            ages[m.id] = now - born
        running = self._store.workflows(cluster=cluster_name, state=RUNNING)
        orphans = find_orphans(cluster, machines, known_nodes=known, running=running, ages=ages)
        found = self._found(cluster_name)
        current = {o.machine.id for o in orphans}
        for machine_id in [i for i in found if i not in current]:
            del found[machine_id]  # joined, claimed or gone: a new report if it comes back
        for orphan in orphans:
            if orphan.machine.id in found:
                continue
            found[orphan.machine.id] = now
            self._store.audit(
                at=now,
                cluster=cluster_name,
                pool=orphan.machine.tags.get(TAG_POOL),
                node=orphan.machine.name,
                event="orphan.found",
                reason="NotInState",
                message=f"machine {orphan.machine.name} ({orphan.machine.id}) is tagged as "
                f"healer's for cluster {cluster_name} but is no node healer knows and no "
                "remediation's machine"
                + (
                    f" (destroyed after {self._config.orphans.grace:.0f}s unless it joins)"
                    if self._config.orphans.destroy
                    else " (orphans.destroy is off: reported only)"
                ),
                evidence=orphan.evidence(),
            )
            log.warning(
                "orphan.found",
                pool=orphan.machine.tags.get(TAG_POOL),
                machine=orphan.machine.name,
                machine_id=orphan.machine.id,
                workflow=orphan.workflow,
            )
        metrics.ORPHANS.labels(cluster_name).set(len(orphans))
        self._orphans[cluster_name] = orphans
        if orphans and self._config.orphans.destroy:
            await self._destroy_one(cluster, orphans, found, known)
        return orphans

    def _found(self, cluster: str) -> dict[str, float]:
        """Machine id -> first report, seeded from the audit log so the grace survives restarts."""
        if cluster not in self._orphans_found:
            seeded: dict[str, float] = {}
            for entry in self._store.audit_log(cluster=cluster, event="orphan.found"):
                machine = (entry.evidence or {}).get("machine") or {}
                if isinstance(machine, dict) and machine.get("id"):
                    seeded.setdefault(str(machine["id"]), entry.at)
            self._orphans_found[cluster] = seeded
        return self._orphans_found[cluster]

    async def _destroy_one(
        self,
        cluster: ClusterConfig,
        orphans: list[Orphan],
        found: dict[str, float],
        known: list[str],
    ) -> None:
        now = self._clock.now()
        grace = self._config.orphans.grace
        due = [o for o in orphans if now - found[o.machine.id] >= grace]
        if not due:
            return
        reason = self._stop_switch(cluster)
        if reason is None and self._dry_run:
            reason = "DryRun"
        if reason is None and len(orphans) >= len(known):
            reason = "TooManyOrphans"
        if reason is not None:
            if self._destroy_skip.get(cluster.name) != reason:
                self._destroy_skip[cluster.name] = reason
                message = (
                    f"{len(due)} orphaned machine(s) in {cluster.name} are past their grace "
                    f"period; not destroying ({reason})"
                )
                log.warning("orphan.destroy_skipped", reason=reason, detail=message)
                self._store.audit(
                    at=now,
                    cluster=cluster.name,
                    event="orphan.destroy_skipped",
                    reason=reason,
                    message=message,
                    evidence={"machines": [o.machine.id for o in due]},
                )
            return
        self._destroy_skip.pop(cluster.name, None)
        orphan = due[0]  # one per sweep: a mistake here costs one machine, not a pool
        m = orphan.machine
        # Re-check right before acting: it may have joined, or a remediation claimed it.
        running = self._store.workflows(cluster=cluster.name, state=RUNNING)
        if self._tracker.knows(cluster.name, m.name) or not find_orphans(
            cluster, [m], known_nodes=(), running=running, ages={m.id: float("inf")}
        ):
            return
        destroyed = await self._providers[cluster.name].destroy_machine(m)
        metrics.ORPHANS_DESTROYED.labels(cluster.name).inc()
        self._store.audit(
            at=self._clock.now(),
            cluster=cluster.name,
            pool=m.tags.get(TAG_POOL),
            node=m.name,
            event="orphan.destroyed",
            reason="OrphanGraceExpired",
            message=f"destroyed orphaned machine {m.name} ({m.id}), reported "
            f"{now - found[m.id]:.0f}s ago (grace {grace:.0f}s)"
            + ("" if destroyed else "; it was already gone"),
            evidence=orphan.evidence(),
        )
        log.warning("orphan.destroyed", machine=m.name, machine_id=m.id, existed=destroyed)
        found.pop(m.id, None)

    def orphans(self, cluster: str) -> list[Orphan]:
        """The orphans of the last sweep."""
        return list(self._orphans.get(cluster, []))

    # -- maintenance windows ---------------------------------------------------------------
    def reboots_allowed(self, cluster_name: str) -> bool:
        """May a planned reboot start in ``cluster_name`` now (its windows; none = any time)?"""
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            return False
        return reboots_allowed(self._clock.now(), cluster.reboots.windows)

    async def check_windows(self) -> dict[str, bool]:
        now = self._clock.now()
        states = {}
        for cluster in self._config.clusters:
            windows = cluster.reboots.windows
            is_open = reboots_allowed(now, windows)
            states[cluster.name] = is_open
            metrics.MAINTENANCE_OPEN.labels(cluster.name).set(1 if is_open else 0)
            previous = self._windows.get(cluster.name)
            self._windows[cluster.name] = is_open
            if previous is None or previous == is_open or not windows:
                continue
            change = next_change(now, windows)
            event = "maintenance.window_opened" if is_open else "maintenance.window_closed"
            message = (
                f"reboot maintenance window of {cluster.name} is {'open' if is_open else 'closed'}"
                + (f" until {change.isoformat()}" if change is not None else "")
            )
            log.info(event, cluster=cluster.name, detail=message)
            self._store.audit(
                at=now,
                cluster=cluster.name,
                event=event,
                reason="MaintenanceWindow",
                message=message,
            )
        return states

    # -- stale workflows -------------------------------------------------------------------
    async def expire_stale(self) -> list[str]:
        """Fail running workflows with no progress for longer than ``schedule.staleAfter``."""
        bound = self._config.schedule.stale_after
        now = self._clock.now()
        expired = []
        for wf in self._store.workflows(state=RUNNING):
            journal = self._store.steps(wf.id)
            # The daemon's own start counts as progress: a workflow resumed after a long
            # downtime gets the full bound again.
            last = max(
                [wf.started_at, wf.updated_at, self._started_at, *(s["at"] for s in journal)]
            )
            idle = now - last
            if idle <= bound:
                continue
            reason = (
                f"no progress for {idle:.0f}s at step {wf.step} (schedule.staleAfter "
                f"{bound:.0f}s); the last journal line was "
                f"{journal[-1]['step']}/{journal[-1]['status']}"
                if journal
                else f"no progress for {idle:.0f}s (schedule.staleAfter {bound:.0f}s)"
            )
            with structlog.contextvars.bound_contextvars(
                cluster=wf.cluster, pool=wf.pool, node=wf.node, workflow=wf.id
            ):
                log.error("remediation.stale", step=wf.step, idle=round(idle))
            if await self._runner.expire(wf.id, reason) is not None:
                expired.append(wf.id)
        return expired


def _owned(cluster: str) -> dict[str, str]:
    return {TAG_MANAGED: "true", TAG_CLUSTER: cluster}
