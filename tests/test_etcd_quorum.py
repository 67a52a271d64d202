"""etcd as the judge of control-plane quorum: pure decisions on member lists (table-driven),
and the guard that asks them."""

from __future__ import annotations

import pytest

from healer.model import Health, Role
from healer.planner import guards
from healer.planner.etcd_quorum import (
    ETCD_MEMBER_GONE,
    ETCD_MEMBER_REMOVABLE,
    ETCD_MEMBERSHIP_CHANGING,
    ETCD_UNREACHABLE,
    ETCD_WOULD_LOSE_QUORUM,
    EtcdMember,
    EtcdView,
    removal,
    settled,
    start_refusal,
)
from healer.planner.guards import ClusterSnapshot, NodeStatus
from tests.helpers import lab_like_config


def view(*members: tuple[str, bool], leader: int | None = 1) -> EtcdView:
    """Members as (name, healthy); "" for one added but not started; ids 1, 2, ..."""
    return EtcdView(
        members=tuple(
            EtcdMember(i, name, (f"https://p{i}",), (f"https://c{i}",) if name else (), healthy)
            for i, (name, healthy) in enumerate(members, start=1)
        ),
        leader=leader,
    )


REMOVALS = [
    # members, node -> ok, reason
    ((("a", False), ("b", True), ("c", True)), "a", True, ETCD_MEMBER_REMOVABLE),
    ((("b", True), ("c", True)), "a", True, ETCD_MEMBER_GONE),
    ((("a", False), ("b", False), ("c", True)), "a", False, ETCD_WOULD_LOSE_QUORUM),
    ((("a", True), ("b", True), ("c", True), ("", False)), "a", False, ETCD_MEMBERSHIP_CHANGING),
    # a stale fourth member left by an old replacement: removing it keeps 3 of 3
    ((("a", False), ("b", True), ("c", True), ("d", True)), "a", True, ETCD_MEMBER_REMOVABLE),
    ((("a", False), ("b", True)), "a", True, ETCD_MEMBER_REMOVABLE),
    ((("a", True), ("b", False)), "a", False, ETCD_WOULD_LOSE_QUORUM),
]


@pytest.mark.parametrize(("members", "node", "ok", "reason"), REMOVALS)
def test_removal(members: tuple[tuple[str, bool], ...], node: str, ok: bool, reason: str) -> None:
    decision = removal(view(*members), node)
    assert (decision.ok, decision.reason) == (ok, reason), decision.message


STARTS = [
    # view, pool size -> refusal reason (None: may start)
    (view(("a", False), ("b", True), ("c", True)), 3, None),
    (EtcdView(error="connection refused"), 3, ETCD_UNREACHABLE),
    (None, 3, ETCD_UNREACHABLE),
    (view(("b", True), ("c", True)), 3, ETCD_MEMBERSHIP_CHANGING),  # a replacement not joined
    (view(("a", False), ("b", True), ("c", True), ("d", True)), 3, ETCD_MEMBERSHIP_CHANGING),
    (view(("a", False), ("b", False), ("c", True)), 3, ETCD_WOULD_LOSE_QUORUM),
]


@pytest.mark.parametrize(("v", "size", "reason"), STARTS)
def test_start_refusal(v: EtcdView | None, size: int, reason: str | None) -> None:
    decision = start_refusal(v, node="a", pool_size=size, node_view="2 of 3 Nodes healthy")
    assert (decision.reason if decision else None) == reason


def test_refusals_name_etcds_numbers() -> None:
    d = start_refusal(
        view(("a", False), ("b", False), ("c", True), leader=3),
        node="a",
        pool_size=3,
        node_view="x",
    )
    assert d is not None
    assert "2 members of which 1 are healthy, below its quorum of 2" in d.message
    assert "3 members, 1 healthy, quorum 2, leader c" in d.message
    d = start_refusal(EtcdView(error="no route"), node="a", pool_size=3, node_view="2 of 3 ok")
    assert d is not None and "etcd cannot be reached (no route)" in d.message
    assert "the Node view says 2 of 3 ok" in d.message


def test_settled_needs_the_pool_size_all_healthy_and_the_old_id_gone() -> None:
    whole = view(("b", True), ("c", True), ("d", True))
    assert settled(whole, pool_size=3, gone=9).ok
    assert not settled(whole, pool_size=3, gone=1).ok  # id 1 is "b" here: the old one is back
    assert not settled(view(("b", True), ("c", True), ("", False)), pool_size=3, gone=9).ok
    assert not settled(view(("b", True), ("c", True), ("d", False)), pool_size=3, gone=9).ok
    assert not settled(EtcdView(error="x"), pool_size=3, gone=9).ok


def _cp(node: str, health: Health, *, remediating: bool = False) -> NodeStatus:
    return NodeStatus(node, "control-plane", Role.CONTROL_PLANE, health, remediating, False)


def _snapshot(etcd: EtcdView | None, *nodes: NodeStatus) -> ClusterSnapshot:
    return ClusterSnapshot("lab", nodes, 0, False, False, frozenset(), False, "", etcd=etcd)


def test_the_guard_asks_etcd_only_where_healer_reads_it() -> None:
    nodes = (_cp("a", Health.UNHEALTHY), _cp("b", Health.HEALTHY), _cp("c", Health.HEALTHY))
    off = lab_like_config().clusters[0]
    on = lab_like_config(etcd={"mode": "direct", "endpoints": ["https://10.0.0.1:2379"]})
    on_cluster = on.clusters[0]
    unreachable = _snapshot(EtcdView(error="refused"), *nodes)
    assert guards.check(nodes[0], unreachable, off) is None  # Node view: 2 of 3, fine
    refusal = guards.check(nodes[0], unreachable, on_cluster)
    assert refusal is not None and refusal.reason == ETCD_UNREACHABLE
    assert refusal.scope == "pool:lab/control-plane"
    ok = _snapshot(view(("a", False), ("b", True), ("c", True)), *nodes)
    assert guards.check(nodes[0], ok, on_cluster) is None
    # The Node view says 2 of 3 healthy, etcd says b's member is down too: etcd wins.
    lost = _snapshot(view(("a", False), ("b", False), ("c", True)), *nodes)
    refusal = guards.check(nodes[0], lost, on_cluster)
    assert refusal is not None and refusal.reason == ETCD_WOULD_LOSE_QUORUM
