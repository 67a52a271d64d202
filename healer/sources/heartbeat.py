"""Heartbeat absence as a signal: no MQTT heartbeat from a node's agent for ``missAfter``
intervals -> ``CONDITION HeartbeatMissing=True``; a fresh heartbeat -> ``HeartbeatMissing=False``.

Owns the per-node "last heard from the agent" times and the timer that turns silence into an
event. The decision is a pure function (:func:`missing_at`, :func:`is_fresh`); the
:class:`HeartbeatWatcher` only keeps the times and sleeps on the injected clock until the
earliest deadline, so it is tested in virtual time. Its memory does not grow with the message
rate: a heartbeat only moves its node's "last heard" time, and the node's one deadline is moved
on when it comes (a burst of 200k heartbeats leaves one entry per node).

It *corroborates* the Kubernetes view; it does not replace it. ``HeartbeatMissing`` is not in
the default ``unhealthyConditions``: it shows up in a node's conditions and in the evidence of
every verdict (``healer status``, ``healer history``). ``health.corroborate`` with
``require: agentHeartbeatMissing`` makes it the second signal a Kubernetes condition needs
("both signals"); an operator who trusts the agents may instead add
``{type: HeartbeatMissing, status: "True", timeout: 5m}`` to make it a trigger of its own.
(The conditions of ``unhealthyConditions`` are OR-ed, so adding it means "either signal".)
Only MQTT owns this condition (:mod:`healer.config.provenance`).

Only nodes whose agent has been heard at least once are watched: a node without an agent is
never reported missing. The first heartbeat of a node reports ``HeartbeatMissing=False``, which
the tracker persists; on restart the daemon seeds the watcher from those records, giving every
such node one full window from the restart before it can be reported missing (heartbeats queued
in the broker while healer was down arrive in that window). A node the daemon no longer manages
(deleted and replaced) is dropped silently when its deadline comes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Final

import structlog

from healer.clock import Clock, DeadlineQueue
from healer.config.provenance import HEARTBEAT_MISSING, MQTT
from healer.model import EventKind, NodeEvent, NodeKey

log = structlog.get_logger(__name__)

CONDITION: Final = HEARTBEAT_MISSING
SOURCE: Final = MQTT

Emit = Callable[[NodeEvent], Awaitable[None]]


@dataclass(frozen=True)
class HeartbeatPolicy:
    interval: float  # how often agents send a heartbeat (mqtt.heartbeatInterval)
    miss_after: int  # missed intervals before the node counts as silent (heartbeatMissAfter)

    @property
    def window(self) -> float:
        return self.interval * self.miss_after


def missing_at(last_seen: float, policy: HeartbeatPolicy) -> float:
    """When a node last heard from at ``last_seen`` becomes missing (inclusive)."""
    return last_seen + policy.window


def is_fresh(heartbeat_at: float, now: float, policy: HeartbeatPolicy) -> bool:
    """Whether a heartbeat stamped ``heartbeat_at`` shows the agent alive *now*: one redelivered
    from the broker's queue after an outage proves only that it was alive back then."""
    return now < missing_at(heartbeat_at, policy)


@dataclass
class _Watch:
    last_seen: float
    missing: bool


class HeartbeatWatcher:
    """Feed it every MQTT event with :meth:`observe`; run :meth:`run` in the TaskGroup.

    ``seed`` gives (node, currently missing?) for nodes known to have an agent, from the
    persisted node records; ``is_known_node`` says whether the daemon still manages a node.
    ``owned`` (per-cluster ownership, ``healer run --replicas``): watch only the nodes of these
    clusters, the only ones whose heartbeats this replica receives; :meth:`set_clusters`
    changes the set.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        emit: Emit,
        policy: HeartbeatPolicy,
        is_known_node: Callable[[str, str], bool] | None = None,
        seed: Iterable[tuple[NodeKey, bool]] = (),
        owned: Collection[str] | None = None,
    ) -> None:
        self._clock = clock
        self._owned = frozenset(owned) if owned is not None else None
        self._emit = emit
        self._policy = policy
        self._is_known_node = is_known_node
        self._watches: dict[NodeKey, _Watch] = {}
        self._deadlines: DeadlineQueue[NodeKey] = DeadlineQueue(clock)  # when each goes missing
        self._seed(seed)

    def _seed(self, seed: Iterable[tuple[NodeKey, bool]]) -> None:
        now = self._clock.now()
        for key, missing in seed:
            if key in self._watches or (self._owned is not None and key.cluster not in self._owned):
                continue
            self._watches[key] = _Watch(last_seen=now, missing=missing)
            if not missing:
                self._schedule(key)

    def set_clusters(self, owned: Collection[str], seed: Iterable[tuple[NodeKey, bool]]) -> None:
        """Watch the nodes of ``owned`` only: a cluster lost is forgotten without a report (its
        owner watches it now), the nodes in ``seed`` of a cluster gained get one full window
        from now, as after a restart."""
        self._owned = frozenset(owned)
        for key in [k for k in self._watches if k.cluster not in self._owned]:
            del self._watches[key]  # its queued deadline finds nothing and passes
        self._seed(seed)

    def watching(self) -> dict[NodeKey, bool]:
        """Node -> currently reported missing. For status output and tests."""
        return {key: w.missing for key, w in self._watches.items()}

    async def observe(self, event: NodeEvent) -> None:
        """Take note of an event the MQTT source passed on; only heartbeats matter."""
        if event.kind is not EventKind.HEARTBEAT:
            return
        key = event.key
        now = self._clock.now()
        watch = self._watches.get(key)
        if watch is None:
            self._watches[key] = _Watch(last_seen=event.at, missing=False)
            self._schedule(key)
            await self._report(key, missing=False, since=event.at, now=now)
            return
        if event.at <= watch.last_seen:
            return  # a redelivered or reordered heartbeat says nothing new
        watch.last_seen = event.at
        if not watch.missing:
            # Coalesced: the deadline already queued stays, and when it comes _deadline moves it
            # to the latest heartbeat's. One queue entry per node, whatever the message rate.
            return
        if is_fresh(event.at, now, self._policy):
            watch.missing = False
            self._schedule(key)
            await self._report(key, missing=False, since=event.at, now=now)

    async def run(self) -> None:
        """Report nodes as their deadlines pass; runs until cancelled."""
        while True:
            for when, key in await self._deadlines.due():
                await self._deadline(key, when, self._clock.now())

    async def _deadline(self, key: NodeKey, when: float, now: float) -> None:
        watch = self._watches.get(key)
        if watch is None or watch.missing:
            return
        if missing_at(watch.last_seen, self._policy) > when:
            self._schedule(key)  # heard from since this deadline was set: wait for the new one
            return
        if self._is_known_node is not None and not self._is_known_node(key.cluster, key.node):
            del self._watches[key]
            log.info("heartbeat.forgotten", cluster=key.cluster, node=key.node)
            return
        watch.missing = True
        log.warning(
            "heartbeat.missing",
            cluster=key.cluster,
            node=key.node,
            last_seen=watch.last_seen,
            window=self._policy.window,
        )
        await self._report(key, missing=True, since=when, now=now)

    def _schedule(self, key: NodeKey) -> None:
        self._deadlines.schedule(key, missing_at(self._watches[key].last_seen, self._policy))

    async def _report(self, key: NodeKey, *, missing: bool, since: float, now: float) -> None:
        await self._emit(
            NodeEvent(
                cluster=key.cluster,
                node=key.node,
                kind=EventKind.CONDITION,
                at=now,
                source=SOURCE,
                condition=CONDITION,
                status="True" if missing else "False",
                since=since,
            )
        )


def seed_from(observations: Iterable[tuple[NodeKey, dict[str, str]]]) -> list[tuple[NodeKey, bool]]:
    """(node, {condition: status}) pairs -> the watcher's seed: nodes that carry the condition."""
    return [
        (key, conditions[CONDITION] == "True")
        for key, conditions in observations
        if CONDITION in conditions
    ]
