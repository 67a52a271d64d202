"""Pools short of a machine, as ``healer status`` shows them.

Read from the state database only (the workflows and their journals), so the status works while
the daemon or the cloud is down: a running replacement whose old machine is fenced and whose new
machine is not created yet leaves its pool a machine short (:func:`healer.workflow.order.shortfall`).
"""

from __future__ import annotations

from typing import Any

from healer.store.sqlite import RUNNING, Store
from healer.workflow.order import shortfall


def capacity_report(
    store: Store, pools: list[dict[str, Any]], *, cluster: str | None = None
) -> list[dict[str, Any]]:
    """Pools a machine short because a replacement is not created yet, from the workflows'
    journals: one row per pool with its size (when the config is known), the machines it has
    and each missing replacement with its retries and last error (:mod:`healer.workflow.order`)."""
    sizes = {(p["cluster"], p["pool"]): p["size"] for p in pools}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for wf in store.workflows(cluster=cluster, state=RUNNING):
        short = shortfall(
            cluster=wf.cluster,
            pool=wf.pool,
            node=wf.node,
            replacement=wf.replacement_name,
            workflow=wf.id,
            lines=store.steps(wf.id),
        )
        if short is None:
            continue
        key = (wf.cluster, wf.pool or "-")
        row = rows.setdefault(
            key,
            {"cluster": key[0], "pool": key[1], "size": sizes.get(key), "short": 0, "missing": []},
        )
        row["short"] += 1
        row["missing"].append(short.to_json() | {"summary": short.describe()})
    for row in rows.values():
        row["machines"] = None if row["size"] is None else row["size"] - row["short"]
    return [rows[k] for k in sorted(rows)]


def capacity_lines(capacity: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in capacity:
        have = (
            f"{row['machines']} of {row['size']} machines"
            if row["size"] is not None
            else f"{row['short']} machine(s) short"
        )
        lines.append(
            f"pool {row['cluster']}/{row['pool']}: {have} (SHORT: capacity being restored)"
        )
        for missing in row["missing"]:
            lines.append(f"  {missing['summary']}")
    return lines
