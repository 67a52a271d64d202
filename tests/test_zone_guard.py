"""Issue 8: the zone short-circuit and the shared disruption budget, table-driven.

A zone outage is refused as a whole (``TooManyUnhealthyInZone``), and rebooting nodes, or nodes
granted a reboot, count against every ``maxUnhealthy``: repairs see reboots."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from healer.config import ClusterConfig, Threshold
from healer.model import LABEL_ZONE, Health, NodeObservation, Role, Verdict
from healer.planner import guards
from healer.planner.disruption import (
    cluster_budget,
    out_of_service,
    pool_budget,
    zone_budget,
)
from healer.planner.guards import ClusterSnapshot, NodeStatus, check, node_status
from tests.test_guards import cluster_cfg, pool

H, P, U, R, S, G = (
    Health.HEALTHY,
    Health.PENDING,
    Health.UNHEALTHY,
    Health.REBOOTING,
    Health.STARTING,
    Health.GONE,
)
CP = Role.CONTROL_PLANE
# 3 control planes and 6 workers over zones a, b, c: each zone holds 1 cp and 2 workers.
CP3_W6 = cluster_cfg(pool("cp", 3, role="control-plane"), pool("workers", 6))


def n(
    name: str,
    health: Health = H,
    zone: str | None = "a",
    *,
    pool: str = "workers",
    remediating: bool = False,
    granted: bool = False,
) -> NodeStatus:
    role = CP if pool == "cp" else Role.WORKER
    return NodeStatus(
        name, pool, role, health, remediating, False, zone=zone, reboot_granted=granted
    )


def fleet(**health: Health) -> tuple[NodeStatus, ...]:
    """cp-a, cp-b, cp-c and w-a1, w-a2, w-b1, w-b2, w-c1, w-c2, healthy unless given."""
    nodes = [n(f"cp-{z}", health.get(f"cp_{z}", H), z, pool="cp") for z in "abc"]
    nodes += [n(f"w-{z}{i}", health.get(f"w_{z}{i}", H), z) for z in "abc" for i in (1, 2)]
    return tuple(nodes)


@dataclass(frozen=True)
class Case:
    id: str
    cfg: ClusterConfig
    nodes: tuple[NodeStatus, ...]
    reason: str | None
    candidate: str = "w-a1"
    scope: str | None = None
    message: str | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)


def run(case: Case) -> guards.Refusal | None:
    candidate = next(x for x in case.nodes if x.node == case.candidate)
    fields: dict[str, Any] = {
        "started_last_hour": 0,
        "global_paused": False,
        "cluster_paused": False,
        "paused_pools": frozenset(),
        "breaker_open": False,
        "breaker_reason": "",
        **case.snapshot,
    }
    return check(candidate, ClusterSnapshot(cluster="lab", nodes=case.nodes, **fields), case.cfg)


CASES = [
    # --- the zone limit (default 50%, at least one) ---
    Case("one dead worker in a zone", CP3_W6, fleet(w_a1=U), None),
    Case(
        "a zone outage within every pool's limit is refused as a whole",
        CP3_W6,
        fleet(cp_a=P, w_a1=U, w_a2=P),  # workers 2 of 6 (limit 2), cp 1 of 3 (limit 1)
        guards.TOO_MANY_UNHEALTHY_IN_ZONE,
        scope="zone:lab/a",
        message="3 of 3 nodes in zone lab/a are out of service (1 unhealthy, 2 pending; "
        "limit 50% = 1); not remediating lab/w-a1",
    ),
    Case(
        "the control-plane member of an out zone is refused too",
        CP3_W6,
        fleet(cp_a=U, w_a1=U, w_a2=U),
        guards.TOO_MANY_UNHEALTHY_IN_ZONE,
        candidate="cp-a",
        scope="zone:lab/a",
    ),
    Case(
        "two failures in different zones are two node failures",
        CP3_W6,
        fleet(w_a1=U, w_b1=U),
        None,
    ),
    Case(
        "a node being remediated in the zone counts",
        CP3_W6,
        # cp-a's Node is already deleted while it is replaced: still the zone's, still out
        (
            *(x for x in fleet(w_a1=U) if x.node != "cp-a"),
            n("cp-a", G, pool="cp", remediating=True),
        ),
        guards.TOO_MANY_UNHEALTHY_IN_ZONE,
        message="2 of 3 nodes in zone lab/a are out of service (1 being remediated, "
        "1 unhealthy; limit 50% = 1); not remediating lab/w-a1",
    ),
    Case(
        "a rebooting node in the zone counts",
        CP3_W6,
        fleet(w_a1=U, cp_a=R),
        guards.TOO_MANY_UNHEALTHY_IN_ZONE,
        message="2 of 3 nodes in zone lab/a are out of service (1 unhealthy, 1 rebooting; "
        "limit 50% = 1); not remediating lab/w-a1",
    ),
    Case(
        "a node granted a reboot in the zone counts",
        CP3_W6,
        tuple(replace(x, reboot_granted=True) if x.node == "cp-a" else x for x in fleet(w_a1=U)),
        guards.TOO_MANY_UNHEALTHY_IN_ZONE,
        message="2 of 3 nodes in zone lab/a are out of service (1 unhealthy, 1 granted a reboot; "
        "limit 50% = 1); not remediating lab/w-a1",
    ),
    Case(
        "starting and deleted nodes do not count",
        CP3_W6,
        (*fleet(w_a1=U, w_a2=S), n("w-a3", G)),
        None,
    ),
    Case(
        "a node without a zone label is judged by no zone",
        CP3_W6,
        tuple(replace(x, zone=None) for x in fleet(cp_a=P, w_a1=U, w_a2=P)),
        None,
    ),
    Case(
        "a zone of one node: a percentage allows at least one",
        cluster_cfg(pool("workers", 3)),
        (n("w-a1", U, "a"), n("w-b1", H, "b"), n("w-c1", H, "c")),
        None,
    ),
    Case(
        "a count of 0 refuses any unhealthy node in a zone",
        cluster_cfg(pool("workers", 3), remediation={"maxUnhealthyPerZone": 0}),
        (n("w-a1", U, "a"), n("w-b1", H, "b"), n("w-c1", H, "c")),
        guards.TOO_MANY_UNHEALTHY_IN_ZONE,
        message="1 of 1 nodes in zone lab/a are out of service (1 unhealthy; limit 0); "
        "not remediating lab/w-a1",
    ),
    Case(
        "a zone percentage rounding to 0 says it allows one",
        cluster_cfg(
            pool("workers", 4, maxUnhealthy="100%"),
            remediation={"maxUnhealthyPerZone": "40%", "maxUnhealthy": "100%"},
        ),
        (n("w-a1", U), n("w-a2", P), n("w-b1", H, "b"), n("w-b2", H, "b")),
        guards.TOO_MANY_UNHEALTHY_IN_ZONE,
        message="2 of 2 nodes in zone lab/a are out of service (1 unhealthy, 1 pending; "
        "limit 40% = 0, at least 1); not remediating lab/w-a1",
    ),
    Case(
        "zones are per cluster-wide failure domain: other zones do not add up",
        CP3_W6,
        fleet(w_a1=U, w_b1=P, w_c1=P),  # 1 per zone; the pool's 3 of 6 is over 40% though
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
    ),
    Case(
        "the pool limit is reported before the zone limit",
        cluster_cfg(pool("workers", 3)),
        (n("w-a1", U), n("w-a2", P), n("w-b1", H, "b")),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
    ),
    # --- a storm in a zone keeps its cooldown ---
    Case(
        "zone storm cooldown",
        CP3_W6,
        fleet(w_a1=U),
        guards.STORM_COOLDOWN,
        scope="zone:lab/a",
        snapshot={"now": 1000.0, "storms": {"zone:lab/a": 990.0}},
    ),
    Case(
        "another zone's storm does not hold this one",
        CP3_W6,
        fleet(w_a1=U),
        None,
        snapshot={"now": 1000.0, "storms": {"zone:lab/b": 990.0}},
    ),
    # --- repairs see reboots (pool and cluster limits too) ---
    Case(
        "a rebooting pool peer counts for the pool's maxUnhealthy",
        cluster_cfg(pool("workers", 3)),
        (n("w-a1", U, "a"), n("w-b1", R, "b"), n("w-c1", H, "c")),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        message="2 of 3 nodes in pool lab/workers are out of service (1 unhealthy, 1 rebooting; "
        "limit 40% = 1); not remediating lab/w-a1",
    ),
    Case(
        "a pool peer granted a reboot counts before it starts",
        cluster_cfg(pool("workers", 3)),
        (n("w-a1", U, "a"), n("w-b1", H, "b", granted=True), n("w-c1", H, "c")),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
    ),
    Case(
        "a reboot and a repair fit together when the limit has room",
        cluster_cfg(pool("workers", 5)),
        (n("w-a1", U, "a"), n("w-b1", R, "b"), *(n(f"w-c{i}", H, "c") for i in range(3))),
        None,
    ),
    Case(
        "rebooting nodes count for the cluster's maxUnhealthy",
        cluster_cfg(
            pool("workers", 5, maxUnhealthy="100%"),
            pool("infra", 5, maxUnhealthy="100%"),
            remediation={"maxUnhealthyPerZone": "100%"},
        ),
        (
            n("w-a1", U),
            *(n(f"w-a{i}", R) for i in (2, 3)),
            n("w-a4", H),
            n("w-a5", H),
            *(n(f"i-{i}", R, "b", pool="infra") for i in (1, 2)),
            *(n(f"i-{i}", H, "b", pool="infra") for i in (3, 4, 5)),
        ),
        guards.TOO_MANY_UNHEALTHY_IN_CLUSTER,
        message="5 of 10 nodes in cluster lab are out of service (1 unhealthy, 4 rebooting; "
        "limit 40% = 4); not remediating lab/w-a1",
    ),
    Case(
        "a control-plane member granted a reboot does not vote",
        CP3_W6,
        tuple(replace(x, reboot_granted=True) if x.node == "cp-b" else x for x in fleet(cp_a=U)),
        guards.WOULD_BREAK_QUORUM,
        candidate="cp-a",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check(case: Case) -> None:
    refusal = run(case)
    if case.reason is None:
        assert refusal is None, refusal
        return
    assert refusal is not None
    assert refusal.reason == case.reason, refusal.message
    if case.scope is not None:
        assert refusal.scope == case.scope
    if case.message is not None:
        assert refusal.message == case.message


def test_the_zone_reason_is_documented_and_a_storm() -> None:
    from healer.planner.planner import _STORM_REASONS

    assert guards.__doc__ is not None
    assert "``TooManyUnhealthyInZone`` (scope ``zone:<c>/<z>``)" in guards.__doc__
    assert guards.TOO_MANY_UNHEALTHY_IN_ZONE in _STORM_REASONS


def test_node_status_reads_the_zone_label() -> None:
    obs = NodeObservation("lab", "w-1", pool="workers", labels={LABEL_ZONE: "eu-1b"})
    verdict = Verdict(Health.HEALTHY, "Healthy", "ok", None)
    status = node_status(obs, verdict, remediating=False, reboot_granted=True)
    assert (status.zone, status.reboot_granted, status.health) == ("eu-1b", True, H)
    assert node_status(NodeObservation("lab", "w-2"), verdict, remediating=False).zone is None


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (n("x", H), None),
        (n("x", S), None),
        (n("x", G), None),
        (n("x", P), "pending"),
        (n("x", U), "unhealthy"),
        (n("x", R), "rebooting"),
        (n("x", H, granted=True), "granted a reboot"),
        (n("x", R, granted=True), "rebooting"),
        (n("x", G, remediating=True), "being remediated"),
        (n("x", U, remediating=True), "being remediated"),
    ],
)
def test_out_of_service(status: NodeStatus, why: str | None) -> None:
    assert out_of_service(status) == why


def test_one_budget_view_for_every_scope() -> None:
    nodes = fleet(cp_a=R, w_a1=U, w_b1=P)
    subject = next(x for x in nodes if x.node == "w-c1")
    pool = pool_budget("lab", CP3_W6, nodes, "workers", subject=subject, subject_why="asking")
    assert (pool.scope, pool.total, pool.limit) == ("pool:lab/workers", 6, 2)
    assert pool.out == (("w-a1", "unhealthy"), ("w-b1", "pending"), ("w-c1", "asking"))
    assert pool.over and pool.breakdown() == "1 unhealthy, 1 pending, 1 asking"
    zone = zone_budget("lab", CP3_W6, nodes, "a")
    assert (zone.scope, zone.total, zone.count, zone.limit, zone.over) == (
        "zone:lab/a",
        3,
        2,
        1,
        True,
    )
    assert zone.nodes("rebooting") == ("cp-a",)
    cluster = cluster_budget("lab", CP3_W6, nodes)
    assert (cluster.total, cluster.count, cluster.limit, cluster.over) == (9, 3, 3, False)
    assert cluster.threshold == Threshold(percent=40)
