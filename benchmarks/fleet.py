"""The daemon at fleet size, as users run it (`healer run`, dry run, on fake Kubernetes API
servers in another process): first load and restart until ready and until every node is
tracked, /healthz polled every 50 ms throughout (its longest silence), then idle CPU over a
window with no request at all, and RSS. A 100-node daemon runs beside each size as its baseline, measured in the same
windows."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    DaemonProc,
    Figure,
    Owned,
    World,
    cpu_seconds,
    daemon_config,
    free_port,
    rss_mb,
)
from benchmarks.report import fmt

BASELINE_NODES = 100


@dataclass
class Start:
    ready: float | None  # /healthz said 200
    loaded: float | None  # every node tracked
    max_gap: float

    @property
    def done(self) -> float | None:
        """Ready and every node tracked: the later of the two (None if either never came)."""
        if self.ready is None or self.loaded is None:
            return None
        return max(self.ready, self.loaded)

    def as_json(self) -> dict[str, float | None]:
        return {
            "ready": self.ready,
            "loaded": self.loaded,
            "max_gap": self.max_gap,
            "done": self.done,
        }


def _start(daemon: DaemonProc, nodes: int, timeout: float) -> Start:
    daemon.start()
    ready, loaded = daemon.wait_loaded(nodes, timeout)
    assert daemon.poller is not None
    return Start(ready, loaded, daemon.poller.max_gap)


def _restart(daemon: DaemonProc, nodes: int, timeout: float) -> Start:
    daemon.stop()
    return _start(daemon, nodes, timeout)


def measure(
    workdir: Path, sizes: Sequence[tuple[int, int]], *, idle_window: float, timeout: float
) -> tuple[list[Figure], list[dict[str, Any]]]:
    figures: list[Figure] = []
    rows: list[dict[str, Any]] = []
    for nodes, clusters in sizes:
        where = workdir / f"fleet-{nodes}-{clusters}"
        with Owned() as own:
            big_world = own.add(World(where / "world", nodes=nodes, clusters=clusters))
            small_world = own.add(
                World(where / "world-base", nodes=BASELINE_NODES, clusters=1, prefix="b")
            )
            big = own.add(
                DaemonProc(
                    where / "healer", daemon_config(big_world.clusters, metrics_port=free_port())
                )
            )
            small = own.add(
                DaemonProc(
                    where / "healer-base",
                    daemon_config(small_world.clusters, metrics_port=free_port()),
                    name="healer-base",
                )
            )
            base_first = _start(small, BASELINE_NODES, timeout)
            first = _start(big, nodes, timeout)
            row: dict[str, Any] = {"nodes": nodes, "clusters": clusters, "first": first.as_json()}
            if first.done is None:
                row["note"] = f"not ready and loaded within {timeout:.0f}s"
                rows.append(row)
                figures.append(
                    Figure(
                        f"first load, {nodes:,} nodes in {clusters} clusters",
                        None,
                        "s",
                        base_first.done,
                        f"{BASELINE_NODES} nodes",
                        note=row["note"],
                    )
                )
                continue
            # Idle means no request at all: the /healthz polls of the start stop here.
            big.quiet()
            small.quiet()
            time.sleep(min(5.0, idle_window))  # what the start left behind settles
            cpu0 = (cpu_seconds(big.pid), cpu_seconds(small.pid))
            t0 = time.monotonic()
            time.sleep(idle_window)
            elapsed = time.monotonic() - t0
            idle = (cpu_seconds(big.pid) - cpu0[0]) / elapsed * 100
            idle_base = (cpu_seconds(small.pid) - cpu0[1]) / elapsed * 100
            rss, rss_base = rss_mb(big.pid), rss_mb(small.pid)
            peak = rss_mb(big.pid, "VmHWM")  # the most it held, the first load included
            base_again = _restart(small, BASELINE_NODES, timeout)
            again = _restart(big, nodes, timeout)
            row.update(
                restart=again.as_json(),
                idle_cpu_pct=idle,
                rss_mb=rss,
                rss_peak_mb=peak,
                baseline={
                    "first": base_first.as_json(),
                    "restart": base_again.as_json(),
                    "idle_cpu_pct": idle_base,
                    "rss_mb": rss_base,
                },
            )
            rows.append(row)
            size = f"{nodes:,} nodes in {clusters} cluster(s)"
            # The bounds hold at 10k nodes in 100 clusters; the other sizes show growth.
            must = nodes == 10_000 and clusters == 100
            gap = "answering throughout (< 1 s)"
            for title, value, baseline, unit, target, bound, note in (
                ("first load until ready and every node tracked", first.done, base_first.done,
                 "s", "< 5 s", 5.0, f"ready {fmt(first.ready, 's')}, tracked {fmt(first.loaded, 's')}"),
                ("/healthz longest silence during first load", first.max_gap,
                 base_first.max_gap, "s", gap, 1.0, ""),
                ("idle CPU", idle, idle_base, "% of a core", "< 2%", 2.0,
                 f"over {elapsed:.0f} s, both daemons in the same window"),
                ("RSS", rss, rss_base, "MB", "< 300 MB", 300.0, f"peak {fmt(peak, 'MB')}"),
                ("restart until ready and every node tracked", again.done, base_again.done,
                 "s", "< 5 s", 5.0, f"ready {fmt(again.ready, 's')}, tracked {fmt(again.loaded, 's')}"),
                ("/healthz longest silence during restart", again.max_gap,
                 base_again.max_gap, "s", gap, 1.0, ""),
            ):  # fmt: skip
                figures.append(
                    Figure(
                        f"{title}, {size}",
                        value,
                        unit,
                        baseline,
                        f"{BASELINE_NODES} nodes",
                        target if must else "",
                        _under(value, bound) if must else None,
                        note=note,
                    )
                )
    return figures, rows


def _under(value: float | None, bound: float) -> bool:
    return value is not None and value < bound
