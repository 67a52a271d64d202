"""The Kubernetes source: Node objects and node Leases -> :class:`healer.model.NodeEvent`.

It owns the list-then-watch loop for one cluster (list, emit a snapshot, watch from the list's
resourceVersion, re-list on 410, back off while the API is unavailable) and the pure mapping
from what the API shows to events (:func:`node_events`, :func:`lease_events`), which is where the
decisions are and what the table tests cover.

Every list is emitted as one batch between two cluster-level markers, ``LIST_STARTED`` and
``SYNCED`` (the informer's "synced"): the tracker folds the whole snapshot before judging any
node, and the planner decides nothing for a cluster before its first ``SYNCED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any

import structlog
from tenacity import RetryCallState

from healer.backoff import retrying
from healer.clock import Clock, to_timeline
from healer.errors import KubeUnavailable, PermanentError, TemporaryError
from healer.kube.client import KubeClient
from healer.kube.records import LeaseInfo, NodeInfo, WatchEvent
from healer.kube.watch import WatchExpired
from healer.model import EventKind, NodeEvent
from healer.sources.reconnect import first_failure, reconnect_forever

log = structlog.get_logger(__name__)

SOURCE = "kube"


# ------------------------------------------------------------------ pure mapping


def node_events(
    *,
    cluster: str,
    current: NodeInfo,
    previous: NodeInfo | None,
    now: float,
    wall: float | None = None,
) -> list[NodeEvent]:
    """Events for one observation of a node.

    With no ``previous`` (a list, an ADDED, a node we had not seen) the whole state is reported
    in one NODE_ADDED carrying the labels and the conditions: a node never exists for healer
    without its conditions, not even between two events. Otherwise only what changed:
    LABELS when the labels differ, and a CONDITION for each condition that is new or whose
    status or lastTransitionTime moved; unchanged conditions are not repeated on every
    heartbeat-driven MODIFIED. Given ``wall`` (our wall clock at ``now``), the API's times are
    placed on the timeline (healer/clock.py); what changed is decided on the API's own values.
    """
    if previous is None:
        created = current.created_at
        if wall is not None:  # the API's wall clock, onto our timeline (healer/clock.py)
            created = to_timeline(created, now=now, wall=wall)
        return [
            NodeEvent(
                cluster=cluster,
                node=current.name,
                kind=EventKind.NODE_ADDED,
                at=now,
                source=SOURCE,
                labels=dict(current.labels),
                conditions={
                    ctype: (status, _effective_since(since, now, wall))
                    for ctype, (status, since) in current.conditions.items()
                },
                detail={"created_at": created},
            )
        ]
    events: list[NodeEvent] = []
    if current.labels != previous.labels:
        events.append(
            NodeEvent(
                cluster=cluster,
                node=current.name,
                kind=EventKind.LABELS,
                at=now,
                source=SOURCE,
                labels=dict(current.labels),
            )
        )
    for ctype, (status, since) in current.conditions.items():
        # A transition time that moved with an unchanged status means a flip and a flip back
        # happened between two observations: the condition's clock restarted, so say so.
        if previous.conditions.get(ctype) == (status, since):
            continue
        events.append(
            NodeEvent(
                cluster=cluster,
                node=current.name,
                kind=EventKind.CONDITION,
                at=now,
                source=SOURCE,
                condition=ctype,
                status=status,
                since=_effective_since(since, now, wall),
            )
        )
    return events


# lastTransitionTime is serialised with one-second precision, so it can read up to a second
# before the real transition. For a transition seen as it happens our own observation time is
# the better clock: never earlier than the truth, so a threshold never expires early.
TRANSITION_PRECISION = 2.0


def _effective_since(since: float, now: float, wall: float | None = None) -> float:
    # A remote time goes onto our timeline first (healer/clock.py: never earlier than it can
    # have happened, whichever clock a step proved wrong); ``wall`` is our wall clock at ``now``.
    if wall is not None:
        since = to_timeline(since, now=now, wall=wall)
    return now if 0.0 <= now - since < TRANSITION_PRECISION else since


def node_deleted_event(*, cluster: str, node: str, now: float) -> NodeEvent:
    return NodeEvent(cluster=cluster, node=node, kind=EventKind.NODE_DELETED, at=now, source=SOURCE)


def list_batch(
    *, cluster: str, events: list[NodeEvent], nodes: int, first: bool, now: float
) -> list[NodeEvent]:
    """A list's events framed by the cluster's ``LIST_STARTED`` and ``SYNCED`` markers."""

    def marker(kind: EventKind) -> NodeEvent:
        return NodeEvent(
            cluster=cluster,
            node="",
            kind=kind,
            at=now,
            source=SOURCE,
            detail={"nodes": nodes, "first": first},
        )

    return [marker(EventKind.LIST_STARTED), *events, marker(EventKind.SYNCED)]


def lease_events(
    *,
    cluster: str,
    current: LeaseInfo,
    previous_renew: float | None,
    now: float | None = None,
    wall: float | None = None,
) -> list[NodeEvent]:
    """A HEARTBEAT at the lease's renewTime when it moved forward; nothing otherwise (a
    re-list or an unrelated update of the same renewal is not a new sign of life). Given
    ``now`` and ``wall``, the renewTime is placed on the timeline (healer/clock.py)."""
    renew = current.renew_time
    if renew is None or (previous_renew is not None and renew <= previous_renew):
        return []
    at = renew if now is None else to_timeline(renew, now=now, wall=now if wall is None else wall)
    detail: dict[str, Any] = {}
    if current.holder is not None:
        detail["holder"] = current.holder
    return [
        NodeEvent(
            cluster=cluster,
            node=current.name,
            kind=EventKind.HEARTBEAT,
            at=at,
            source=SOURCE,
            detail=detail,
        )
    ]


# ------------------------------------------------------------------ the loop


class KubeWatchSource:
    """List-then-watch nodes and node leases of one cluster, forever, emitting NodeEvents.

    Failure handling, in order of how often it happens:

    * the server ends a watch (timeoutSeconds): watch again from the last resourceVersion seen;
    * 410 Expired (:class:`WatchExpired`): list again at once and emit the snapshot (deleted
      nodes are found by difference); a second 410 without progress in between backs off;
    * :class:`KubeUnavailable`: report ``on_availability(False, reason)``, back off (exponential
      from ``backoff_base``, capped at ``backoff_max``, jittered, slept on the injected clock:
      :func:`healer.backoff.retrying`; the server's Retry-After when it sent one), list again,
      and report ``(True, "")`` once a list succeeds; the waits start again from the first
      after a list that succeeded;
    * :class:`PermanentError` (e.g. 403 from RBAC): the same, at the longest backoff, logged as
      an error: nothing healer does will fix it, but an operator might while we wait.
    """

    def __init__(
        self,
        *,
        cluster: str,
        client: KubeClient,
        clock: Clock,
        emit: Callable[[NodeEvent], Awaitable[None]],
        on_availability: Callable[[bool, str], Awaitable[None]] | None = None,
        watch_timeout: int = 60,
        backoff_max: float = 30.0,
        backoff_base: float = 1.0,
        rng: random.Random | None = None,
        remembered: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """``remembered`` names the nodes the caller's persisted state believes exist, so that a
        node deleted while nobody was watching (healer down) is reported deleted on the first
        list, not forgotten."""
        self._cluster = cluster
        self._remembered = remembered
        self._client = client
        self._clock = clock
        self._emit = emit
        self._on_availability = on_availability
        self._watch_timeout = watch_timeout
        self._backoff_max = backoff_max
        self._backoff_base = backoff_base
        self._rng = rng if rng is not None else random.Random()
        self._nodes: dict[str, NodeInfo] = {}
        self._renewals: dict[str, float | None] = {}
        self._available = True
        self._listed = False  # a list succeeded in the current session
        self._expired_in_a_row = 0  # 410s with no watch event between them
        self._progress = False  # a watch event arrived since the last list
        self._log = log.bind(cluster=cluster)
        # Set once the first list's snapshot has been emitted: the daemon reports READY to
        # systemd only when every source has connected.
        self.synced = asyncio.Event()

    @property
    def available(self) -> bool:
        return self._available

    async def run(self) -> None:
        policy = retrying(
            self._clock,
            first=self._backoff_base,
            cap=self._backoff_max,
            jitter=0.5,  # many daemons (or clusters) must not hammer a recovering API in step
            rng=self._rng,
            retry_on=(TemporaryError,),
            before_sleep=self._before_retry,
        )
        await reconnect_forever(self._session, policy=policy, held=lambda: self._listed)

    async def _session(self) -> None:
        """List and watch until something fails; a 410 re-lists at once, unless the previous
        list ended the same way without any watch event in between (then it backs off)."""
        self._listed = False
        while True:
            try:
                await self._list_and_watch()
            except WatchExpired as exc:
                self._expired_in_a_row = 0 if self._progress else self._expired_in_a_row + 1
                self._log.info("kube_watch.expired", reason=str(exc))
                if self._expired_in_a_row > 1:
                    raise
            except KubeUnavailable as exc:
                await self._set_available(False, str(exc))
                raise
            except PermanentError as exc:
                await self._set_available(False, str(exc))
                # Nothing healer does will fix it (RBAC, say), but an operator might: retried
                # at the longest wait.
                raise _Permanent(str(exc), delay=self._backoff_max) from exc

    def _before_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = round(state.upcoming_sleep, 3)
        if isinstance(error, _Permanent):
            self._log.error("kube_watch.failed", reason=str(error), retry_in=delay)
        elif isinstance(error, KubeUnavailable):
            self._log.warning("kube_watch.unavailable", reason=str(error), retry_in=delay)

    async def _set_available(self, available: bool, reason: str) -> None:
        if available == self._available:
            return
        self._available = available
        if available:
            self._log.info("kube_watch.available")
        if self._on_availability is not None:
            await self._on_availability(available, reason)

    async def _list_and_watch(self) -> None:
        nodes, nodes_rv = await self._client.list_nodes()
        leases, leases_rv = await self._client.list_leases()
        self._listed = True
        self._progress = False
        await self._set_available(True, "")
        now, wall = self._clock.now(), self._clock.wall()
        listed = {n.name: n for n in nodes}
        # Gone since the last list, or deleted and registered again under the same name (a
        # replacement reusing it) while we were not watching: the old node's life ended.
        ended_set = {
            name
            for name, known in self._nodes.items()
            if name not in listed or listed[name].created_at != known.created_at
        }
        if self._remembered is not None:
            ended_set.update(n for n in self._remembered() if n not in listed)
        ended = sorted(ended_set)
        events: list[NodeEvent] = [
            node_deleted_event(cluster=self._cluster, node=name, now=now) for name in ended
        ]
        for node in nodes:
            events.extend(
                node_events(cluster=self._cluster, current=node, previous=None, now=now, wall=wall)
            )
        self._nodes = listed
        for lease in leases:
            events.extend(
                lease_events(
                    cluster=self._cluster,
                    current=lease,
                    previous_renew=self._renewals.get(lease.name),
                    now=now,
                    wall=wall,
                )
            )
        self._renewals = {lease.name: lease.renew_time for lease in leases}
        first = not self.synced.is_set()
        self._log.info("kube_watch.listed", nodes=len(nodes), leases=len(leases), first=first)
        batch = list_batch(
            cluster=self._cluster, events=events, nodes=len(nodes), first=first, now=now
        )
        for event in batch:
            await self._emit(event)
        self.synced.set()
        await first_failure(
            self._follow(self._client.watch_nodes, nodes_rv, self._on_node_event),
            self._follow(self._client.watch_leases, leases_rv, self._on_lease_event),
        )

    async def _follow(
        self,
        watch: Callable[[str, int], AsyncGenerator[WatchEvent, None]],
        resource_version: str,
        handle: Callable[[WatchEvent], Awaitable[None]],
    ) -> None:
        """Watch forever, resuming from the last resourceVersion each time the server ends the
        stream. Returns only by raising."""
        while True:
            async with contextlib.aclosing(watch(resource_version, self._watch_timeout)) as stream:
                async for event in stream:
                    if event.resource_version:
                        resource_version = event.resource_version
                    if event.type != "BOOKMARK":
                        self._progress = True
                        await handle(event)

    async def _on_node_event(self, event: WatchEvent) -> None:
        node = event.obj
        if not isinstance(node, NodeInfo):
            return
        now, wall = self._clock.now(), self._clock.wall()
        if event.type == "DELETED":
            self._nodes.pop(node.name, None)
            await self._emit(node_deleted_event(cluster=self._cluster, node=node.name, now=now))
            return
        # ADDED is a (re)appearance: report it whole even if a stale copy is remembered.
        previous = None if event.type == "ADDED" else self._nodes.get(node.name)
        self._nodes[node.name] = node
        for ev in node_events(
            cluster=self._cluster, current=node, previous=previous, now=now, wall=wall
        ):
            await self._emit(ev)

    async def _on_lease_event(self, event: WatchEvent) -> None:
        lease = event.obj
        if not isinstance(lease, LeaseInfo):
            return
        if event.type == "DELETED":
            self._renewals.pop(lease.name, None)
            return
        previous = self._renewals.get(lease.name)
        if lease.renew_time is not None and (previous is None or lease.renew_time > previous):
            self._renewals[lease.name] = lease.renew_time
        now, wall = self._clock.now(), self._clock.wall()
        for ev in lease_events(
            cluster=self._cluster, current=lease, previous_renew=previous, now=now, wall=wall
        ):
            await self._emit(ev)


class _Permanent(TemporaryError):
    """A :class:`PermanentError` of the API, retried at the longest wait (``delay``)."""
