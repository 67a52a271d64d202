"""The disruption budget: how many nodes of a pool, a zone or a cluster are out of service, and
why. Pure; one view for both sides of the arbitration, so they see each other: the repair guards
(:mod:`healer.planner.guards`) count a peer that is rebooting, and the reboot arbiter
(:mod:`healer.planner.reboots`) counts a peer that is unhealthy or being replaced.

A node is *out of service* for the first of these that applies (the words appear in messages):

``being remediated``  a remediation workflow for it is running. It stays out until the workflow
                      ends, also while its Node object is deleted and its replacement joins.
``unhealthy``         its verdict is UNHEALTHY.
``pending``           a bad condition is present and has not yet lasted its timeout. A network
                      partition makes many nodes Unknown at once; counting them now refuses the
                      partition as a whole instead of letting it trickle through node by node.
``rebooting``         a planned reboot is under way (within ``rebootTimeout``).
``granted a reboot``  the arbiter granted it a reboot that has not started: it may go any second.

The node a decision is about (the repair candidate, the node asking to reboot) is counted as out
whatever its health: once acted on, it is. Not out of service: HEALTHY; STARTING (a machine
being added: a replacement, whose old node already counts as being remediated, or a scale-up);
GONE (a deleted Node not being remediated).

A scope's total: a pool's is its configured size or the number of its known (not GONE) nodes,
whichever is larger (a pool that lost nodes must not look smaller, or the limit would shrink and
flap while machines sit between deleted and joined); a cluster's is the sum over its pools; a
zone has no configured size, so its total is its known nodes, those being remediated included.
A zone's percentage limit allows at least one node: a zone of one node cannot tell a zone outage
from a node failure, and one node is judged by the pool and cluster limits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from healer.config import ClusterConfig, Threshold
from healer.model import Health, Role

REMEDIATING = "being remediated"
UNHEALTHY = "unhealthy"
PENDING = "pending"
REBOOTING = "rebooting"
REBOOT_GRANTED = "granted a reboot"

# The order reasons are listed in a message's breakdown; a subject's own reason comes last.
_ORDER = (REMEDIATING, UNHEALTHY, PENDING, REBOOTING, REBOOT_GRANTED)
_NO_POOL = "(none)"


class Member(Protocol):
    """What the budget needs to know about a node (:class:`healer.planner.guards.NodeStatus`)."""

    @property
    def node(self) -> str: ...
    @property
    def pool(self) -> str | None: ...
    @property
    def zone(self) -> str | None: ...
    @property
    def role(self) -> Role: ...
    @property
    def health(self) -> Health: ...
    @property
    def remediating(self) -> bool: ...
    @property
    def reboot_granted(self) -> bool: ...


def out_of_service(n: Member) -> str | None:
    """Why ``n`` is out of service (see the module docstring), or None if it is in service."""
    if n.remediating:
        return REMEDIATING
    if n.health is Health.UNHEALTHY:
        return UNHEALTHY
    if n.health is Health.PENDING:
        return PENDING
    if n.health is Health.REBOOTING:
        return REBOOTING
    if n.reboot_granted:
        return REBOOT_GRANTED
    return None


def planned(n: Member) -> bool:
    """Whether ``n`` is out for planned work: being remediated, rebooting or holding a reboot
    grant. Reboots and repairs share one count (``reboots.concurrency``): the reboot arbiter
    counts these against ``perPool`` and ``perCluster`` whatever else ails the node."""
    return n.remediating or n.health is Health.REBOOTING or n.reboot_granted


@dataclass(frozen=True)
class Budget:
    """One scope's count of nodes out of service against its limit."""

    scope: str  # "pool:<c>/<p>", "zone:<c>/<z>" or "cluster:<c>": a refusal's scope
    name: str  # "pool lab/workers", "zone lab/lab-a", "cluster lab": for messages
    total: int
    out: tuple[tuple[str, str], ...]  # (node, why), by node name
    threshold: Threshold
    limit: int

    @property
    def count(self) -> int:
        return len(self.out)

    @property
    def over(self) -> bool:
        return self.count > self.limit

    def nodes(self, why: str) -> tuple[str, ...]:
        return tuple(node for node, w in self.out if w == why)

    def breakdown(self) -> str:
        """``"1 unhealthy, 2 pending"``: how many are out for each reason."""
        reasons = [*_ORDER, *sorted({w for _, w in self.out} - set(_ORDER))]
        counts = [(w, sum(1 for _, x in self.out if x == w)) for w in reasons]
        return ", ".join(f"{n} {w}" for w, n in counts if n)

    def limit_text(self) -> str:
        if self.threshold.percent is None:
            return f"limit {self.limit}"
        exact = self.threshold.limit_for(self.total)
        if exact != self.limit:
            return f"limit {self.threshold} = {exact}, at least {self.limit}"
        return f"limit {self.threshold} = {self.limit}"

    def describe(self) -> str:
        """``"3 of 5 nodes in pool lab/workers are out of service (1 unhealthy, 2 pending;
        limit 40% = 2)"``."""
        return (
            f"{self.count} of {self.total} nodes in {self.name} are out of service "
            f"({self.breakdown()}; {self.limit_text()})"
        )


def pool_budget(
    cluster: str,
    cfg: ClusterConfig,
    nodes: Sequence[Member],
    pool: str | None,
    *,
    subject: Member | None = None,
    subject_why: str = "",
) -> Budget:
    """The pool's budget against its ``maxUnhealthy`` (the pool's own, or the cluster's)."""
    members = [n for n in _with(nodes, subject) if n.pool == pool]
    total = _pool_total(cfg, pool, members)
    threshold = cfg.remediation_for(pool).max_unhealthy
    name = f"{cluster}/{pool if pool is not None else _NO_POOL}"
    return Budget(
        scope=f"pool:{name}",
        name=f"pool {name}",
        total=total,
        out=_out(members, subject, subject_why),
        threshold=threshold,
        limit=threshold.limit_for(total),
    )


def zone_budget(
    cluster: str,
    cfg: ClusterConfig,
    nodes: Sequence[Member],
    zone: str,
    *,
    subject: Member | None = None,
    subject_why: str = "",
) -> Budget:
    """The zone's budget against the cluster's ``maxUnhealthyPerZone``, over every pool."""
    members = [n for n in _with(nodes, subject) if n.zone == zone]
    total = sum(1 for n in members if n.health is not Health.GONE or n.remediating)
    threshold = cfg.remediation.max_unhealthy_per_zone
    limit = threshold.limit_for(total)
    if threshold.percent is not None:
        limit = max(1, limit)
    return Budget(
        scope=f"zone:{cluster}/{zone}",
        name=f"zone {cluster}/{zone}",
        total=total,
        out=_out(members, subject, subject_why),
        threshold=threshold,
        limit=limit,
    )


def cluster_budget(
    cluster: str,
    cfg: ClusterConfig,
    nodes: Sequence[Member],
    *,
    subject: Member | None = None,
    subject_why: str = "",
) -> Budget:
    """The cluster's budget against the cluster's ``maxUnhealthy``."""
    members = _with(nodes, subject)
    pools: set[str | None] = {n.pool for n in members}
    pools.update(p.name for p in cfg.pools)
    total = sum(_pool_total(cfg, p, [n for n in members if n.pool == p]) for p in pools)
    threshold = cfg.remediation.max_unhealthy
    return Budget(
        scope=f"cluster:{cluster}",
        name=f"cluster {cluster}",
        total=total,
        out=_out(members, subject, subject_why),
        threshold=threshold,
        limit=threshold.limit_for(total),
    )


def _with(nodes: Sequence[Member], subject: Member | None) -> list[Member]:
    """The nodes with the subject's own status in its place: the caller's subject is
    authoritative (the snapshot may hold an older status of it, or none)."""
    if subject is None:
        return list(nodes)
    out = [subject if n.node == subject.node else n for n in nodes]
    if not any(n.node == subject.node for n in nodes):
        out.append(subject)
    return out


def _out(
    members: Iterable[Member], subject: Member | None, subject_why: str
) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for n in members:
        why = out_of_service(n)
        if subject is not None and n.node == subject.node:
            why = why or subject_why or "the subject"
        if why is not None:
            out.append((n.node, why))
    return tuple(sorted(out))


def _pool_total(cfg: ClusterConfig, pool: str | None, members: Iterable[Member]) -> int:
    configured = p.size if (p := cfg.pool(pool)) is not None else 0
    known = sum(1 for n in members if n.health is not Health.GONE)
    return max(configured, known)
