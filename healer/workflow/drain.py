"""Drain with `kubectl drain` semantics, through the Eviction API.

DaemonSet pods and mirror (static) pods are skipped; a 429 from a PodDisruptionBudget is retried
with backoff (tenacity on the injected clock, :mod:`healer.backoff`) until the drain timeout; pods
on an unreachable node are evicted but not waited for, because without a kubelet they stay
Terminating forever. The pure planning step
(:func:`plan_drain`) is separate from the loop that talks to the API.

What happens when the drain timeout passes with pods still there is decided by
:func:`after_timeout` (pure). A PodDisruptionBudget is overridden (the pods go with the Node)
only when its pods cannot be running anyway: healer judged the node UNHEALTHY when the workflow
started *and* the node is not Ready now. Or when an operator forced it (`healer remediate
--force`). Otherwise the workflow stops before anything destructive (``DrainBlockedByPdb``):
nothing is deleted, and the node stays cordoned as `kubectl drain` leaves it, because healer
cannot tell whether someone else had cordoned it first. Pods whose eviction was allowed but
that are still terminating are not waited for on an UNHEALTHY node (as before); on a node that
was not unhealthy their grace period is kept and the workflow stops too (``DrainIncomplete``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from tenacity import RetryCallState

from healer.backoff import call, retrying
from healer.clock import Clock
from healer.errors import PermanentError
from healer.kube.records import EvictResult
from healer.workflow.ports import NodeOps

log = structlog.get_logger("healer.workflow")


class PodLike(Protocol):
    """What :func:`plan_drain` reads of a pod (:class:`healer.kube.records.PodInfo` has it)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def owner_kinds(self) -> tuple[str, ...]: ...
    @property
    def is_mirror(self) -> bool: ...
    @property
    def deleting(self) -> bool: ...


@dataclass(frozen=True)
class DrainPlan:
    evict: tuple[PodLike, ...]  # pods to ask the Eviction API for
    wait_for: tuple[PodLike, ...]  # pods already terminating that we wait to disappear
    skipped: tuple[str, ...]  # "ns/name (DaemonSet)" and similar, for the record


def plan_drain(pods: Sequence[PodLike], *, node_reachable: bool) -> DrainPlan:
    evict, wait_for, skipped = [], [], []
    for pod in pods:
        ref = f"{pod.namespace}/{pod.name}"
        if pod.is_mirror:
            skipped.append(f"{ref} (mirror pod)")
        elif "DaemonSet" in pod.owner_kinds:
            skipped.append(f"{ref} (DaemonSet)")
        elif pod.deleting:
            if node_reachable:
                wait_for.append(pod)
            else:
                skipped.append(f"{ref} (terminating on an unreachable node)")
        else:
            evict.append(pod)
    return DrainPlan(tuple(evict), tuple(wait_for), tuple(skipped))


@dataclass
class DrainReport:
    evicted: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # pod -> PDB message, at the end
    skipped: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # pods still terminating, at the end
    timed_out: bool = False
    rounds: int = 0
    node_ready: bool | None = None  # the node's Ready condition in the last round

    def to_json(self) -> dict[str, Any]:
        return {
            "evicted": self.evicted,
            "blocked": self.blocked,
            "skipped": sorted(set(self.skipped)),
            "waiting": self.waiting,
            "timed_out": self.timed_out,
            "rounds": self.rounds,
            "node_ready": self.node_ready,
        }


class DrainBlockedByPdb(PermanentError):
    """The drain timed out on pods a PodDisruptionBudget protects, and healer may not override
    it: the workflow stops before anything destructive."""


class DrainIncomplete(PermanentError):
    """The drain timed out with pods still terminating on a node healer may not take from them:
    the workflow stops before anything destructive."""


@dataclass(frozen=True)
class AfterTimeout:
    """What the workflow does after a drain that timed out: go on, or stop with ``error``."""

    proceed: bool
    reason: str  # for the audit line: "DrainTimeout", "DrainTimeoutForced", or error's class name
    message: str
    error: PermanentError | None = None


def after_timeout(
    report: DrainReport,
    *,
    node: str,
    timeout: float,
    unhealthy_at_start: str | None,
    forced: bool,
) -> AfterTimeout:
    """Pure: the decision described in the module docstring, with a message that says what
    really happened. ``unhealthy_at_start`` is the verdict reason the workflow started with when
    the node was UNHEALTHY, None when it was not (a manual request for a healthy node)."""
    left = [f"{pod} (blocked: {why})" for pod, why in sorted(report.blocked.items())]
    left += [f"{pod} (still terminating)" for pod in report.waiting]
    what = f"drain of {node} did not finish in {timeout:.0f}s: " + ("; ".join(left) or "pods left")
    if forced:
        return AfterTimeout(
            True,
            "DrainTimeoutForced",
            f"{what}; continuing because an operator forced this remediation "
            "(`healer remediate --force`): those pods go with the node, overriding their "
            "PodDisruptionBudgets",
        )
    if unhealthy_at_start is not None and report.node_ready is not True:
        return AfterTimeout(
            True,
            "DrainTimeout",
            f"{what}; continuing: healer judged the node unhealthy ({unhealthy_at_start}) and "
            "it is not Ready, so its pods cannot run there anyway",
        )
    if unhealthy_at_start is not None and not report.blocked:
        # Ready, but only pods whose eviction their budgets allowed are left, still shutting
        # down: as before, an unhealthy node does not wait for them past drainTimeout.
        return AfterTimeout(
            True,
            "DrainTimeout",
            f"{what}; continuing: healer judged the node unhealthy ({unhealthy_at_start}); no "
            "PodDisruptionBudget holds these pods, whose grace period is cut short",
        )
    why = (
        "the node is Ready"
        if unhealthy_at_start is not None
        else "the node was not unhealthy when its replacement was asked for"
    )
    what_not = (
        "override a PodDisruptionBudget" if report.blocked else "cut a pod's grace period short"
    )
    stop = (
        f"{what}; stopped before anything destructive because {why}: healer does not "
        f"{what_not} there. Nothing was deleted; {node} stays cordoned (`kubectl uncordon "
        f"{node}` puts it back in service; `healer remediate {node} --force` overrides "
        f"{'the budget' if report.blocked else 'this'})"
    )
    error: PermanentError = DrainBlockedByPdb(stop) if report.blocked else DrainIncomplete(stop)
    return AfterTimeout(False, type(error).__name__, stop, error)


async def drain(
    kube: NodeOps,
    node: str,
    *,
    clock: Clock,
    timeout: float,
    initial_backoff: float = 1.0,
    max_backoff: float = 10.0,
) -> DrainReport:
    """Evict everything evictable from ``node`` or give up at ``timeout`` (reported, not raised).

    Each round re-reads the node and its pods and asks for the evictions still needed; rounds
    repeat with backoff (doubling from ``initial_backoff`` to ``max_backoff``, slept on
    ``clock``, the last wait cut to end at the deadline) until nothing is left. ``kube``'s
    errors propagate (the caller retries them).
    """
    report = DrainReport()

    async def one_round() -> bool:
        """One pass; True when the drain is over (nothing left, or the Node is gone)."""
        report.rounds += 1
        info = await kube.get_node(node)
        if info is None:
            return True  # the Node is gone: nothing left to drain
        reachable = info.ready == "True"
        report.node_ready = reachable
        plan = plan_drain(await kube.pods_on_node(node), node_reachable=reachable)
        report.skipped.extend(plan.skipped)
        report.waiting = [f"{p.namespace}/{p.name}" for p in plan.wait_for]
        report.blocked = {}
        for pod in plan.evict:
            result, message = await kube.evict(pod.namespace, pod.name)
            ref = f"{pod.namespace}/{pod.name}"
            if result is EvictResult.BLOCKED:
                report.blocked[ref] = message
            elif ref not in report.evicted:
                report.evicted.append(ref)
        # Evictions on a reachable node end with the pods gone: check once more next round.
        return not report.blocked and not plan.wait_for and (not plan.evict or not reachable)

    def before_sleep(state: RetryCallState) -> None:
        if report.blocked:
            log.info(
                "remediation.drain_blocked",
                node=node,
                blocked=report.blocked,
                retry_in=round(state.upcoming_sleep, 2),
            )

    rounds = retrying(
        clock,
        first=initial_backoff,
        cap=max_backoff,
        deadline=clock.now() + timeout,
        retry_on=(),  # errors are the caller's to retry
        retry_result=lambda over: not over,
        before_sleep=before_sleep,
    )
    if not await call(rounds, one_round):
        report.timed_out = True
        log.warning(
            "remediation.drain_timed_out",
            node=node,
            blocked=report.blocked,
            waiting=report.waiting,
        )
    return report
