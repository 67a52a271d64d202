"""Drain with `kubectl drain` semantics, through the Eviction API.

DaemonSet pods and mirror (static) pods are skipped; a 429 from a PodDisruptionBudget is retried
with backoff until the drain timeout; pods on an unreachable node are evicted but not waited for,
because without a kubelet they stay Terminating forever. The pure planning step
(:func:`plan_drain`) is separate from the loop that talks to the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from healer.clock import Clock

log = structlog.get_logger("healer.workflow")


class PodLike(Protocol):
    namespace: str
    name: str
    owner_kinds: tuple[str, ...]
    is_mirror: bool
    deleting: bool


@dataclass(frozen=True)
class DrainPlan:
    evict: tuple[PodLike, ...]  # pods to ask the Eviction API for
    wait_for: tuple[PodLike, ...]  # pods already terminating that we wait to disappear
    skipped: tuple[str, ...]  # "ns/name (DaemonSet)" and similar, for the record


def plan_drain(pods: list[PodLike], *, node_reachable: bool) -> DrainPlan:
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
    timed_out: bool = False
    rounds: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "evicted": self.evicted,
            "blocked": self.blocked,
            "skipped": sorted(set(self.skipped)),
            "timed_out": self.timed_out,
            "rounds": self.rounds,
        }


async def drain(
    kube: Any,
    node: str,
    *,
    clock: Clock,
    timeout: float,
    initial_backoff: float = 1.0,
    max_backoff: float = 10.0,
) -> DrainReport:
    """Evict everything evictable from ``node`` or give up at ``timeout`` (reported, not raised).

    ``kube`` is a :class:`healer.kube.KubeClient`; its errors propagate (the caller retries them).
    """
    report = DrainReport()
    deadline = clock.now() + timeout
    backoff = initial_backoff
    while True:
        report.rounds += 1
        info = await kube.get_node(node)
        if info is None:
            return report  # the Node is gone: nothing left to drain
        reachable = info.conditions.get("Ready", ("Unknown", 0.0))[0] == "True"
        plan = plan_drain(await kube.pods_on_node(node), node_reachable=reachable)
        report.skipped.extend(plan.skipped)
        report.blocked = {}
        for pod in plan.evict:
            result, message = await kube.evict(pod.namespace, pod.name)
            ref = f"{pod.namespace}/{pod.name}"
            if str(getattr(result, "name", result)).upper() == "BLOCKED":
                report.blocked[ref] = message
            elif ref not in report.evicted:
                report.evicted.append(ref)
        # Evictions on a reachable node end with the pods gone: check once more next round.
        if not report.blocked and not plan.wait_for and (not plan.evict or not reachable):
            return report
        if clock.now() >= deadline:
            report.timed_out = True
            log.warning(
                "remediation.drain_timed_out",
                node=node,
                blocked=report.blocked,
                waiting=[f"{p.namespace}/{p.name}" for p in plan.wait_for],
            )
            return report
        if report.blocked:
            log.info(
                "remediation.drain_blocked", node=node, blocked=report.blocked, retry_in=backoff
            )
        await clock.sleep(min(backoff, max(0.0, deadline - clock.now())))
        backoff = min(backoff * 2, max_backoff)
