"""The one queue between the sources and the health tracker, bounded under any event rate.

Every source puts its :class:`~healer.model.NodeEvent`\\ s here and the daemon's one consumer
takes them in order. A flood (an MQTT burst, a storm of lease renewals) must neither grow the
daemon's memory without bound nor lose what matters, so the queue tells two kinds of event apart:

* a *heartbeat* says only "alive at ``at``": the latest one of a node (per source) replaces
  the one still waiting, which is dropped and counted (``healer_events_dropped_total``,
  reason ``superseded``). The heartbeats waiting are at most one per node and source;
* everything else is a *state change* (a condition, a reboot, labels, a node added or deleted,
  the list markers): never dropped. When ``limit`` of them are waiting, :meth:`EventQueue.put`
  waits for room, which holds the source back (an MQTT message is then not acknowledged, so the
  broker stops sending at its in-flight window; a watch stream is not read).

Order is kept: events come out in the order they went in, a replacing heartbeat taking the
place of the newest (it went in last).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from typing import Final

from healer.model import EventKind, NodeEvent, NodeKey
from healer.telemetry.metrics import EVENTS_DROPPED

SUPERSEDED: Final = "superseded"

_HeartbeatKey = tuple[NodeKey, str]  # (node, source)


class EventQueue:
    """A FIFO of events with heartbeats coalesced per node and source (module docstring)."""

    def __init__(self, *, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError(f"an event queue needs room for at least one event, not {limit}")
        self._limit = limit
        self._seq = itertools.count()
        self._changes: deque[tuple[int, NodeEvent]] = deque()
        # Insertion-ordered: a replacing heartbeat is deleted and put back, so the first entry
        # is always the oldest one waiting. An OrderedDict, not a dict: taking a plain dict's
        # first entry again and again walks over the slots of the ones taken before it
        # (quadratic when a flood of heartbeats is drained).
        self._heartbeats: OrderedDict[_HeartbeatKey, tuple[int, NodeEvent]] = OrderedDict()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def qsize(self) -> int:
        return len(self._changes) + len(self._heartbeats)

    def empty(self) -> bool:
        return not self._changes and not self._heartbeats

    async def put(self, event: NodeEvent) -> None:
        """Queue ``event``: a heartbeat at once (replacing its node's waiting one), a state
        change once there is room for it."""
        if event.kind is EventKind.HEARTBEAT:
            self._put_heartbeat(event)
            return
        while len(self._changes) >= self._limit:
            self._room.clear()
            await self._room.wait()
        self._changes.append((next(self._seq), event))
        self._readable.set()

    def _put_heartbeat(self, event: NodeEvent) -> None:
        key = (event.key, event.source)
        waiting = self._heartbeats.pop(key, None)
        if waiting is not None:
            EVENTS_DROPPED.labels(source=event.source, reason=SUPERSEDED).inc()
            if waiting[1].at > event.at:
                event = waiting[1]  # a redelivered, older one says less than the one waiting
        self._heartbeats[key] = (next(self._seq), event)
        self._readable.set()

    async def get(self) -> NodeEvent:
        """The oldest event waiting; waits for one."""
        while self.empty():
            self._readable.clear()
            await self._readable.wait()
        return self._pop()

    async def get_batch(self, max_items: int) -> list[NodeEvent]:
        """Wait for at least one event, then take everything waiting, up to ``max_items``,
        in order (the consumer handles them as one batch: one store transaction)."""
        if max_items < 1:
            raise ValueError(f"a batch holds at least one event, not {max_items}")
        while self.empty():
            self._readable.clear()
            await self._readable.wait()
        return [self._pop() for _ in range(min(max_items, self.qsize()))]

    def _pop(self) -> NodeEvent:
        """The oldest event waiting (there is one)."""
        beats = self._heartbeats
        if beats:
            key = next(iter(beats))
            seq, beat = beats[key]
            if not self._changes or seq < self._changes[0][0]:
                del beats[key]
                return beat
        _, event = self._changes.popleft()
        if len(self._changes) < self._limit:
            self._room.set()
        return event
