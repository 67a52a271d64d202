"""The fleet reads of `healer status` (healer/store/fleet.py) on both backends: counts by cluster,
pool and health, the listed nodes' columns, the clusters of the workflows; and that they agree
with what the store's full records say."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from healer.model import Health, NodeObservation, Role, Verdict
from healer.store.fleet import NodeCount, node_counts, node_lines, workflow_clusters
from healer.store.sqlite import Store
from tests.helpers import running_workflow
from tests.plugins.store import Backend

pytestmark = pytest.mark.usefixtures("state_backend")

# (cluster, node, pool, role, health)
NODES = [
    ("a", "a-cp-0", "cp", Role.CONTROL_PLANE, Health.HEALTHY),
    ("a", "a-w-0", "workers", Role.WORKER, Health.HEALTHY),
    ("a", "a-w-1", "workers", Role.WORKER, Health.UNHEALTHY),
    ("a", "a-w-2", "workers", Role.WORKER, Health.PENDING),
    ("a", "a-x-0", None, Role.WORKER, Health.HEALTHY),  # a node in no pool
    ("b", "b-w-0", "workers", Role.WORKER, Health.HEALTHY),
    ("b", "b-w-1", "workers", Role.WORKER, Health.UNHEALTHY),
]


def _seed(store: Store) -> None:
    now = time.time()
    for cluster, node, pool, role, health in NODES:
        obs = NodeObservation(cluster=cluster, node=node, pool=pool, role=role, first_seen=now)
        store.save_node(obs, Verdict(health, f"{health}Reason", f"{node} is {health}", None), now)


def test_counts_group_by_cluster_pool_and_health(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        _seed(store)
        assert node_counts(store) == [
            NodeCount("a", None, Health.HEALTHY, 1),
            NodeCount("a", "cp", Health.HEALTHY, 1),
            NodeCount("a", "workers", Health.HEALTHY, 1),
            NodeCount("a", "workers", Health.PENDING, 1),
            NodeCount("a", "workers", Health.UNHEALTHY, 1),
            NodeCount("b", "workers", Health.HEALTHY, 1),
            NodeCount("b", "workers", Health.UNHEALTHY, 1),
        ]
        assert [c.cluster for c in node_counts(store, "b")] == ["b", "b"]
        # The same as counting the full records.
        full = Counter((n.observation.cluster, n.observation.pool, n.health) for n in store.nodes())
        assert {(c.cluster, c.pool, c.health): c.count for c in node_counts(store)} == full
    finally:
        store.close()


def test_lines_carry_the_columns_a_table_shows_and_filter_the_healthy(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        _seed(store)
        every = node_lines(store)
        assert [(n.cluster, n.node, n.pool, n.role, n.health) for n in every] == [
            (c, n, p, str(r), h) for c, n, p, r, h in sorted(NODES, key=lambda x: x[:2])
        ]
        assert every[2].to_json() == {
            "cluster": "a",
            "node": "a-w-1",
            "pool": "workers",
            "role": "worker",
            "health": "unhealthy",
            "reason": "unhealthyReason",
            "message": "a-w-1 is unhealthy",
        }
        assert [n.node for n in node_lines(store, unhealthy_only=True)] == [
            "a-w-1",
            "a-w-2",
            "b-w-1",
        ]
        assert [n.node for n in node_lines(store, "b", unhealthy_only=True)] == ["b-w-1"]
        assert node_lines(store, "nosuch") == []
    finally:
        store.close()


def test_workflow_clusters(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        assert workflow_clusters(store) == set()
        running_workflow(store, "w-1", "w-1-r")
        assert workflow_clusters(store) == {"lab"}
    finally:
        store.close()


def test_the_replacement_of_a_new_node_is_looked_up_by_an_index(
    tmp_path: Path, state_backend: Backend
) -> None:
    """Asked once per node the tracker first sees (a fleet's whole first list): a keyed read,
    not a scan of every workflow the cluster ever had (migration 006)."""
    store = Store.open(tmp_path)
    try:
        running_workflow(store, "w-1", "w-1-old", wf_id="wf-old")
        newest = running_workflow(store, "w-2", "w-1-new", wf_id="wf-new")
        assert store.replacement_requested_at("lab", "w-1-new") == newest.updated_at
        assert store.replacement_requested_at("lab", "w-9") is None
        sql = (
            "SELECT state, replacement, updated_at FROM workflows"
            " WHERE cluster=? AND replacement_name=? ORDER BY started_at DESC LIMIT 1"
        )
        if state_backend.name == "sqlite":
            plan = store._db.execute(f"EXPLAIN QUERY PLAN {sql}", ("lab", "x")).fetchall()
            assert [r[-1] for r in plan] == [
                "SEARCH workflows USING INDEX workflows_by_replacement"
                " (cluster=? AND replacement_name=?)"
            ]
        else:
            found = store._db.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'workflows_by_replacement'"
            ).fetchone()
            assert found is not None and "(cluster, replacement_name, started_at)" in found[0]
    finally:
        store.close()
