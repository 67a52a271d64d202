"""CLI start-up: wall time of `healer --help` and `healer status` (on a state directory of
``nodes`` nodes in ``clusters`` clusters, built through the tracker and store) against
`python -c pass`, the three interleaved round by round."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Figure, healer_command, median
from benchmarks.recheck import load


async def _build(state_dir: Path, nodes: int, clusters: int) -> None:
    store, *_ = await load(state_dir, nodes, clusters)
    store.close()


def _wall(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
    return elapsed


def measure(
    workdir: Path, *, nodes: int, clusters: int, rounds: int
) -> tuple[list[Figure], dict[str, Any]]:
    state = workdir / "cli-state"
    asyncio.run(_build(state, nodes, clusters))
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "healer --help": [*healer_command(), "--help"],
        "healer status": [*healer_command(), "status", "--state-dir", str(state)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for args in commands.values():
        _wall(args)  # warm the page cache and .pyc files
    for r in range(rounds):
        names = list(commands) if r % 2 == 0 else list(reversed(commands))
        for name in names:
            times[name].append(_wall(commands[name]))
    base = median(times["python -c pass"])
    figures = []
    for name in ("healer --help", "healer status"):
        value = median(times[name])
        label = (
            name if name == "healer --help" else f"{name} ({nodes:,} nodes, {clusters} clusters)"
        )
        figures.append(
            Figure(
                f"`{label}` wall time",
                value,
                "s",
                base,
                "python -c pass",
                "< 0.25 s",
                value is not None and value < 0.25,
                times[name],
                times["python -c pass"],
            )
        )
    return figures, {"nodes": nodes, "clusters": clusters, "rounds": rounds}
