"""The planner: turns unhealthy verdicts into remediation workflows, through the guards.

Deciding is separate from doing: the planner builds a snapshot, asks the pure guards, and either
records a refusal (audit + log, never silent) or persists a new workflow and hands it to the
runner. It also owns the circuit breaker's tripping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import structlog

from healer import metrics
from healer.clock import Clock
from healer.config import ClusterConfig, HealerConfig
from healer.health.tracker import HealthTracker
from healer.model import Health, NodeKey, NodeObservation, Verdict
from healer.planner.alert_blocks import AlertBlocks
from healer.planner.guards import (
    TOO_MANY_UNHEALTHY_IN_CLUSTER,
    TOO_MANY_UNHEALTHY_IN_POOL,
    ClusterSnapshot,
    NodeStatus,
    Refusal,
    breaker_trip_reason,
    check,
)
from healer.provisioning.naming import machine_name
from healer.store.sqlite import RUNNING, Store, WorkflowRecord, pause_scope

log = structlog.get_logger("healer.planner")

HOUR = 3600.0
# A node whose remediation failed is not retried automatically for this long: a human looks first
# (the breaker counts the failure too). `healer remediate NODE` overrides it.
FAILED_COOLDOWN = HOUR
UNMANAGED_POOL = "UnmanagedPool"
RECENTLY_FAILED = "RemediationFailedRecently"
DRY_RUN = "DryRun"

_STORM_REASONS = frozenset({TOO_MANY_UNHEALTHY_IN_POOL, TOO_MANY_UNHEALTHY_IN_CLUSTER})

StartWorkflow = Callable[[WorkflowRecord], Awaitable[None]]


class Planner:
    def __init__(
        self,
        *,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        tracker: HealthTracker,
        start: StartWorkflow,
        dry_run: bool = False,
        recheck_interval: float = 15.0,
        blocks: AlertBlocks | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._tracker = tracker
        self._start = start
        self._dry_run = dry_run or config.dry_run
        self._recheck = recheck_interval
        self._blocks = blocks
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_refusal: dict[NodeKey, str] = {}
        self._frozen: dict[str, str] = {}
        self._storms: dict[str, float] = self._recent_storms()

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config
        self._dry_run = self._dry_run or config.dry_run

    def frozen_reason(self, cluster: str) -> str | None:
        """Why decisions for ``cluster`` are frozen (its API is unreachable), or None."""
        return self._frozen.get(cluster)

    # -- hooks ------------------------------------------------------------------------------
    async def on_api_availability(self, cluster: str, available: bool, reason: str) -> None:
        """While healer cannot see a cluster's API its data is stale: decide nothing there."""
        if available and cluster in self._frozen:
            del self._frozen[cluster]
            log.info("planner.unfrozen", cluster=cluster)
            self._store.audit(
                at=self._clock.now(),
                cluster=cluster,
                event="planner.unfrozen",
                reason="ApiReachable",
                message=f"the API of {cluster} is reachable again",
            )
            await self.consider(cluster)
        elif not available and cluster not in self._frozen:
            self._frozen[cluster] = reason
            log.warning("planner.frozen", cluster=cluster, reason=reason)
            self._store.audit(
                at=self._clock.now(),
                cluster=cluster,
                event="planner.frozen",
                reason="ApiUnreachable",
                message=f"the API of {cluster} is unreachable ({reason}); no decisions there "
                "until it is back",
            )

    async def on_health_change(
        self, obs: NodeObservation, verdict: Verdict, previous: Verdict | None
    ) -> None:
        if verdict.health is Health.UNHEALTHY:
            self._maybe_trip(obs.cluster)
        elif obs.key in self._last_refusal:
            del self._last_refusal[obs.key]
        await self.consider(obs.cluster)

    async def on_workflow_finished(self, wf: WorkflowRecord) -> None:
        self._maybe_trip(wf.cluster)
        await self.consider(wf.cluster)

    async def run(self) -> None:
        """Re-plan periodically: pauses and breaker resets made by the CLI, budgets that free up."""
        while True:
            await self._clock.sleep(self._recheck)
            for cluster in self._config.clusters:
                await self.consider(cluster.name)

    # -- deciding ---------------------------------------------------------------------------
    def snapshot(self, cluster: ClusterConfig) -> ClusterSnapshot:
        now = self._clock.now()
        running = {wf.node for wf in self._store.workflows(cluster=cluster.name, state=RUNNING)}
        nodes = tuple(
            NodeStatus(
                node=obs.node,
                pool=obs.pool,
                role=obs.role,
                health=verdict.health,
                remediating=obs.node in running,
                excluded=obs.excluded,
            )
            for obs, verdict in self._tracker.nodes(cluster.name)
        )
        pauses = self._store.pauses()
        breakers = self._store.breakers()
        return ClusterSnapshot(
            cluster=cluster.name,
            nodes=nodes,
            started_last_hour=len(self._store.workflows(cluster=cluster.name, since=now - HOUR)),
            global_paused=self._config.paused or "*" in pauses,
            cluster_paused=cluster.paused or pause_scope(cluster.name) in pauses,
            paused_pools=frozenset(
                p.name for p in cluster.pools if pause_scope(cluster.name, p.name) in pauses
            ),
            breaker_open=cluster.name in breakers,
            breaker_reason=breakers.get(cluster.name, ("", 0.0))[0],
            dry_run=self._dry_run,
            now=now,
            storms=dict(self._storms),
            blocking_alerts=self._blocks.active(cluster.name, now) if self._blocks else (),
        )

    def _recent_storms(self) -> dict[str, float]:
        """Seed storm times from the audit log, so a restart does not forget a storm."""
        storms: dict[str, float] = {}
        since = self._clock.now() - HOUR
        for entry in self._store.audit_log(event="remediation.refused", since=since):
            if entry.reason in _STORM_REASONS and isinstance(entry.evidence, dict):
                scope = entry.evidence.get("scope")
                if isinstance(scope, str):
                    storms[scope] = max(storms.get(scope, 0.0), entry.at)
        return storms

    async def consider(self, cluster_name: str) -> None:
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            return
        if cluster_name in self._frozen:
            return
        lock = self._locks.setdefault(cluster_name, asyncio.Lock())
        async with lock:
            snapshot = self.snapshot(cluster)
            candidates = sorted(
                (n for n in snapshot.nodes if n.health is Health.UNHEALTHY and not n.remediating),
                # Workers before control plane; then by name for a stable order.
                key=lambda n: (n.role != "worker", n.node),
            )
            for candidate in candidates:
                refusal = self._precheck(cluster, candidate) or check(candidate, snapshot, cluster)
                if refusal is None and self._dry_run:
                    refusal = Refusal(
                        reason=DRY_RUN,
                        message=f"dry run: would remediate {cluster.name}/{candidate.node}",
                        scope=f"node:{cluster.name}/{candidate.node}",
                    )
                if refusal is not None:
                    if refusal.reason in _STORM_REASONS:
                        self._storms[refusal.scope] = self._clock.now()
                    self._refuse(cluster, candidate, refusal)
                    continue
                await self._launch(cluster, candidate)
                snapshot = self.snapshot(cluster)

    def _precheck(self, cluster: ClusterConfig, node: NodeStatus) -> Refusal | None:
        scope = f"node:{cluster.name}/{node.node}"
        if cluster.pool(node.pool) is None:
            return Refusal(
                reason=UNMANAGED_POOL,
                message=f"node {cluster.name}/{node.node} is in pool {node.pool!r}, which is not in "
                "the configuration: healer only replaces machines of pools it manages",
                scope=scope,
            )
        since = self._clock.now() - FAILED_COOLDOWN
        failed = [
            wf
            for wf in self._store.workflows(cluster=cluster.name, node=node.node, state="failed")
            if (wf.finished_at or 0) >= since
        ]
        if failed:
            return Refusal(
                reason=RECENTLY_FAILED,
                message=f"remediation {failed[-1].id} of {cluster.name}/{node.node} failed "
                f"({failed[-1].error}); not retrying automatically for {FAILED_COOLDOWN:.0f}s — "
                "use `healer remediate` after a look",
                scope=scope,
            )
        return None

    def _refuse(self, cluster: ClusterConfig, node: NodeStatus, refusal: Refusal) -> None:
        key = NodeKey(cluster.name, node.node)
        if self._last_refusal.get(key) == refusal.reason:
            return  # already recorded; the audit log gets one line per change of reason
        self._last_refusal[key] = refusal.reason
        metrics.REFUSALS.labels(cluster.name, refusal.reason).inc()
        event = (
            "remediation.would_remediate" if refusal.reason == DRY_RUN else "remediation.refused"
        )
        log.warning(
            event,
            cluster=cluster.name,
            node=node.node,
            pool=node.pool,
            reason=refusal.reason,
            detail=refusal.message,
            scope=refusal.scope,
        )
        obs = self._tracker.observation(key)
        self._store.audit(
            at=self._clock.now(),
            cluster=cluster.name,
            node=node.node,
            pool=node.pool,
            event=event,
            reason=refusal.reason,
            message=refusal.message,
            evidence={"scope": refusal.scope, "recent": list(obs.recent[-5:]) if obs else []},
        )

    async def _launch(
        self, cluster: ClusterConfig, node: NodeStatus, *, forced: bool = False
    ) -> WorkflowRecord:
        key = NodeKey(cluster.name, node.node)
        self._last_refusal.pop(key, None)
        verdict = self._tracker.verdict(key)
        obs = self._tracker.observation(key)
        now = self._clock.now()
        wf_id = uuid.uuid4().hex[:12]
        pool = node.pool or ""
        wf = WorkflowRecord(
            id=wf_id,
            cluster=cluster.name,
            pool=node.pool,
            node=node.node,
            role=node.role,
            state=RUNNING,
            step="cordon",
            # A node replaced on request while not unhealthy: say so, not "Healthy".
            reason=verdict.reason if verdict and verdict.needs_remediation else "Manual",
            evidence={
                "verdict": verdict.message
                if verdict and verdict.needs_remediation
                else "manual request (`healer remediate`)",
                "recent": list(obs.recent) if obs else [],
            },
            replacement_name=machine_name(cluster.name, pool, wf_id),
            started_at=now,
            updated_at=now,
            forced=forced,
        )
        self._store.create_workflow(wf)
        metrics.REMEDIATIONS.labels(cluster.name, "started").inc()
        self._store.audit(
            at=now,
            cluster=cluster.name,
            node=node.node,
            pool=node.pool,
            workflow_id=wf_id,
            event="remediation.started",
            reason=wf.reason,
            message=f"replacing {cluster.name}/{node.node} with {wf.replacement_name}: "
            f"{wf.evidence['verdict']}",
            evidence=wf.evidence,
        )
        log.info(
            "remediation.started",
            cluster=cluster.name,
            node=node.node,
            pool=node.pool,
            workflow=wf_id,
            reason=wf.reason,
            replacement=wf.replacement_name,
        )
        await self._start(wf)
        return wf

    async def remediate_now(
        self, cluster_name: str, node: str, *, force: bool
    ) -> WorkflowRecord | Refusal:
        """A human asked for it: the same guards unless ``force``."""
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            raise KeyError(f"unknown cluster {cluster_name!r}")
        async with self._locks.setdefault(cluster_name, asyncio.Lock()):
            snapshot = self.snapshot(cluster)
            status = next((n for n in snapshot.nodes if n.node == node), None)
            if status is None:
                raise KeyError(f"healer does not know node {cluster_name}/{node}")
            scope = f"node:{cluster_name}/{node}"
            refusal: Refusal | None = None
            if status.remediating:
                refusal = Refusal(
                    "AlreadyRemediating", f"{node} is already being remediated", scope
                )
            elif cluster.pool(status.pool) is None:
                refusal = self._precheck(cluster, status)
            elif not force:
                refusal = check(status, snapshot, cluster)
            if refusal is not None:
                self._refuse(cluster, status, refusal)
                return refusal
            return await self._launch(cluster, status, forced=force)

    # -- breaker ----------------------------------------------------------------------------
    def _maybe_trip(self, cluster_name: str) -> None:
        cluster = self._config.cluster(cluster_name)
        if cluster is None or cluster_name in self._store.breakers():
            return
        now = self._clock.now()
        since = now - cluster.breaker.window
        reason = breaker_trip_reason(
            failures_in_window=self._store.failed_since(cluster_name, since),
            new_unhealthy_in_window=self._store.count_audit(
                cluster=cluster_name, event="node.unhealthy", since=since
            ),
            policy=cluster.breaker,
        )
        if reason and self._store.open_breaker(cluster_name, reason, now):
            metrics.BREAKER_OPEN.labels(cluster_name).set(1)
            log.error("breaker.opened", cluster=cluster_name, reason=reason)
            self._store.audit(
                at=now,
                cluster=cluster_name,
                event="breaker.opened",
                reason=reason.split(":", 1)[0],
                message=f"{reason}; no remediation in {cluster_name} until `healer breaker reset`",
            )
