"""Speed and memory of the health core, printed as figures (not asserted: these are benchmarks).

- verdicts: pure `evaluate()` calls per second;
- intake: events per second through the tracker, each persisted to the state store: SQLite,
  and PostgreSQL beside it (a throwaway server, tests/postgres.py, fsync on) when installed;
- step latency: one workflow step commit (``update_workflow`` with its journal line), per backend;
- memory: bytes of Python heap per tracked node;
- planning: one `Planner.consider()` over a cluster with a given number of nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from healer.clock import VirtualClock
from healer.config import parse_config
from healer.health.tracker import HealthTracker
from healer.health.verdict import evaluate
from healer.model import LABEL_POOL, ConditionObs, EventKind, NodeEvent, NodeObservation, Role
from healer.planner.planner import Planner
from healer.store.sqlite import RUNNING, Store, WorkflowRecord

# A backend to measure: its name and how to open a fresh, empty store in a directory.
Backend = tuple[str, Callable[[Path], Store]]


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
                    source="kube",  # Ready is the API's (signal provenance)
                    condition="Ready",
                    status=status,
                )
            )
    return out


async def bench_intake(nodes: int, per_node: int, backend: Backend) -> list[str]:
    name, open_store = backend
    clock = VirtualClock()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp))
        tracker = HealthTracker(config=config(nodes), store=store, clock=clock)
        events = _events(nodes, per_node, clock)
        start = time.perf_counter()
        for ev in events:
            await tracker.handle(ev)
        dt = time.perf_counter() - start
        store.close()
    return [
        f"intake: {len(events) / dt:,.0f} events/s through the tracker with {name} persistence "
        f"({len(events):,} events, {nodes:,} nodes, {dt:.2f} s)"
    ]


def bench_step_latency(commits: int, backend: Backend) -> str:
    """One workflow step commit: the row updated and a journal line appended, one transaction."""
    name, open_store = backend
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp))
        wf = WorkflowRecord(
            id="bench-wf",
            cluster="bench",
            pool="workers",
            node="node-00000",
            role=Role.WORKER,
            state=RUNNING,
            step="cordon",
            reason="NotReady",
            evidence={"Ready": "Unknown"},
            replacement_name="node-00000-r",
            started_at=0.0,
            updated_at=0.0,
        )
        store.create_workflow(wf)
        times = []
        for i in range(commits):
            wf = wf.with_(step=f"step-{i % 12}", updated_at=float(i))
            t = time.perf_counter()
            store.update_workflow(wf, journal=(wf.step, "done", {"attempt": i}))
            times.append(time.perf_counter() - t)
        store.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (
        f"step latency: {name} step commit median {statistics.median(times) * 1e3:.2f} ms, "
        f"p99 {p99 * 1e3:.2f} ms ({commits:,} commits)"
    )


@contextlib.contextmanager
def postgres_backend(wanted: bool) -> Iterator[Backend | None]:
    """A throwaway PostgreSQL server (tests/postgres.py; fsync on, as in production) and a fresh
    database per measurement; None (with a line saying why) when PostgreSQL is not installed."""
    if not wanted:
        yield None
        return
    from tests.postgres import PASSWORD, PostgresServer, postgres_bindir, skip_reason

    reason = skip_reason()
    bindir = postgres_bindir()
    if reason is not None or bindir is None:
        print(f"PostgreSQL: not measured ({reason})")
        yield None
        return
    from healer.store.postgres import PostgresStore

    server = PostgresServer(bindir, fsync=True).start()

    def open_store(state_dir: Path) -> Store:
        url = server.url(server.create_database("bench"))
        return PostgresStore.connect(url, password=PASSWORD, state_dir=state_dir)

    try:
        yield ("PostgreSQL (loopback)", open_store)
    finally:
        server.stop()


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
    parser.add_argument("--commits", type=int, default=1000, help="step commits timed per backend")
    parser.add_argument(
        "--no-postgres", action="store_true", help="measure the SQLite state store only"
    )
    args = parser.parse_args()
    # The figures are the output; per-node log lines would drown them (and cost time).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(bench_verdicts(200_000))
    sqlite: Backend = ("SQLite", Store.open)
    with postgres_backend(not args.no_postgres) as postgres:
        backends = [sqlite] if postgres is None else [sqlite, postgres]
        for backend in backends:
            for line in asyncio.run(bench_intake(args.nodes, 3, backend)):
                print(line)
        for backend in backends:
            print(bench_step_latency(args.commits, backend))
    print(asyncio.run(bench_memory(args.nodes)))
    print(asyncio.run(bench_planning(args.nodes)))


if __name__ == "__main__":
    main()
