"""Table-driven tests of the remediation guards: snapshot and config in, refusal (or None) out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from healer.config import BreakerPolicy, ClusterConfig, parse_config
from healer.model import Health, Role
from healer.planner import guards
from healer.planner.guards import ClusterSnapshot, NodeStatus, breaker_trip_reason, check

H, P, U = Health.HEALTHY, Health.PENDING, Health.UNHEALTHY
S = Health.STARTING
CP = Role.CONTROL_PLANE


def cluster_cfg(*pools: dict[str, Any], **fields: Any) -> ClusterConfig:
    """A ClusterConfig as the YAML loader would build it."""
    data = {"name": "lab", "provider": {"plugin": "lab"}, "pools": list(pools), **fields}
    return parse_config({"clusters": [data]}).clusters[0]


def pool(name: str, size: int, *, role: str = "worker", **remediation: Any) -> dict[str, Any]:
    return {"name": name, "size": size, "role": role, "remediation": remediation}


def ns(
    name: str,
    health: Health = H,
    *,
    pool: str | None = "workers",
    role: Role = Role.WORKER,
    remediating: bool = False,
    excluded: bool = False,
) -> NodeStatus:
    return NodeStatus(name, pool, role, health, remediating, excluded)


def cp(name: str, health: Health = H, *, remediating: bool = False) -> NodeStatus:
    return ns(name, health, pool="cp", role=CP, remediating=remediating)


def workers(*healths: Health, pool: str = "workers") -> tuple[NodeStatus, ...]:
    """Nodes {pool}-1..n; the tests use {pool}-1 as the candidate."""
    return tuple(ns(f"{pool}-{i}", h, pool=pool) for i, h in enumerate(healths, start=1))


WORKERS_5 = cluster_cfg(pool("workers", 5))


@dataclass(frozen=True)
class Case:
    id: str
    cfg: ClusterConfig
    nodes: tuple[NodeStatus, ...]
    reason: str | None  # None: remediation may start
    scope: str | None = None
    message: str | None = None  # checked only when given
    candidate: str = "workers-1"
    snapshot: dict[str, Any] = field(default_factory=dict)


def run(case: Case) -> guards.Refusal | None:
    candidate = next(n for n in case.nodes if n.node == case.candidate)
    fields: dict[str, Any] = {
        "started_last_hour": 0,
        "global_paused": False,
        "cluster_paused": False,
        "paused_pools": frozenset(),
        "breaker_open": False,
        "breaker_reason": "",
    }
    fields.update(case.snapshot)
    snapshot = ClusterSnapshot(cluster="lab", nodes=case.nodes, **fields)
    return check(candidate, snapshot, case.cfg)


BAD_UPGRADE_WHY = (
    "TooManyRebootFailures: 2 nodes did not come back from a planned reboot in the last 3600s "
    "(limit 2)"
)
CP_3 = cluster_cfg(pool("cp", 3, role="control-plane"), pool("workers", 5))
CP_5 = cluster_cfg(pool("cp", 5, role="control-plane"), pool("workers", 5))
CP_1 = cluster_cfg(pool("cp", 1, role="control-plane"), pool("workers", 5))

CASES = [
    # --- maxUnhealthy in the pool ---
    Case("one unhealthy of 5", WORKERS_5, workers(U, H, H, H, H), None),
    Case(
        "partition: 3 of 5 pending or unhealthy",
        WORKERS_5,
        workers(U, P, P, H, H),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        "pool:lab/workers",
        "3 of 5 nodes in pool lab/workers are out of service "
        "(1 unhealthy, 2 pending; limit 40% = 2); not remediating lab/workers-1",
    ),
    Case("40% of 5 = 2: two allowed", WORKERS_5, workers(U, U, H, H, H), None),
    Case(
        "40% of 3 = 1: two refused",
        cluster_cfg(pool("workers", 3)),
        workers(U, P, H),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        message="2 of 3 nodes in pool lab/workers are out of service "
        "(1 unhealthy, 1 pending; limit 40% = 1); not remediating lab/workers-1",
    ),
    Case("40% of 3 = 1: one allowed", cluster_cfg(pool("workers", 3)), workers(U, H, H), None),
    Case(
        "count limit 1: two refused",
        cluster_cfg(pool("workers", 10, maxUnhealthy=1)),
        workers(U, U, *[H] * 8),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        message="2 of 10 nodes in pool lab/workers are out of service "
        "(2 unhealthy; limit 1); not remediating lab/workers-1",
    ),
    Case(
        "count limit 1: one allowed",
        cluster_cfg(pool("workers", 10, maxUnhealthy=1)),
        workers(U, *[H] * 9),
        None,
    ),
    Case(
        "count limit 0 refuses everything",
        cluster_cfg(pool("workers", 10, maxUnhealthy=0)),
        workers(U, *[H] * 9),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
    ),
    Case(
        "pool limit inherited from the cluster",
        cluster_cfg(pool("workers", 4), remediation={"maxUnhealthy": "25%"}),
        workers(U, U, H, H),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        message="2 of 4 nodes in pool lab/workers are out of service "
        "(2 unhealthy; limit 25% = 1); not remediating lab/workers-1",
    ),
    Case(
        "a node being remediated counts as unhealthy",
        WORKERS_5,
        (*workers(U, P, H, H), ns("workers-5", remediating=True)),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        message="3 of 5 nodes in pool lab/workers are out of service "
        "(1 being remediated, 1 unhealthy, 1 pending; limit 40% = 2); "
        "not remediating lab/workers-1",
    ),
    Case(
        "a deleted node being remediated still counts as unhealthy",
        WORKERS_5,
        (*workers(U, P, H, H), ns("workers-5", Health.GONE, remediating=True)),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
    ),
    Case(
        "the candidate counts even when healthy (manual request)",
        WORKERS_5,
        workers(H, P, U, H, H),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
    ),
    Case("starting nodes do not count", WORKERS_5, workers(U, Health.STARTING, S, S, H), None),
    # Rebooting nodes count (issue 8: repairs see reboots); this case was "starting and rebooting
    # nodes do not count" and allowed the repair.
    Case(
        "rebooting nodes count",
        cluster_cfg(pool("workers", 3)),
        workers(U, Health.REBOOTING, H),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        message="2 of 3 nodes in pool lab/workers are out of service "
        "(1 unhealthy, 1 rebooting; limit 40% = 1); not remediating lab/workers-1",
    ),
    Case(
        "pool that lost nodes keeps its configured size",
        WORKERS_5,
        workers(U, U, H),  # 2 of 5 (limit 2), not 2 of 3 (limit 1)
        None,
    ),
    Case(
        "pool grown beyond its config is judged on what it holds",
        cluster_cfg(pool("workers", 2), remediation={"maxUnhealthy": "50%"}),
        workers(U, U, H, H),  # 2 of 4 (limit 2), not 2 of 2 (limit 1)
        None,
    ),
    Case(
        "deleted nodes are not in the total",
        cluster_cfg(pool("workers", 3)),
        workers(U, P, H, Health.GONE, Health.GONE),  # 2 of 3 (limit 1), not 2 of 5
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        message="2 of 3 nodes in pool lab/workers are out of service "
        "(1 unhealthy, 1 pending; limit 40% = 1); not remediating lab/workers-1",
    ),
    Case(
        "unhealthy nodes in another pool do not count for this pool",
        cluster_cfg(pool("workers", 5), pool("infra", 5), remediation={"maxUnhealthy": "100%"}),
        (*workers(U, H, H, H, H), *workers(U, U, U, H, H, pool="infra")),
        None,
    ),
    Case(
        "a node without a pool uses the cluster's limits",
        cluster_cfg(pool("workers", 5)),
        (ns("stray-1", U, pool=None), ns("stray-2", P, pool=None), *workers(H, H, H)),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        "pool:lab/(none)",
        "2 of 2 nodes in pool lab/(none) are out of service "
        "(1 unhealthy, 1 pending; limit 40% = 0); not remediating lab/stray-1",
        candidate="stray-1",
    ),
    # --- maxUnhealthy in the cluster ---
    Case(
        "cluster limit as a count",
        cluster_cfg(
            pool("workers", 5, maxUnhealthy="100%"),
            pool("infra", 3, maxUnhealthy="100%"),
            remediation={"maxUnhealthy": 2},
        ),
        (*workers(U, U, H, H, H), *workers(U, H, H, pool="infra")),
        guards.TOO_MANY_UNHEALTHY_IN_CLUSTER,
        "cluster:lab",
        "3 of 8 nodes in cluster lab are out of service (3 unhealthy; limit 2); "
        "not remediating lab/workers-1",
    ),
    Case(
        "cluster limit as a percentage over configured sizes",
        cluster_cfg(
            pool("workers", 5, maxUnhealthy="100%"),
            pool("infra", 5, maxUnhealthy="100%"),
        ),
        (*workers(U, U, U, H, H), *workers(U, U, pool="infra")),  # 5 of 10, limit 4
        guards.TOO_MANY_UNHEALTHY_IN_CLUSTER,
        message="5 of 10 nodes in cluster lab are out of service "
        "(5 unhealthy; limit 40% = 4); not remediating lab/workers-1",
    ),
    Case(
        "cluster limit not reached",
        cluster_cfg(
            pool("workers", 5, maxUnhealthy="100%"),
            pool("infra", 5, maxUnhealthy="100%"),
        ),
        (*workers(U, U, U, H, H), *workers(U, H, pool="infra")),  # 4 of 10, limit 4
        None,
    ),
    # --- maxInFlight ---
    Case(
        "one already in flight (maxInFlight 1)",
        WORKERS_5,
        (*workers(U, H, H, H), ns("workers-5", remediating=True)),
        guards.MAX_IN_FLIGHT,
        "pool:lab/workers",
        "1 remediation already running in pool lab/workers (maxInFlight 1); "
        "not remediating lab/workers-1",
    ),
    Case(
        "one in flight of maxInFlight 2",
        cluster_cfg(pool("workers", 5, maxInFlight=2)),
        (*workers(U, H, H, H), ns("workers-5", remediating=True)),
        None,
    ),
    Case(
        "in flight elsewhere does not count",
        cluster_cfg(pool("workers", 5), pool("infra", 3)),
        (*workers(U, H, H, H, H), ns("infra-1", pool="infra", remediating=True)),
        None,
    ),
    # --- hourly budget ---
    Case(
        "budget exhausted",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.HOURLY_BUDGET_EXHAUSTED,
        "cluster:lab",
        "10 remediations started in cluster lab in the last hour (maxPerHour 10); "
        "not remediating lab/workers-1",
        snapshot={"started_last_hour": 10},
    ),
    Case(
        "budget has one left",
        WORKERS_5,
        workers(U, H, H, H, H),
        None,
        snapshot={"started_last_hour": 9},
    ),
    Case(
        "budget of zero",
        cluster_cfg(pool("workers", 5), remediation={"maxPerHour": 0}),
        workers(U, H, H, H, H),
        guards.HOURLY_BUDGET_EXHAUSTED,
    ),
    # --- control plane ---
    Case(
        "3 members, 1 unhealthy, others healthy",
        CP_3,
        (cp("cp-1", U), cp("cp-2"), cp("cp-3")),
        None,
        candidate="cp-1",
    ),
    Case(
        "3 members, 2 unhealthy",
        CP_3,
        (cp("cp-1", U), cp("cp-2", U), cp("cp-3")),
        guards.WOULD_BREAK_QUORUM,
        "pool:lab/cp",
        "only 1 of 3 control-plane members other than lab/cp-1 are healthy and etcd quorum "
        "needs 2; not remediating lab/cp-1",
        candidate="cp-1",
    ),
    Case(
        "3 members, the other one rebooting does not vote",
        CP_3,
        (cp("cp-1", U), cp("cp-2", Health.REBOOTING), cp("cp-3")),
        guards.WOULD_BREAK_QUORUM,
        candidate="cp-1",
    ),
    Case(
        "3 configured, only 2 known",
        CP_3,
        (cp("cp-1", U), cp("cp-2")),
        guards.WOULD_BREAK_QUORUM,
        candidate="cp-1",
    ),
    Case(
        "3 known, no control-plane pool configured",
        cluster_cfg(pool("workers", 5)),
        (cp("cp-1", U), cp("cp-2", P), cp("cp-3")),
        guards.WOULD_BREAK_QUORUM,
        "pool:lab/cp",
        candidate="cp-1",
    ),
    Case(
        "one control-plane node already remediating",
        CP_3,
        (cp("cp-1", U), cp("cp-2", remediating=True), cp("cp-3")),
        guards.CONTROL_PLANE_IN_FLIGHT,
        "pool:lab/cp",
        "control-plane node lab/cp-2 is being remediated; control-plane members are replaced "
        "one at a time; not remediating lab/cp-1",
        candidate="cp-1",
    ),
    Case(
        "control-plane in flight even when maxInFlight allows two",
        cluster_cfg(pool("cp", 5, role="control-plane", maxInFlight=2), pool("workers", 5)),
        (cp("cp-1", U), cp("cp-2", remediating=True), cp("cp-3"), cp("cp-4"), cp("cp-5")),
        guards.CONTROL_PLANE_IN_FLIGHT,
        candidate="cp-1",
    ),
    Case(
        "single control plane",
        CP_1,
        (cp("cp-1", U), *workers(H, H, H, H, H)),
        guards.SINGLE_CONTROL_PLANE,
        "pool:lab/cp",
        "lab/cp-1 is the only control-plane member of cluster lab; replacing it would take "
        "the cluster down, so it is left to an operator",
        candidate="cp-1",
    ),
    Case(
        "5 members, 2 unhealthy: one may go",
        CP_5,
        (cp("cp-1", U), cp("cp-2", U), cp("cp-3"), cp("cp-4"), cp("cp-5")),
        None,
        candidate="cp-1",
    ),
    Case(
        "5 members, 3 unhealthy",
        CP_5,
        (cp("cp-1", U), cp("cp-2", U), cp("cp-3", P), cp("cp-4"), cp("cp-5")),
        guards.WOULD_BREAK_QUORUM,
        message="only 2 of 5 control-plane members other than lab/cp-1 are healthy and etcd "
        "quorum needs 3; not remediating lab/cp-1",
        candidate="cp-1",
    ),
    Case(
        "workers are not held back by the control plane",
        CP_3,
        (cp("cp-1", U), cp("cp-2", remediating=True), cp("cp-3"), *workers(U, H, H, H, H)),
        None,
    ),
    # --- pause ---
    Case(
        "paused globally",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.PAUSED,
        "global",
        "remediation is paused globally; not remediating lab/workers-1",
        snapshot={"global_paused": True},
    ),
    Case(
        "paused for the cluster",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.PAUSED,
        "cluster:lab",
        "remediation is paused for cluster lab; not remediating lab/workers-1",
        snapshot={"cluster_paused": True},
    ),
    Case(
        "paused for the pool",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.PAUSED,
        "pool:lab/workers",
        "remediation is paused for pool lab/workers; not remediating lab/workers-1",
        snapshot={"paused_pools": frozenset({"workers"})},
    ),
    Case(
        "another pool paused",
        WORKERS_5,
        workers(U, H, H, H, H),
        None,
        snapshot={"paused_pools": frozenset({"infra"})},
    ),
    # --- blocking alerts (kured-style) ---
    Case(
        "a blocking alert is firing",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.BLOCKED_BY_ALERT,
        "cluster:lab",
        "blocking alert KubeAPIDown firing for cluster lab; not remediating lab/workers-1 "
        "until it resolves",
        snapshot={"blocking_alerts": ("KubeAPIDown",)},
    ),
    Case(
        "two blocking alerts are firing",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.BLOCKED_BY_ALERT,
        "cluster:lab",
        "blocking alerts EtcdNoLeader, KubeAPIDown firing for cluster lab; not remediating "
        "lab/workers-1 until they resolve",
        snapshot={"blocking_alerts": ("EtcdNoLeader", "KubeAPIDown")},
    ),
    Case(
        "no blocking alert firing",
        WORKERS_5,
        workers(U, H, H, H, H),
        None,
        snapshot={"blocking_alerts": ()},
    ),
    Case(
        "pause wins over a blocking alert",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.PAUSED,
        snapshot={"cluster_paused": True, "blocking_alerts": ("KubeAPIDown",)},
    ),
    Case(
        "a blocking alert wins over exclusion and the limits",
        WORKERS_5,
        (ns("workers-1", U, excluded=True), *workers(U, U, U, U)[1:]),
        guards.BLOCKED_BY_ALERT,
        snapshot={"blocking_alerts": ("KubeAPIDown",)},
    ),
    # --- the node itself ---
    Case(
        "excluded",
        WORKERS_5,
        (ns("workers-1", U, excluded=True), *workers(H, H, H, H)[1:]),
        guards.EXCLUDED,
        "node:lab/workers-1",
        "lab/workers-1 carries the exclusion label healer.io/exclude; not remediating it",
    ),
    Case(
        "already remediating",
        WORKERS_5,
        (ns("workers-1", U, remediating=True), *workers(H, H, H, H)[1:]),
        guards.ALREADY_REMEDIATING,
        "node:lab/workers-1",
        "lab/workers-1 is already being remediated",
    ),
    # --- breaker ---
    Case(
        "breaker open",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.BREAKER_OPEN,
        "cluster:lab",
        "the circuit breaker of cluster lab is open (TooManyFailures: 3 remediations failed "
        "in the last 600s (limit 3)); not remediating lab/workers-1 until it is reset",
        snapshot={
            "breaker_open": True,
            "breaker_reason": "TooManyFailures: 3 remediations failed in the last 600s (limit 3)",
        },
    ),
    # --- order: every refusal has exactly one reason, the first in GUARDS ---
    Case(
        "breaker wins over everything",
        cluster_cfg(pool("workers", 5), remediation={"maxPerHour": 0}),
        (
            ns("workers-1", U, excluded=True, remediating=True),
            *workers(U, U, U, H)[1:],
            ns("workers-5", remediating=True),
        ),
        guards.BREAKER_OPEN,
        snapshot={
            "breaker_open": True,
            "global_paused": True,
            "cluster_paused": True,
            "paused_pools": frozenset({"workers"}),
        },
    ),
    # --- the bad-upgrade breaker: only the nodes that failed their reboot ---
    Case(
        "bad-upgrade breaker refuses a reboot failure",
        WORKERS_5,
        (replace(ns("workers-1", U), reason="RebootTimeout"), *workers(U, H, H, H, H)[1:]),
        guards.BAD_UPGRADE_BREAKER_OPEN,
        "cluster:lab",
        "the bad-upgrade breaker of cluster lab is open (TooManyRebootFailures: 2 nodes did not "
        "come back from a planned reboot in the last 3600s (limit 2)); not replacing "
        "lab/workers-1, which did not come back from its reboot either, until it is reset",
        snapshot={"bad_upgrade_breaker": BAD_UPGRADE_WHY},
    ),
    Case(
        "bad-upgrade breaker lets other failures through",
        WORKERS_5,
        (replace(ns("workers-1", U), reason="ReadyUnknownTimeout"), *workers(U, H, H, H, H)[1:]),
        None,
        snapshot={"bad_upgrade_breaker": BAD_UPGRADE_WHY},
    ),
    Case(
        "a closed bad-upgrade breaker lets a reboot failure through",
        WORKERS_5,
        (replace(ns("workers-1", U), reason="RebootTimeout"), *workers(U, H, H, H, H)[1:]),
        None,
    ),
    Case(
        "bad-upgrade breaker reported before a pause",
        WORKERS_5,
        (replace(ns("workers-1", U), reason="RebootTimeout"), *workers(U, H, H, H, H)[1:]),
        guards.BAD_UPGRADE_BREAKER_OPEN,
        snapshot={"bad_upgrade_breaker": BAD_UPGRADE_WHY, "global_paused": True},
    ),
    Case(
        "the remediation breaker wins over the bad-upgrade breaker",
        WORKERS_5,
        (replace(ns("workers-1", U), reason="RebootTimeout"), *workers(U, H, H, H, H)[1:]),
        guards.BREAKER_OPEN,
        snapshot={"bad_upgrade_breaker": BAD_UPGRADE_WHY, "breaker_open": True},
    ),
    Case(
        "global pause reported before cluster and pool pauses",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.PAUSED,
        "global",
        snapshot={
            "global_paused": True,
            "cluster_paused": True,
            "paused_pools": frozenset({"workers"}),
        },
    ),
    Case(
        "cluster pause reported before pool pause",
        WORKERS_5,
        workers(U, H, H, H, H),
        guards.PAUSED,
        "cluster:lab",
        snapshot={"cluster_paused": True, "paused_pools": frozenset({"workers"})},
    ),
    Case(
        "pause wins over exclusion",
        WORKERS_5,
        (ns("workers-1", U, excluded=True), *workers(H, H, H, H)[1:]),
        guards.PAUSED,
        snapshot={"cluster_paused": True},
    ),
    Case(
        "exclusion wins over already remediating",
        WORKERS_5,
        (ns("workers-1", U, excluded=True, remediating=True), *workers(H, H, H, H)[1:]),
        guards.EXCLUDED,
    ),
    Case(
        "already remediating wins over the limits",
        WORKERS_5,
        (ns("workers-1", U, remediating=True), *workers(U, U, U, U)[1:]),
        guards.ALREADY_REMEDIATING,
    ),
    Case(
        "control-plane in flight wins over quorum",
        CP_3,
        (cp("cp-1", U), cp("cp-2", U, remediating=True), cp("cp-3")),
        guards.CONTROL_PLANE_IN_FLIGHT,
        candidate="cp-1",
    ),
    Case(
        "quorum wins over the pool limit",
        CP_3,  # 2 of 3 also exceeds 40% of 3 = 1
        (cp("cp-1", U), cp("cp-2", U), cp("cp-3")),
        guards.WOULD_BREAK_QUORUM,
        candidate="cp-1",
    ),
    Case(
        "pool limit wins over cluster limit",
        WORKERS_5,
        workers(U, U, U, U, H),
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
    ),
    Case(
        "cluster limit wins over in flight",
        cluster_cfg(pool("workers", 5, maxUnhealthy="100%")),
        (*workers(U, U, U, H), ns("workers-5", remediating=True)),
        guards.TOO_MANY_UNHEALTHY_IN_CLUSTER,
    ),
    Case(
        "in flight wins over budget",
        WORKERS_5,
        (*workers(U, H, H, H), ns("workers-5", remediating=True)),
        guards.MAX_IN_FLIGHT,
        snapshot={"started_last_hour": 10},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check(case: Case) -> None:
    refusal = run(case)
    if case.reason is None:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.reason == case.reason
    if case.scope is not None:
        assert refusal.scope == case.scope
    if case.message is not None:
        assert refusal.message == case.message


def test_dry_run_judges_the_same() -> None:
    case = Case("dry", WORKERS_5, workers(U, P, P, H, H), guards.TOO_MANY_UNHEALTHY_IN_POOL)
    dry = Case(**{**case.__dict__, "snapshot": {"dry_run": True}})
    assert run(case) == run(dry)


def test_candidate_status_overrides_a_stale_snapshot() -> None:
    """The snapshot says workers-1 is healthy; the candidate is authoritative."""
    stale = workers(H, P, P, H, H)
    snapshot = ClusterSnapshot("lab", stale, 0, False, False, frozenset(), False, "")
    refusal = check(ns("workers-1", U), snapshot, WORKERS_5)
    assert refusal is not None
    assert refusal.reason == guards.TOO_MANY_UNHEALTHY_IN_POOL


def test_candidate_missing_from_the_snapshot_is_counted() -> None:
    snapshot = ClusterSnapshot(
        "lab", workers(H, P, P, H, H)[1:], 0, False, False, frozenset(), False, ""
    )
    refusal = check(ns("workers-1", U), snapshot, WORKERS_5)
    assert refusal is not None
    assert refusal.message.startswith("3 of 5 nodes")


def test_guard_order_is_the_documented_one() -> None:
    documented = [
        guards.breaker_open,
        guards.bad_upgrade_breaker_open,
        guards.paused,
        guards.blocked_by_alert,
        guards.excluded,
        guards.already_remediating,
        guards.single_control_plane,
        guards.control_plane_in_flight,
        guards.etcd_quorum,
        guards.would_break_quorum,
        guards.too_many_unhealthy_in_pool,
        guards.too_many_unhealthy_in_zone,
        guards.too_many_unhealthy_in_cluster,
        guards.storm_cooldown,
        guards.max_in_flight,
        guards.hourly_budget_exhausted,
    ]
    assert list(guards.GUARDS) == documented


def test_every_reason_is_documented() -> None:
    reasons = [
        guards.BREAKER_OPEN,
        guards.BAD_UPGRADE_BREAKER_OPEN,
        guards.PAUSED,
        guards.BLOCKED_BY_ALERT,
        guards.EXCLUDED,
        guards.ALREADY_REMEDIATING,
        guards.TOO_MANY_UNHEALTHY_IN_POOL,
        guards.TOO_MANY_UNHEALTHY_IN_CLUSTER,
        guards.MAX_IN_FLIGHT,
        guards.HOURLY_BUDGET_EXHAUSTED,
        guards.CONTROL_PLANE_IN_FLIGHT,
        guards.WOULD_BREAK_QUORUM,
        guards.SINGLE_CONTROL_PLANE,
        guards.STORM_COOLDOWN,
    ]
    assert guards.__doc__ is not None
    for reason in reasons:
        assert f"``{reason}``" in guards.__doc__


@pytest.mark.parametrize(
    ("storms", "now", "expected"),
    [
        ({}, 100.0, None),  # no storm: allowed
        ({"pool:lab/workers": 99.0}, 100.0, guards.STORM_COOLDOWN),  # cleared 1s ago
        ({"pool:lab/workers": 95.0}, 100.0, None),  # cooldown (5s) is over
        ({"pool:lab/workers": 95.001}, 100.0, guards.STORM_COOLDOWN),  # just inside
        ({"cluster:lab": 98.0}, 100.0, guards.STORM_COOLDOWN),  # a cluster-wide storm
        ({"pool:lab/other": 99.0}, 100.0, None),  # another pool's storm does not count
    ],
)
def test_storm_cooldown(storms: dict[str, float], now: float, expected: str | None) -> None:
    cfg = cluster_cfg(pool("workers", 5), remediation={"stormCooldown": "5s"})
    snapshot = ClusterSnapshot(
        "lab",
        workers(U, H, H, H, H),
        0,
        False,
        False,
        frozenset(),
        False,
        "",
        now=now,
        storms=storms,
    )
    refusal = check(ns("workers-1", U), snapshot, cfg)
    assert (refusal.reason if refusal else None) == expected


def test_storm_cooldown_defaults_to_the_longest_condition_timeout() -> None:
    cfg = cluster_cfg(
        pool("workers", 5),
        health={"unhealthyConditions": [{"type": "Ready", "status": "Unknown", "timeout": "7m"}]},
    )
    assert cfg.storm_cooldown() == 420.0


# --- the circuit breaker ------------------------------------------------------------------------

DEFAULT_BREAKER = cluster_cfg(pool("workers", 1)).breaker


@pytest.mark.parametrize(
    ("failures", "new_unhealthy", "policy", "expected"),
    [
        (0, 0, DEFAULT_BREAKER, None),
        (2, 9, DEFAULT_BREAKER, None),
        (
            3,
            0,
            DEFAULT_BREAKER,
            "TooManyFailures: 3 remediations failed in the last 600s (limit 3)",
        ),
        (
            0,
            10,
            DEFAULT_BREAKER,
            "TooManyNewUnhealthy: 10 nodes became unhealthy in the last 600s (limit 10)",
        ),
        (
            4,
            12,
            DEFAULT_BREAKER,
            "TooManyFailures: 4 remediations failed in the last 600s (limit 3)",
        ),
        (
            1,
            0,
            BreakerPolicy(max_failures=1, window="5m"),
            "TooManyFailures: 1 remediation failed in the last 300s (limit 1)",
        ),
        (
            0,
            1,
            BreakerPolicy(max_new_unhealthy=1, window=90.5),
            "TooManyNewUnhealthy: 1 node became unhealthy in the last 90.5s (limit 1)",
        ),
    ],
)
def test_breaker_trip_reason(
    failures: int, new_unhealthy: int, policy: BreakerPolicy, expected: str | None
) -> None:
    assert (
        breaker_trip_reason(
            failures_in_window=failures, new_unhealthy_in_window=new_unhealthy, policy=policy
        )
        == expected
    )


@pytest.mark.parametrize(
    ("failures", "policy", "expected"),
    [
        (0, DEFAULT_BREAKER, None),
        (1, DEFAULT_BREAKER, None),
        (
            2,
            DEFAULT_BREAKER,
            "TooManyRebootFailures: 2 nodes did not come back from a planned reboot in the "
            "last 3600s (limit 2)",
        ),
        (
            1,
            BreakerPolicy(max_reboot_failures=1, reboot_failure_window="10m"),
            "TooManyRebootFailures: 1 node did not come back from a planned reboot in the "
            "last 600s (limit 1)",
        ),
        (2, BreakerPolicy(max_reboot_failures=3), None),
    ],
)
def test_reboot_failure_trip_reason(
    failures: int, policy: BreakerPolicy, expected: str | None
) -> None:
    assert (
        guards.reboot_failure_trip_reason(reboot_failures_in_window=failures, policy=policy)
        == expected
    )
