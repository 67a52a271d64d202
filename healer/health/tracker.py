"""The health tracker: folds events into per-node observations, keeps verdicts current, and
re-evaluates each node exactly when its verdict could change (``next_check_at``), not by polling.

It owns node records in the store and tells the planner, through ``on_change``, whenever a
node's health changes.

It is also where the informer's "synced" barrier holds: between a cluster's ``LIST_STARTED`` and
``SYNCED`` markers (see :mod:`healer.sources.kube_watch`) events are folded but nobody is judged;
at ``SYNCED`` every node of the cluster is judged at once, the nodes first seen in that list are
recorded as adopted (``node.adopted``), and only then does ``synced(cluster)`` let the planner
decide anything there.

A node record the state database cannot take now (a full disk, a read-only database:
:mod:`healer.store.writable`) does not stop the tracker: the verdict stands in memory, the node is
marked unsaved, and :meth:`HealthTracker.save_unsaved` writes it once the database takes writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from healer.clock import Clock, DeadlineQueue
from healer.config import HealerConfig
from healer.config.provenance import ownership_of
from healer.errors import StateUnwritable
from healer.health.observe import apply_event
from healer.health.verdict import evaluate
from healer.model import EventKind, Health, NodeEvent, NodeKey, NodeObservation, Verdict
from healer.store.recorder import Recorder
from healer.store.sqlite import Store

log = structlog.get_logger("healer.health")

OnChange = Callable[[NodeObservation, Verdict, Verdict | None], Awaitable[None]]
OnSynced = Callable[[str], Awaitable[None]]
Change = tuple[NodeObservation, Verdict, Verdict | None]

# Transitions worth a line in the audit log (the rest are in the node's evidence).
_AUDITED = {
    Health.PENDING: "node.degraded",
    Health.UNHEALTHY: "node.unhealthy",
    Health.REBOOTING: "node.rebooting",
    Health.GONE: "node.deleted",
}


class HealthTracker:
    def __init__(
        self,
        *,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        on_change: OnChange | None = None,
        on_synced: OnSynced | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._record = Recorder(store, clock=clock, log=log).record
        self._clock = clock
        self._on_change = on_change
        self._on_synced = on_synced
        # Clusters whose latest list has been folded in whole since healer last lost sight of
        # them; clusters in the middle of a list -> the nodes first seen in that list (every
        # node of the cluster is judged when it ends).
        self._synced: set[str] = set()
        self._ever_synced: set[str] = set()
        self._listing: dict[str, set[NodeKey]] = {}
        self._obs: dict[NodeKey, NodeObservation] = {}
        self._verdicts: dict[NodeKey, Verdict] = {}
        self._checks: DeadlineQueue[NodeKey] = DeadlineQueue(clock)  # next_check_at per node
        # Nodes whose record (or its removal) the state database did not take: saved again
        # when it takes writes (save_unsaved).
        self._unsaved: set[NodeKey] = set()
        # Nodes with an event kept for replay in this process (_keep).
        self._kept: set[NodeKey] = set()
        for row in store.nodes():
            obs = row.observation
            if config.cluster(obs.cluster) is None:
                continue
            self._obs[obs.key] = obs
            self._verdicts[obs.key] = Verdict(
                row.health, row.reason, row.message, row.next_check_at
            )
            if row.next_check_at is not None:
                self._wake_at(row.next_check_at, obs.key)

    # -- reading ----------------------------------------------------------------------------
    def observation(self, key: NodeKey) -> NodeObservation | None:
        return self._obs.get(key)

    def verdict(self, key: NodeKey) -> Verdict | None:
        return self._verdicts.get(key)

    def nodes(self, cluster: str) -> list[tuple[NodeObservation, Verdict]]:
        return [
            (obs, self._verdicts[key])
            for key, obs in sorted(self._obs.items())
            if key.cluster == cluster and key in self._verdicts
        ]

    def knows(self, cluster: str, node: str) -> bool:
        return NodeKey(cluster, node) in self._obs

    def synced(self, cluster: str) -> bool:
        """True once the cluster's node list has been folded in whole (and no re-list is under
        way): only then does every known node have a current verdict, and may anyone decide."""
        return cluster in self._synced and cluster not in self._listing

    def unsync(self, cluster: str, reason: str) -> None:
        """healer lost sight of ``cluster`` (its API is unreachable): what it knows is stale
        until the next list has been folded in whole."""
        if cluster in self._synced:
            self._synced.discard(cluster)
            log.info("health.unsynced", cluster=cluster, reason=reason)

    def overdue(self, now: float) -> float:
        """How many seconds the most overdue scheduled re-evaluation is late (0.0 if none is).

        A healthy tracker keeps this near zero; the watchdog treats a large value as stuck.
        """
        return self._checks.overdue(now)

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config
        for key in list(self._obs):
            self._wake_at(self._clock.now(), key)

    # -- writing ----------------------------------------------------------------------------
    async def handle(self, event: NodeEvent) -> None:
        cluster = self._config.cluster(event.cluster)
        if cluster is None:
            log.warning(
                "health.event_ignored",
                cluster=event.cluster,
                node=event.node,
                reason="unknown cluster",
            )
            return
        if event.kind is EventKind.LIST_STARTED:
            self._keep(event)
            self._listing[event.cluster] = set()
            return
        if event.kind is EventKind.SYNCED:
            self._keep(event)
            await self._list_folded(event)
            return
        key = event.key
        previous = self._obs.get(key)
        if previous is None and event.kind is not EventKind.NODE_ADDED:
            # A node exists for healer once the Kubernetes API has shown it. A late heartbeat or
            # agent message for a node that is gone (or not yet listed) must not resurrect it.
            log.debug(
                "health.event_for_unknown_node",
                cluster=event.cluster,
                node=event.node,
                kind=str(event.kind),
                source=event.source,
            )
            return
        owners = ownership_of(self._config)
        if (
            event.kind is EventKind.CONDITION
            and event.condition
            and not owners.may_set(event.source, event.condition)
        ):
            # apply_event ignores it (signal provenance); say so, the source should have.
            log.warning(
                "health.condition_not_owned",
                cluster=event.cluster,
                node=event.node,
                condition=event.condition,
                status=event.status,
                source=event.source,
                owner=owners.owner(event.condition),
            )
        obs = apply_event(
            previous,
            event,
            exclude_label=cluster.remediation.exclude_label,
            pool_roles={p.name: p.role for p in cluster.pools},
            owners=owners,
        )
        listed = self._listing.get(event.cluster)
        first = event.kind is EventKind.NODE_ADDED and (previous is None or not previous.exists)
        if first:
            obs = self._first_sight(obs, in_list=listed is not None)
        self._obs[key] = obs
        if event.kind is not EventKind.HEARTBEAT and (
            key not in self._kept or _folded(obs) != _folded(previous)
        ):
            self._keep(event)
        if listed is not None:
            if first:
                listed.add(key)
            return  # judged when the whole list is in (SYNCED)
        await self._evaluate(key, trigger=event)

    def _first_sight(self, obs: NodeObservation, *, in_list: bool) -> NodeObservation:
        """A node healer has no record of: its own replacement (the workflow recorded when the
        machine was requested), or one that already existed when a list showed it (adopted)."""
        requested = self._store.replacement_requested_at(obs.cluster, obs.node)
        return obs.with_(adopted=in_list and requested is None, machine_requested_at=requested)

    async def _list_folded(self, synced: NodeEvent) -> None:
        """The cluster's list is in whole: judge every node, record adoptions, then tell."""
        cluster = synced.cluster
        fresh = self._listing.pop(cluster, set())
        keys = sorted(k for k in self._obs if k.cluster == cluster)
        changes = [c for k in keys if (c := self._judge(k, trigger=synced)) is not None]
        first = cluster not in self._ever_synced
        self._ever_synced.add(cluster)
        self._synced.add(cluster)
        adopted = sorted(k.node for k in fresh if self._obs[k].adopted)
        now = self._clock.now()
        for node in adopted:
            obs = self._obs[NodeKey(cluster, node)]
            verdict = self._verdicts[obs.key]
            shown = ", ".join(f"{t}={c.status}" for t, c in sorted(obs.conditions.items()))
            # One row per node; one line for the whole list (below).
            self._record(
                "node.adopted",
                at=now,
                cluster=cluster,
                node=node,
                pool=obs.pool,
                log_line=False,
                reason="Adopted",
                message=f"{cluster}/{node} existed when healer first saw it (created "
                f"{max(now - obs.first_seen, 0.0):.0f}s ago; {shown or 'no conditions'}): "
                f"judged by its conditions, never by its age; now {verdict.health}",
                evidence={"created_at": obs.first_seen, "health": str(verdict.health)},
            )
        if adopted:
            log.info("node.adopted", cluster=cluster, count=len(adopted), nodes=adopted)
        log.info(
            "health.synced",
            cluster=cluster,
            nodes=len(keys),
            adopted=len(adopted),
            first=first,
            unhealthy=sum(1 for k in keys if self._verdicts[k].health is Health.UNHEALTHY),
        )
        if self._on_change is not None:
            for obs, verdict, previous in changes:
                await self._on_change(obs, verdict, previous)
        if self._on_synced is not None:
            await self._on_synced(cluster)

    def _keep(self, event: NodeEvent) -> None:
        """Record ``event`` for replay (``healer simulate --history``): the list markers, each
        node's first event in this process, then only what changed its observation (no
        heartbeats: they move nothing a decision reads). A history that cannot be written now
        is lost, not retried: nothing is decided by it."""
        try:
            self._store.record_event(event)
        except StateUnwritable:
            return  # logged and counted once per episode by the store
        if event.node:
            self._kept.add(event.key)

    def forget(self, key: NodeKey) -> None:
        """Drop a node that is gone for good (its workflow finished)."""
        self._obs.pop(key, None)
        self._verdicts.pop(key, None)
        self._checks.cancel(key)
        self._persist(key)

    def _persist(self, key: NodeKey, now: float | None = None) -> None:
        """Write the node's record (or remove it, once forgotten); if the state database takes
        no writes now, remember it for :meth:`save_unsaved`."""
        try:
            obs, verdict = self._obs.get(key), self._verdicts.get(key)
            if obs is None or verdict is None:
                self._store.forget_node(key.cluster, key.node)
            else:
                self._store.save_node(obs, verdict, self._clock.now() if now is None else now)
        except StateUnwritable:
            self._unsaved.add(key)  # logged and counted once per episode by the store
        else:
            self._unsaved.discard(key)

    def save_unsaved(self) -> int:
        """Write the records the state database did not take (it takes writes again); how
        many are still unsaved (it failed again)."""
        for key in sorted(self._unsaved):
            self._persist(key)
        return len(self._unsaved)

    async def _evaluate(self, key: NodeKey, *, trigger: NodeEvent | None = None) -> None:
        change = self._judge(key, trigger=trigger)
        if change is not None and self._on_change is not None:
            await self._on_change(*change)

    def _judge(self, key: NodeKey, *, trigger: NodeEvent | None) -> Change | None:
        """Evaluate, save, log and audit one node; the change of health, if any, to tell."""
        obs = self._obs[key]
        cluster = self._config.cluster(key.cluster)
        if cluster is None:
            return None
        now = self._clock.now()
        verdict = evaluate(obs, cluster.health_for(obs.pool), now)
        previous = self._verdicts.get(key)
        self._verdicts[key] = verdict
        self._persist(key, now)
        if verdict.next_check_at is not None:
            self._wake_at(verdict.next_check_at, key)
        if previous is not None and previous.health == verdict.health:
            return None
        log.info(
            f"health.{verdict.health}",
            cluster=key.cluster,
            node=key.node,
            pool=obs.pool,
            reason=verdict.reason,
            detail=verdict.message,
            was=str(previous.health) if previous else None,
        )
        event = _AUDITED.get(verdict.health)
        if event is None and previous is not None and previous.health in _AUDITED:
            event = "node.recovered"
        if event is not None:
            # The line is the health.<state> one above, written for every change of state.
            self._record(
                event,
                at=now,
                cluster=key.cluster,
                node=key.node,
                pool=obs.pool,
                log_line=False,
                reason=verdict.reason,
                message=verdict.message,
                evidence={
                    "trigger": trigger.evidence() if trigger else "timer",
                    "recent": list(obs.recent[-8:]),
                    # The signals the verdict rests on (both, when it was corroborated).
                    **({"signals": list(verdict.signals)} if verdict.signals else {}),
                },
            )
        return obs, verdict, previous

    def _wake_at(self, when: float, key: NodeKey) -> None:
        self._checks.schedule(key, when)

    async def run(self) -> None:
        """Re-evaluate nodes at their ``next_check_at``; runs until cancelled."""
        while True:
            for key in sorted(key for _, key in await self._checks.due()):
                # A node of a cluster in the middle of a list is judged when the list is in.
                if key in self._obs and key.cluster not in self._listing:
                    try:
                        await self._evaluate(key)
                    except StateUnwritable as exc:
                        # Whatever failed to write downstream (logged and counted once per
                        # episode by the store) must not end the re-evaluations of every node.
                        log.debug("health.unsaved", node=key.node, cluster=key.cluster, error=exc)


def _folded(obs: NodeObservation | None) -> NodeObservation | None:
    """``obs`` without its evidence: what tells whether an event changed anything."""
    return None if obs is None else obs.with_(recent=(), last_heartbeat=None)
