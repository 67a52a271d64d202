"""The health verdict: a pure function of one node's observation, its policy and ``now``.

Modelled on Cluster API's MachineHealthCheck (``needsRemediation(now, timeouts)``): no I/O and no
clock reads, so every decision can be replayed from the stored observation. :func:`evaluate`
applies these rules in order; the first that applies decides:

1. The Node object is gone -> ``GONE``.
2. A planned reboot is in progress -> ``REBOOTING`` until ``rebootTimeout``, then ``UNHEALTHY``
   (``RebootTimeout``). Condition timeouts are suppressed meanwhile: a rebooting node is
   expected to be NotReady/Unknown.
3. The node has never been Ready -> ``STARTING`` until ``nodeStartupTimeout``, then
   ``UNHEALTHY`` (``NodeStartupTimeout``).
4. Any configured unhealthy condition (they are OR-ed) that has persisted past its timeout ->
   ``UNHEALTHY`` (``ReadyUnknownTimeout``, ...); one that is present but not yet past it ->
   ``PENDING`` (``ReadyUnknown``, ...).
5. Otherwise ``HEALTHY``.

A deadline is inclusive: at exactly ``since + timeout`` the node is unhealthy, so a timeout of 0
means "unhealthy as soon as seen". Every verdict that can change without a new event carries
``next_check_at``, the moment the tracker should evaluate again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from healer.config import EffectiveHealth, UnhealthyCondition
from healer.model import Health, NodeObservation, Verdict

# Stable reasons (CamelCase, as Cluster API). Condition reasons are generated:
# f"{type}{status}" while pending and f"{type}{status}Timeout" once expired.
REASON_GONE = "NodeDeleted"
REASON_REBOOTING = "Rebooting"
REASON_REBOOT_TIMEOUT = "RebootTimeout"
REASON_STARTING = "NodeStarting"
REASON_STARTUP_TIMEOUT = "NodeStartupTimeout"
REASON_HEALTHY = "Healthy"


def evaluate(obs: NodeObservation, policy: EffectiveHealth, now: float) -> Verdict:
    """Judge one node at ``now``. Pure: the same inputs always give the same verdict."""
    if not obs.exists:
        return Verdict(Health.GONE, REASON_GONE, f"node {obs.key} was deleted", None)

    if obs.reboot_started_at is not None:
        return _reboot(obs.reboot_started_at, policy.reboot_timeout, now)

    if not obs.ever_ready:
        return _startup(obs.first_seen, policy.node_startup_timeout, now)

    return _conditions(obs, policy.unhealthy_conditions, now)


def next_check(verdicts: Iterable[Verdict]) -> float | None:
    """The earliest ``next_check_at`` among ``verdicts``, or None if none can change by itself."""
    return min((v.next_check_at for v in verdicts if v.next_check_at is not None), default=None)


def _reboot(started_at: float, timeout: float, now: float) -> Verdict:
    elapsed = now - started_at
    if elapsed >= timeout:
        return Verdict(
            Health.UNHEALTHY,
            REASON_REBOOT_TIMEOUT,
            f"planned reboot started {_secs(elapsed)} ago and the node is not Ready again "
            f"(limit {_secs(timeout)})",
            None,
        )
    return Verdict(
        Health.REBOOTING,
        REASON_REBOOTING,
        f"planned reboot started {_secs(elapsed)} ago (limit {_secs(timeout)})",
        started_at + timeout,
    )


def _startup(first_seen: float, timeout: float, now: float) -> Verdict:
    elapsed = now - first_seen
    if elapsed >= timeout:
        return Verdict(
            Health.UNHEALTHY,
            REASON_STARTUP_TIMEOUT,
            f"never became Ready in the {_secs(elapsed)} since it was first seen "
            f"(limit {_secs(timeout)})",
            None,
        )
    return Verdict(
        Health.STARTING,
        REASON_STARTING,
        f"not Ready yet, first seen {_secs(elapsed)} ago (limit {_secs(timeout)})",
        first_seen + timeout,
    )


@dataclass(frozen=True)
class _Match:
    """A configured unhealthy condition that the node currently shows."""

    rule: UnhealthyCondition
    since: float

    @property
    def deadline(self) -> float:
        return self.since + self.rule.timeout

    def describe(self, now: float) -> str:
        return (
            f"{self.rule.type}={self.rule.status} for {_secs(now - self.since)} "
            f"(limit {_secs(self.rule.timeout)})"
        )


def _conditions(obs: NodeObservation, rules: tuple[UnhealthyCondition, ...], now: float) -> Verdict:
    matches = [
        _Match(rule, seen.since)
        for rule in rules
        if (seen := obs.conditions.get(rule.type)) is not None and seen.status == rule.status
    ]
    if not matches:
        return Verdict(Health.HEALTHY, REASON_HEALTHY, "no unhealthy condition present", None)

    # min() keeps the first of equal deadlines, so ties go to the rule listed first in the config.
    expired = [m for m in matches if now >= m.deadline]
    if expired:
        worst = min(expired, key=lambda m: m.deadline)
        return Verdict(
            Health.UNHEALTHY,
            f"{worst.rule.type}{worst.rule.status}Timeout",
            worst.describe(now),
            None,
        )
    first = min(matches, key=lambda m: m.deadline)
    return Verdict(
        Health.PENDING,
        f"{first.rule.type}{first.rule.status}",
        f"{first.describe(now)}; unhealthy if it persists",
        first.deadline,
    )


def _secs(seconds: float) -> str:
    """Seconds for messages: whole numbers plainly ("312s"), fractions to one decimal."""
    seconds = max(seconds, 0.0)  # a source clock ahead of ours must not print "-3s"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.1f}s"
