"""Housekeeping jobs: full resync, drift repair, the orphan sweep, cluster policy, maintenance
windows and the expiry of stale workflows, registered on the daemon's :class:`JobScheduler`.

This is housekeeping around the remediation engine, never the engine itself: remediations are
started by the planner from health verdicts, and a job here never replaces a node. One module
per job; intervals in ``schedule:`` (``0`` turns a job off), per cluster unless said otherwise:

====================================  ==========================================================
``resync``, ``drift``                 :mod:`healer.jobs.pools`: each pool's census; machines a
                                      pool is missing created, where nothing says not to
``orphans``                           :mod:`healer.jobs.orphans`: healer's machines no node and
                                      no remediation claims, reported (destroyed if configured)
``policy``                            :mod:`healer.jobs.policy`: Pod Security labels, RBAC and
                                      the join token put back (clusters that configure them)
``maintenance`` (all clusters)        :mod:`healer.jobs.windows`: reboot windows opening and
                                      closing recorded
``stale-workflows`` (all clusters)    :mod:`healer.jobs.stale`: remediations with no progress
                                      for ``schedule.staleAfter`` failed
====================================  ==========================================================

Each job body is a plain coroutine method taking ``now`` from the injected clock, so tests call
it directly in virtual time; APScheduler only decides *when* they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog

from healer.clock import Clock
from healer.cloud.machines import Provider
from healer.config import HealerConfig
from healer.health.tracker import HealthTracker
from healer.jobs.context import JobContext
from healer.jobs.orphans import OrphanSweep
from healer.jobs.policy import ClusterPolicyJob, has_policy
from healer.jobs.pools import PoolJobs
from healer.jobs.scheduler import Body, JobScheduler
from healer.jobs.stale import StaleWorkflows
from healer.jobs.windows import MaintenanceWindows
from healer.kube.client import KubeClient
from healer.planner.planner import Planner
from healer.provisioning.keydelivery import KeyDelivery
from healer.provisioning.pools import UserData
from healer.store.recorder import Recorder
from healer.store.sqlite import Store
from healer.workflow.runner import WorkflowRunner

log = structlog.get_logger("healer.jobs")

# A job that takes longer than its interval (and at least this) is stuck, not slow.
MIN_JOB_TIMEOUT = 30.0


class PeriodicJobs:
    """The daemon's housekeeping jobs (one object per job) and their registration."""

    def __init__(
        self,
        *,
        scheduler: JobScheduler,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        tracker: HealthTracker,
        planner: Planner,
        runner: WorkflowRunner,
        providers: Mapping[str, Provider],
        kube: Mapping[str, KubeClient],
        user_data: UserData,
        dry_run: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        self._scheduler = scheduler
        self.ctx = ctx = JobContext(
            config=config,
            store=store,
            clock=clock,
            planner=planner,
            recorder=Recorder(store, clock=clock, log=log),
            dry_run=dry_run or config.dry_run,
        )
        self.pools = PoolJobs(
            ctx,
            providers=providers,
            kube=kube,
            user_data=user_data,
            keys=KeyDelivery(state_dir, clock=clock) if state_dir is not None else None,
        )
        self.orphans = OrphanSweep(ctx, tracker=tracker, providers=providers)
        self.policy = ClusterPolicyJob(ctx, kube=kube, state_dir=state_dir)
        self.windows = MaintenanceWindows(ctx)
        self.stale = StaleWorkflows(ctx, runner=runner)
        self._registered: set[str] = set()
        self._register()

    def reconfigure(self, config: HealerConfig) -> None:
        """New intervals and policies; a job already running finishes with the old ones."""
        self.ctx.reconfigure(config)
        self._register()

    def intervals(self) -> dict[str, float]:
        """Job id -> interval in seconds, for the jobs the configuration turns on."""
        config = self.ctx.config
        s = config.schedule
        jobs: dict[str, float] = {}
        for cluster in config.clusters:
            for name, every in (
                ("resync", s.resync),
                ("drift", s.drift_repair),
                ("orphans", s.orphan_sweep),
                ("policy", s.policy_reconcile if has_policy(cluster) else 0.0),
            ):
                if every > 0:
                    jobs[f"{name}:{cluster.name}"] = every
        if s.maintenance > 0:
            jobs["maintenance"] = s.maintenance
        if s.stale_workflows > 0:
            jobs["stale-workflows"] = s.stale_workflows
        return jobs

    def _register(self) -> None:
        intervals = self.intervals()
        for job_id in sorted(self._registered - intervals.keys()):
            self._scheduler.remove(job_id)
        for job_id, every in intervals.items():
            self._scheduler.every(
                job_id, every, self._body(job_id), timeout=max(MIN_JOB_TIMEOUT, every)
            )
        self._registered = set(intervals)

    def _body(self, job_id: str) -> Body:
        kind, _, cluster = job_id.partition(":")
        if kind == "maintenance":
            return self.windows.check
        if kind == "stale-workflows":
            return self.stale.expire
        per_cluster = {
            "resync": self.pools.resync,
            "drift": self.pools.repair_drift,
            "orphans": self.orphans.sweep,
            "policy": self.policy.reconcile,
        }[kind]

        async def body() -> None:
            # Another replica's cluster is its to look after (healer run --replicas).
            if self.ctx.planner.owns(cluster):
                await per_cluster(cluster)

        return body
