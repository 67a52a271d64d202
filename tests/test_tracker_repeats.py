"""Repeated events (an alert sent again, a condition restated) change only a node's evidence:
with ``lazy_heartbeats`` (the daemon) they are neither judged nor written per event; the record
takes the new evidence at the next ``flush_heartbeats``, and timeouts still come by their timer.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import healer.health.tracker as tracker_module
from healer.clock import VirtualClock
from healer.config import parse_config
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, EventKind, Health, NodeEvent, NodeKey
from healer.store.sqlite import Store

KEY = NodeKey("c1", "c1-0000")


def config() -> Any:
    return parse_config(
        {
            "clusters": [
                {
                    "name": "c1",
                    "provider": {"plugin": "lab"},
                    "pools": [{"name": "a", "size": 2}],
                    "health": {
                        "unhealthyConditions": [
                            {"type": "Ready", "status": "Unknown", "timeout": "10s"}
                        ]
                    },
                }
            ]
        }
    )


def ev(clock: VirtualClock, kind: EventKind, node: str = KEY.node, **kw: Any) -> NodeEvent:
    return NodeEvent(cluster="c1", node=node, kind=kind, at=clock.now(), source="kube", **kw)


def unknown(clock: VirtualClock) -> NodeEvent:
    return ev(clock, EventKind.CONDITION, condition="Ready", status="Unknown")


async def loaded(tmp_path: Path, *, lazy: bool) -> tuple[VirtualClock, Store, HealthTracker]:
    clock = VirtualClock()
    store = Store.open(tmp_path)
    tracker = HealthTracker(config=config(), store=store, clock=clock, lazy_heartbeats=lazy)
    await tracker.handle_batch(
        [
            ev(clock, EventKind.LIST_STARTED, node=""),
            *(
                ev(
                    clock,
                    EventKind.NODE_ADDED,
                    node=f"c1-{i:04d}",
                    labels={LABEL_POOL: "a"},
                    conditions={"Ready": ("True", clock.now() - 60)},
                )
                for i in range(2)
            ),
            ev(clock, EventKind.SYNCED, node=""),
        ]
    )
    return clock, store, tracker


async def test_repeats_are_not_judged_nor_written_until_the_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, store, tracker = await loaded(tmp_path, lazy=True)
    calls: Counter[str] = Counter()
    evaluate, save_node = tracker_module.evaluate, store.save_node

    def counted_evaluate(*a: Any, **kw: Any) -> Any:
        calls["evaluate"] += 1
        return evaluate(*a, **kw)

    def counted_save(*a: Any, **kw: Any) -> Any:
        calls["save_node"] += 1
        return save_node(*a, **kw)

    monkeypatch.setattr(tracker_module, "evaluate", counted_evaluate)
    monkeypatch.setattr(store, "save_node", counted_save)
    await tracker.handle_batch([unknown(clock)])  # a change: judged and written at once
    assert calls == {"evaluate": 1, "save_node": 1}
    assert tracker.verdict(KEY).health is Health.PENDING  # type: ignore[union-attr]
    calls.clear()
    for _ in range(3):
        await clock.advance(1.0)
        await tracker.handle_batch([unknown(clock)])
    assert calls == {}  # repeats: neither judged nor written
    assert tracker.pending_heartbeats() == 1
    recent = tracker.observation(KEY).recent  # type: ignore[union-attr]
    assert recent[-1]["at"] == clock.now()  # the evidence is kept in memory at once
    assert tracker.flush_heartbeats() == 1
    assert calls == {"save_node": 1}  # one write per node, whatever the repeats
    assert tracker.pending_heartbeats() == 0
    # The record has the evidence: a restart reads it.
    store.close()
    store = Store.open(tmp_path)
    again = HealthTracker(config=config(), store=store, clock=clock)
    assert again.observation(KEY).recent == recent  # type: ignore[union-attr]
    store.close()


async def test_a_timeout_still_comes_by_its_timer_between_repeats(tmp_path: Path) -> None:
    clock, store, tracker = await loaded(tmp_path, lazy=True)
    await tracker.handle_batch([unknown(clock)])
    await clock.advance(5.0)
    await tracker.handle_batch([unknown(clock)])
    assert tracker.verdict(KEY).health is Health.PENDING  # type: ignore[union-attr]
    task = asyncio.create_task(tracker.run())
    await clock.advance(6.0)
    await clock.settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert tracker.verdict(KEY).health is Health.UNHEALTHY  # type: ignore[union-attr]
    assert tracker.pending_heartbeats() == 0  # the judgement wrote the record, evidence too
    store.close()


async def test_without_lazy_writes_a_repeat_is_written_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, store, tracker = await loaded(tmp_path, lazy=False)
    await tracker.handle_batch([unknown(clock)])
    saved: list[str] = []
    save_node = store.save_node

    def counted_save(obs: Any, *a: Any, **kw: Any) -> Any:
        saved.append(obs.node)
        return save_node(obs, *a, **kw)

    monkeypatch.setattr(store, "save_node", counted_save)
    await clock.advance(1.0)
    await tracker.handle_batch([unknown(clock)])
    assert saved == [KEY.node]
    assert tracker.pending_heartbeats() == 0
    store.close()
