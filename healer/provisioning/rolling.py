"""Rolling replacement of a pool whose spec changed: which machines are outdated, and which to
replace next. Pure.

A machine is outdated when its :data:`~healer.config.rollout.TAG_SPEC` tag differs from its
pool's fingerprint (:func:`~healer.config.rollout.spec_fingerprint`: the ``machine`` block and
``rollout.revision``). A machine without the tag (made before rolling updates, or by someone
else) cannot be judged: it is named in a note, never rolled.

:func:`next_replacements` is the roll's one decision, as in a Deployment's rolling update:

- ``available`` counts the pool's Ready nodes, leaving out the old node of every replacement
  in flight in the replace order (it is, or is about to be, gone) and the new node of every
  replacement in flight (it counts once its workflow is done with it);
- a replacement in the *surge* order (the new machine joins before the old one is drained) costs
  no availability and takes one of ``maxSurge``; only a Ready worker can surge;
- a replacement in the *replace* order (drain, fence, destroy, then create) takes one of
  ``maxUnavailable``, minus what the pool already lacks (``size - available``);
- an outdated node that is not Ready serves nothing: it is replaced first, in place, and costs
  nothing it has not already cost.

Nothing starts while the pool already lacks more than ``maxUnavailable`` Ready nodes: the roll
waits (``RolloutWaiting``) for the cluster to recover, as a remediation waits for its guards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from healer.cloud.machines import Machine
from healer.config.rollout import TAG_SPEC, RolloutLimits

# Why nothing (more) starts: stable CamelCase words, as refusals have.
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLOUT_WAITING = "RolloutWaiting"  # replacements in flight use the whole budget
ROLLOUT_BLOCKED = "RolloutBlocked"  # no budget at all: the pool lacks too many nodes already
SURGE_IMPOSSIBLE = "SurgeImpossible"  # maxUnavailable 0 and no machine may surge

SURGE = "surge"
REPLACE = "replace"


@dataclass(frozen=True)
class Outdated:
    """A pool's machines against its fingerprint."""

    fingerprint: str
    outdated: tuple[tuple[Machine, str], ...]  # (machine, the fingerprint it carries)
    untagged: tuple[Machine, ...]


def outdated_machines(fingerprint: str, machines: Sequence[Machine]) -> Outdated:
    stale: list[tuple[Machine, str]] = []
    untagged: list[Machine] = []
    for m in sorted(machines, key=lambda m: m.name):
        have = m.tags.get(TAG_SPEC)
        if have is None:
            untagged.append(m)
        elif have != fingerprint:
            stale.append((m, have))
    return Outdated(fingerprint, tuple(stale), tuple(untagged))


@dataclass(frozen=True)
class Candidate:
    name: str
    ready: bool


@dataclass(frozen=True)
class RollState:
    """One pool, now. ``outdated`` are the outdated machines no replacement has taken yet."""

    size: int
    available: int
    surging: int
    replacing: int
    outdated: tuple[Candidate, ...]
    can_surge: bool  # a worker pool on a provider with a capacity preflight


@dataclass(frozen=True)
class RollDecision:
    start: tuple[tuple[str, str], ...]  # (machine, SURGE | REPLACE), in this order
    reason: str = ""  # when nothing starts: why
    message: str = ""

    @property
    def done(self) -> bool:
        return self.reason == ROLLOUT_COMPLETE


def next_replacements(state: RollState, limits: RolloutLimits) -> RollDecision:
    """The replacements to start now (possibly none, with the reason)."""
    in_flight = state.surging + state.replacing
    if not state.outdated:
        if in_flight:
            return RollDecision((), ROLLOUT_WAITING, f"{in_flight} replacement(s) in flight")
        return RollDecision((), ROLLOUT_COMPLETE, "every machine is up to date")
    surge_room = max(0, limits.max_surge - state.surging) if state.can_surge else 0
    if limits.max_unavailable == 0 and not state.can_surge and not in_flight:
        return RollDecision(
            (),
            SURGE_IMPOSSIBLE,
            "maxUnavailable is 0 and no replacement can surge here (control-plane machines "
            "and providers without a capacity preflight are replaced in place): set "
            "rollout.maxUnavailable to at least 1",
        )
    lacking = max(0, state.size - state.available)
    replace_room = max(0, limits.max_unavailable - lacking)
    start: list[tuple[str, str]] = []
    # Not Ready already: replaced in place first, at no new cost (it is counted in `lacking`),
    # but never more at once than the budget the pool has in all.
    concurrent = max(1, limits.max_surge + limits.max_unavailable)
    for c in state.outdated:
        if not c.ready and in_flight + len(start) < concurrent:
            start.append((c.name, REPLACE))
    for c in state.outdated:
        if not c.ready:
            continue
        if surge_room > 0:
            start.append((c.name, SURGE))
            surge_room -= 1
        elif replace_room > 0:
            start.append((c.name, REPLACE))
            replace_room -= 1
    if start:
        return RollDecision(tuple(start))
    if in_flight:
        return RollDecision((), ROLLOUT_WAITING, f"{in_flight} replacement(s) in flight")
    return RollDecision(
        (),
        ROLLOUT_BLOCKED,
        f"the pool lacks {lacking} Ready node(s) of {state.size} and maxUnavailable is "
        f"{limits.max_unavailable}: waiting for it to recover before replacing more",
    )
