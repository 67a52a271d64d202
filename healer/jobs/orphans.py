"""The ``orphans`` job: machines tagged as healer's that are neither a node healer knows nor
part of a running remediation.

An orphan is reported (``orphan.found``, audit and log) once it is older than its pool's
``nodeStartupTimeout`` (younger ones may still be booting) and, only with
``orphans: {destroy: true}``, destroyed once reported for ``orphans.grace``. The first report is
kept in the audit log, so the grace period survives a restart. Safety: no sweep without state
for the cluster (a lost database must not make every machine an orphan), no destroy past the
stop switches, none when orphans are at least as many as known nodes, and at most one destroy
per sweep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from healer.cloud.machines import Machine, Provider
from healer.config import ClusterConfig
from healer.health.tracker import HealthTracker
from healer.jobs.context import JobContext, owned
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL, TAG_WORKFLOW
from healer.store.sqlite import RUNNING, WorkflowRecord
from healer.telemetry import metrics

log = structlog.get_logger("healer.jobs.orphans")


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


class OrphanSweep:
    """The sweep for every cluster, and what it found last time."""

    def __init__(
        self, ctx: JobContext, *, tracker: HealthTracker, providers: Mapping[str, Provider]
    ) -> None:
        self._ctx = ctx
        self._tracker = tracker
        self._providers = providers
        self._first_listed: dict[str, float] = {}  # machine id -> first time a sweep listed it
        self._orphans_found: dict[str, dict[str, float]] = {}  # cluster -> machine id -> at
        self._orphans: dict[str, list[Orphan]] = {}
        self._destroy_skip: dict[str, str] = {}

    async def sweep(self, cluster_name: str) -> list[Orphan]:
        ctx = self._ctx
        cluster = ctx.config.cluster(cluster_name)
        if cluster is None:
            return []
        if (frozen := ctx.planner.frozen_reason(cluster_name)) is not None:
            reason = ctx.planner.frozen_code(cluster_name)
            log.info("orphan_sweep.skipped", reason=reason, detail=frozen)
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
        machines = await provider.list_machines(owned(cluster_name))
        now = ctx.clock.now()
        ages = {}
        for m in machines:
            first = self._first_listed.setdefault(m.id, now)
            # created_at is the cloud's wall clock: onto our timeline (healer/clock.py).
            born = ctx.clock.from_wall(m.created_at) if m.created_at is not None else first
            ages[m.id] = now - born
        running = ctx.store.workflows(cluster=cluster_name, state=RUNNING)
        orphans = find_orphans(cluster, machines, known_nodes=known, running=running, ages=ages)
        found = self._found(cluster_name)
        current = {o.machine.id for o in orphans}
        for machine_id in [i for i in found if i not in current]:
            del found[machine_id]  # joined, claimed or gone: a new report if it comes back
        for orphan in orphans:
            if orphan.machine.id in found:
                continue
            found[orphan.machine.id] = now
            ctx.recorder.record(
                "orphan.found",
                at=now,
                cluster=cluster_name,
                pool=orphan.machine.tags.get(TAG_POOL),
                node=orphan.machine.name,
                reason="NotInState",
                message=f"machine {orphan.machine.name} ({orphan.machine.id}) is tagged as "
                f"healer's for cluster {cluster_name} but is no node healer knows and no "
                "remediation's machine"
                + (
                    f" (destroyed after {ctx.config.orphans.grace:.0f}s unless it joins)"
                    if ctx.config.orphans.destroy
                    else " (orphans.destroy is off: reported only)"
                ),
                evidence=orphan.evidence(),
                level="warning",
                machine=orphan.machine.name,
                machine_id=orphan.machine.id,
                workflow=orphan.workflow,
            )
        metrics.ORPHANS.labels(cluster_name).set(len(orphans))
        self._orphans[cluster_name] = orphans
        if orphans and ctx.config.orphans.destroy:
            await self._destroy_one(cluster, orphans, found, known)
        return orphans

    def orphans(self, cluster: str) -> list[Orphan]:
        """The orphans of the last sweep."""
        return list(self._orphans.get(cluster, []))

    def _found(self, cluster: str) -> dict[str, float]:
        """Machine id -> first report, seeded from the audit log so the grace survives restarts."""
        if cluster not in self._orphans_found:
            seeded: dict[str, float] = {}
            for entry in self._ctx.store.audit_log(cluster=cluster, event="orphan.found"):
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
        ctx = self._ctx
        now = ctx.clock.now()
        grace = ctx.config.orphans.grace
        due = [o for o in orphans if now - found[o.machine.id] >= grace]
        if not due:
            return
        reason = ctx.stop_switch(cluster)
        if reason is None and ctx.dry_run:
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
                ctx.recorder.record(
                    "orphan.destroy_skipped",
                    at=now,
                    cluster=cluster.name,
                    reason=reason,
                    message=message,
                    evidence={"machines": [o.machine.id for o in due]},
                    level="warning",
                )
            return
        self._destroy_skip.pop(cluster.name, None)
        orphan = due[0]  # one per sweep: a mistake here costs one machine, not a pool
        m = orphan.machine
        # Re-check right before acting: it may have joined, or a remediation claimed it.
        running = ctx.store.workflows(cluster=cluster.name, state=RUNNING)
        if self._tracker.knows(cluster.name, m.name) or not find_orphans(
            cluster, [m], known_nodes=(), running=running, ages={m.id: float("inf")}
        ):
            return
        destroyed = await self._providers[cluster.name].destroy_machine(m)
        ctx.recorder.record(
            "orphan.destroyed",
            cluster=cluster.name,
            pool=m.tags.get(TAG_POOL),
            node=m.name,
            reason="OrphanGraceExpired",
            message=f"destroyed orphaned machine {m.name} ({m.id}), reported "
            f"{now - found[m.id]:.0f}s ago (grace {grace:.0f}s)"
            + ("" if destroyed else "; it was already gone"),
            evidence=orphan.evidence(),
            level="warning",
            metric=metrics.ORPHANS_DESTROYED.labels(cluster.name),
            machine=m.name,
            machine_id=m.id,
            existed=destroyed,
        )
        found.pop(m.id, None)
