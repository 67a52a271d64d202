"""`make bench`: healer measured as users run it, each figure beside its baseline.

The baseline comes from the same run; the two are printed with their ratio and written as JSON
(docs/benchmarks.md says what each section does).

    python -m benchmarks                    # every section, full sizes (5 to 15 minutes)
    python -m benchmarks --quick            # small sizes (a few minutes)
    python -m benchmarks mqtt webhook       # only these sections
    python -m benchmarks --json out.json    # default bench-results.json (+ .svg beside it)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from benchmarks.harness import ROOT, Figure, median
from benchmarks.plot import scaling_svg
from benchmarks.report import fmt


@dataclass(frozen=True)
class Sizes:
    mqtt_nodes: int = 2000
    mqtt_per_node: int = 5
    mqtt_rounds: int = 5
    webhook_nodes: int = 100
    webhook_alerts: int = 3
    webhook_connections: int = 50
    webhook_seconds: float = 3.0
    webhook_rounds: int = 7
    recheck_nodes: tuple[int, ...] = (1000, 10_000, 50_000)
    recheck_clusters: tuple[int, ...] = (1, 100, 500)
    recheck_rounds: int = 5
    fleet: tuple[tuple[int, int], ...] = ((1000, 1), (10_000, 100), (50_000, 500))
    idle_window: float = 30.0
    start_timeout: float = 180.0
    storm_nodes: int = 2000
    storm_clusters: int = 10
    storm_fraction: float = 0.2
    cli_nodes: int = 10_000
    cli_clusters: int = 100
    cli_rounds: int = 7
    store_nodes: int = 1000
    store_events: int = 2000
    store_postgres: bool = True
    store_commits: int = 1000


FULL = Sizes()
QUICK = Sizes(
    mqtt_nodes=2000,
    mqtt_per_node=2,
    mqtt_rounds=3,
    webhook_seconds=2.0,
    webhook_rounds=3,
    recheck_nodes=(1000, 10_000),
    recheck_clusters=(1, 100),
    recheck_rounds=3,
    fleet=((10_000, 100),),
    idle_window=10.0,
    start_timeout=90.0,
    storm_nodes=500,
    storm_clusters=5,
    cli_nodes=1000,
    cli_clusters=10,
    cli_rounds=3,
    store_nodes=200,
    store_events=400,
    store_postgres=False,
)
# What tests/test_bench_smoke.py runs: seconds, only to keep the harness from rotting.
SMOKE = Sizes(
    recheck_nodes=(40, 100),
    recheck_clusters=(1, 4),
    recheck_rounds=1,
    cli_nodes=100,
    cli_clusters=2,
    cli_rounds=1,
    store_nodes=20,
    store_events=40,
    store_postgres=False,
    store_commits=50,
)

Section = Callable[[Path, Sizes], tuple[list[Figure], Any]]


def _mqtt(workdir: Path, s: Sizes) -> tuple[list[Figure], Any]:
    from benchmarks import mqtt_intake

    return mqtt_intake.measure(
        workdir,
        nodes=s.mqtt_nodes,
        per_node=s.mqtt_per_node,
        rounds=s.mqtt_rounds,
        timeout=s.start_timeout,
    )


def _webhook(workdir: Path, s: Sizes) -> tuple[list[Figure], Any]:
    from benchmarks import webhook_load

    return webhook_load.measure(
        workdir,
        nodes=s.webhook_nodes,
        alerts=s.webhook_alerts,
        connections=s.webhook_connections,
        seconds=s.webhook_seconds,
        rounds=s.webhook_rounds,
        timeout=s.start_timeout,
    )


def _recheck(workdir: Path, s: Sizes) -> tuple[list[Figure], Any]:
    from benchmarks import recheck

    sizes = [(n, c) for n in s.recheck_nodes for c in s.recheck_clusters if c * 2 <= n]
    return recheck.measure(workdir, sizes, s.recheck_rounds)


def _fleet(workdir: Path, s: Sizes) -> tuple[list[Figure], Any]:
    from benchmarks import fleet

    return fleet.measure(workdir, s.fleet, idle_window=s.idle_window, timeout=s.start_timeout)


def _storm(workdir: Path, s: Sizes) -> tuple[list[Figure], Any]:
    from benchmarks import storm

    return storm.measure(
        workdir,
        nodes=s.storm_nodes,
        clusters=s.storm_clusters,
        fraction=s.storm_fraction,
        timeout=s.start_timeout,
    )


def _cli(workdir: Path, s: Sizes) -> tuple[list[Figure], Any]:
    from benchmarks import startup

    return startup.measure(workdir, nodes=s.cli_nodes, clusters=s.cli_clusters, rounds=s.cli_rounds)


def _store(workdir: Path, s: Sizes) -> tuple[list[Figure], Any]:
    """The store's intake micro benchmark (benchmarks/store_bench.py): each workload batched
    (one transaction per 1,000 events) beside one transaction per event."""
    from benchmarks import store_bench
    from benchmarks.steps import p99, step_commits_ms

    figures, rows = [], []
    steps: dict[str, list[float]] = {}
    with store_bench.backends(s.store_postgres) as found:
        for backend, open_store in found:
            steps[backend] = step_commits_ms(open_store, s.store_commits)
            results = store_bench.measure(
                open_store,
                backend=backend,
                nodes=s.store_nodes,
                events=s.store_events,
                batches=(1, 1000),
            )
            rows += [r.__dict__ | {"us_per_event": r.us_per_event} for r in results]
            single = {r.workload: r.us_per_event for r in results if r.batch == 1}
            for r in results:
                if r.batch == 1:
                    continue
                figures.append(
                    Figure(
                        f"store write, {r.workload}, {backend}, batch of {r.batch:,}",
                        r.us_per_event,
                        "us/event",
                        single.get(r.workload),
                        "one transaction per event",
                    )
                )
    sqlite = steps.pop("SQLite")
    for backend, times in [("SQLite", sqlite), *steps.items()]:
        figures.append(
            Figure(
                f"workflow step commit, {backend}",
                median(times),
                "ms",
                median(sqlite),
                "SQLite",
                samples=[round(t, 4) for t in times],
                note=f"median; p99 {p99(times) or 0:.2f} ms over {len(times):,} commits",
            )
        )
    return figures, rows


SECTIONS: dict[str, Section] = {
    "mqtt": _mqtt,
    "webhook": _webhook,
    "recheck": _recheck,
    "fleet": _fleet,
    "storm": _storm,
    "cli": _cli,
    "store": _store,
}


def table(figures: list[Figure]) -> str:
    rows = [("measure", "healer", "baseline", "ratio", "target", "met")]
    for f in figures:
        ratio = f.ratio
        rows.append(
            (
                f.name,
                f"{fmt(f.value)} {f.unit}",
                f"{fmt(f.baseline)} ({f.baseline_label})" if f.baseline_label else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
                f.target or "-",
                {True: "yes", False: "NO", None: ""}[f.ok],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.decode().strip() or None


def run(names: list[str], sizes: Sizes, out: Path, *, keep: bool = False) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="healer-bench-"))
    result: dict[str, Any] = {
        "version": 1,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": sizes.__dict__,
        "sections": {},
    }
    try:
        for name in names:
            print(f"== {name}", flush=True)
            start = time.monotonic()
            here = workdir / name
            here.mkdir()
            entry: dict[str, Any] = {}
            try:
                figures, detail = SECTIONS[name](here, sizes)
                entry = {"figures": [f.as_json() for f in figures], "detail": detail}
                print(table(figures), flush=True)
            except Exception as exc:  # one section's failure must not lose the others
                traceback.print_exc()
                entry = {"figures": [], "error": f"{type(exc).__name__}: {exc}"}
                print(f"{name}: FAILED ({entry['error']}); logs in {here}", flush=True)
                keep = True
            entry["seconds"] = round(time.monotonic() - start, 1)
            result["sections"][name] = entry
            out.write_text(json.dumps(result, indent=1) + "\n")  # what is done so far
    finally:
        if keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    svg = scaling_svg(result)
    if svg is not None:
        out.with_suffix(".svg").write_text(svg)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"any of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write the results (default: %(default)s; the plot beside it as .svg)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--no-postgres", action="store_true", help="the store section on SQLite only"
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    # The figures are the output; the bench's own log lines would drown them.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.no_postgres:
        sizes = dataclasses.replace(sizes, store_postgres=False)
    result = run(args.sections or list(SECTIONS), sizes, args.json, keep=args.keep)
    figures = [
        Figure(**{k: v for k, v in f.items() if k != "ratio"})
        for s in result["sections"].values()
        for f in s["figures"]
    ]
    print("\n== all figures\n" + table(figures))
    print(f"\nwritten: {args.json}")
    failed = [n for n, s in result["sections"].items() if "error" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
