"""``healer run --replicas``: the wiring of per-cluster ownership (docs/state-backends.md).

On PostgreSQL every daemon is a replica: it owns the clusters whose leases it holds
(:mod:`healer.jobs.ownership`), its planner decides only for them, its workflows run only for
them, and every step commit and destructive provider call is fenced by the lease's epoch
(:mod:`healer.store.leases`). On SQLite (one host; the state directory's lock keeps a second
daemon out) the daemon owns every cluster, as it always did, and none of this is built.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from healer.clock import Clock
from healer.config import HealerConfig
from healer.jobs.ownership import Ownership
from healer.jobs.scheduler import JobScheduler
from healer.planner.planner import Planner
from healer.store.leases import LeaseFence, LeaseTable, StoreLeaseDB
from healer.store.schema import POSTGRES
from healer.store.sqlite import Store
from healer.workflow.runner import WorkflowRunner

log = structlog.get_logger(__name__)

DEFAULT_LEASE_SECONDS = 15.0


def replica_name(given: str | None) -> str:
    """This replica's name in the lease table: ``--replica-id``, else host name and pid (two
    daemons on one host, as in the tests, are two replicas)."""
    return given or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Replicas:
    fence: LeaseFence
    table: LeaseTable
    lease_seconds: float
    now: Callable[[], float]  # the database's wall clock

    @classmethod
    def build(
        cls, store: Store, config: HealerConfig, clock: Clock, *, replica: str | None
    ) -> Replicas | None:
        """The fence of a replica on a shared PostgreSQL store (set as the store's commit
        hook); None on SQLite."""
        if store.dialect != POSTGRES:
            return None
        lease = config.state.lease_seconds if config.state else DEFAULT_LEASE_SECONDS
        table = LeaseTable(StoreLeaseDB(store))
        fence = LeaseFence(
            table,
            me=replica_name(replica),
            now=store.db_now,
            timeline=clock.now,
            # A provider call starts only with a third of the lease left: the renewal runs
            # every third, so a live replica always has more.
            margin=lease / 3,
        )
        store.set_fence(fence.store_check)
        log.info("ownership.replica", replica=fence.me, lease_seconds=lease)
        return cls(fence=fence, table=table, lease_seconds=lease, now=store.db_now)

    def start(
        self,
        *,
        clusters: Callable[[], list[str]],
        runner: WorkflowRunner,
        planner: Planner,
        scheduler: JobScheduler,
        on_owned: Callable[[frozenset[str]], None] | None = None,
    ) -> Ownership:
        """The ownership job on ``scheduler``: a lost cluster's workflows stop here, a won
        cluster's resume from their journal and its planner looks at it. ``on_owned`` hears
        the clusters owned after each change (the MQTT subscriptions follow them)."""

        def owned() -> None:
            if on_owned is not None:
                on_owned(frozenset(self.fence.held))

        async def lost(cluster: str) -> None:
            owned()
            await runner.abandon(cluster)

        async def gained(cluster: str) -> None:
            owned()
            await runner.resume_all(cluster)
            await planner.consider(cluster)

        planner.watch_ownership(self.fence.owns)
        ownership = Ownership(
            table=self.table,
            fence=self.fence,
            clusters=clusters,
            lease_seconds=self.lease_seconds,
            now=self.now,
            on_lost=lost,
            on_gained=gained,
        )
        every = self.lease_seconds / 3
        scheduler.every("ownership", every, ownership.run_once, timeout=every)
        return ownership
