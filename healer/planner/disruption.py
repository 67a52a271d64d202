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

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
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
    return Tally(nodes).pool_budget(cluster, cfg, pool, subject=subject, subject_why=subject_why)


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
    return Tally(nodes).zone_budget(cluster, cfg, zone, subject=subject, subject_why=subject_why)


def cluster_budget(
    cluster: str,
    cfg: ClusterConfig,
    nodes: Sequence[Member],
    *,
    subject: Member | None = None,
    subject_why: str = "",
) -> Budget:
    """The cluster's budget against the cluster's ``maxUnhealthy``."""
    return Tally(nodes).cluster_budget(cluster, cfg, subject=subject, subject_why=subject_why)


_Key = tuple[str, str | None]  # ("pool", name or None), ("zone", name) or ("cluster", None)
_CLUSTER: _Key = ("cluster", None)


@dataclass
class _Count:
    """One scope's nodes, counted."""

    members: int = 0  # whatever their health
    known: int = 0  # not GONE (a pool's total)
    present: int = 0  # not GONE, or being remediated (a zone's total)
    remediating: int = 0
    out: list[tuple[str, str]] = field(default_factory=list)  # (node, why)

    def add_plain(self, many: int) -> None:
        """``many`` nodes in service, not GONE and not being remediated."""
        self.members += many
        self.known += many
        self.present += many

    def add(self, n: Member, why: str | None, times: int = 1) -> None:
        self.members += times
        self.known += times * (n.health is not Health.GONE)
        self.present += times * (n.health is not Health.GONE or n.remediating)
        self.remediating += times * n.remediating
        if why is not None:
            self.out.extend([(n.node, why)] * times)


def _plain(n: Member) -> bool:
    """In service, not GONE and not being remediated: what most nodes are."""
    return (
        (n.health is Health.HEALTHY or n.health is Health.STARTING)
        and not n.remediating
        and not n.reboot_granted
    )


def _keys(n: Member) -> tuple[_Key, ...]:
    zone: tuple[_Key, ...] = () if n.zone is None else (("zone", n.zone),)
    return (_CLUSTER, ("pool", n.pool), *zone)


class Tally:
    """Every count a budget needs, from one walk over the nodes: per pool, per zone, per role and
    for the cluster. Build it once for a set of nodes (a guards' snapshot keeps one) and ask it
    for any scope with a subject's own status in place of the one the nodes hold (or added, if
    they hold none): the subject is authoritative, the snapshot may hold an older status of it.
    A question costs the scope's out-of-service list and the configured pools, never a walk
    over the nodes again."""

    def __init__(self, nodes: Iterable[Member]) -> None:
        self._nodes = list(nodes)
        self._counts: dict[_Key, _Count] = defaultdict(_Count)
        self._by_node: dict[str, list[Member]] = defaultdict(list)
        self._by_role: dict[Role, list[Member]] = {}
        for n in self._nodes:
            self._by_node[n.node].append(n)
        # Most nodes are healthy and idle: each counts as one known, present member of its
        # scopes, counted in bulk; only the others are looked at one by one.
        plain = [n for n in self._nodes if _plain(n)]
        self._counts[_CLUSTER].add_plain(len(plain))
        for pool, many in Counter(n.pool for n in plain).items():
            self._counts["pool", pool].add_plain(many)
        for zone, many in Counter(n.zone for n in plain if n.zone is not None).items():
            self._counts["zone", zone].add_plain(many)
        for n in self._nodes:
            if not _plain(n):
                why = out_of_service(n)
                for key in _keys(n):
                    self._counts[key].add(n, why)
        for count in self._counts.values():
            count.out.sort()

    def pool_budget(
        self,
        cluster: str,
        cfg: ClusterConfig,
        pool: str | None,
        *,
        subject: Member | None = None,
        subject_why: str = "",
    ) -> Budget:
        """:func:`pool_budget` over these nodes."""
        count = self._count(("pool", pool), subject, subject_why)
        total = _pool_total(cfg, pool, count.known)
        threshold = cfg.remediation_for(pool).max_unhealthy
        name = f"{cluster}/{pool if pool is not None else _NO_POOL}"
        return _budget("pool", name, total, count, threshold, threshold.limit_for(total))

    def zone_budget(
        self,
        cluster: str,
        cfg: ClusterConfig,
        zone: str,
        *,
        subject: Member | None = None,
        subject_why: str = "",
    ) -> Budget:
        """:func:`zone_budget` over these nodes."""
        count = self._count(("zone", zone), subject, subject_why)
        total = count.present
        threshold = cfg.remediation.max_unhealthy_per_zone
        limit = threshold.limit_for(total)
        if threshold.percent is not None:
            limit = max(1, limit)
        return _budget("zone", f"{cluster}/{zone}", total, count, threshold, limit)

    def cluster_budget(
        self,
        cluster: str,
        cfg: ClusterConfig,
        *,
        subject: Member | None = None,
        subject_why: str = "",
    ) -> Budget:
        """:func:`cluster_budget` over these nodes."""
        count = self._count(_CLUSTER, subject, subject_why)
        # (members, known) by pool: the pools it has nodes in, and the configured ones
        pools = {k[1]: [c.members, c.known] for k, c in self._counts.items() if k[0] == "pool"}
        if subject is not None:
            for old in self._by_node.get(subject.node, ()):
                pools[old.pool][0] -= 1
                pools[old.pool][1] -= old.health is not Health.GONE
            copies = self._copies(subject)
            mine = pools.setdefault(subject.pool, [0, 0])
            mine[0] += copies
            mine[1] += copies * (subject.health is not Health.GONE)
        known = {p: k for p, (members, k) in pools.items() if members}
        for p in cfg.pools:
            known.setdefault(p.name, 0)
        total = sum(_pool_total(cfg, p, k) for p, k in known.items())
        threshold = cfg.remediation.max_unhealthy
        return _budget("cluster", cluster, total, count, threshold, threshold.limit_for(total))

    def remediating(self, pool: str | None, subject: Member | None = None) -> int:
        """How many of the pool's nodes are being remediated."""
        return self._count(("pool", pool), subject, "").remediating

    def with_role(self, role: Role, subject: Member | None = None) -> list[Member]:
        """The nodes of ``role``, the subject's status in place of its own."""
        nodes = self._by_role.get(role)
        if nodes is None:
            nodes = self._by_role[role] = [n for n in self._nodes if n.role is role]
        if subject is None:
            return list(nodes)
        kept = [n for n in nodes if n.node != subject.node]
        return kept + [subject] * self._copies(subject) if subject.role is role else kept

    def _copies(self, subject: Member) -> int:
        return max(1, len(self._by_node.get(subject.node, ())))

    def _count(self, key: _Key, subject: Member | None, subject_why: str) -> _Count:
        """The scope's count, the subject in place of what the nodes hold of it."""
        base = self._counts[key] if key in self._counts else _Count()
        if subject is None:
            return base
        count = replace(base, out=[e for e in base.out if e[0] != subject.node])
        for old in self._by_node.get(subject.node, ()):
            if key in _keys(old):
                count.add(old, None, -1)
        if key in _keys(subject):
            why = out_of_service(subject) or subject_why or "the subject"
            count.add(subject, why, self._copies(subject))
            count.out.sort()
        return count


def _budget(
    kind: str, name: str, total: int, count: _Count, threshold: Threshold, limit: int
) -> Budget:
    """``kind`` "pool", "zone" or "cluster"; ``name`` "<c>/<p>", "<c>/<z>" or "<c>"."""
    return Budget(
        scope=f"{kind}:{name}",
        name=f"{kind} {name}",
        total=total,
        out=tuple(count.out),
        threshold=threshold,
        limit=limit,
    )


def _pool_total(cfg: ClusterConfig, pool: str | None, known: int) -> int:
    configured = p.size if (p := cfg.pool(pool)) is not None else 0
    return max(configured, known)
