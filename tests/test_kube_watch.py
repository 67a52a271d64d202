"""KubeWatchSource: the pure mapping (table-driven) and the list/watch loop against the fake."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.errors import KubeUnavailable, PermanentError
from healer.kube.client import KubeClient
from healer.kube.records import LeaseInfo, NodeInfo, WatchEvent
from healer.lab.apiserver.server import FakeApiServer
from healer.model import EventKind, NodeEvent
from healer.sources.kube_watch import (
    KubeWatchSource,
    lease_events,
    list_batch,
    node_deleted_event,
    node_events,
)

Eventually = Callable[..., Awaitable[None]]

NOW = 1_700_000_100.0


def node(
    labels: dict[str, str] | None = None,
    conditions: dict[str, tuple[str, float]] | None = None,
    rv: str = "1",
) -> NodeInfo:
    return NodeInfo(
        name="n1",
        labels={"pool": "a"} if labels is None else labels,
        unschedulable=False,
        conditions={"Ready": ("True", 100.0)} if conditions is None else conditions,
        taints=(),
        created_at=50.0,
        resource_version=rv,
    )


def brief(events: list[NodeEvent]) -> list[tuple[Any, ...]]:
    """The parts of events that the table compares."""
    return [
        (str(e.kind), e.condition, e.status, e.since, e.labels, e.at, dict(e.detail))
        for e in events
    ]


ADDED = ("node_added", None, None, None)
NODE_CASES: list[tuple[str, NodeInfo, NodeInfo | None, list[tuple[Any, ...]]]] = [
    (
        "first sight reports everything",
        node(conditions={"Ready": ("True", 100.0), "DiskPressure": ("False", 90.0)}),
        None,
        # One event: the conditions ride on NODE_ADDED (see test_first_sight_carries_...).
        [(*ADDED, {"pool": "a"}, NOW, {"created_at": 50.0})],
    ),
    (
        "nothing changed but the resourceVersion (a heartbeat)",
        node(rv="2"),
        node(rv="1"),
        [],
    ),
    (
        "a status change",
        node(conditions={"Ready": ("Unknown", 200.0)}),
        node(),
        [("condition", "Ready", "Unknown", 200.0, None, NOW, {})],
    ),
    (
        "a flip and flip back between observations restarts the condition",
        node(conditions={"Ready": ("True", 300.0)}),
        node(conditions={"Ready": ("True", 100.0)}),
        [("condition", "Ready", "True", 300.0, None, NOW, {})],
    ),
    (
        "a new condition type",
        node(conditions={"Ready": ("True", 100.0), "KernelDeadlock": ("True", 150.0)}),
        node(),
        [("condition", "KernelDeadlock", "True", 150.0, None, NOW, {})],
    ),
    (
        "labels changed",
        node(labels={"pool": "b"}),
        node(),
        [("labels", None, None, None, {"pool": "b"}, NOW, {})],
    ),
    (
        "labels and a condition changed together",
        node(labels={}, conditions={"Ready": ("False", 400.0)}),
        node(),
        [
            ("labels", None, None, None, {}, NOW, {}),
            ("condition", "Ready", "False", 400.0, None, NOW, {}),
        ],
    ),
    (
        "a condition that disappeared is not reported",
        node(conditions={}),
        node(),
        [],
    ),
]


@pytest.mark.parametrize(
    ("current", "previous", "expected"),
    [case[1:] for case in NODE_CASES],
    ids=[case[0] for case in NODE_CASES],
)
def test_node_events(
    current: NodeInfo, previous: NodeInfo | None, expected: list[tuple[Any, ...]]
) -> None:
    events = node_events(cluster="c1", current=current, previous=previous, now=NOW)
    assert brief(events) == expected
    assert all(e.cluster == "c1" and e.node == "n1" and e.source == "kube" for e in events)


def lease(renew: float | None, holder: str | None = "n1") -> LeaseInfo:
    return LeaseInfo(name="n1", holder=holder, renew_time=renew, duration=40, resource_version="1")


@pytest.mark.parametrize(
    ("current", "previous_renew", "expected"),
    [
        (lease(10.0), None, [("heartbeat", None, None, None, None, 10.0, {"holder": "n1"})]),
        (lease(11.0), 10.0, [("heartbeat", None, None, None, None, 11.0, {"holder": "n1"})]),
        (lease(10.0), 10.0, []),  # same renewal seen again (re-list, holder change)
        (lease(9.0), 10.0, []),  # an older renewal never moves the heartbeat back
        (lease(None), None, []),  # a lease that was never renewed
        (lease(12.0, holder=None), 10.0, [("heartbeat", None, None, None, None, 12.0, {})]),
    ],
    ids=["first", "advanced", "unchanged", "older", "never-renewed", "no-holder"],
)
def test_lease_events(
    current: LeaseInfo, previous_renew: float | None, expected: list[tuple[Any, ...]]
) -> None:
    events = lease_events(cluster="c1", current=current, previous_renew=previous_renew)
    assert brief(events) == expected


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (
            {"Ready": ("True", 100.0), "DiskPressure": ("False", 90.0)},
            {"Ready": ("True", 100.0), "DiskPressure": ("False", 90.0)},
        ),
        # A transition seen as it happens is dated by our observation (never early).
        ({"Ready": ("False", NOW - 1.0)}, {"Ready": ("False", NOW)}),
        ({}, {}),
    ],
    ids=["old transitions kept", "fresh transition at now", "no conditions"],
)
def test_first_sight_carries_the_conditions(
    conditions: dict[str, tuple[str, float]], expected: dict[str, tuple[str, float]]
) -> None:
    """A node never exists for healer without its conditions: one NODE_ADDED holds them."""
    [added] = node_events(cluster="c1", current=node(conditions=conditions), previous=None, now=NOW)
    assert added.kind is EventKind.NODE_ADDED
    assert added.conditions == expected


def test_list_batch_is_framed_by_the_markers() -> None:
    inner = node_events(cluster="c1", current=node(), previous=None, now=NOW)
    batch = list_batch(cluster="c1", events=inner, nodes=1, first=True, now=NOW)
    assert [e.kind for e in batch] == [
        EventKind.LIST_STARTED,
        EventKind.NODE_ADDED,
        EventKind.SYNCED,
    ]
    assert batch[0].node == batch[-1].node == ""
    assert batch[-1].detail == {"nodes": 1, "first": True}


def test_node_deleted_event() -> None:
    event = node_deleted_event(cluster="c1", node="n1", now=NOW)
    assert (event.kind, event.at, event.source) == (EventKind.NODE_DELETED, NOW, "kube")


# ---------------------------------------------------------------- the loop, over HTTP


@dataclass
class Harness:
    source: KubeWatchSource
    events: list[NodeEvent]
    availability: list[tuple[bool, str]]
    clock: VirtualClock

    def of(self, kind: EventKind, node: str | None = None) -> list[NodeEvent]:
        return [e for e in self.events if e.kind is kind and (node is None or e.node == node)]


@pytest.fixture
async def harness(kube: KubeClient) -> AsyncIterator[Harness]:
    """A running source; its own clock is virtual, so backoff never sleeps for real."""
    events: list[NodeEvent] = []
    availability: list[tuple[bool, str]] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    async def on_availability(up: bool, reason: str) -> None:
        availability.append((up, reason))

    clock = VirtualClock()
    source = KubeWatchSource(
        cluster="c1",
        client=kube,
        clock=clock,
        emit=emit,
        on_availability=on_availability,
        backoff_max=8,
        rng=random.Random(1),
    )
    task = asyncio.create_task(source.run())
    try:
        yield Harness(source, events, availability, clock)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_snapshot_then_changes(
    fake_api: FakeApiServer, kube: KubeClient, eventually: Eventually
) -> None:
    fake_api.add_node("n1", {"healer.io/pool": "a"})
    fake_api.set_lease("n1", renew_time=1_700_000_000.5)
    h_events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        h_events.append(event)

    # Seen 10 s after the renewal: a remote time is kept as it is (a future one would be
    # clamped to now, healer/clock.py).
    clock = VirtualClock(1_700_000_010.0)
    source = KubeWatchSource(cluster="c1", client=kube, clock=clock, emit=emit)
    task = asyncio.create_task(source.run())
    try:
        await eventually(lambda: any(e.kind is EventKind.SYNCED for e in h_events))
        kinds = [str(e.kind) for e in h_events]
        # The list is one batch: markers around it, each node whole in one NODE_ADDED.
        assert kinds == ["list_started", "node_added", "heartbeat", "synced"]
        assert h_events[1].conditions is not None and "Ready" in h_events[1].conditions
        (beat,) = [e for e in h_events if e.kind is EventKind.HEARTBEAT]
        assert beat.at == 1_700_000_000.5 and beat.node == "n1"
        h_events.clear()
        await eventually(lambda: fake_api.request_count("WATCH", "leases") == 1)
        await eventually(lambda: fake_api.request_count("WATCH", "nodes") == 1)

        # A label change is LABELS; a status heartbeat with no change emits nothing.
        await kube.set_node_labels("n1", {"healer.io/exclude": "true"})
        await kube.set_node_ready("n1", "True", "KubeletReady", "still fine")
        await eventually(lambda: any(e.kind is EventKind.LABELS for e in h_events))
        # A status change is one CONDITION.
        await kube.set_node_ready("n1", "False", "KubeletNotReady", "runtime down")
        await eventually(lambda: any(e.kind is EventKind.CONDITION for e in h_events))
        # A lease renewal is a HEARTBEAT at renewTime.
        fake_api.set_lease("n1", renew_time=1_700_000_010.25)
        await eventually(lambda: any(e.kind is EventKind.HEARTBEAT for e in h_events))
        # A new node is NODE_ADDED; a deleted one NODE_DELETED.
        fake_api.add_node("n2")
        fake_api.delete_node("n1")
        await eventually(lambda: any(e.kind is EventKind.NODE_DELETED for e in h_events))

        summary = [(str(e.kind), e.node, e.condition, e.status) for e in h_events]
        assert summary == [
            ("labels", "n1", None, None),
            ("condition", "n1", "Ready", "False"),
            ("heartbeat", "n1", None, None),
            ("node_added", "n2", None, None),
            ("node_deleted", "n1", None, None),
        ]
        labels = next(e for e in h_events if e.kind is EventKind.LABELS).labels
        assert labels == {"healer.io/pool": "a", "healer.io/exclude": "true"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_410_gone_relists(
    fake_api: FakeApiServer, harness: Harness, eventually: Eventually
) -> None:
    fake_api.add_node("n1")
    fake_api.add_node("n2")
    await eventually(lambda: fake_api.request_count("WATCH", "nodes") == 1)
    await eventually(lambda: len(harness.of(EventKind.NODE_ADDED)) == 2)
    # The apiserver ends the node watch; before the source resumes, n1 goes, n3 comes, and
    # history is compacted. Resuming from the old version gets 200 + ERROR 410 ->
    # WatchExpired -> a fresh list, immediately (no backoff, no unavailability).
    fake_api.end_watches("nodes")
    fake_api.delete_node("n1")
    fake_api.add_node("n3")
    fake_api.compact()
    # Generous bounds: on a loaded CI machine the reconnect, 410 and re-list take a while.
    await eventually(lambda: fake_api.request_count("LIST", "nodes") == 2, timeout=30)
    await eventually(lambda: fake_api.request_count("WATCH", "nodes") == 3, timeout=30)
    assert len(harness.of(EventKind.NODE_ADDED, "n3")) == 1
    # The deletion was never streamed: it is found by difference with the new list.
    assert len(harness.of(EventKind.NODE_DELETED, "n1")) == 1
    # The re-list reports the surviving node again as a snapshot.
    assert len(harness.of(EventKind.NODE_ADDED, "n2")) == 2
    assert harness.availability == []
    assert harness.source.available
    # Each list is framed by the markers; only the first says so.
    await eventually(lambda: len(harness.of(EventKind.SYNCED)) == 2)
    assert [e.detail["first"] for e in harness.of(EventKind.SYNCED)] == [True, False]
    assert len(harness.of(EventKind.LIST_STARTED)) == 2


async def test_unavailable_backs_off_and_reports(
    fake_api: FakeApiServer, harness: Harness, eventually: Eventually
) -> None:
    fake_api.add_node("n1")
    await eventually(lambda: fake_api.request_count("WATCH", "nodes") == 1)
    fake_api.set_unreachable(True)
    await eventually(lambda: bool(harness.availability))
    assert harness.availability[0][0] is False
    assert "503" in harness.availability[0][1]
    lists = fake_api.request_count("LIST", "nodes")
    # Backing off on the (virtual) clock: no new attempt until it moves.
    await asyncio.sleep(0.05)
    assert fake_api.request_count("LIST", "nodes") == lists
    await harness.clock.advance(1.0)  # first backoff is at most 1 s
    await eventually(lambda: fake_api.request_count("LIST", "nodes") == lists + 1)
    # Still down: the next delay doubles (jittered, capped at backoff_max).
    await asyncio.sleep(0.05)
    await harness.clock.advance(0.4)
    await asyncio.sleep(0.05)
    assert fake_api.request_count("LIST", "nodes") == lists + 1
    fake_api.set_unreachable(False)
    await harness.clock.advance(8)
    await eventually(lambda: harness.availability[-1] == (True, ""))
    assert [up for up, _ in harness.availability] == [False, True]
    await eventually(lambda: fake_api.request_count("WATCH", "nodes") >= 2)


class ScriptedApi:
    """A client whose node lists fail (or succeed) as scripted; every watch drops at once."""

    def __init__(self, clock: VirtualClock, script: list[Exception | None]) -> None:
        self.clock = clock
        self.script = script
        self.lists: list[float] = []

    async def list_nodes(self) -> tuple[list[NodeInfo], str]:
        self.lists.append(self.clock.now())
        step = self.script.pop(0) if self.script else KubeUnavailable("still down")
        if step is not None:
            raise step
        return [], "1"

    async def list_leases(self) -> tuple[list[LeaseInfo], str]:
        return [], "1"

    async def watch_nodes(self, rv: str, timeout: int) -> AsyncIterator[WatchEvent]:
        raise KubeUnavailable("the watch dropped")
        yield  # an async generator, like the real one

    watch_leases = watch_nodes


async def run_scripted(
    script: list[Exception | None], *, lists: int, backoff_max: float = 30.0
) -> tuple[list[float], list[tuple[bool, str]], list[MutableMapping[str, Any]]]:
    """The waits between the source's lists, its availability reports and its log lines."""
    clock = VirtualClock(0.0)
    api = ScriptedApi(clock, script)
    availability: list[tuple[bool, str]] = []

    async def emit(event: NodeEvent) -> None:
        pass

    async def on_availability(up: bool, reason: str) -> None:
        availability.append((up, reason))

    source = KubeWatchSource(
        cluster="c1",
        client=api,  # type: ignore[arg-type]
        clock=clock,
        emit=emit,
        on_availability=on_availability,
        backoff_max=backoff_max,
        rng=random.Random(7),
    )
    with capture_logs() as logs:
        task = asyncio.create_task(source.run())
        for _ in range(1000):
            if len(api.lists) >= lists:
                break
            await clock.advance(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    times = api.lists[:lists]
    return [b - a for a, b in itertools.pairwise(times)], availability, logs


async def test_backoff_is_exponential_capped_and_jittered_on_the_clock() -> None:
    down: list[Exception | None] = [KubeUnavailable("503") for _ in range(9)]
    waits, availability, logs = await run_scripted(down, lists=10)
    ceilings = [1, 2, 4, 8, 16, 30, 30, 30, 30]
    # Sampled every 0.5 s of virtual time: a wait is seen up to that much late.
    assert all(c / 2 <= w <= c + 0.5 for w, c in zip(waits, ceilings, strict=True)), waits
    assert len(set(waits)) > 3  # jittered
    assert availability == [(False, "503")]  # said once, not at every attempt
    assert [e["event"] for e in logs].count("kube_watch.unavailable") == 10  # each failed list


async def test_retry_after_and_permanent_errors_set_the_wait() -> None:
    script: list[Exception | None] = [
        KubeUnavailable("429", delay=3.0),  # the server's Retry-After
        PermanentError("403 forbidden"),  # nothing healer can fix: the longest wait
        KubeUnavailable("429", delay=100.0),  # capped at backoff_max
    ]
    waits, _, logs = await run_scripted(script, lists=4, backoff_max=20.0)
    assert waits == [3.0, 20.0, 20.0]
    (failed,) = [e for e in logs if e["event"] == "kube_watch.failed"]
    assert failed["reason"] == "403 forbidden" and failed["retry_in"] == 20.0


async def test_a_successful_list_starts_the_waits_again_from_the_first() -> None:
    down: list[Exception | None] = [KubeUnavailable("503") for _ in range(4)]
    # Four failures (waits up to 1, 2, 4, 8), a list that works and a watch that drops
    # (waits up to 1 again), then failures again (up to 2).
    waits, availability, _ = await run_scripted([*down, None, KubeUnavailable("x")], lists=7)
    ceilings = [1, 2, 4, 8, 1, 2]
    assert all(c / 2 <= w <= c + 0.5 for w, c in zip(waits, ceilings, strict=True)), waits
    assert [up for up, _ in availability] == [False, True, False]


async def test_harness_sees_initial_snapshot(
    fake_api: FakeApiServer, harness: Harness, eventually: Eventually
) -> None:
    # Nodes that appear after start arrive through the watch as full snapshots too.
    await eventually(lambda: fake_api.request_count("WATCH", "nodes") == 1)
    fake_api.add_node("late", {"x": "y"})
    await eventually(lambda: len(harness.of(EventKind.NODE_ADDED, "late")) == 1)
    (added,) = harness.of(EventKind.NODE_ADDED, "late")
    assert added.labels == {"x": "y"} and added.detail["created_at"] > 0
    assert added.conditions is not None and len(added.conditions) == 4
    assert added.conditions["Ready"][0] == "True"
    assert harness.of(EventKind.CONDITION, "late") == []


async def test_relist_ends_the_life_of_a_node_recreated_under_the_same_name(
    fake_api_virtual: FakeApiServer,
    kube_virtual: KubeClient,
    virtual_clock: VirtualClock,
    eventually: Eventually,
) -> None:
    fake = fake_api_virtual
    events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    fake.add_node("n1")
    # The source reads the world's clock: a creation time after its own now would be clamped.
    source = KubeWatchSource(cluster="c1", client=kube_virtual, clock=virtual_clock, emit=emit)
    task = asyncio.create_task(source.run())
    try:
        await eventually(lambda: fake.request_count("WATCH", "nodes") == 1)
        await virtual_clock.advance(5)
        # Unseen by the source: the watch ends, n1 is replaced by a new n1, history compacted.
        fake.end_watches("nodes")
        fake.delete_node("n1")
        fake.add_node("n1")
        fake.compact()
        await eventually(lambda: fake.request_count("LIST", "nodes") == 2)
        await eventually(lambda: len([e for e in events if e.kind is EventKind.NODE_ADDED]) == 2)
        lives = [(str(e.kind), e.detail.get("created_at")) for e in events if e.node == "n1"]
        start = virtual_clock.now() - 5
        assert lives == [
            ("node_added", start),
            ("node_deleted", None),
            ("node_added", start + 5),
        ]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
