"""Folding events into observations: a pure function, one event at a time.

``apply_event(previous, event, ...)`` is the only place that decides what an event means for a
node's record, so the Kubernetes watch, MQTT and webhooks all mean the same thing.
"""

from __future__ import annotations

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
    if kind in (EventKind.NODE_ADDED, EventKind.LABELS) and event.labels is not None:
        labels = dict(event.labels)
        pool = labels.get(LABEL_POOL, obs.pool)
        obs = obs.with_(
            labels=labels,
            pool=pool,
            role=role_from_labels(labels, pool_roles.get(pool) if pool else None),
            excluded=labels.get(exclude_label, "").lower() in ("true", "yes", "1"),
        )
    if kind is EventKind.NODE_ADDED:
        if not obs.exists:
            # The same name registered again (a replacement reusing it): a new life.
            obs = obs.with_(
                first_seen=float(event.detail.get("created_at", event.at)),
                ever_ready=False,
                conditions={},
                reboot_started_at=None,
            )
        obs = obs.with_(exists=True)
        # The conditions the node was first seen with are folded as CONDITION events from the
        # same source would be (the NODE_ADDED line alone stays in the evidence).
        evidence = obs.recent
        for ctype, (status, since) in (event.conditions or {}).items():
            obs = apply_event(
                obs,
                NodeEvent(
                    cluster=event.cluster,
                    node=event.node,
                    kind=EventKind.CONDITION,
                    at=event.at,
                    source=event.source,
                    condition=ctype,
                    status=status,
                    since=since,
                ),
                exclude_label=exclude_label,
                pool_roles=pool_roles,
                owners=owners,
            )
        obs = obs.with_(recent=evidence)
    elif kind is EventKind.NODE_DELETED:
        obs = obs.with_(exists=False)
    elif kind is EventKind.CONDITION and event.condition and event.status:
        if not owners.may_set(event.source, event.condition):
            # Sources reject these already (healer.config.provenance); this is the second line
            # of defence: a forged condition must not even reach the evidence.
            return obs
        since = event.since if event.since is not None else event.at
        current = obs.conditions.get(event.condition)
        conditions = dict(obs.conditions)
        if current is None or current.status != event.status:
            conditions[event.condition] = ConditionObs(
                status=event.status, since=since, source=event.source
            )
        obs = obs.with_(conditions=conditions)
        if event.condition == "Ready" and event.status == "True":
            obs = obs.with_(ever_ready=True)
            back = obs.reboot_started_at is not None and since >= obs.reboot_started_at
            if back:
                obs = obs.with_(reboot_started_at=None)
    elif kind is EventKind.HEARTBEAT:
        obs = obs.with_(last_heartbeat=max(obs.last_heartbeat or 0.0, event.at))
    elif kind is EventKind.REBOOT_STARTED:
        obs = obs.with_(reboot_started_at=event.at)
    elif kind is EventKind.BOOTED:
        obs = obs.with_(reboot_started_at=None)
    elif kind is EventKind.UPGRADE_FAILED:
        conditions = dict(obs.conditions)
        conditions["UpgradeFailed"] = ConditionObs(
            status="True", since=event.at, source=event.source
        )
        obs = obs.with_(conditions=conditions)
    elif kind is EventKind.UPGRADE_FINISHED and "UpgradeFailed" in obs.conditions:
        conditions = dict(obs.conditions)
        conditions["UpgradeFailed"] = ConditionObs(
            status="False", since=event.at, source=event.source
        )
        obs = obs.with_(conditions=conditions)
    if kind is not EventKind.HEARTBEAT:
        obs = obs.with_(recent=(*obs.recent, event.evidence())[-EVIDENCE_KEPT:])
    return obs
