"""The state store's cost per intake event, alone (no tracker, no planner): what one node record
write costs on each backend, one transaction per event against one per batch of events.

Workloads, each over ``nodes`` records already in the store, one write per event:

- ``record``: the observation changed (a condition flipped), so the record is encoded and written;
- ``heartbeat``: only ``last_heartbeat`` moved (``save_node``, as the tracker did per heartbeat);
- ``heartbeats``: the same through ``Store.save_heartbeats`` (one call per batch, or per event);
- ``unchanged``: the same observation and verdict again (a re-judgement that changed nothing).

Each runs per event (one transaction each) and in batches (``Store.batch()``) of the sizes
asked. :func:`measure` is what the bench harness calls (``python -m benchmarks`` owns the
rest); ``python -m benchmarks.store_bench`` prints the table for SQLite and, when installed, a
throwaway PostgreSQL server on loopback with fsync on (tests/postgres.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from healer.model import ConditionObs, Health, NodeObservation, Verdict
from healer.store.sqlite import Store

OpenStore = Callable[[Path], Store]
WORKLOADS = ("record", "heartbeat", "heartbeats", "unchanged")
HEALTHY = Verdict(Health.HEALTHY, "Ready", "Ready=True", None)


@dataclass(frozen=True)
class Result:
    backend: str
    workload: str
    batch: int  # events per transaction (1: a transaction per event)
    events: int
    seconds: float  # wall time of the best of the repeats
    cpu_seconds: float  # this process's CPU time in that run (not the database server's)

    @property
    def us_per_event(self) -> float:
        return self.seconds / self.events * 1e6

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6

    def line(self) -> str:
        per = "per event" if self.batch == 1 else f"batch of {self.batch:,}"
        return (
            f"{self.backend:<24} {self.workload:<10} {per:<16} "
            f"{self.us_per_event:9.1f} us/event wall {self.cpu_us_per_event:8.1f} us CPU  "
            f"({self.events:,} events, {self.seconds:.3f} s)"
        )


def _observation(
    i: int, *, status: str = "True", heartbeat: float | None = None
) -> NodeObservation:
    return NodeObservation(
        cluster=f"c{i % 10}",
        node=f"node-{i:05d}",
        pool="workers",
        first_seen=1.0,
        ever_ready=True,
        conditions={
            "Ready": ConditionObs(status, 10.0, "kube"),
            "MemoryPressure": ConditionObs("False", 10.0, "kube"),
            "DiskPressure": ConditionObs("False", 10.0, "kube"),
        },
        labels={"healer.io/pool": "workers", "kubernetes.io/hostname": f"node-{i:05d}"},
        recent=({"kind": "node_added", "at": 1.0, "source": "kube"},),
        last_heartbeat=heartbeat,
    )


def _event(workload: str, i: int, n: int, round_: int) -> NodeObservation:
    at = 100.0 + round_
    if workload == "record":
        return _observation(i % n, status="True" if round_ % 2 else "Unknown", heartbeat=1.0)
    if workload == "unchanged":
        return _observation(i % n, heartbeat=1.0)
    return _observation(i % n, heartbeat=at)


def _write(store: Store, workload: str, batch: Sequence[NodeObservation], now: float) -> None:
    if workload == "heartbeats":
        store.save_heartbeats([(o.cluster, o.node, o.last_heartbeat or 0.0) for o in batch])
        return
    for obs in batch:
        store.save_node(obs, HEALTHY, now)


def measure(
    open_store: OpenStore,
    *,
    backend: str,
    nodes: int = 1000,
    events: int = 2000,
    batches: Sequence[int] = (1, 100, 1000),
    workloads: Sequence[str] = WORKLOADS,
    repeat: int = 3,
) -> list[Result]:
    """The cost per event of each workload at each batch size (1: no ``Store.batch()``), each in
    a fresh store of ``open_store(state_dir)`` preloaded with ``nodes`` records; the best of
    ``repeat`` runs of ``events`` events (the machine is shared: the least disturbed run). A
    store without ``batch()`` / ``save_heartbeats()`` (an older healer) measures what it can."""
    results: list[Result] = []
    for workload in workloads:
        for size in batches:
            with tempfile.TemporaryDirectory() as tmp:
                store = open_store(Path(tmp))
                try:
                    if (size > 1 and not hasattr(store, "batch")) or (
                        workload == "heartbeats" and not hasattr(store, "save_heartbeats")
                    ):
                        continue
                    for i in range(nodes):
                        store.save_node(_observation(i, heartbeat=1.0), HEALTHY, 1.0)
                    runs = []
                    for run in range(repeat):
                        first = run * events
                        obs = [
                            _event(workload, i, nodes, i // nodes)
                            for i in range(first, first + events)
                        ]
                        chunks = [obs[k : k + size] for k in range(0, events, size)]
                        start, cpu = time.perf_counter(), time.process_time()
                        for chunk in chunks:
                            if size == 1:
                                _write(store, workload, chunk, 100.0)
                            else:
                                with store.batch():
                                    _write(store, workload, chunk, 100.0)
                        runs.append((time.perf_counter() - start, time.process_time() - cpu))
                finally:
                    store.close()
            seconds, cpu_seconds = min(runs)
            results.append(Result(backend, workload, size, events, seconds, cpu_seconds))
    return results


@contextlib.contextmanager
def backends(postgres: bool = True) -> Iterator[list[tuple[str, OpenStore]]]:
    """SQLite, and a throwaway PostgreSQL server (fsync on, as in production) when installed
    and asked for: (name, open_store) pairs, the server stopped at the end."""
    found: list[tuple[str, OpenStore]] = [("SQLite", Store.open)]
    server = None
    if postgres:
        from tests.postgres import PASSWORD, PostgresServer, postgres_bindir, skip_reason

        bindir = postgres_bindir()
        if skip_reason() is None and bindir is not None:
            from healer.store.postgres import PostgresStore

            server = PostgresServer(bindir, fsync=True).start()
            pg = server

            def open_pg(state_dir: Path) -> Store:
                url = pg.url(pg.create_database("bench"))
                return PostgresStore.connect(url, password=PASSWORD, state_dir=state_dir)

            found.append(("PostgreSQL (loopback)", open_pg))
    try:
        yield found
    finally:
        if server is not None:
            server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batches", default="1,100,1000", help="comma-separated batch sizes")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the best)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: list[Result] = []
    with backends(not args.no_postgres) as found:
        for name, open_store in found:
            for r in measure(
                open_store,
                backend=name,
                nodes=args.nodes,
                events=args.events,
                batches=[int(b) for b in args.batches.split(",")],
                workloads=args.workloads.split(","),
                repeat=args.repeat,
            ):
                print(r.line(), flush=True)
                results.append(r)
    if args.json is not None:
        rows = [
            asdict(r) | {"us_per_event": r.us_per_event, "cpu_us_per_event": r.cpu_us_per_event}
            for r in results
        ]
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
