"""Re-evaluation: the planner's periodic ``recheck`` (every cluster considered: snapshot, guards,
refusals) over a fleet loaded through the real tracker and store, in this process, timed
alone; 1% of the nodes unhealthy (Ready=Unknown for an hour), so the guards have work. The
baseline is the same nodes in one cluster.

Also builds the state directory `healer status` is timed on (benchmarks/startup.py)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import Figure, median, pool_of, pools
from healer.clock import VirtualClock
from healer.config import HealerConfig, parse_config
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, EventKind, NodeEvent
from healer.planner.planner import Planner
from healer.store.sqlite import Store

UNHEALTHY_EVERY = 100  # 1% of the nodes
BUDGET = 15.0  # seconds of rechecks per size at most
MAX_SINGLE_CLUSTER = 10_000


def fleet_config(nodes: int, clusters: int) -> HealerConfig:
    per, extra = divmod(nodes, clusters)
    return parse_config(
        {
            "dryRun": True,
            "clusters": [
                {
                    "name": f"c{c:03d}",
                    "provider": {"plugin": "lab"},
                    "health": {
                        "unhealthyConditions": [
                            {"type": "Ready", "status": "Unknown", "timeout": "5m"},
                            {"type": "Ready", "status": "False", "timeout": "5m"},
                        ]
                    },
                    "pools": pools(per + (1 if c < extra else 0)),
                }
                for c in range(clusters)
            ],
        }
    )


def _events(config: HealerConfig, now: float) -> Iterator[NodeEvent]:
    """Each cluster's first list, as the Kubernetes source emits it."""
    i = 0
    for cluster in config.clusters:
        name = cluster.name
        yield NodeEvent(cluster=name, node="", kind=EventKind.LIST_STARTED, at=now, source="kube")
        for k in range(sum(pool.size for pool in cluster.pools)):
            node = f"{name}-n{k:05d}"
            yield NodeEvent(
                cluster=name,
                node=node,
                kind=EventKind.NODE_ADDED,
                at=now,
                source="kube",
                labels={LABEL_POOL: pool_of(k)},
            )
            bad = i % UNHEALTHY_EVERY == UNHEALTHY_EVERY - 1
            yield NodeEvent(
                cluster=name,
                node=node,
                kind=EventKind.CONDITION,
                at=now,
                source="kube",
                condition="Ready",
                status="Unknown" if bad else "True",
                since=now - 3600 if bad else now - 60,
            )
            i += 1
        yield NodeEvent(cluster=name, node="", kind=EventKind.SYNCED, at=now, source="kube")


def _batch(store: Store) -> contextlib.AbstractContextManager[Any]:
    # Store.batch() (one transaction for many writes) where this healer has it.
    batch = getattr(store, "batch", None)
    return batch() if batch is not None else contextlib.nullcontext()


async def load(
    state_dir: Path, nodes: int, clusters: int
) -> tuple[Store, HealthTracker, HealerConfig, VirtualClock]:
    config = fleet_config(nodes, clusters)
    clock = VirtualClock(start=1_000_000.0)
    store = Store.open(state_dir)
    tracker = HealthTracker(config=config, store=store, clock=clock)
    events = list(_events(config, clock.now()))
    for k in range(0, len(events), 1000):
        with _batch(store):
            for event in events[k : k + 1000]:
                await tracker.handle(event)
    return store, tracker, config, clock


async def _planner(workdir: Path, nodes: int, clusters: int) -> tuple[Planner, Store]:
    """A planner over a freshly loaded fleet, its first recheck done (it records the refusals;
    the later ones find them recorded)."""
    state_dir = Path(tempfile.mkdtemp(prefix=f"recheck-{nodes}-{clusters}-", dir=workdir))
    store, tracker, config, clock = await load(state_dir, nodes, clusters)

    async def start(wf: object) -> None:
        return None

    planner = Planner(
        config=config, store=store, clock=clock, tracker=tracker, start=start, dry_run=True
    )
    await planner.recheck()
    return planner, store


async def _timed(planner: Planner) -> float:
    t = time.perf_counter()
    await planner.recheck()
    return (time.perf_counter() - t) * 1e3


async def _measure(
    workdir: Path, sizes: Sequence[tuple[int, int]], rounds: int
) -> tuple[list[Figure], list[dict[str, Any]]]:
    figures, rows = [], []
    bases: dict[int, tuple[Planner, Store] | None] = {}
    try:
        for nodes, clusters in sizes:
            # The baseline: one cluster, loaded once per node count. Past 10k nodes one
            # cluster is no baseline (Kubernetes stops at 5,000 nodes a cluster, the
            # configuration at 10,000 a pool): none then.
            if nodes not in bases:
                fits = nodes <= MAX_SINGLE_CLUSTER
                bases[nodes] = await _planner(workdir, nodes, 1) if fits else None
            base_planner = bases[nodes]
            here = await _planner(workdir, nodes, clusters) if clusters > 1 else base_planner
            if here is None:
                continue
            times: list[float] = []
            base: list[float] = []
            budget = time.monotonic() + BUDGET
            # Interleaved round by round; at least one round, no more than the budget allows
            # when a round takes seconds.
            while len(times) < rounds and (not times or time.monotonic() < budget):
                if base_planner is not None and here is not base_planner:
                    base.append(await _timed(base_planner[0]))
                times.append(await _timed(here[0]))
            if here is base_planner:
                base = times
            elif here is not None:
                here[1].close()
            must = nodes == 10_000 and clusters == 100
            value = median(times)
            figures.append(
                Figure(
                    f"full re-evaluation (planner recheck), {nodes:,} nodes in {clusters} "
                    "cluster(s)",
                    value,
                    "ms",
                    median(base),
                    "same nodes in 1 cluster" if base else "",
                    "< 100 ms" if must else "",
                    (value is not None and value < 100) if must else None,
                    times,
                    base,
                )
            )
            rows.append(
                {"nodes": nodes, "clusters": clusters, "ms": value, "baseline_ms": median(base)}
            )
    finally:
        for loaded in bases.values():
            if loaded is not None:
                loaded[1].close()
    return figures, rows


def measure(
    workdir: Path, sizes: Sequence[tuple[int, int]], rounds: int
) -> tuple[list[Figure], list[dict[str, Any]]]:
    return asyncio.run(_measure(workdir, sizes, rounds))
