"""Folding events into observations: a pure function, one event at a time.

``apply_event(previous, event, ...)`` is the only place that decides what an event means for a
node's record, so the Kubernetes watch, MQTT and webhooks all mean the same thing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from healer.config.provenance import DEFAULT_OWNERSHIP, Ownership
from healer.model import (
    LABEL_CONTROL_PLANE,
    LABEL_POOL,
    LABEL_ROLE,
    ConditionObs,
    EventKind,
    NodeEvent,
    NodeObservation,
    Role,
)

EVIDENCE_KEPT = 20


def role_from_labels(labels: dict[str, str], pool_role: Role | None) -> Role:
    if LABEL_CONTROL_PLANE in labels or labels.get(LABEL_ROLE) == Role.CONTROL_PLANE:
        return Role.CONTROL_PLANE
    return pool_role or Role.WORKER


def apply_event(
    previous: NodeObservation | None,
    event: NodeEvent,
    *,
    exclude_label: str,
    pool_roles: dict[str, Role],
    owners: Ownership = DEFAULT_OWNERSHIP,
) -> NodeObservation:
    obs = previous or NodeObservation(
        cluster=event.cluster,
        node=event.node,
        first_seen=float(event.detail.get("created_at", event.at)),
        exists=event.kind is not EventKind.NODE_DELETED,
    )
    kind = event.kind
    if kind is EventKind.HEARTBEAT:
        # The hot path (one per node every few seconds): one field, one copy at most.
        beat = max(obs.last_heartbeat or 0.0, event.at)
        return obs if beat == obs.last_heartbeat else replace(obs, last_heartbeat=beat)
    # The fields that change, applied in one copy at the end (not one copy per field).
    changes: dict[str, Any] = {}
    if kind in (EventKind.NODE_ADDED, EventKind.LABELS) and event.labels is not None:
        labels = dict(event.labels)
        pool = labels.get(LABEL_POOL, obs.pool)
        changes.update(
            labels=labels,
            pool=pool,
            role=role_from_labels(labels, pool_roles.get(pool) if pool else None),
            excluded=labels.get(exclude_label, "").lower() in ("true", "yes", "1"),
        )
    if kind is EventKind.NODE_ADDED:
        if not obs.exists:
            # The same name registered again (a replacement reusing it): a new life.
            changes.update(
                first_seen=float(event.detail.get("created_at", event.at)),
                ever_ready=False,
                conditions={},
                reboot_started_at=None,
            )
        changes["exists"] = True
        # The conditions the node was first seen with are folded as CONDITION events from the
        # same source would be (the NODE_ADDED line alone goes in the evidence).
        for ctype, (status, since) in (event.conditions or {}).items():
            if owners.may_set(event.source, ctype):
                _condition(obs, changes, ctype, status, since, event.source)
    elif kind is EventKind.NODE_DELETED:
        changes["exists"] = False
    elif kind is EventKind.CONDITION and event.condition and event.status:
        if not owners.may_set(event.source, event.condition):
            # Sources reject these already (healer.config.provenance); this is the second line
            # of defence: a forged condition must not even reach the evidence.
            return obs
        since = event.since if event.since is not None else event.at
        _condition(obs, changes, event.condition, event.status, since, event.source)
    elif kind is EventKind.REBOOT_STARTED:
        changes["reboot_started_at"] = event.at
    elif kind is EventKind.BOOTED:
        changes["reboot_started_at"] = None
    elif kind is EventKind.UPGRADE_FAILED:
        conditions = dict(obs.conditions)
        conditions["UpgradeFailed"] = ConditionObs(
            status="True", since=event.at, source=event.source
        )
        changes["conditions"] = conditions
    elif kind is EventKind.UPGRADE_FINISHED and "UpgradeFailed" in obs.conditions:
        conditions = dict(obs.conditions)
        conditions["UpgradeFailed"] = ConditionObs(
            status="False", since=event.at, source=event.source
        )
        changes["conditions"] = conditions
    changes["recent"] = (*obs.recent, event.evidence())[-EVIDENCE_KEPT:]
    return replace(obs, **changes)


def restates(previous: NodeObservation, event: NodeEvent, owners: Ownership) -> bool:
    """Whether ``event`` only states again what ``previous`` holds: a condition its source owns,
    with the status the node has now (an alert sent again, a condition restated), and nothing
    that moves with it (``Ready=True`` of a node ever ready with no reboot under way). Folding
    it changes only the evidence: ``apply_event`` gives :func:`with_evidence` of it."""
    if event.kind is not EventKind.CONDITION or not event.condition or not event.status:
        return False
    current = previous.conditions.get(event.condition)
    if current is None or current.status != event.status:
        return False
    if (
        event.condition == "Ready"
        and event.status == "True"
        and (not previous.ever_ready or previous.reboot_started_at is not None)
    ):
        return False
    return owners.may_set(event.source, event.condition)


def with_evidence(obs: NodeObservation, event: NodeEvent) -> NodeObservation:
    """``obs`` with ``event`` added to its evidence (``recent``), nothing else changed.

    A shallow copy of its fields rather than ``dataclasses.replace`` (which runs every field
    through ``__init__`` again): this is once per repeated alert, and the record has no
    ``__post_init__`` to run."""
    copy = object.__new__(NodeObservation)
    copy.__dict__.update(obs.__dict__)
    object.__setattr__(copy, "recent", (*obs.recent, event.evidence())[-EVIDENCE_KEPT:])
    return copy


def _condition(
    obs: NodeObservation,
    changes: dict[str, Any],
    ctype: str,
    status: str,
    since: float,
    source: str,
) -> None:
    """Fold one condition (its source owns it) into ``changes`` to ``obs``."""
    conditions: dict[str, ConditionObs] = changes.get("conditions", obs.conditions)
    current = conditions.get(ctype)
    if current is None or current.status != status:
        conditions = dict(conditions)
        conditions[ctype] = ConditionObs(status=status, since=since, source=source)
        changes["conditions"] = conditions
    if ctype == "Ready" and status == "True":
        changes["ever_ready"] = True
        reboot = changes.get("reboot_started_at", obs.reboot_started_at)
        if reboot is not None and since >= reboot:
            changes["reboot_started_at"] = None
