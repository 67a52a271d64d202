"""Speed and memory of the health core, printed as figures (not asserted: these are benchmarks).

- verdicts: pure `evaluate()` calls per second;
- intake: events per second through the tracker, each persisted to SQLite (the real store);
- memory: bytes of Python heap per tracked node;
- planning: one `Planner.consider()` over a cluster with a given number of nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import structlog

from healer.clock import VirtualClock
from healer.config import parse_config
from healer.health.tracker import HealthTracker
from healer.health.verdict import evaluate
from healer.model import LABEL_POOL, ConditionObs, EventKind, NodeEvent, NodeObservation
from healer.planner.planner import Planner
from healer.store.sqlite import Store


def config(nodes: int):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "clusters": [
                {
                    "name": "bench",
                    "provider": {"plugin": "lab"},
                    "pools": [{"name": "workers", "size": nodes}],
                }
            ]
        }
    )


def bench_verdicts(n: int) -> str:
    policy = config(3).clusters[0].health_for("workers")
    obs = NodeObservation(
        cluster="bench",
        node="n",
        pool="workers",
        first_seen=0.0,
        ever_ready=True,
        conditions={"Ready": ConditionObs("Unknown", 100.0)},
    )
    start = time.perf_counter()
    for i in range(n):
        evaluate(obs, policy, 100.0 + (i % 600))
    dt = time.perf_counter() - start
    return f"verdicts: {n / dt:,.0f} evaluate() calls/s ({dt / n * 1e6:.2f} µs each)"


def _events(nodes: int, per_node: int, clock: VirtualClock) -> list[NodeEvent]:
    out = []
    for i in range(nodes):
        name = f"node-{i:05d}"
        out.append(
            NodeEvent(
                cluster="bench",
                node=name,
                kind=EventKind.NODE_ADDED,
                at=clock.now(),
                source="bench",
                labels={LABEL_POOL: "workers"},
            )
        )
        for j in range(per_node - 1):
            status = "True" if j % 2 == 0 else "Unknown"
            out.append(
                NodeEvent(
                    cluster="bench",
                    node=name,
                    kind=EventKind.CONDITION,
                    at=clock.now(),
                    source="bench",
                    condition="Ready",
                    status=status,
                )
            )
    return out


async def bench_intake(nodes: int, per_node: int) -> list[str]:
    clock = VirtualClock()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        tracker = HealthTracker(config=config(nodes), store=store, clock=clock)
        events = _events(nodes, per_node, clock)
        start = time.perf_counter()
        for ev in events:
            await tracker.handle(ev)
        dt = time.perf_counter() - start
        store.close()
    return [
        f"intake: {len(events) / dt:,.0f} events/s through the tracker with SQLite persistence "
        f"({len(events):,} events, {nodes:,} nodes, {dt:.2f} s)"
    ]


async def bench_memory(nodes: int) -> str:
    clock = VirtualClock()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        tracker = HealthTracker(config=config(nodes), store=store, clock=clock)
        for ev in _events(nodes, 3, clock):
            await tracker.handle(ev)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        store.close()
    return (
        f"memory: {(after - before) / nodes:,.0f} bytes of heap per tracked node ({nodes:,} nodes)"
    )


async def bench_planning(nodes: int) -> str:
    clock = VirtualClock()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        cfg = config(nodes)
        tracker = HealthTracker(config=cfg, store=store, clock=clock)
        for ev in _events(nodes, 2, clock):
            await tracker.handle(ev)

        async def start(wf: object) -> None:
            return None

        planner = Planner(config=cfg, store=store, clock=clock, tracker=tracker, start=start)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            await planner.consider("bench")
            times.append(time.perf_counter() - t)
        store.close()
    return (
        f"planning: consider() over {nodes:,} nodes: median {statistics.median(times) * 1e3:.1f} ms, "
        f"max {max(times) * 1e3:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--nodes", type=int, default=2000)
    args = parser.parse_args()
    # The figures are the output; per-node log lines would drown them (and cost time).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(bench_verdicts(200_000))
    for line in asyncio.run(bench_intake(args.nodes, 3)):
        print(line)
    print(asyncio.run(bench_memory(args.nodes)))
    print(asyncio.run(bench_planning(args.nodes)))


if __name__ == "__main__":
    main()
