"""One workflow step commit (``update_workflow`` with its journal line: one transaction), per
state backend; PostgreSQL's figure is set beside SQLite's."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import percentile
from healer.model import Role
from healer.store.sqlite import RUNNING, Store, WorkflowRecord


def step_commits_ms(open_store: Callable[[Path], Store], commits: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp))
        try:
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
                times.append((time.perf_counter() - t) * 1e3)
        finally:
            store.close()
    return times


def p99(times: list[float]) -> float | None:
    return percentile(times, 0.99)
