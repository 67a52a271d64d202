"""The lab's JSON report: every remediation with its timings, every refusal with its reason, and
the invariants that must hold whatever happened (no orphaned machines, no double deletions,
the cloud holding exactly the machines the pools ask for).

Scenarios work in epoch seconds; :func:`with_iso_times` turns every absolute time of the finished
report into ISO 8601 UTC (``2026-12-02T04:29:21.205Z``, fixed width, so they still compare in
order) as the report is written. Durations (``..._s``) stay seconds.
"""

from __future__ import annotations

from typing import Any

from healer.config import ClusterConfig
from healer.lab.timeline import shown
from healer.model import TAG_CLUSTER
from healer.store.sqlite import Store


def remediations(store: Store, cluster: str, since: float) -> list[dict[str, Any]]:
    out = []
    for wf in store.workflows(cluster=cluster, since=since):
        detected = [
            e.at
            for e in store.audit_log(cluster=cluster, node=wf.node, event="node.unhealthy")
            if e.at >= since
        ]
        steps = store.steps(wf.id)
        out.append(
            {
                "workflow": wf.id,
                "node": wf.node,
                "pool": wf.pool,
                "reason": wf.reason,
                "detected_at": detected[0] if detected else None,
                "started_at": wf.started_at,
                "completed_at": wf.finished_at,
                "replacement": wf.replacement_name,
                "result": wf.state,
                "error": wf.error,
                "steps": [
                    {"step": s["step"], "status": s["status"], "at": s["at"]}
                    for s in steps
                    if s["status"] in ("done", "failed", "identified")
                ],
            }
        )
    return out


def refusals(store: Store, cluster: str, since: float) -> list[dict[str, Any]]:
    return [
        {"node": e.node, "at": e.at, "reason": e.reason, "message": e.message}
        for e in store.audit_log(cluster=cluster, since=since)
        if e.event in ("remediation.refused", "remediation.would_remediate", "breaker.opened")
    ]


def invariants(
    *,
    cluster: ClusterConfig,
    machines: list[dict[str, Any]],
    destroy_log: list[dict[str, Any]],
    ready_nodes: set[str],
    store: Store,
) -> dict[str, Any]:
    """What must be true once the lab has settled, whatever the scenario did."""
    ours = [m for m in machines if m["tags"].get(TAG_CLUSTER) == cluster.name]
    live = [m for m in ours if m["state"] != "terminated"]
    expected = sum(p.size for p in cluster.pools)
    in_flight = {
        name
        for wf in store.workflows(cluster=cluster.name, state="running")
        for name in (wf.node, wf.replacement_name)
    }
    # An orphan: a live machine healer made that is neither a Ready node nor part of a workflow.
    orphaned = sorted(
        m["name"] for m in live if m["name"] not in ready_nodes and m["name"] not in in_flight
    )
    # A destroy call for a machine already destroyed is a double deletion, whatever it returned.
    double = sorted({d["node_id"] for d in destroy_log if d["repeat"] or not d["existed"]})
    return {
        "machines_in_cloud": len(live),
        "nodes_expected": expected,
        "ready_nodes": len(ready_nodes),
        "orphaned_machines": orphaned,
        "double_deletions": double,
        "ok": not orphaned and not double and len(live) == expected,
    }


def with_iso_times(value: Any, key: str = "") -> Any:
    """``value`` (a report, or any part of one) with each absolute time under a time key
    (``at``, ``since``, ``until``, ``..._at``) in ISO 8601 UTC."""
    if isinstance(value, dict):
        return {k: with_iso_times(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [with_iso_times(v, key) for v in value]
    return shown(key, value)
