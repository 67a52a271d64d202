"""The event queue between the sources and the tracker (healer/sources/events.py): heartbeats
coalesced per node and source, state changes never dropped, order kept, memory bounded."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from healer.model import EventKind, NodeEvent
from healer.sources.events import SUPERSEDED, EventQueue
from healer.telemetry.metrics import EVENTS_DROPPED


def beat(node: str, at: float, source: str = "mqtt") -> NodeEvent:
    return NodeEvent(cluster="c", node=node, kind=EventKind.HEARTBEAT, at=at, source=source)


def change(node: str, at: float, status: str = "True") -> NodeEvent:
    return NodeEvent(
        cluster="c",
        node=node,
        kind=EventKind.CONDITION,
        at=at,
        source="mqtt",
        condition="RebootRequired",
        status=status,
    )


def dropped(source: str = "mqtt") -> float:
    return EVENTS_DROPPED.labels(source=source, reason=SUPERSEDED)._value.get()


async def drain(queue: EventQueue) -> list[NodeEvent]:
    out = []
    while not queue.empty():
        out.append(await queue.get())
    return out


async def test_order_is_kept_and_a_newer_heartbeat_replaces_the_waiting_one() -> None:
    queue = EventQueue(limit=10)
    before = dropped()
    for event in [beat("a", 1), change("a", 2), beat("b", 3), beat("a", 4), change("b", 5)]:
        await queue.put(event)
    # a's first heartbeat is gone; its newer one takes the place of the newest (it came last).
    assert await drain(queue) == [change("a", 2), beat("b", 3), beat("a", 4), change("b", 5)]
    assert dropped() - before == 1


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        (beat("a", 1), beat("a", 2), beat("a", 2)),
        # A redelivered, older heartbeat does not replace a newer one waiting.
        (beat("a", 2), beat("a", 1), beat("a", 2)),
        # Per source: the kubelet's lease and the agent's heartbeat are two signals.
        (beat("a", 1, "kube"), beat("a", 2), None),
    ],
)
async def test_coalescing_table(
    first: NodeEvent, second: NodeEvent, kept: NodeEvent | None
) -> None:
    queue = EventQueue(limit=10)
    await queue.put(first)
    await queue.put(second)
    out = await drain(queue)
    assert out == ([kept] if kept is not None else [first, second])


async def test_state_changes_are_never_dropped_but_wait_for_room() -> None:
    queue = EventQueue(limit=3)
    for i in range(3):
        await queue.put(change("a", i))
    blocked = asyncio.ensure_future(queue.put(change("a", 3)))
    await asyncio.sleep(0)
    assert not blocked.done()  # held back: the source waits, nothing is lost
    # Heartbeats still go in while state changes wait for room (one per node).
    await queue.put(beat("a", 10))
    await queue.put(beat("a", 11))
    assert queue.qsize() == 4
    assert await queue.get() == change("a", 0)
    await asyncio.wait_for(blocked, 1)
    out = await drain(queue)
    assert out == [change("a", 1), change("a", 2), beat("a", 11), change("a", 3)]


async def test_get_waits_for_an_event() -> None:
    queue = EventQueue(limit=2)
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put(beat("a", 1))
    assert await asyncio.wait_for(getter, 1) == beat("a", 1)


async def test_a_heartbeat_flood_takes_one_entry_per_node() -> None:
    queue = EventQueue(limit=10_000)
    await queue.put(change("n0", 0))
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(100_000):
            await queue.put(beat(f"n{i % 8}", float(i)))
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert queue.qsize() == 1 + 8
    # 100k events kept would be tens of MB; eight waiting ones take a few kB (and the
    # interpreter's own caches some tens).
    assert grown - base < 1024 * 1024, grown - base
    out = await drain(queue)
    assert out[0] == change("n0", 0)
    assert [e.at for e in out[1:]] == [float(i) for i in range(100_000 - 8, 100_000)]


def test_a_queue_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EventQueue(limit=0)
