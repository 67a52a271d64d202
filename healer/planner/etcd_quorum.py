"""etcd as the judge of control-plane quorum: pure records and decisions.

The Node view (how many control-plane *Nodes* are Ready) is not etcd's view: a replaced machine
whose member was never removed leaves etcd with four members (quorum 3) while three Nodes look
fine. So the guards and the workflow ask etcd itself (member list + health, read by the adapter
:mod:`healer.etcd`) and decide here, purely:

* :func:`removal` -- may the member of the machine being replaced be removed now? Only when the
  members left are a quorum of the new membership on their own, and no other membership change
  is under way (one change at a time, as Cluster API's KubeadmControlPlane does).
* :func:`start_refusal` -- may a control-plane remediation start? etcd unreachable means *no*
  (never a guess from the Node view, whose numbers the refusal quotes); a membership that is not
  the pool's size, or that would lose quorum without the candidate, means no too.
* :func:`settled` -- is the membership whole again after a replacement joined?

The adapter fills :class:`EtcdView`; a view that could not be read has ``error`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Stable reasons (refusals, step outcomes).
ETCD_UNREACHABLE = "EtcdUnreachable"
ETCD_MEMBERSHIP_CHANGING = "EtcdMembershipChanging"
ETCD_WOULD_LOSE_QUORUM = "EtcdWouldLoseQuorum"
ETCD_MEMBER_GONE = "EtcdMemberAlreadyGone"
ETCD_MEMBER_REMOVABLE = "EtcdMemberRemovable"


@dataclass(frozen=True)
class EtcdMember:
    id: int
    name: str  # kubeadm names the member after its node; "" until an added member has started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    healthy: bool  # answered a status request through its own client URL
    is_learner: bool = False

    @property
    def started(self) -> bool:
        return bool(self.name) and bool(self.client_urls)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": f"{self.id:x}",
            "name": self.name,
            "peer_urls": list(self.peer_urls),
            "client_urls": list(self.client_urls),
            "healthy": self.healthy,
            "learner": self.is_learner,
        }


@dataclass(frozen=True)
class EtcdView:
    """etcd's membership as one healthy member answered it, with each member's health."""

    members: tuple[EtcdMember, ...] = ()
    leader: int | None = None
    error: str | None = None  # set when no member could be reached

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def healthy(self) -> int:
        return sum(1 for m in self.members if m.healthy)

    def member(self, name: str) -> EtcdMember | None:
        return next((m for m in self.members if m.name == name), None)

    def leader_name(self) -> str:
        found = next((m for m in self.members if m.id == self.leader), None)
        if found is None:
            return "none"
        return found.name or f"{found.id:x}"

    def describe(self) -> str:
        """The numbers, for refusals and ``healer status``: "3 members, 2 healthy, leader cp-2"."""
        if not self.reachable:
            return f"etcd unreachable ({self.error})"
        n = len(self.members)
        return (
            f"{n} member{'' if n == 1 else 's'}, {self.healthy} healthy, quorum {n // 2 + 1}, "
            f"leader {self.leader_name()}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "reachable": self.reachable,
            "error": self.error,
            "leader": self.leader_name() if self.reachable else None,
            "members": [m.to_json() for m in self.members],
        }


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str
    message: str


def quorum(members: int) -> int:
    return members // 2 + 1


def _changing(view: EtcdView, *, besides: str | None) -> list[EtcdMember]:
    """Members that show a membership change under way: added but not started, or learners."""
    return [m for m in view.members if (not m.started or m.is_learner) and m.name != besides]


def removal(view: EtcdView, node: str) -> Decision:
    """May the member of ``node`` be removed now (through a healthy member)?"""
    target = view.member(node)
    if target is None:
        return Decision(True, ETCD_MEMBER_GONE, f"etcd has no member {node}: already removed")
    changing = _changing(view, besides=node)
    if changing:
        return Decision(
            False,
            ETCD_MEMBERSHIP_CHANGING,
            f"etcd has {len(changing)} member(s) that joined but did not start "
            f"({view.describe()}): one membership change at a time; not removing {node} yet",
        )
    left = [m for m in view.members if m.id != target.id]
    healthy_left = sum(1 for m in left if m.healthy)
    if healthy_left < quorum(len(left)):
        return Decision(
            False,
            ETCD_WOULD_LOSE_QUORUM,
            f"without {node} etcd would have {len(left)} members of which {healthy_left} are "
            f"healthy, below its quorum of {quorum(len(left))} ({view.describe()}); not "
            f"removing {node}",
        )
    return Decision(
        True,
        ETCD_MEMBER_REMOVABLE,
        f"removing member {node} ({target.id:x}) leaves {len(left)} members, {healthy_left} "
        f"healthy (quorum {quorum(len(left))})",
    )


def start_refusal(
    view: EtcdView | None, *, node: str, pool_size: int, node_view: str
) -> Decision | None:
    """Why a remediation of control-plane ``node`` may not start, by etcd's numbers; None if it
    may. ``node_view`` is the Node view's numbers, quoted when etcd cannot be read."""
    if view is None or not view.reachable:
        why = view.error if view is not None else "no answer"
        return Decision(
            False,
            ETCD_UNREACHABLE,
            f"etcd cannot be reached ({why}); the Node view says {node_view}, but healer does "
            f"not change the control plane without etcd's own member list and health; not "
            f"remediating {node}",
        )
    if len(view.members) != pool_size or _changing(view, besides=None):
        return Decision(
            False,
            ETCD_MEMBERSHIP_CHANGING,
            f"etcd has {view.describe()}; the control-plane pool has {pool_size}: a membership "
            f"change is under way (one at a time); not remediating {node}",
        )
    decision = removal(view, node)
    if not decision.ok:
        return Decision(False, decision.reason, f"{decision.message}; not remediating {node}")
    return None


def settled(view: EtcdView, *, pool_size: int, gone: int | None) -> Decision:
    """Is the membership whole after a replacement: ``pool_size`` started members, every one
    healthy, and the removed member (id ``gone``) not among them?"""
    if not view.reachable:
        return Decision(False, ETCD_UNREACHABLE, view.describe())
    if gone is not None and any(m.id == gone for m in view.members):
        return Decision(False, ETCD_MEMBERSHIP_CHANGING, f"removed member {gone:x} is back")
    started = [m for m in view.members if m.started and not m.is_learner]
    if len(view.members) != pool_size or len(started) != pool_size:
        return Decision(
            False,
            ETCD_MEMBERSHIP_CHANGING,
            f"etcd has {view.describe()} ({len(started)} started), waiting for {pool_size}",
        )
    if view.healthy != pool_size:
        return Decision(
            False, ETCD_MEMBERSHIP_CHANGING, f"etcd has {view.describe()}, not all healthy"
        )
    return Decision(True, "EtcdWhole", f"etcd has {view.describe()}")
