"""A storm: 20% of a fleet's nodes report ``Ready=False`` at the same moment; how long after
its threshold (lastTransitionTime + the rule's timeout) each one's decision is recorded, a
remediation (dry run: ``remediation.would_remediate``, else ``remediation.started``) or a
refusal (``remediation.refused``, any reason). The baseline is one node failing alone, earlier
in the same daemon's life."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    DaemonProc,
    Figure,
    Owned,
    World,
    daemon_config,
    free_port,
    percentile,
)
from healer.store.sqlite import Store

DECISIONS = ("remediation.started", "remediation.would_remediate", "remediation.refused")
TIMEOUT = 5.0  # the Ready=False rule's timeout: the threshold is this after the transition


def _lags(daemon: DaemonProc, failed: dict[str, Any], offset: float) -> list[float | None]:
    """Per failed node, its first decision after the failure minus its threshold."""
    threshold = failed["at"] + TIMEOUT
    wanted = {(c, n) for c, n in failed["nodes"]}
    first: dict[tuple[str, str], float] = {}
    store = Store.open(daemon.state_dir)
    try:
        for event in DECISIONS:
            for row in store.audit_log(event=event, since=failed["at"] - offset - 1):
                key = (row.cluster, row.node or "")
                if key in wanted:
                    at = row.at + offset
                    first[key] = min(first.get(key, at), at)
    finally:
        store.close()
    return [first[k] - threshold if k in first else None for k in sorted(wanted)]


def _wait_decided(daemon: DaemonProc, failed: dict[str, Any], limit: float) -> None:
    """Until every failed node has a decision or ``limit`` seconds after its threshold."""
    deadline = failed["at"] + TIMEOUT + limit
    while time.time() < deadline:
        offset = daemon.clock_offset()
        if all(lag is not None for lag in _lags(daemon, failed, offset)):
            return
        time.sleep(0.5)


def measure(
    workdir: Path, *, nodes: int, clusters: int, fraction: float, timeout: float
) -> tuple[list[Figure], dict[str, Any]]:
    with Owned() as own:
        world = own.add(World(workdir / "world", nodes=nodes, clusters=clusters))
        daemon = own.add(
            DaemonProc(
                workdir / "healer",
                daemon_config(world.clusters, metrics_port=free_port(), timeout=f"{TIMEOUT:g}s"),
            )
        )
        daemon.start_loaded(nodes, timeout)
        time.sleep(2.0)
        single = world.fail(1, seed=7)
        _wait_decided(daemon, single, limit=10.0)
        count = round(nodes * fraction)
        storm = world.fail(count, seed=11)
        _wait_decided(daemon, storm, limit=30.0)
        daemon.stop()
        offset = daemon.clock_offset()
        single_lag = _lags(daemon, single, offset)[0]
        lags = _lags(daemon, storm, offset)
    decided = [lag for lag in lags if lag is not None]
    undecided = len(lags) - len(decided)
    p50, p90, worst = (percentile(decided, q) for q in (0.5, 0.9, 1.0))
    size = f"{count} of {nodes:,} nodes ({clusters} clusters) failing at once"
    note = f"{undecided} of {count} undecided 30 s after the threshold" if undecided else ""
    worst_ok = worst is not None and not undecided and worst <= 1.0
    figures = [
        Figure(
            f"decision lag after threshold p50, {size}",
            p50,
            "s",
            single_lag,
            "a single node failing",
            note=note,
        ),
        Figure(
            f"decision lag after threshold p90, {size}",
            p90,
            "s",
            single_lag,
            "a single node failing",
        ),
        Figure(
            f"decision lag after threshold max, {size}",
            worst if not undecided else None,
            "s",
            single_lag,
            "a single node failing",
            "every decision <= 1 s after its threshold",
            worst_ok,
            samples=decided,
            note=note,
        ),
    ]
    detail = {
        "nodes": nodes,
        "clusters": clusters,
        "failed": count,
        "api_spread_s": storm["done"] - storm["at"],
        "undecided": undecided,
        "single_lag_s": single_lag,
        "lags_s": decided,
    }
    return figures, detail
