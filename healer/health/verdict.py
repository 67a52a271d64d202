"""The health verdict: a pure function of one node's observation, its policy and ``now``.

Modelled on Cluster API's MachineHealthCheck (``needsRemediation(now, timeouts)``): no I/O and no
clock reads, so every decision can be replayed from the stored observation. :func:`evaluate`
applies these rules in order; the first that applies decides:

1. The Node object is gone -> ``GONE``.
2. A planned reboot is in progress -> ``REBOOTING`` until ``rebootTimeout``, then ``UNHEALTHY``
   (``RebootTimeout``). Condition timeouts are suppressed meanwhile: a rebooting node is
   expected to be NotReady/Unknown.
3. The node runs on a machine healer created (a replacement: ``machine_requested_at`` is set)
   and has never been Ready -> ``STARTING`` until ``nodeStartupTimeout`` after healer requested
   the machine, then ``UNHEALTHY`` (``NodeStartupTimeout``). As in Cluster API, the startup
   timeout is about machines healer is waiting for; a node that already existed when healer
   first saw it (``adopted``), or that someone else joined, is judged by its conditions (rule 4),
   never by its age.
4. Any configured unhealthy condition (they are OR-ed) that has persisted past its timeout ->
   ``UNHEALTHY`` (``ReadyUnknownTimeout``, ...); one that is present but not yet past it ->
   ``PENDING`` (``ReadyUnknown``, ...). A condition guarded by a ``corroborate`` rule counts
   only while its second, independent signal agrees (e.g. ``HeartbeatMissing=True`` from the
   agent's side for ``Ready=Unknown`` from the API); past its timeout without that it is
   ``PENDING`` (``Uncorroborated``), and the next event of either signal decides again.
5. Otherwise ``HEALTHY``.

A deadline is inclusive: at exactly ``since + timeout`` the node is unhealthy, so a timeout of 0
means "unhealthy as soon as seen". Every verdict that can change without a new event carries
``next_check_at``, the moment the tracker should evaluate again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from healer.config import Corroboration, EffectiveHealth, UnhealthyCondition
from healer.config.provenance import HEARTBEAT_MISSING
from healer.model import ConditionObs, Health, NodeObservation, Verdict

# Stable reasons (CamelCase, as Cluster API). Condition reasons are generated:
# f"{type}{status}" while pending and f"{type}{status}Timeout" once expired.
REASON_GONE = "NodeDeleted"
REASON_REBOOTING = "Rebooting"
REASON_REBOOT_TIMEOUT = "RebootTimeout"
REASON_STARTING = "NodeStarting"
REASON_STARTUP_TIMEOUT = "NodeStartupTimeout"
REASON_HEALTHY = "Healthy"
REASON_UNCORROBORATED = "Uncorroborated"


def evaluate(obs: NodeObservation, policy: EffectiveHealth, now: float) -> Verdict:
    """Judge one node at ``now``. Pure: the same inputs always give the same verdict."""
    if not obs.exists:
        return Verdict(Health.GONE, REASON_GONE, f"node {obs.key} was deleted", None)

    if obs.reboot_started_at is not None:
        return _reboot(obs.reboot_started_at, policy.reboot_timeout, now)

    if not obs.ever_ready and obs.machine_requested_at is not None and not obs.adopted:
        return _startup(obs.machine_requested_at, policy.node_startup_timeout, now)

    return _conditions(obs, policy, now)


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


def _startup(requested_at: float, timeout: float, now: float) -> Verdict:
    elapsed = now - requested_at
    if elapsed >= timeout:
        return Verdict(
            Health.UNHEALTHY,
            REASON_STARTUP_TIMEOUT,
            f"never became Ready in the {_secs(elapsed)} since healer requested its machine "
            f"(limit {_secs(timeout)})",
            None,
        )
    return Verdict(
        Health.STARTING,
        REASON_STARTING,
        f"not Ready yet, machine requested {_secs(elapsed)} ago (limit {_secs(timeout)})",
        requested_at + timeout,
    )


@dataclass(frozen=True)
class _Match:
    """A configured unhealthy condition that the node currently shows."""

    rule: UnhealthyCondition
    since: float
    source: str | None = None

    @property
    def deadline(self) -> float:
        return self.since + self.rule.timeout

    def describe(self, now: float) -> str:
        return (
            f"{self.rule.type}={self.rule.status} for {_secs(now - self.since)} "
            f"(limit {_secs(self.rule.timeout)})"
        )

    def signal(self, now: float) -> dict[str, Any]:
        return _signal(f"{self.rule.type}={self.rule.status}", self.source, self.since, now)


@dataclass(frozen=True)
class _Second:
    """The corroborating signal a ``corroborate`` rule asks for, as the node shows it."""

    rule: Corroboration
    seen: ConditionObs | None  # None: the node never reported it

    @property
    def agrees(self) -> bool:
        if self.seen is None:
            return self.rule.without_signal == "act"
        return self.seen.status == self.rule.require.status

    def describe(self, obs: NodeObservation, now: float) -> str:
        want = f"{self.rule.require}"
        if self.seen is None:
            return f"the node has never reported {self.rule.require.type}"
        text = f"{self.rule.require.type}={self.seen.status} for {_secs(now - self.seen.since)}"
        if self.rule.require.type == HEARTBEAT_MISSING and obs.last_heartbeat is not None:
            text += f", last agent heartbeat {_secs(now - obs.last_heartbeat)} ago"
        return text if self.agrees else f"{text} (needs {want})"

    def signal(self, now: float) -> dict[str, Any] | None:
        if self.seen is None:
            return None
        name = f"{self.rule.require.type}={self.seen.status}"
        return _signal(name, self.seen.source, self.seen.since, now)


def _signal(condition: str, source: str | None, since: float, now: float) -> dict[str, Any]:
    return {"condition": condition, "source": source, "since": since, "for": now - since}


def _conditions(obs: NodeObservation, policy: EffectiveHealth, now: float) -> Verdict:
    matches = [
        _Match(rule, seen.since, seen.source)
        for rule in policy.unhealthy_conditions
        if (seen := obs.conditions.get(rule.type)) is not None and seen.status == rule.status
    ]
    if not matches:
        return Verdict(Health.HEALTHY, REASON_HEALTHY, "no unhealthy condition present", None)

    # min() keeps the first of equal deadlines, so ties go to the rule listed first in the config.
    expired = [m for m in matches if now >= m.deadline]
    waiting = [m for m in matches if now < m.deadline]
    confirmed: list[tuple[_Match, _Second | None]] = []
    held: list[tuple[_Match, _Second]] = []
    for m in expired:
        second = _second(obs, m.rule, policy)
        if second is None or second.agrees:
            confirmed.append((m, second))
        else:
            held.append((m, second))
    if confirmed:
        worst, second = min(confirmed, key=lambda c: c[0].deadline)
        message = worst.describe(now)
        signals = [worst.signal(now)]
        if second is not None:
            message += f", corroborated: {second.describe(obs, now)}"
            if (extra := second.signal(now)) is not None:
                signals.append(extra)
        return Verdict(
            Health.UNHEALTHY,
            f"{worst.rule.type}{worst.rule.status}Timeout",
            message,
            None,
            signals=tuple(signals),
        )
    if held:
        first, second = min(held, key=lambda h: h[0].deadline)
        signals = [first.signal(now)]
        if (extra := second.signal(now)) is not None:
            signals.append(extra)
        return Verdict(
            Health.PENDING,
            REASON_UNCORROBORATED,
            f"{first.describe(now)} but not corroborated: {second.describe(obs, now)}; "
            "not acting on one signal",
            min((m.deadline for m in waiting), default=None),
            signals=tuple(signals),
        )
    first = min(waiting, key=lambda m: m.deadline)
    return Verdict(
        Health.PENDING,
        f"{first.rule.type}{first.rule.status}",
        f"{first.describe(now)}; unhealthy if it persists",
        first.deadline,
    )


def _second(
    obs: NodeObservation, rule: UnhealthyCondition, policy: EffectiveHealth
) -> _Second | None:
    corroboration = policy.corroboration_for(rule)
    if corroboration is None:
        return None
    return _Second(corroboration, obs.conditions.get(corroboration.require.type))


def _secs(seconds: float) -> str:
    """Seconds for messages: whole numbers plainly ("312s"), fractions to one decimal."""
    seconds = max(seconds, 0.0)  # a source clock ahead of ours must not print "-3s"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.1f}s"
