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

At fleet size nothing per event is O(every node): nodes are indexed by cluster, the health
counts per cluster and pool are kept as verdicts change (:meth:`HealthTracker.counts`), the
policies, pool roles and condition owners are looked up once per configuration, and
:meth:`HealthTracker.handle_batch` folds a drained batch of events in one store transaction
and tells the changes once (``on_changes``), so the planner plans once per changed cluster.
A heartbeat that leaves the verdict as it was is not written at once (``lazy_heartbeats``):
the newest per node waits for :meth:`HealthTracker.flush_heartbeats`, which the daemon calls
every ``Tuning.heartbeat_flush_interval`` and on the way out. So does an event that changes only
a node's evidence (an alert sent again, a condition restated): it is not judged either (nothing
a verdict reads moved; a timeout still to come has its timer) and the record takes the new
evidence at that flush.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import structlog

from healer.clock import Clock, DeadlineQueue
from healer.config import ClusterConfig, EffectiveHealth, HealerConfig
from healer.config.provenance import ownership_of
from healer.errors import StateUnwritable
from healer.health.observe import apply_event, restates, with_evidence
from healer.health.verdict import evaluate
from healer.model import EventKind, Health, NodeEvent, NodeKey, NodeObservation, Role, Verdict
from healer.store.recorder import Recorder
from healer.store.sqlite import Store

log = structlog.get_logger("healer.health")

OnChange = Callable[[NodeObservation, Verdict, Verdict | None], Awaitable[None]]
OnSynced = Callable[[str], Awaitable[None]]
Change = tuple[NodeObservation, Verdict, Verdict | None]
OnChanges = Callable[[list[Change]], Awaitable[None]]

# Nodes judged per store transaction when a cluster's list is in, with a turn of the event loop
# between slices: a list of 10,000 nodes must not hold /healthz or the MQTT acks for its whole
# length.
FOLD_SLICE = 500

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
        on_changes: OnChanges | None = None,
        lazy_heartbeats: bool = False,
    ) -> None:
        self._store = store
        self._record = Recorder(store, clock=clock, log=log).record
        self._clock = clock
        # Told of changes of health: ``on_changes`` once per batch, round or list (all of
        # them), else ``on_change`` once per change.
        self._on_change = on_change
        self._on_changes = on_changes
        self._on_synced = on_synced
        self._lazy_heartbeats = lazy_heartbeats
        self._use(config)
        # Clusters whose latest list has been folded in whole since healer last lost sight of
        # them; clusters in the middle of a list -> the nodes first seen in that list (every
        # node of the cluster is judged when it ends).
        self._synced: set[str] = set()
        self._ever_synced: set[str] = set()
        self._listing: dict[str, set[NodeKey]] = {}
        self._obs: dict[NodeKey, NodeObservation] = {}
        # (cluster, node) -> THE key of each node in _obs: looked up by a tuple (compared in C),
        # it makes every later lookup of the per-node maps an identity hit, where a fresh
        # NodeKey would run the dataclass's __eq__ in each (an event's fold does six).
        self._keys: dict[tuple[str, str], NodeKey] = {}
        self._verdicts: dict[NodeKey, Verdict] = {}
        # The index by cluster (its sorted keys cached until a node comes or goes), and the
        # counts of health per cluster and per (cluster, pool), kept as verdicts change.
        self._members: dict[str, set[NodeKey]] = {}
        self._sorted: dict[str, list[NodeKey]] = {}
        self._counted: dict[NodeKey, tuple[str | None, Health]] = {}
        self._counts: dict[str, Counter[Health]] = {}
        self._pool_counts: dict[tuple[str, str | None], Counter[Health]] = {}
        self._checks: DeadlineQueue[NodeKey] = DeadlineQueue(clock)  # next_check_at per node
        # Nodes whose record (or its removal) the state database did not take: saved again
        # when it takes writes (save_unsaved).
        self._unsaved: set[NodeKey] = set()
        # Heartbeats not written yet (lazy_heartbeats): the newest per node.
        self._beats: dict[NodeKey, float] = {}
        # Nodes whose record lacks only evidence (quiet events, lazy_heartbeats): written at
        # the next flush_heartbeats.
        self._stale: set[NodeKey] = set()
        # Nodes written inside the store batch being filled (all unsaved if it fails whole).
        self._batch_written: set[NodeKey] | None = None
        # Nodes with an event kept for replay in this process (_keep).
        self._kept: set[NodeKey] = set()
        for row in store.nodes():
            obs = row.observation
            if obs.cluster not in self._clusters:
                continue
            key = obs.key  # the node's one key object (see _keys)
            self._put_obs(key, obs)
            self._put_verdict(key, Verdict(row.health, row.reason, row.message, row.next_check_at))
            if row.next_check_at is not None:
                self._wake_at(row.next_check_at, key)

    def _use(self, config: HealerConfig) -> None:
        """Take ``config``, and what every event reads of it, looked up once here."""
        self._config = config
        self._clusters: dict[str, ClusterConfig] = {c.name: c for c in config.clusters}
        self._owners = ownership_of(config)
        self._pool_roles: dict[str, dict[str, Role]] = {
            c.name: {p.name: p.role for p in c.pools} for c in config.clusters
        }
        # (cluster, pool) -> its effective health policy, filled as pools are met.
        self._policies: dict[tuple[str, str | None], EffectiveHealth] = {}

    # -- reading ----------------------------------------------------------------------------
    def observation(self, key: NodeKey) -> NodeObservation | None:
        return self._obs.get(key)

    def verdict(self, key: NodeKey) -> Verdict | None:
        return self._verdicts.get(key)

    def nodes(self, cluster: str) -> list[tuple[NodeObservation, Verdict]]:
        """The judged nodes of ``cluster`` in name order: O(nodes of that cluster)."""
        keys = self._sorted.get(cluster)
        if keys is None:
            keys = self._sorted[cluster] = sorted(self._members.get(cluster, ()))
        verdicts = self._verdicts
        return [(self._obs[k], verdicts[k]) for k in keys if k in verdicts]

    def counts(self, cluster: str) -> dict[Health, int]:
        """How many judged nodes of ``cluster`` are in each health state (every state, zeros
        included); kept as verdicts change, never counted by walking the nodes."""
        found = self._counts.get(cluster, Counter())
        return {state: found[state] for state in Health}

    def pool_counts(self, cluster: str, pool: str | None) -> dict[Health, int]:
        """:meth:`counts` of the nodes of one pool (None: the nodes with no pool label)."""
        found = self._pool_counts.get((cluster, pool), Counter())
        return {state: found[state] for state in Health}

    def knows(self, cluster: str, node: str) -> bool:
        return (cluster, node) in self._keys

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
        self._use(config)
        for key in list(self._obs):
            self._wake_at(self._clock.now(), key)

    # -- the index --------------------------------------------------------------------------
    def _key(self, event: NodeEvent) -> NodeKey:
        """The key of ``event``'s node: the one the maps hold, or a new one for a new node."""
        found = self._keys.get((event.cluster, event.node))
        return found if found is not None else NodeKey(event.cluster, event.node)

    def _put_obs(self, key: NodeKey, obs: NodeObservation) -> None:
        old = self._obs.get(key)
        if old is None:
            self._keys[key.cluster, key.node] = key
            self._members.setdefault(key.cluster, set()).add(key)
            self._sorted.pop(key.cluster, None)
        self._obs[key] = obs
        if old is None or old.pool != obs.pool:
            self._recount(key)

    def _put_verdict(self, key: NodeKey, verdict: Verdict) -> None:
        old = self._verdicts.get(key)
        self._verdicts[key] = verdict
        if old is None or old.health is not verdict.health:
            self._recount(key)

    def _drop(self, key: NodeKey) -> None:
        if self._obs.pop(key, None) is not None:
            del self._keys[key.cluster, key.node]
            self._members[key.cluster].discard(key)
            self._sorted.pop(key.cluster, None)
        self._verdicts.pop(key, None)
        self._recount(key)

    def _recount(self, key: NodeKey) -> None:
        """Move ``key``'s contribution to the counts if its pool or health changed: O(1)."""
        obs, verdict = self._obs.get(key), self._verdicts.get(key)
        now = (obs.pool, verdict.health) if obs is not None and verdict is not None else None
        was = self._counted.get(key)
        if now == was:
            return
        if was is not None:
            self._counts[key.cluster][was[1]] -= 1
            self._pool_counts[(key.cluster, was[0])][was[1]] -= 1
            del self._counted[key]
        if now is not None:
            self._counts.setdefault(key.cluster, Counter())[now[1]] += 1
            self._pool_counts.setdefault((key.cluster, now[0]), Counter())[now[1]] += 1
            self._counted[key] = now

    def _policy(self, cluster: ClusterConfig, pool: str | None) -> EffectiveHealth:
        """The pool's effective health policy: built once per configuration, not per event."""
        found = self._policies.get((cluster.name, pool))
        if found is None:
            found = self._policies[(cluster.name, pool)] = cluster.health_for(pool)
        return found

    # -- writing ----------------------------------------------------------------------------
    async def handle(self, event: NodeEvent) -> None:
        """Fold one event (its own store transaction) and tell what it changed."""
        await self.handle_batch((event,))

    async def handle_batch(self, events: Sequence[NodeEvent]) -> None:
        """Fold ``events`` in order: each run of them between two list ends in ONE store
        transaction (:meth:`Store.batch`), then the changes of health are told once for the
        run. A list end (``SYNCED``) judges its cluster in slices, a turn of the event loop
        between them. One event that fails is logged and skipped; the others go on."""
        run: list[NodeEvent] = []
        for event in events:
            if event.kind is EventKind.SYNCED:
                await self._tell(self._fold_run(run))
                run = []
                if self._clusters.get(event.cluster) is None:
                    self._ignore(event)
                    continue
                self._keep(event)
                await self._list_folded(event)
            else:
                run.append(event)
        await self._tell(self._fold_run(run))

    def _fold_run(self, events: Sequence[NodeEvent]) -> list[Change]:
        if not events:
            return []
        changes: list[Change] = []
        with self._batch():
            for event in events:
                try:
                    change = self._fold(event)
                except StateUnwritable as exc:
                    # Logged and counted once per episode by the store; decisions are frozen.
                    log.debug(
                        "health.event_unsaved", cluster=event.cluster, node=event.node, error=exc
                    )
                    continue
                except Exception:
                    log.exception("health.event_failed", cluster=event.cluster, node=event.node)
                    continue
                if change is not None:
                    changes.append(change)
        return changes

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """One store transaction for the writes inside (:meth:`Store.batch`). If it is lost
        whole (its commit fails), every node record written in it is saved again by
        :meth:`save_unsaved`; the failure itself is logged and counted once per episode by
        the store, and frozen decisions follow from it."""
        outer = self._batch_written is None
        written: set[NodeKey] = set() if outer else self._batch_written  # type: ignore[assignment]
        self._batch_written = written
        try:
            with self._store.batch():
                yield
        except StateUnwritable as exc:
            self._unsaved |= written
            log.debug("health.batch_unsaved", nodes=len(written), error=exc)
        except BaseException:
            self._unsaved |= written
            raise
        finally:
            if outer:
                self._batch_written = None

    def _ignore(self, event: NodeEvent) -> None:
        log.warning(
            "health.event_ignored",
            cluster=event.cluster,
            node=event.node,
            reason="unknown cluster",
        )

    def _fold(self, event: NodeEvent) -> Change | None:
        """One event (not a list end) into its node's observation, judged unless a list is
        under way; the change of health, if any."""
        cluster = self._clusters.get(event.cluster)
        if cluster is None:
            self._ignore(event)
            return None
        if event.kind is EventKind.LIST_STARTED:
            self._keep(event)
            self._listing[event.cluster] = set()
            return None
        key = self._key(event)
        previous = self._obs.get(key)
        if (
            previous is not None
            and self._lazy_heartbeats
            and key in self._kept
            and key in self._verdicts
            and key not in self._unsaved
            and event.cluster not in self._listing
            and restates(previous, event, self._owners)
        ):
            # The hot path of a flood of alerts sent again, cut short: what the general path
            # below does with such an event (its evidence kept, its record written at the next
            # flush, its verdict standing), without its other checks.
            self._obs[key] = with_evidence(previous, event)
            self._stale.add(key)
            return None
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
            return None
        owners = self._owners
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
        heartbeat = event.kind is EventKind.HEARTBEAT
        if previous is not None and restates(previous, event, owners):
            # The hot path of a flood of alerts sent again: only the evidence moves.
            obs, quiet = with_evidence(previous, event), True
        else:
            obs = apply_event(
                previous,
                event,
                exclude_label=cluster.remediation.exclude_label,
                pool_roles=self._pool_roles[cluster.name],
                owners=owners,
            )
            # A repeat (a label set restated...) may change only the evidence too.
            quiet = (
                not heartbeat
                and previous is not None
                and obs.with_(recent=previous.recent, last_heartbeat=previous.last_heartbeat)
                == previous
            )
        listed = self._listing.get(event.cluster)
        first = event.kind is EventKind.NODE_ADDED and (previous is None or not previous.exists)
        if first:
            obs = self._first_sight(obs, in_list=listed is not None)
        self._put_obs(key, obs)
        if not heartbeat and (key not in self._kept or not quiet):
            self._keep(event)
        if listed is not None:
            if first:
                listed.add(key)
            return None  # judged when the whole list is in (SYNCED)
        if quiet and self._lazy_heartbeats and key in self._verdicts and key not in self._unsaved:
            # Nothing a verdict reads moved: it stands (a timeout still to come has its timer),
            # and the record gets the new evidence at the next flush_heartbeats.
            self._stale.add(key)
            return None
        return self._judge(key, trigger=event, heartbeat=heartbeat)

    def _first_sight(self, obs: NodeObservation, *, in_list: bool) -> NodeObservation:
        """A node healer has no record of: its own replacement (the workflow recorded when the
        machine was requested), or one that already existed when a list showed it (adopted)."""
        requested = self._store.replacement_requested_at(obs.cluster, obs.node)
        return obs.with_(adopted=in_list and requested is None, machine_requested_at=requested)

    async def _list_folded(self, synced: NodeEvent) -> None:
        """The cluster's list is in whole: judge every node (:data:`FOLD_SLICE` per store
        transaction, the event loop turning between them), record adoptions, then tell."""
        cluster = synced.cluster
        fresh = self._listing.pop(cluster, set())
        keys = list(self._sorted.get(cluster) or sorted(self._members.get(cluster, ())))
        changes: list[Change] = []
        for start in range(0, len(keys), FOLD_SLICE):
            if start:
                await asyncio.sleep(0)
            with self._batch():
                for key in keys[start : start + FOLD_SLICE]:
                    # Gone meanwhile (a workflow finished while the loop turned): nothing to judge.
                    if key in self._obs and (c := self._judge(key, trigger=synced)) is not None:
                        changes.append(c)
        keys = [k for k in keys if k in self._obs]
        first = cluster not in self._ever_synced
        self._ever_synced.add(cluster)
        self._synced.add(cluster)
        adopted = sorted(k.node for k in fresh if k in self._obs and self._obs[k].adopted)
        now = self._clock.now()
        with self._batch():
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
            unhealthy=self.counts(cluster)[Health.UNHEALTHY],
        )
        await self._tell(changes)
        if self._on_synced is not None:
            await self._on_synced(cluster)

    async def _tell(self, changes: list[Change]) -> None:
        if not changes:
            return
        if self._on_changes is not None:
            await self._on_changes(changes)
        elif self._on_change is not None:
            for obs, verdict, previous in changes:
                await self._on_change(obs, verdict, previous)

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
            self._kept.add(self._key(event))

    def forget(self, key: NodeKey) -> None:
        """Drop a node that is gone for good (its workflow finished)."""
        self._drop(key)
        self._checks.cancel(key)
        self._beats.pop(key, None)
        self._persist(key)

    def _persist(self, key: NodeKey, now: float | None = None) -> None:
        """Write the node's record (or remove it, once forgotten); if the state database takes
        no writes now, remember it for :meth:`save_unsaved`."""
        # The record carries the newest heartbeat and evidence: none is left to write lazily.
        self._beats.pop(key, None)
        self._stale.discard(key)
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
            if self._batch_written is not None:
                self._batch_written.add(key)

    def save_unsaved(self) -> int:
        """Write the records the state database did not take (it takes writes again); how
        many are still unsaved (it failed again)."""
        for key in sorted(self._unsaved):
            self._persist(key)
        return len(self._unsaved)

    def flush_heartbeats(self) -> int:
        """Write the heartbeats held back (``lazy_heartbeats``) in one transaction; how many.
        If the database takes no writes now they wait for the next flush (a newer heartbeat
        of the same node replacing its own). The records of nodes whose events only added
        evidence (``quiet``) are written here too, one per node, in one transaction."""
        stale = len(self._stale)
        if stale:
            with self._batch():
                for key in sorted(self._stale):
                    self._persist(key)
        if not self._beats:
            return stale
        beats, self._beats = self._beats, {}
        try:
            self._store.save_heartbeats((k.cluster, k.node, at) for k, at in beats.items())
        except StateUnwritable:
            # Logged and counted once per episode by the store.
            self._beats = beats | self._beats
            return stale
        return stale + len(beats)

    def pending_heartbeats(self) -> int:
        """How many nodes have a heartbeat (or evidence) not written yet."""
        return len(self._beats) + len(self._stale)

    def _judge(
        self, key: NodeKey, *, trigger: NodeEvent | None, heartbeat: bool = False
    ) -> Change | None:
        """Evaluate, save, log and audit one node; the change of health, if any, to tell.

        With ``lazy_heartbeats``, a heartbeat (``heartbeat``) that leaves the verdict as it was
        is not written now: its node waits for :meth:`flush_heartbeats`."""
        obs = self._obs[key]
        cluster = self._clusters.get(key.cluster)
        if cluster is None:
            return None
        now = self._clock.now()
        verdict = evaluate(obs, self._policy(cluster, obs.pool), now)
        previous = self._verdicts.get(key)
        self._put_verdict(key, verdict)
        if (
            heartbeat
            and self._lazy_heartbeats
            and verdict == previous
            and key not in self._unsaved
            and obs.last_heartbeat is not None
        ):
            self._beats[key] = obs.last_heartbeat
        else:
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
        """Re-evaluate nodes at their ``next_check_at``; runs until cancelled. The nodes due
        together are judged :data:`FOLD_SLICE` per store transaction (the event loop turning
        between slices: a reload wakes every node at once) and their changes told once."""
        while True:
            due = sorted(key for _, key in await self._checks.due())
            changes: list[Change] = []
            for start in range(0, len(due), FOLD_SLICE):
                if start:
                    await asyncio.sleep(0)
                with self._batch():
                    for key in due[start : start + FOLD_SLICE]:
                        # A node of a cluster in the middle of a list is judged when it is in.
                        if key not in self._obs or key.cluster in self._listing:
                            continue
                        try:
                            change = self._judge(key, trigger=None)
                        except StateUnwritable as exc:
                            # Logged and counted once per episode by the store.
                            log.debug(
                                "health.unsaved", node=key.node, cluster=key.cluster, error=exc
                            )
                            continue
                        if change is not None:
                            changes.append(change)
            try:
                await self._tell(changes)
            except StateUnwritable as exc:
                # Whatever failed to write downstream (logged and counted once per episode by
                # the store) must not end the re-evaluations of every node.
                log.debug("health.unsaved", cluster="*", error=exc)
