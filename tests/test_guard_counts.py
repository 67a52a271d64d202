"""The guards count a snapshot's nodes once, not once per candidate (issue 12: a recheck of
10k nodes with 100 unhealthy walked the cluster 100 times over), and the counts they keep say
exactly what a walk over the nodes with the candidate in its place would say."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

from healer.config import ClusterConfig, parse_config
from healer.model import Health, Role
from healer.planner import guards
from healer.planner.disruption import Tally, out_of_service
from healer.planner.guards import ClusterSnapshot, NodeStatus, check
from healer.planner.planner import _launched


class CountedNodes(tuple[NodeStatus, ...]):
    """A snapshot's nodes that count how often they are walked."""

    walks = 0

    def __iter__(self) -> Iterator[NodeStatus]:
        type(self).walks += 1
        return super().__iter__()


def _cfg(cluster_limit: str = "40%", **remediation: object) -> ClusterConfig:
    pools = [
        {"name": "cp", "size": 3, "role": "control-plane"},
        {"name": "a", "size": 60, "role": "worker", "remediation": remediation},
        {"name": "b", "size": 60, "role": "worker", "remediation": remediation},
    ]
    data = {
        "name": "lab",
        "provider": {"plugin": "lab"},
        "pools": pools,
        "remediation": {"maxUnhealthy": cluster_limit},
    }
    return parse_config({"clusters": [data]}).clusters[0]


def _node(i: int, health: Health, *, remediating: bool = False) -> NodeStatus:
    pool = "a" if i % 2 else "b"
    return NodeStatus(f"w-{i:03d}", pool, Role.WORKER, health, remediating, False, zone=f"z{i % 3}")


def _snapshot(nodes: tuple[NodeStatus, ...]) -> ClusterSnapshot:
    return ClusterSnapshot("lab", nodes, 0, False, False, frozenset(), False, "")


def test_a_plan_over_many_candidates_walks_the_nodes_once() -> None:
    control_plane = tuple(
        NodeStatus(f"cp-{i}", "cp", Role.CONTROL_PLANE, Health.HEALTHY, False, False)
        for i in range(3)
    )
    unhealthy = 40
    fleet = [_node(i, Health.UNHEALTHY if i < unhealthy else Health.HEALTHY) for i in range(120)]
    CountedNodes.walks = 0
    snapshot = _snapshot(CountedNodes((*control_plane, *fleet)))
    cfg = _cfg("30%", maxUnhealthy="100%", maxInFlight=100)
    candidates = [n for n in fleet if n.health is Health.UNHEALTHY]
    refusals = [check(c, snapshot, cfg) for c in candidates]
    # Every candidate got an answer (the last ones a refusal: 40 of 123 nodes are more than
    # the cluster's 30%), yet the nodes were walked once, not once per candidate.
    assert len(refusals) == unhealthy
    assert refusals[-1] is not None
    assert refusals[-1].reason == guards.TOO_MANY_UNHEALTHY_IN_CLUSTER
    assert CountedNodes.walks == 1


def test_counts_follow_a_launch() -> None:
    nodes = tuple(_node(i, Health.UNHEALTHY if i in (1, 3) else Health.HEALTHY) for i in range(60))
    cfg = _cfg(maxUnhealthy="100%", maxInFlight=1)
    snapshot = _snapshot(nodes)
    first, second = (n for n in nodes if n.health is Health.UNHEALTHY)  # both in pool a
    assert check(first, snapshot, cfg) is None
    assert snapshot.tally.remediating("a") == 0
    after = _launched(snapshot, first.node)
    assert after.tally.remediating("a") == 1
    refusal = check(second, after, cfg)
    assert refusal is not None
    assert refusal.reason == guards.MAX_IN_FLIGHT
    assert refusal.message.startswith("1 remediation already running in pool lab/a")


def _walked(
    nodes: list[NodeStatus], subject: NodeStatus, by: str, name: str | None, why: str
) -> tuple[list[tuple[str, str]], int, int]:
    """A scope's members (``by`` "pool" or "zone" ``name``, or "cluster") with the subject in
    its place, walked: (out, known, present)."""
    members = [subject if n.node == subject.node else n for n in nodes]
    if all(n.node != subject.node for n in nodes):
        members.append(subject)
    members = [n for n in members if by == "cluster" or getattr(n, by) == name]
    out = sorted(
        (n.node, w)
        for n in members
        if (w := out_of_service(n) or (why if n.node == subject.node else None)) is not None
    )
    known = sum(1 for n in members if n.health is not Health.GONE)
    present = sum(1 for n in members if n.health is not Health.GONE or n.remediating)
    return out, known, present


def test_counts_equal_a_walk_with_the_subject_in_place() -> None:
    rng = random.Random(12)
    cfg = _cfg()
    healths = list(Health)
    for _ in range(200):
        nodes = [
            replace(
                _node(rng.randrange(40), rng.choice(healths), remediating=rng.random() < 0.2),
                pool=rng.choice(["a", "b", "c", None]),
                reboot_granted=rng.random() < 0.1,
            )
            for _ in range(rng.randrange(1, 30))
        ]
        nodes = list({n.node: n for n in nodes}.values())  # one status per node, as a snapshot
        tally = Tally(nodes)
        subject = replace(
            _node(rng.randrange(45), rng.choice(healths), remediating=rng.random() < 0.2),
            pool=rng.choice(["a", "b", "c", None]),
        )
        why = "to be remediated"
        pool = tally.pool_budget("lab", cfg, subject.pool, subject=subject, subject_why=why)
        out, known, _ = _walked(nodes, subject, "pool", subject.pool, why)
        assert (list(pool.out), pool.total) == (out, max(known, _size(cfg, subject.pool)))
        assert subject.zone is not None
        zone = tally.zone_budget("lab", cfg, subject.zone, subject=subject, subject_why=why)
        out, _, present = _walked(nodes, subject, "zone", subject.zone, why)
        assert (list(zone.out), zone.total) == (out, present)
        cluster = tally.cluster_budget("lab", cfg, subject=subject, subject_why=why)
        out, _, _ = _walked(nodes, subject, "cluster", None, why)
        pools = {n.pool for n in [*nodes, subject]} | {"cp", "a", "b"}
        total = sum(max(_size(cfg, p), _walked(nodes, subject, "pool", p, why)[1]) for p in pools)
        assert (list(cluster.out), cluster.total) == (out, total)
        remediating = sum(
            1
            for n in [subject, *(n for n in nodes if n.node != subject.node)]
            if n.pool == subject.pool and n.remediating
        )
        assert tally.remediating(subject.pool, subject=subject) == remediating


def _size(cfg: ClusterConfig, pool: str | None) -> int:
    p = cfg.pool(pool)
    return p.size if p is not None else 0
