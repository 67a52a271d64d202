"""The planner: turns unhealthy verdicts into remediation workflows, through the guards.

Deciding is separate from doing: the planner builds a snapshot, asks the pure guards, and either
records a refusal (audit + log, never silent) or persists a new workflow and hands it to the
runner. It also owns the tripping of the circuit breakers (the remediation breaker and the
bad-upgrade breaker; a reset starts a fresh window for both).

Decisions freeze, as a whole, while they cannot be trusted or kept: for one cluster while its
API is unreachable (``ApiUnreachable``: the data is stale), for every cluster while the state
database takes no writes (``StateUnwritable``: a workflow that cannot be journalled must not
start; :mod:`healer.store.writable`). Both thaw by themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from healer.clock import Clock
from healer.config import ClusterConfig, HealerConfig
from healer.errors import StateUnwritable
from healer.health.tracker import Change, HealthTracker
from healer.model import Health, NodeKey, NodeObservation, Role, Verdict
from healer.naming import machine_name
from healer.planner.alert_blocks import AlertBlocks
from healer.planner.etcd_quorum import EtcdView
from healer.planner.guards import (
    REBOOT_TIMEOUT,
    TOO_MANY_UNHEALTHY_IN_CLUSTER,
    TOO_MANY_UNHEALTHY_IN_POOL,
    TOO_MANY_UNHEALTHY_IN_ZONE,
    ClusterSnapshot,
    NodeStatus,
    Refusal,
    breaker_trip_reason,
    check,
    node_status,
    reboot_failure_trip_reason,
)
from healer.store.leases import Fenced
from healer.store.recorder import Recorder
from healer.store.sqlite import (
    BREAKER_BAD_UPGRADE,
    BREAKER_REMEDIATION,
    FAILED,
    RUNNING,
    Store,
    WorkflowRecord,
    pause_scope,
)
from healer.store.writable import STATE_UNWRITABLE
from healer.telemetry import metrics

log = structlog.get_logger("healer.planner")

HOUR = 3600.0
# A node whose remediation failed is not retried automatically for this long: a human looks first
# (the breaker counts the failure too). `healer remediate NODE` overrides it.
FAILED_COOLDOWN = HOUR
UNMANAGED_POOL = "UnmanagedPool"
RECENTLY_FAILED = "RemediationFailedRecently"
DRY_RUN = "DryRun"
# `healer remediate` of a node whose verdict is not UNHEALTHY needs the operator's confirmation
# (a prompt, or --yes); the workflow of such a node carries the reason MANUAL, and its drain
# never overrides a PodDisruptionBudget unless forced (healer.workflow.drain).
CONFIRMATION_REQUIRED = "ConfirmationRequired"
NOT_SYNCED = "NotSynced"  # a manual request before the cluster's node list was read whole
MANUAL = "Manual"
API_UNREACHABLE = "ApiUnreachable"

_STORM_REASONS = frozenset(
    {TOO_MANY_UNHEALTHY_IN_POOL, TOO_MANY_UNHEALTHY_IN_ZONE, TOO_MANY_UNHEALTHY_IN_CLUSTER}
)

StartWorkflow = Callable[[WorkflowRecord], Awaitable[None]]


class EtcdReader(Protocol):
    """One cluster's etcd as the guards read it (:class:`healer.etcd.EtcdClient`)."""

    async def view(self) -> EtcdView: ...


def _launched(snapshot: ClusterSnapshot, node: str) -> ClusterSnapshot:
    """``snapshot`` once ``node``'s remediation has started: the next candidate's guards count
    it as being remediated and as started this hour (what a fresh snapshot would read back
    from the store, without reading it again)."""
    return dataclasses.replace(
        snapshot,
        nodes=tuple(
            dataclasses.replace(n, remediating=True) if n.node == node else n
            for n in snapshot.nodes
        ),
        started_last_hour=snapshot.started_last_hour + 1,
    )


@dataclass(frozen=True)
class _StoreView:
    """What a plan reads of the store beside the tracker's nodes: the running workflows and
    those started in the last hour (by cluster), the pauses and the breakers. Read once per
    snapshot, or once for every cluster of a :meth:`Planner.recheck`."""

    running: Mapping[str, frozenset[str]]  # cluster -> nodes being remediated
    started: Mapping[str, int]  # cluster -> remediations started in the last hour
    pauses: Mapping[str, tuple[float, str]]
    breakers: Mapping[str, tuple[str, float]]
    bad_upgrade: Mapping[str, tuple[str, float]]
    # The planner's launch count when it was read: a view older than a launch of this process
    # misses that workflow (it would start the same node twice), so a plan reads again.
    launches: int = 0

    @classmethod
    def read(
        cls, store: Store, *, now: float, cluster: str | None = None, launches: int = 0
    ) -> _StoreView:
        running: dict[str, set[str]] = {}
        for wf in store.workflows(cluster=cluster, state=RUNNING):
            running.setdefault(wf.cluster, set()).add(wf.node)
        started: dict[str, int] = {}
        for wf in store.workflows(cluster=cluster, since=now - HOUR):
            started[wf.cluster] = started.get(wf.cluster, 0) + 1
        return cls(
            running={c: frozenset(nodes) for c, nodes in running.items()},
            started=started,
            pauses=store.pauses(),
            breakers=store.breakers(),
            bad_upgrade=store.breakers(kind=BREAKER_BAD_UPGRADE),
            launches=launches,
        )


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
        blocks: AlertBlocks | None = None,
        workflow_ids: Callable[[], str] | None = None,
    ) -> None:
        self._config = config
        # New workflow ids (the replacement's name is made from it): random, but the same on
        # every run in `healer simulate`.
        self._new_id = workflow_ids or (lambda: uuid.uuid4().hex[:12])
        self._store = store
        self._record = Recorder(store, clock=clock, log=log).record
        self._clock = clock
        self._tracker = tracker
        self._start = start
        self._dry_run = dry_run or config.dry_run
        self._blocks = blocks
        self._locks: dict[str, asyncio.Lock] = {}
        self._launches = 0  # workflows this planner started: tells a stale _StoreView
        self._last_refusal: dict[NodeKey, str] = {}
        self._frozen: dict[str, str] = {}
        self._storms: dict[str, float] = self._recent_storms()
        self._awaiting_sync: set[str] = set()  # clusters whose wait for a full list was logged
        # The nodes of a cluster that hold a reboot grant (the arbiter's, when there is one):
        # they count as out of service in the guards, like the rebooting ones.
        self._reboot_grants: Callable[[str], Collection[str]] | None = None
        # etcd per cluster (etcd.mode other than off): the guards judge quorum by it.
        self._etcd: Mapping[str, EtcdReader] = {}
        self._owns: Callable[[str], bool] = lambda cluster: True

    def watch_ownership(self, owns: Callable[[str], bool]) -> None:
        """Decide only for the clusters this replica owns (healer run --replicas): another
        replica's are its to decide."""
        self._owns = owns

    def owns(self, cluster: str) -> bool:
        """Whether this daemon decides for ``cluster`` (always, but with --replicas)."""
        return self._owns(cluster)

    def watch_etcd(self, readers: Mapping[str, EtcdReader]) -> None:
        """Let the guards read etcd's members and health (``healer.etcd``) per cluster."""
        self._etcd = readers

    async def _with_etcd(
        self, cluster: ClusterConfig, snapshot: ClusterSnapshot, *, node: str | None = None
    ) -> ClusterSnapshot:
        """``snapshot`` with etcd's view, read now when a control-plane candidate is up for a
        decision (``node``, or any unhealthy one); an unreadable etcd is a view with its error."""
        if not cluster.etcd.enabled:
            return snapshot
        wanted = any(
            n.role is Role.CONTROL_PLANE
            and (n.node == node if node is not None else n.health is Health.UNHEALTHY)
            for n in snapshot.nodes
        )
        if not wanted:
            return snapshot
        reader = self._etcd.get(cluster.name)
        if reader is None:
            view = EtcdView(error="healer has no etcd client for this cluster")
        else:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a stop that comes
                # as the view does (gh-86296; healer/sources/reconnect.py).
                async with asyncio.timeout(3 * cluster.etcd.timeout):
                    view = await reader.view()
            except TimeoutError:
                view = EtcdView(error=f"no answer within {3 * cluster.etcd.timeout:.0f}s")
        return dataclasses.replace(snapshot, etcd=view)

    def watch_reboot_grants(self, grants: Callable[[str], Collection[str]]) -> None:
        """Let the guards see the reboot arbiter's grants (``RebootArbiter.granted_nodes``)."""
        self._reboot_grants = grants

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config
        self._dry_run = self._dry_run or config.dry_run

    def frozen_reason(self, cluster: str) -> str | None:
        """Why decisions for ``cluster`` are frozen (the state database takes no writes, or the
        cluster's API is unreachable), or None."""
        problem = self._store.writes.problem
        if problem is not None:
            return f"{STATE_UNWRITABLE}: {problem}"
        return self._frozen.get(cluster)

    def frozen_code(self, cluster: str) -> str | None:
        """The stable reason of :meth:`frozen_reason`: ``StateUnwritable``, ``ApiUnreachable``
        or None."""
        if self._store.writes.problem is not None:
            return STATE_UNWRITABLE
        return API_UNREACHABLE if cluster in self._frozen else None

    # -- hooks ------------------------------------------------------------------------------
    async def on_api_availability(self, cluster: str, available: bool, reason: str) -> None:
        """While healer cannot see a cluster's API its data is stale: decide nothing there."""
        if available and cluster in self._frozen:
            del self._frozen[cluster]
            self._record(
                "planner.unfrozen",
                cluster=cluster,
                reason="ApiReachable",
                message=f"the API of {cluster} is reachable again",
            )
            await self.consider(cluster)
        elif not available and cluster not in self._frozen:
            self._frozen[cluster] = reason
            self._record(
                "planner.frozen",
                cluster=cluster,
                reason="ApiUnreachable",
                message=f"the API of {cluster} is unreachable ({reason}); no decisions there "
                "until it is back",
                level="warning",
                api_error=reason,
            )

    async def on_state_writability(self, problem: StateUnwritable | None) -> None:
        """The state database stopped taking writes (``problem``) or takes them again (None):
        freeze every cluster's decisions, or thaw them and look again at once."""
        clusters = [c.name for c in self._config.clusters]
        event = "planner.frozen" if problem is not None else "planner.unfrozen"
        for cluster in clusters:
            # One row per cluster (held until the database takes writes), one line for all.
            self._record(
                event,
                cluster=cluster,
                reason=STATE_UNWRITABLE if problem is not None else "StateWritable",
                message=f"no decisions in {cluster} until healer can write its state again: "
                f"{problem}"
                if problem is not None
                else f"the state database takes writes again; deciding again in {cluster}",
                log_line=False,
            )
        if problem is not None:
            log.warning(
                event,
                cluster="*",
                reason=STATE_UNWRITABLE,
                detail=str(problem),
                kind=problem.kind,
                clusters=clusters,
            )
            return
        log.info(event, cluster="*", reason="StateWritable", clusters=clusters)
        for cluster in clusters:
            # What the frozen time held back: the breakers count the rows written just now.
            self._maybe_trip(cluster)
        await self.recheck()

    async def on_health_change(
        self, obs: NodeObservation, verdict: Verdict, previous: Verdict | None
    ) -> None:
        await self.on_health_changes([(obs, verdict, previous)])

    async def on_health_changes(self, changes: Sequence[Change]) -> None:
        """Changes of health decided together (a drained batch of events, the nodes whose
        deadlines passed at the same moment): the breakers and the plan of each cluster
        concerned run once, over all of them, not once per node."""
        clusters: dict[str, bool] = {}  # cluster -> whether a node of it became unhealthy
        for obs, verdict, _ in changes:
            unhealthy = verdict.health is Health.UNHEALTHY
            clusters[obs.cluster] = clusters.get(obs.cluster, False) or unhealthy
            if not unhealthy:
                self._last_refusal.pop(obs.key, None)
        for cluster, unhealthy in clusters.items():
            if unhealthy:
                self._maybe_trip(cluster)
            await self.consider(cluster)

    async def on_workflow_finished(self, wf: WorkflowRecord) -> None:
        self._maybe_trip(wf.cluster)
        await self.consider(wf.cluster)

    async def recheck(self) -> None:
        """Re-plan every cluster: what no event announces (pauses and breaker resets made by the
        CLI in the shared database, budgets that free up). The daemon runs it as a periodic job
        (``recheck``, :mod:`healer.jobs.scheduler`)."""
        view = _StoreView.read(self._store, now=self._clock.now(), launches=self._launches)
        for cluster in self._config.clusters:
            await self.consider(cluster.name, view=view)

    # -- deciding ---------------------------------------------------------------------------
    def snapshot(self, cluster: ClusterConfig, view: _StoreView | None = None) -> ClusterSnapshot:
        """The cluster as the guards see it: O(nodes of the cluster), and a fixed number of
        store reads (none with ``view``, what :meth:`recheck` read once for every cluster)."""
        now = self._clock.now()
        if view is None:
            view = _StoreView.read(self._store, now=now, cluster=cluster.name)
        running = view.running.get(cluster.name, frozenset())
        granted = self._reboot_grants(cluster.name) if self._reboot_grants else frozenset()
        nodes = tuple(
            node_status(
                obs,
                verdict,
                remediating=obs.node in running,
                reboot_granted=obs.node in granted,
            )
            for obs, verdict in self._tracker.nodes(cluster.name)
        )
        pauses = view.pauses
        breakers = view.breakers
        return ClusterSnapshot(
            cluster=cluster.name,
            nodes=nodes,
            started_last_hour=view.started.get(cluster.name, 0),
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
            bad_upgrade_breaker=view.bad_upgrade.get(cluster.name, (None, 0.0))[0],
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

    async def consider(self, cluster_name: str, *, view: _StoreView | None = None) -> None:
        """Plan ``cluster_name``: every unhealthy node not being remediated, through the
        guards. A cluster with no unhealthy node costs nothing (the tracker's counts say so);
        ``view``: the store's rows read once for a whole :meth:`recheck`."""
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            return
        if self.frozen_reason(cluster_name) is not None:
            return
        if not self._owns(cluster_name):
            return
        if not self._synced(cluster_name):
            return
        if not self._tracker.counts(cluster_name)[Health.UNHEALTHY]:
            return  # no candidate: nothing to decide
        lock = self._locks.setdefault(cluster_name, asyncio.Lock())
        async with lock:
            if view is not None and view.launches != self._launches:
                # Another plan (a health change, a manual request) started a workflow after
                # the view was read, while this one waited: its rows are stale.
                view = None
            snapshot = await self._with_etcd(cluster, self.snapshot(cluster, view))
            candidates = sorted(
                (n for n in snapshot.nodes if n.health is Health.UNHEALTHY and not n.remediating),
                # Workers before control plane; then by name for a stable order.
                key=lambda n: (n.role != "worker", n.node),
            )
            failed = self._failed_by_node(cluster.name) if candidates else {}
            # Refusals are written together (one store transaction), before any launch.
            refused: list[tuple[NodeStatus, Refusal]] = []
            for candidate in candidates:
                refusal = self._precheck(
                    cluster, candidate, failed.get(candidate.node, [])
                ) or check(candidate, snapshot, cluster)
                if refusal is None and self._dry_run:
                    refusal = Refusal(
                        reason=DRY_RUN,
                        message=f"dry run: would remediate {cluster.name}/{candidate.node}",
                        scope=f"node:{cluster.name}/{candidate.node}",
                    )
                if refusal is not None:
                    if refusal.reason in _STORM_REASONS:
                        self._storms[refusal.scope] = self._clock.now()
                    refused.append((candidate, refusal))
                    continue
                self._refuse_all(cluster, refused)
                refused = []
                try:
                    await self._launch(cluster, candidate)
                except StateUnwritable:
                    return  # nothing started; frozen now, until the database takes writes
                except Fenced:
                    return  # lost the cluster to another replica meanwhile: nothing started
                snapshot = _launched(snapshot, candidate.node)
            self._refuse_all(cluster, refused)

    def _refuse_all(
        self, cluster: ClusterConfig, refused: Sequence[tuple[NodeStatus, Refusal]]
    ) -> None:
        """Record ``refused`` (:meth:`_refuse` each) in one store transaction. If it is lost
        whole, the daemon's store holds its rows until it takes writes again (Store.batch);
        a process that does not retry records them again at the next look (the database's
        failure itself is logged and counted once per episode by the store, and freezes
        decisions)."""
        if not refused:
            return
        keys = [NodeKey(cluster.name, node.node) for node, _ in refused]
        before = {key: self._last_refusal.get(key) for key in keys}
        try:
            with self._store.batch():
                for node, refusal in refused:
                    self._refuse(cluster, node, refusal)
        except StateUnwritable:
            if self._store.writes.retrying:
                return  # the rows are held: recorded again, they would be there twice
            for key, reason in before.items():
                if reason is None:
                    self._last_refusal.pop(key, None)
                else:
                    self._last_refusal[key] = reason

    def _synced(self, cluster_name: str) -> bool:
        """The informer barrier: nothing is decided for a cluster until its node list has been
        folded in whole, so the guards see every node (logged once per wait, not per event)."""
        if self._tracker.synced(cluster_name):
            if cluster_name in self._awaiting_sync:
                self._awaiting_sync.discard(cluster_name)
                log.info("planner.synced", cluster=cluster_name)
            return True
        if cluster_name not in self._awaiting_sync:
            self._awaiting_sync.add(cluster_name)
            log.info(
                "planner.waiting_for_sync",
                cluster=cluster_name,
                reason="NotSynced",
                detail=f"no decisions for {cluster_name} until its node list has been read whole",
            )
        return False

    def _failed_by_node(self, cluster: str) -> dict[str, list[WorkflowRecord]]:
        """The cluster's failed workflows by node: one read per plan, not one per candidate."""
        found: dict[str, list[WorkflowRecord]] = {}
        for wf in self._store.workflows(cluster=cluster, state=FAILED):
            found.setdefault(wf.node, []).append(wf)
        return found

    def _precheck(
        self,
        cluster: ClusterConfig,
        node: NodeStatus,
        failed_here: Sequence[WorkflowRecord] | None = None,
    ) -> Refusal | None:
        """The refusals before the guards; ``failed_here``: the node's failed workflows, when
        the caller read them already."""
        if failed_here is None:
            failed_here = self._store.workflows(cluster=cluster.name, node=node.node, state=FAILED)
        scope = f"node:{cluster.name}/{node.node}"
        if cluster.pool(node.pool) is None:
            return Refusal(
                reason=UNMANAGED_POOL,
                message=f"node {cluster.name}/{node.node} is in pool {node.pool!r}, which is not in "
                "the configuration: healer only replaces machines of pools it manages",
                scope=scope,
            )
        now = self._clock.now()
        # A failure that left the pool a machine short (old machine fenced, no replacement) must
        # not hold back restoring it for an hour: it waits only the retry backoff's cap.
        short_cooldown = cluster.remediation.retry.max_delay
        failed, short = [], []
        for wf in failed_here:
            if self._store.left_pool_short(wf.id):
                if (wf.finished_at or 0) >= now - short_cooldown:
                    short.append(wf)
            elif (wf.finished_at or 0) >= now - FAILED_COOLDOWN:
                failed.append(wf)
        if short and not failed:
            return Refusal(
                reason=RECENTLY_FAILED,
                message=f"remediation {short[-1].id} of {cluster.name}/{node.node} failed and left "
                f"pool {node.pool} a machine short ({short[-1].error}); trying again "
                f"{short_cooldown:.0f}s after the failure",
                scope=scope,
            )
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
        obs = self._tracker.observation(key)
        self._record(
            "remediation.would_remediate" if refusal.reason == DRY_RUN else "remediation.refused",
            cluster=cluster.name,
            node=node.node,
            pool=node.pool,
            reason=refusal.reason,
            message=refusal.message,
            evidence={"scope": refusal.scope, "recent": list(obs.recent[-5:]) if obs else []},
            level="warning",
            metric=metrics.REFUSALS.labels(cluster.name, refusal.reason),
            scope=refusal.scope,
        )

    async def _launch(
        self, cluster: ClusterConfig, node: NodeStatus, *, forced: bool = False
    ) -> WorkflowRecord:
        key = NodeKey(cluster.name, node.node)
        self._last_refusal.pop(key, None)
        verdict = self._tracker.verdict(key)
        obs = self._tracker.observation(key)
        now = self._clock.now()
        wf_id = self._new_id()
        pool = node.pool or ""
        pool_cfg = cluster.pool(pool)
        # In the zone of the machine it replaces, so a repair keeps the pool spread over zones.
        replacement = (
            pool_cfg.replacement_name(cluster.name, node.node, wf_id)
            if pool_cfg is not None
            else machine_name(cluster.name, pool, wf_id)
        )
        wf = WorkflowRecord(
            id=wf_id,
            cluster=cluster.name,
            pool=node.pool,
            node=node.node,
            role=node.role,
            state=RUNNING,
            step="cordon",
            # A node replaced on request while not unhealthy: say so, not "Healthy".
            reason=verdict.reason if verdict and verdict.needs_remediation else MANUAL,
            evidence={
                "verdict": verdict.message
                if verdict and verdict.needs_remediation
                else "manual request (`healer remediate`)",
                "recent": list(obs.recent) if obs else [],
                # Both signals with their times when the verdict was corroborated.
                **(
                    {"signals": list(verdict.signals)}
                    if verdict and verdict.needs_remediation and verdict.signals
                    else {}
                ),
            },
            replacement_name=replacement,
            started_at=now,
            updated_at=now,
            forced=forced,
        )
        self._launches += 1
        self._store.create_workflow(wf)
        self._record(
            "remediation.started",
            at=now,
            cluster=cluster.name,
            node=node.node,
            pool=node.pool,
            workflow_id=wf_id,
            reason=wf.reason,
            message=f"replacing {cluster.name}/{node.node} with {wf.replacement_name}: "
            f"{wf.evidence['verdict']}",
            evidence=wf.evidence,
            metric=metrics.REMEDIATIONS.labels(cluster.name, "started"),
            replacement=wf.replacement_name,
        )
        await self._start(wf)
        return wf

    def drain_within(self, cluster_name: str, pool: str | None) -> float | None:
        """How long a workflow in ``pool`` may take to get through its drain, for `healer
        remediate` to wait: ``drainTimeout``, plus ``nodeStartupTimeout`` in the surge order
        (the replacement is created and joins before the drain)."""
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            return None
        policy = cluster.remediation_for(pool)
        surge = policy.strategy == "surge"
        startup = cluster.health_for(pool).node_startup_timeout if surge else 0.0
        return policy.drain_timeout + startup

    async def remediate_now(
        self, cluster_name: str, node: str, *, force: bool, confirmed: bool = False
    ) -> WorkflowRecord | Refusal:
        """A human asked for it: the same guards unless ``force``.

        A node whose verdict is not UNHEALTHY is replaced only when the operator ``confirmed``
        it (`healer remediate` asks on a terminal, or takes --yes); otherwise the answer is
        ``ConfirmationRequired``. The verdict is the daemon's, now: the CLI's view of the state
        database may be older. Its drain then respects PodDisruptionBudgets unless ``force``.
        """
        cluster = self._config.cluster(cluster_name)
        if cluster is None:
            raise KeyError(f"unknown cluster {cluster_name!r}")
        if (problem := self._store.writes.problem) is not None:
            # Not even --force: a workflow that cannot be journalled cannot be resumed.
            return Refusal(STATE_UNWRITABLE, str(problem), f"cluster:{cluster_name}")
        if not force and not self._tracker.synced(cluster_name):
            # Not a node's refusal (the node may not even be folded in yet): the request's own
            # audit line (operator.remediate) records it.
            return Refusal(
                NOT_SYNCED,
                f"healer has not read the node list of {cluster_name} whole yet; it decides "
                "nothing on part of it (ask again in a moment, or --force)",
                f"cluster:{cluster_name}",
            )
        async with self._locks.setdefault(cluster_name, asyncio.Lock()):
            snapshot = await self._with_etcd(cluster, self.snapshot(cluster), node=node)
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
            elif status.health is not Health.UNHEALTHY and not confirmed:
                pdbs = (
                    "with --force its drain overrides PodDisruptionBudgets after drainTimeout"
                    if force
                    else "its drain will respect PodDisruptionBudgets (--force overrides them)"
                )
                refusal = Refusal(
                    CONFIRMATION_REQUIRED,
                    f"{cluster_name}/{node} is {status.health} ({status.reason or 'no reason'}), "
                    "not unhealthy: replacing it needs a confirmation (answer the prompt, or "
                    f"pass --yes); {pdbs}",
                    scope,
                )
            elif not force:
                refusal = check(status, snapshot, cluster)
            if refusal is not None:
                self._refuse(cluster, status, refusal)
                return refusal
            try:
                return await self._launch(cluster, status, forced=force)
            except StateUnwritable as exc:
                return Refusal(STATE_UNWRITABLE, str(exc), f"cluster:{cluster_name}")

    # -- breakers ---------------------------------------------------------------------------
    def _maybe_trip(self, cluster_name: str) -> None:
        """Trip the cluster's breakers when their limits are reached.

        Each counts only what happened in its window *and* after its last reset: a reset starts
        a fresh window, or the same old entries would open it again seconds later.
        """
        cluster = self._config.cluster(cluster_name)
        if cluster is None or self._store.writes.problem is not None:
            # Frozen: nothing starts, and what happened meanwhile is counted when it is written.
            return
        try:
            self._trip_if_due(cluster)
        except StateUnwritable:
            return  # frozen from now on; counted again once the database takes writes

    def _trip_if_due(self, cluster: ClusterConfig) -> None:
        cluster_name = cluster.name
        now = self._clock.now()
        policy = cluster.breaker
        if cluster_name not in self._store.breakers(kind=BREAKER_REMEDIATION):
            since = self._window_start(cluster_name, BREAKER_REMEDIATION, now - policy.window)
            reason = breaker_trip_reason(
                failures_in_window=self._store.failed_since(cluster_name, since),
                new_unhealthy_in_window=self._store.count_audit(
                    cluster=cluster_name, event="node.unhealthy", since=since
                ),
                policy=policy,
            )
            if reason:
                self._open(cluster_name, BREAKER_REMEDIATION, reason, now)
        if cluster_name not in self._store.breakers(kind=BREAKER_BAD_UPGRADE):
            since = self._window_start(
                cluster_name, BREAKER_BAD_UPGRADE, now - policy.reboot_failure_window
            )
            reason = reboot_failure_trip_reason(
                reboot_failures_in_window=self._store.count_audit(
                    cluster=cluster_name, event="node.unhealthy", since=since, reason=REBOOT_TIMEOUT
                ),
                policy=policy,
            )
            if reason:
                self._open(cluster_name, BREAKER_BAD_UPGRADE, reason, now)

    def _window_start(self, cluster_name: str, kind: str, window_start: float) -> float:
        reset_at = self._store.breaker_reset_at(cluster_name, kind=kind)
        if reset_at is None:
            return window_start
        # Strictly after the reset: an entry of the same instant belongs to the old window.
        return max(window_start, math.nextafter(reset_at, math.inf))

    def _open(self, cluster_name: str, kind: str, reason: str, now: float) -> None:
        if not self._store.open_breaker(cluster_name, reason, now, kind=kind):
            return
        code, _, detail = reason.partition(": ")
        if kind == BREAKER_REMEDIATION:
            metrics.BREAKER_OPEN.labels(cluster_name).set(1)
            event, stops = "breaker.opened", f"no remediation in {cluster_name}"
        else:
            metrics.BAD_UPGRADE_BREAKER_OPEN.labels(cluster_name).set(1)
            event = "breaker.bad_upgrade_opened"
            stops = (
                f"no reboot granted in {cluster_name} and no node that failed its reboot replaced"
            )
        self._record(
            event,
            at=now,
            cluster=cluster_name,
            reason=code,
            # The reason column carries the code: the message does not repeat it.
            message=f"{detail or code}; {stops} until `healer breaker reset`",
            evidence={"breaker": kind, "reason": reason},
            level="error",
            detail=detail,
        )
