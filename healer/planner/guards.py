"""Guards: may healer start remediating this node now? Pure functions on frozen snapshots.

Deciding to remediate is separate from doing it (as in Cluster API's MachineHealthCheck). A guard
never skips silently: each refusal carries exactly one stable reason, a scope and a sentence with
the numbers, so it can be recorded as a condition, an event and a log line.

:func:`check` runs the guards in this fixed order and returns the first refusal. Operator stop
switches come first, then facts about the node itself, then the control-plane invariants (they do
not depend on configuration, and "would break quorum" explains more than a generic limit), then
the configurable limits:

``BreakerOpen`` (scope ``cluster:<c>``)
    The cluster's circuit breaker has tripped (too many failures or too many new unhealthy nodes
    in its window); it stays open until an operator resets it. Wins over everything.
``BadUpgradeBreakerOpen`` (scope ``cluster:<c>``)
    The cluster's bad-upgrade breaker has tripped (``breaker.maxRebootFailures`` nodes did not
    come back from a planned reboot within ``breaker.rebootFailureWindow``) and the candidate is
    one of those failures (verdict ``RebootTimeout``): replacing machines does not fix a bad
    upgrade. Other remediations go on. Open until an operator resets it.
``Paused`` (scope ``global``, ``cluster:<c>`` or ``pool:<c>/<p>``, widest first)
    Remediation is paused by an operator or the config.
``BlockedByAlert`` (scope ``cluster:<c>``)
    A configured blocking alert (``webhook.blockingAlerts``, kured-style) is firing for the
    cluster; the alert webhook passes it on, :mod:`healer.planner.alert_blocks` keeps it. Lifted
    when the alert resolves (or its ``blockTtl`` lapses without a repeat).
``Excluded`` (scope ``node:<c>/<n>``)
    The node carries the exclusion label.
``AlreadyRemediating`` (scope ``node:<c>/<n>``)
    A remediation workflow for this node is already running.
``SingleControlPlane`` (scope ``pool:<c>/<p>``)
    The control plane has one member; replacing it would take the cluster down, so a human decides.
``ControlPlaneInFlight`` (scope ``pool:<c>/<p>``)
    Another control-plane node is being remediated; etcd membership changes one at a time (the
    refusal quotes etcd's numbers where healer reads etcd).
``EtcdUnreachable``, ``EtcdMembershipChanging``, ``EtcdWouldLoseQuorum`` (scope ``pool:<c>/<p>``)
    Only for clusters whose etcd healer reads (``etcd.mode``): etcd's own member list and
    health judge quorum (:mod:`healer.planner.etcd_quorum`). etcd cannot be reached (the refusal
    quotes the Node view's numbers, but healer does not guess from them); its membership is not
    the pool's size (a change under way: one at a time); or without the candidate's member the
    healthy members left would not be a quorum.
``WouldBreakQuorum`` (scope ``pool:<c>/<p>``)
    Without the candidate, the healthy control-plane members would not be a majority of the
    membership, counted from the Node view (where healer reads etcd, etcd judges instead).
``TooManyUnhealthyInPool`` (scope ``pool:<c>/<p>``)
    More nodes of the pool are out of service (unhealthy, pending, rebooting, granted a reboot or
    being remediated) than the pool's ``maxUnhealthy`` allows: the problem is probably not the
    nodes (network partition, outage), and replacing them would not help.
``TooManyUnhealthyInZone`` (scope ``zone:<c>/<z>``)
    The same, over the nodes of every pool in the candidate's failure domain (its
    ``topology.kubernetes.io/zone`` label), against the cluster's ``maxUnhealthyPerZone``: a zone
    outage is refused as a whole, also when it stays within each pool's limit (a zone holds a
    few nodes of every pool). A node without the label is not judged by any zone.
``TooManyUnhealthyInCluster`` (scope ``cluster:<c>``)
    The same, over the whole cluster, against the cluster's ``maxUnhealthy``.
``StormCooldown`` (scope ``pool:<c>/<p>``, ``zone:<c>/<z>`` or ``cluster:<c>``)
    The scope was over its limit less than ``stormCooldown`` ago. When a partition heals, nodes
    come back one by one; without this the first to return would free the limit and the
    stragglers, about to return too, would be replaced.
``MaxInFlight`` (scope ``pool:<c>/<p>``)
    The pool already has ``maxInFlight`` remediations running.
``HourlyBudgetExhausted`` (scope ``cluster:<c>``)
    ``maxPerHour`` remediations were started in this cluster in the last hour.

Counting is deliberately conservative, and shared with the reboot arbiter
(:mod:`healer.planner.disruption`, the disruption budget):

* "Unhealthy" for ``maxUnhealthy`` and ``maxUnhealthyPerZone`` means *out of service*: UNHEALTHY,
  PENDING or REBOOTING, granted a reboot that has not started yet, or being remediated; plus the
  candidate whatever its health (once remediation starts it is out of service). PENDING counts
  so that a network partition, which makes many nodes Unknown at once, is refused as a whole
  instead of trickling through as each node's timeout expires. A rebooting node (and one the
  arbiter allowed to reboot) counts because it is not serving either: a repair and a reboot
  together must fit in the same limit, so repairs and reboots see each other. STARTING (a
  machine being added) and GONE nodes do not count.
* A pool's total is the configured pool size or the number of known (not GONE) nodes in it,
  whichever is larger. A percentage is of the pool as designed: a pool that lost nodes must not
  look smaller, or the limit would shrink and flap while machines sit between deleted and joined
  during their replacement (those are still counted as unhealthy while being remediated); and a
  pool grown beyond its configured size is judged against what it really holds. A cluster's
  total is the sum over its pools. A zone's total is its known nodes (those being remediated
  included), and a percentage limit allows at least one node in it.
* The control-plane membership is the configured control-plane pool size or the number of known
  control-plane nodes, whichever is larger; only HEALTHY members that are not being remediated
  and hold no reboot grant count as voters (see :func:`would_break_quorum`).

``ClusterSnapshot.dry_run`` does not change any guard: a dry run must show what a real run would
do; the planner decides not to act.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from healer.config import BreakerPolicy, ClusterConfig
from healer.model import LABEL_ZONE, Health, NodeObservation, Role, Verdict
from healer.planner.disruption import Budget, Member, Tally
from healer.planner.etcd_quorum import EtcdView, start_refusal

BREAKER_OPEN = "BreakerOpen"
BAD_UPGRADE_BREAKER_OPEN = "BadUpgradeBreakerOpen"
PAUSED = "Paused"
BLOCKED_BY_ALERT = "BlockedByAlert"
EXCLUDED = "Excluded"
ALREADY_REMEDIATING = "AlreadyRemediating"
SINGLE_CONTROL_PLANE = "SingleControlPlane"
CONTROL_PLANE_IN_FLIGHT = "ControlPlaneInFlight"
WOULD_BREAK_QUORUM = "WouldBreakQuorum"
TOO_MANY_UNHEALTHY_IN_POOL = "TooManyUnhealthyInPool"
TOO_MANY_UNHEALTHY_IN_ZONE = "TooManyUnhealthyInZone"
TOO_MANY_UNHEALTHY_IN_CLUSTER = "TooManyUnhealthyInCluster"
MAX_IN_FLIGHT = "MaxInFlight"
STORM_COOLDOWN = "StormCooldown"
HOURLY_BUDGET_EXHAUSTED = "HourlyBudgetExhausted"

# Reasons the circuit breaker trips with (prefix of the breaker_reason string).
TOO_MANY_FAILURES = "TooManyFailures"
TOO_MANY_NEW_UNHEALTHY = "TooManyNewUnhealthy"
# ... and the reason the bad-upgrade breaker trips with.
TOO_MANY_REBOOT_FAILURES = "TooManyRebootFailures"
# The verdict reason of a node that did not come back from a planned reboot.
REBOOT_TIMEOUT = "RebootTimeout"

_NO_POOL = "(none)"
# What the candidate is counted as in a budget when its health does not already say.
_TO_BE_REMEDIATED = "to be remediated"


@dataclass(frozen=True)
class NodeStatus:
    node: str
    pool: str | None
    role: Role
    health: Health
    remediating: bool  # a remediation workflow for this node is running
    excluded: bool  # carries the cluster's exclusion label
    zone: str | None = None  # its failure domain (label topology.kubernetes.io/zone)
    reboot_granted: bool = False  # holds a reboot grant from the arbiter (started or not)
    reason: str = ""  # the verdict's reason (e.g. "RebootTimeout")


def node_status(
    obs: NodeObservation, verdict: Verdict, *, remediating: bool, reboot_granted: bool = False
) -> NodeStatus:
    """A node as the guards and the reboot arbiter see it."""
    return NodeStatus(
        node=obs.node,
        pool=obs.pool,
        role=obs.role,
        health=verdict.health,
        remediating=remediating,
        excluded=obs.excluded,
        zone=obs.labels.get(LABEL_ZONE) or None,
        reboot_granted=reboot_granted,
        reason=verdict.reason,
    )


@dataclass(frozen=True)
class ClusterSnapshot:
    cluster: str
    nodes: tuple[NodeStatus, ...]  # every node healer knows in the cluster (the candidate included)
    started_last_hour: int  # remediations started in the last 3600 s in this cluster
    global_paused: bool
    cluster_paused: bool
    paused_pools: frozenset[str]
    breaker_open: bool
    breaker_reason: str  # why it tripped, from breaker_trip_reason()
    dry_run: bool = False
    now: float = 0.0
    # scope ("pool:<c>/<p>", "zone:<c>/<z>" or "cluster:<c>") -> the last time it was over its
    # limit
    storms: Mapping[str, float] = field(default_factory=dict)
    # names of the blocking alerts firing for this cluster (see healer.planner.alert_blocks)
    blocking_alerts: tuple[str, ...] = ()
    # why the bad-upgrade breaker is open (from reboot_failure_trip_reason()), or None
    bad_upgrade_breaker: str | None = None
    # etcd's membership and health (clusters with etcd.mode other than off), read by the
    # planner just before it asks the guards; None when it was not read or could not be.
    etcd: EtcdView | None = None

    @cached_property
    def tally(self) -> Tally:
        """:attr:`nodes` counted once per snapshot, for every candidate's guards (a snapshot
        is frozen: the one the planner makes after a launch is a new one, counted afresh)."""
        return Tally(self.nodes)


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of the constants above
    message: str  # a sentence with the numbers, naming the node
    scope: str  # "global", "cluster:lab", "pool:lab/workers" or "node:lab/w-1"


Guard = Callable[[NodeStatus, ClusterSnapshot, ClusterConfig], Refusal | None]


def check(
    candidate: NodeStatus, snapshot: ClusterSnapshot, cluster: ClusterConfig
) -> Refusal | None:
    """Run :data:`GUARDS` in order: the first refusal, or None if remediation may start."""
    for guard in GUARDS:
        refusal = guard(candidate, snapshot, cluster)
        if refusal is not None:
            return refusal
    return None


# --- stop switches -------------------------------------------------------------------------


def breaker_open(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    if not s.breaker_open:
        return None
    why = s.breaker_reason or "no reason recorded"
    return Refusal(
        BREAKER_OPEN,
        f"the circuit breaker of cluster {s.cluster} is open ({why}); "
        f"not remediating {_node(s, c)} until it is reset",
        f"cluster:{s.cluster}",
    )


def bad_upgrade_breaker_open(
    c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig
) -> Refusal | None:
    if s.bad_upgrade_breaker is None or c.reason != REBOOT_TIMEOUT:
        return None
    return Refusal(
        BAD_UPGRADE_BREAKER_OPEN,
        f"the bad-upgrade breaker of cluster {s.cluster} is open ({s.bad_upgrade_breaker}); "
        f"not replacing {_node(s, c)}, which did not come back from its reboot either, until "
        "it is reset",
        f"cluster:{s.cluster}",
    )


def paused(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    # The widest pause is reported: it is the one an operator must lift first.
    if s.global_paused:
        return Refusal(
            PAUSED, f"remediation is paused globally; not remediating {_node(s, c)}", "global"
        )
    if s.cluster_paused:
        return Refusal(
            PAUSED,
            f"remediation is paused for cluster {s.cluster}; not remediating {_node(s, c)}",
            f"cluster:{s.cluster}",
        )
    if c.pool is not None and c.pool in s.paused_pools:
        return Refusal(
            PAUSED,
            f"remediation is paused for pool {_pool(s, c.pool)}; not remediating {_node(s, c)}",
            _pool_scope(s, c.pool),
        )
    return None


def blocked_by_alert(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    if not s.blocking_alerts:
        return None
    count = len(s.blocking_alerts)
    until = "it resolves" if count == 1 else "they resolve"
    return Refusal(
        BLOCKED_BY_ALERT,
        f"blocking alert{_s(count)} {', '.join(s.blocking_alerts)} firing for cluster "
        f"{s.cluster}; not remediating {_node(s, c)} until {until}",
        f"cluster:{s.cluster}",
    )


# --- the node itself ----------------------------------------------------------------------


def excluded(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    if not c.excluded:
        return None
    return Refusal(
        EXCLUDED,
        f"{_node(s, c)} carries the exclusion label {cfg.remediation.exclude_label}; "
        "not remediating it",
        f"node:{_node(s, c)}",
    )


def already_remediating(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    if not c.remediating:
        return None
    return Refusal(
        ALREADY_REMEDIATING,
        f"{_node(s, c)} is already being remediated",
        f"node:{_node(s, c)}",
    )


# --- control-plane invariants ----------------------------------------------------------------


def single_control_plane(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    if c.role is not Role.CONTROL_PLANE:
        return None
    members = _cp_members(c, s, cfg)
    if members > 1:
        return None
    return Refusal(
        SINGLE_CONTROL_PLANE,
        f"{_node(s, c)} is the only control-plane member of cluster {s.cluster}; replacing it "
        "would take the cluster down, so it is left to an operator",
        _cp_scope(c, s, cfg),
    )


def etcd_quorum(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    """etcd judges quorum where healer reads it; unreachable means no, never a guess."""
    if c.role is not Role.CONTROL_PLANE or not cfg.etcd.enabled:
        return None
    cp = [n for n in _control_plane(c, s) if n.health is not Health.GONE]
    healthy = sum(1 for n in cp if n.health is Health.HEALTHY and n.node != c.node)
    node_view = (
        f"{healthy} of {_cp_members(c, s, cfg)} control-plane Nodes besides {c.node} healthy"
    )
    decision = start_refusal(
        s.etcd, node=c.node, pool_size=_cp_members(c, s, cfg), node_view=node_view
    )
    if decision is None:
        return None
    return Refusal(
        decision.reason, f"cluster {s.cluster}: {decision.message}", _cp_scope(c, s, cfg)
    )


def control_plane_in_flight(
    c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig
) -> Refusal | None:
    if c.role is not Role.CONTROL_PLANE:
        return None
    busy = sorted(n.node for n in _control_plane(c, s) if n.remediating and n.node != c.node)
    if not busy:
        return None
    etcd = f" (etcd: {s.etcd.describe()})" if s.etcd is not None else ""
    return Refusal(
        CONTROL_PLANE_IN_FLIGHT,
        f"control-plane node {s.cluster}/{busy[0]} is being remediated{etcd}; control-plane "
        f"members are replaced one at a time; not remediating {_node(s, c)}",
        _cp_scope(c, s, cfg),
    )


def would_break_quorum(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    """The remaining healthy members must be a majority of the whole membership on their own.

    Only HEALTHY members vote here: a REBOOTING member's etcd is down right now and may not come
    back (and one granted a reboot may go down any second), a STARTING one may not have joined
    etcd yet, and a PENDING one already shows a bad condition. Counting any of them would let
    healer take out a member while quorum rests on a node that is not serving.
    """
    if c.role is not Role.CONTROL_PLANE or (cfg.etcd.enabled and s.etcd is not None):
        return None  # where healer reads etcd, etcd judges (etcd_quorum, just before)
    members = _cp_members(c, s, cfg)
    quorum = members // 2 + 1
    voters = sum(
        1
        for n in _control_plane(c, s)
        if n.node != c.node
        and n.health is Health.HEALTHY
        and not n.remediating
        and not n.reboot_granted
    )
    if voters >= quorum:
        return None
    return Refusal(
        WOULD_BREAK_QUORUM,
        f"only {voters} of {members} control-plane members other than {_node(s, c)} are healthy "
        f"and etcd quorum needs {quorum}; not remediating {_node(s, c)}",
        _cp_scope(c, s, cfg),
    )


# --- configurable limits --------------------------------------------------------------------


def too_many_unhealthy_in_pool(
    c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig
) -> Refusal | None:
    budget = s.tally.pool_budget(s.cluster, cfg, c.pool, subject=c, subject_why=_TO_BE_REMEDIATED)
    return _over(TOO_MANY_UNHEALTHY_IN_POOL, budget, c, s)


def too_many_unhealthy_in_zone(
    c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig
) -> Refusal | None:
    if c.zone is None:
        return None
    budget = s.tally.zone_budget(s.cluster, cfg, c.zone, subject=c, subject_why=_TO_BE_REMEDIATED)
    return _over(TOO_MANY_UNHEALTHY_IN_ZONE, budget, c, s)


def too_many_unhealthy_in_cluster(
    c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig
) -> Refusal | None:
    budget = s.tally.cluster_budget(s.cluster, cfg, subject=c, subject_why=_TO_BE_REMEDIATED)
    return _over(TOO_MANY_UNHEALTHY_IN_CLUSTER, budget, c, s)


def _over(reason: str, budget: Budget, c: NodeStatus, s: ClusterSnapshot) -> Refusal | None:
    if not budget.over:
        return None
    return Refusal(reason, f"{budget.describe()}; not remediating {_node(s, c)}", budget.scope)


def storm_cooldown(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    cooldown = cfg.storm_cooldown()
    zone = () if c.zone is None else (f"zone:{s.cluster}/{c.zone}",)
    for scope in (_pool_scope(s, c.pool), *zone, f"cluster:{s.cluster}"):
        last = s.storms.get(scope)
        if last is not None and s.now - last < cooldown:
            return Refusal(
                STORM_COOLDOWN,
                f"{scope} had too many unhealthy nodes {s.now - last:.0f}s ago; waiting "
                f"{cooldown:.0f}s after that clears before remediating {_node(s, c)}, since "
                "nodes caught in it may still come back",
                scope,
            )
    return None


def max_in_flight(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> Refusal | None:
    running = s.tally.remediating(c.pool, subject=c)
    limit = cfg.remediation_for(c.pool).max_in_flight
    if running < limit:
        return None
    return Refusal(
        MAX_IN_FLIGHT,
        f"{running} remediation{_s(running)} already running in pool {_pool(s, c.pool)} "
        f"(maxInFlight {limit}); not remediating {_node(s, c)}",
        _pool_scope(s, c.pool),
    )


def hourly_budget_exhausted(
    c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig
) -> Refusal | None:
    budget = cfg.remediation.max_per_hour
    if s.started_last_hour < budget:
        return None
    return Refusal(
        HOURLY_BUDGET_EXHAUSTED,
        f"{s.started_last_hour} remediation{_s(s.started_last_hour)} started in cluster "
        f"{s.cluster} in the last hour (maxPerHour {budget}); not remediating {_node(s, c)}",
        f"cluster:{s.cluster}",
    )


GUARDS: tuple[Guard, ...] = (
    breaker_open,
    bad_upgrade_breaker_open,
    paused,
    blocked_by_alert,
    excluded,
    already_remediating,
    single_control_plane,
    control_plane_in_flight,
    etcd_quorum,
    would_break_quorum,
    too_many_unhealthy_in_pool,
    too_many_unhealthy_in_zone,
    too_many_unhealthy_in_cluster,
    storm_cooldown,
    max_in_flight,
    hourly_budget_exhausted,
)
"""The order :func:`check` runs the guards in (see the module docstring for why)."""


# --- the circuit breaker ----------------------------------------------------------------------


def breaker_trip_reason(
    *, failures_in_window: int, new_unhealthy_in_window: int, policy: BreakerPolicy
) -> str | None:
    """Why the breaker should trip now, or None. Failures are reported first: they are the
    stronger sign that healer itself is making things worse."""
    window = _window(policy.window)
    if failures_in_window >= policy.max_failures:
        return (
            f"{TOO_MANY_FAILURES}: {failures_in_window} remediation{_s(failures_in_window)} "
            f"failed in the last {window} (limit {policy.max_failures})"
        )
    if new_unhealthy_in_window >= policy.max_new_unhealthy:
        return (
            f"{TOO_MANY_NEW_UNHEALTHY}: {new_unhealthy_in_window} "
            f"node{_s(new_unhealthy_in_window)} became unhealthy in the last {window} "
            f"(limit {policy.max_new_unhealthy})"
        )
    return None


def reboot_failure_trip_reason(
    *, reboot_failures_in_window: int, policy: BreakerPolicy
) -> str | None:
    """Why the bad-upgrade breaker should trip now, or None: ``maxRebootFailures`` nodes did not
    come back from a planned reboot within ``rebootFailureWindow``."""
    if reboot_failures_in_window < policy.max_reboot_failures:
        return None
    return (
        f"{TOO_MANY_REBOOT_FAILURES}: {reboot_failures_in_window} "
        f"node{_s(reboot_failures_in_window)} did not come back from a planned reboot in the "
        f"last {_window(policy.reboot_failure_window)} (limit {policy.max_reboot_failures})"
    )


# --- helpers ----------------------------------------------------------------------------------


def _control_plane(c: NodeStatus, s: ClusterSnapshot) -> Sequence[Member]:
    """The snapshot's control-plane nodes with the candidate's own status in its place.

    The caller's ``candidate`` is authoritative: if the snapshot holds an older status of the same
    node, or none at all, counting from the snapshot alone could under-count.
    """
    return s.tally.with_role(Role.CONTROL_PLANE, subject=c)


def _cp_members(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> int:
    configured = next((p.size for p in cfg.pools if p.role is Role.CONTROL_PLANE), 0)
    known = sum(1 for n in _control_plane(c, s) if n.health is not Health.GONE)
    return max(configured, known)


def _cp_scope(c: NodeStatus, s: ClusterSnapshot, cfg: ClusterConfig) -> str:
    cp_pool = next((p.name for p in cfg.pools if p.role is Role.CONTROL_PLANE), c.pool)
    return _pool_scope(s, cp_pool)


def _node(s: ClusterSnapshot, c: NodeStatus) -> str:
    return f"{s.cluster}/{c.node}"


def _pool(s: ClusterSnapshot, pool: str | None) -> str:
    return f"{s.cluster}/{pool if pool is not None else _NO_POOL}"


def _pool_scope(s: ClusterSnapshot, pool: str | None) -> str:
    return f"pool:{_pool(s, pool)}"


def _window(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.1f}s"


def _s(count: int) -> str:
    return "" if count == 1 else "s"
