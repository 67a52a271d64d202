"""Core records: node identity, the one normalised event type, health observations and verdicts.

Every source (Kubernetes watch, MQTT, webhooks, the lab) produces :class:`NodeEvent`; the health
tracker folds events into a :class:`NodeObservation`; :func:`healer.health.verdict.evaluate`
turns an observation into a :class:`Verdict`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

# Labels and tags healer reads and writes. Stable: operators write selectors against them.
LABEL_POOL = "healer.io/pool"
LABEL_CLUSTER = "healer.io/cluster"
LABEL_ROLE = "healer.io/role"
LABEL_CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
# The failure domain, set by the cloud controller (or the lab): the zone limits count by it.
LABEL_ZONE = "topology.kubernetes.io/zone"
TAG_MANAGED = "healer.io/managed"
TAG_CLUSTER = "healer.io/cluster"
TAG_POOL = "healer.io/pool"
TAG_WORKFLOW = "healer.io/workflow"


class Role(enum.StrEnum):
    WORKER = "worker"
    CONTROL_PLANE = "control-plane"


@dataclass(frozen=True, order=True)
class NodeKey:
    """A node: the key of every per-node map. Its hash is computed once per key (a heartbeat
    looks its node up a dozen times); equality, order, repr and pickling are the dataclass's
    (the cached hash is no field and is not pickled: a string's hash differs between
    processes)."""

    cluster: str
    node: str
    _hash: ClassVar[int | None] = None  # this key's, once asked

    def __hash__(self) -> int:
        found = self._hash
        if found is None:
            found = hash((self.cluster, self.node))
            # Not through __dict__: that would make each key carry a dict (and the collector
            # walk it); object.__setattr__ keeps the attribute in the instance's own values.
            object.__setattr__(self, "_hash", found)
        return found

    def __getstate__(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "node": self.node}

    def __str__(self) -> str:
        return f"{self.cluster}/{self.node}"


class EventKind(enum.StrEnum):
    """What a source observed. Sources map their own vocabulary onto these."""

    CONDITION = "condition"  # a node condition (type, status) was observed
    HEARTBEAT = "heartbeat"  # the node (agent/kubelet) is alive
    NODE_ADDED = "node_added"  # a Node object appeared
    NODE_DELETED = "node_deleted"  # a Node object went away
    REBOOT_STARTED = "reboot_started"  # planned reboot announced (upgrade or reboot-required)
    BOOTED = "booted"  # the machine came back from a reboot
    UPGRADE_STARTED = "upgrade_started"
    UPGRADE_FINISHED = "upgrade_finished"
    UPGRADE_FAILED = "upgrade_failed"
    LABELS = "labels"  # node labels changed (pool, role, exclusion)
    # Cluster-level markers of the Kubernetes source (``node`` is ""): a full list of the
    # cluster's nodes follows, and the list has been emitted whole. Between the two the tracker
    # folds events without judging anyone: nothing is decided on half a list.
    LIST_STARTED = "list_started"
    SYNCED = "synced"


@dataclass(frozen=True)
class NodeEvent:
    cluster: str
    node: str
    kind: EventKind
    at: float
    source: str  # "kube", "mqtt", "webhook", "lab", ...
    condition: str | None = None  # for CONDITION: e.g. "Ready"
    status: str | None = None  # for CONDITION: "True" | "False" | "Unknown"
    since: float | None = None  # for CONDITION: lastTransitionTime when the source knows it
    labels: dict[str, str] | None = None  # for NODE_ADDED / LABELS
    # For NODE_ADDED: the node's conditions as first seen (type -> (status, since)), so that a
    # node never exists for healer without them.
    conditions: dict[str, tuple[str, float]] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> NodeKey:
        return NodeKey(self.cluster, self.node)

    @classmethod
    def of_condition(
        cls,
        cluster: str,
        node: str,
        *,
        at: float,
        source: str,
        condition: str,
        status: str,
        since: float | None,
        detail: dict[str, Any],
    ) -> NodeEvent:
        """A ``CONDITION`` event, equal to the one ``NodeEvent(...)`` makes, in a third of the
        time: a frozen dataclass's ``__init__`` sets each of the eleven fields through
        ``object.__setattr__``, and a webhook flood makes one of these per alert. Every field
        is set here (tests/test_model_event.py holds this to the dataclass's fields); the
        class has no ``__post_init__`` to skip."""
        event = object.__new__(cls)
        event.__dict__.update(
            cluster=cluster,
            node=node,
            kind=EventKind.CONDITION,
            at=at,
            source=source,
            condition=condition,
            status=status,
            since=since,
            labels=None,
            conditions=None,
            detail=detail,
        )
        return event

    def evidence(self) -> dict[str, Any]:
        """A compact, JSON-able summary kept in the audit log."""
        out: dict[str, Any] = {"kind": str(self.kind), "at": self.at, "source": self.source}
        if self.condition:
            out["condition"] = f"{self.condition}={self.status}"
        if self.conditions:
            out["conditions"] = {k: status for k, (status, _) in self.conditions.items()}
        if self.detail:
            out["detail"] = self.detail
        return out

    def to_json(self) -> dict[str, Any]:
        """The whole event, JSON-able: what the state database records of the events the
        tracker consumed, and a line of ``healer simulate``'s history files (docs/simulate.md)."""
        out: dict[str, Any] = {
            "cluster": self.cluster,
            "node": self.node,
            "kind": str(self.kind),
            "at": self.at,
            "source": self.source,
        }
        for name in ("condition", "status", "since", "labels"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        if self.conditions is not None:
            out["conditions"] = {k: [s, t] for k, (s, t) in self.conditions.items()}
        if self.detail:
            out["detail"] = self.detail
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeEvent:
        """The event :meth:`to_json` wrote. Raises ``ValueError`` naming the field that is
        missing or malformed."""
        try:
            kind = EventKind(data["kind"])
        except KeyError:
            raise ValueError("missing field 'kind'") from None
        except ValueError:
            known = ", ".join(k.value for k in EventKind)
            raise ValueError(f"kind {data['kind']!r} is not one of: {known}") from None
        text = {name: data.get(name) for name in ("cluster", "node", "source")}
        for name in ("cluster", "node"):
            if not isinstance(text[name], str):
                raise ValueError(f"field {name!r} must be a string")
        if kind is EventKind.CONDITION and not (
            isinstance(data.get("condition"), str) and data.get("status") in _STATUSES
        ):
            raise ValueError(
                "a condition event needs 'condition' (a string) and 'status' (True, False or "
                "Unknown)"
            )
        labels = data.get("labels")
        if labels is not None and not (
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        ):
            raise ValueError("field 'labels' must map strings to strings")
        conditions: dict[str, tuple[str, float]] | None = None
        if data.get("conditions") is not None:
            raw = data["conditions"]
            if not isinstance(raw, dict):
                raise ValueError("field 'conditions' must map a condition to [status, since]")
            conditions = {}
            for ctype, pair in raw.items():
                if not (isinstance(pair, list | tuple) and len(pair) == 2) or pair[0] not in (
                    _STATUSES
                ):
                    raise ValueError(f"conditions.{ctype} must be [status, since]")
                conditions[str(ctype)] = (pair[0], _seconds(pair[1], f"conditions.{ctype}"))
        since = data.get("since")
        detail = data.get("detail") or {}
        if not isinstance(detail, dict):
            raise ValueError("field 'detail' must be an object")
        return cls(
            cluster=text["cluster"],  # type: ignore[arg-type]
            node=text["node"],  # type: ignore[arg-type]
            kind=kind,
            at=_seconds(data.get("at"), "at"),
            source=str(text["source"] or "history"),
            condition=data.get("condition"),
            status=data.get("status"),
            since=None if since is None else _seconds(since, "since"),
            labels=dict(labels) if labels is not None else None,
            conditions=conditions,
            detail=dict(detail),
        )


_STATUSES = ("True", "False", "Unknown")


def _seconds(value: object, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field {field_name!r} must be a number of seconds (epoch)")
    return float(value)


@dataclass(frozen=True)
class ConditionObs:
    status: str
    since: float  # when this status began (lastTransitionTime, or first seen)
    source: str | None = None  # who reported it ("kube", "mqtt", ...; None in older records)


@dataclass(frozen=True)
class NodeObservation:
    """Everything the tracker knows about one node. Persisted; rebuilt from events on restart."""

    cluster: str
    node: str
    pool: str | None = None
    role: Role = Role.WORKER
    first_seen: float = 0.0  # machine/node creation as far as healer knows
    exists: bool = True  # the Node object exists in the API
    ever_ready: bool = False
    conditions: dict[str, ConditionObs] = field(default_factory=dict)
    reboot_started_at: float | None = None
    last_heartbeat: float | None = None
    excluded: bool = False  # carries the exclusion label
    labels: dict[str, str] = field(default_factory=dict)
    recent: tuple[dict[str, Any], ...] = ()  # last few events, kept as evidence
    # The node already existed when healer first saw it (in a list, with no record of it):
    # judged by its conditions, never by its age.
    adopted: bool = False
    # When healer asked the cloud for this node's machine (a replacement's ``requested_at``);
    # None for machines healer did not create. Only these get ``nodeStartupTimeout``.
    machine_requested_at: float | None = None

    @property
    def key(self) -> NodeKey:
        return NodeKey(self.cluster, self.node)

    def with_(self, **changes: Any) -> NodeObservation:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "node": self.node,
            "pool": self.pool,
            "role": str(self.role),
            "first_seen": self.first_seen,
            "exists": self.exists,
            "ever_ready": self.ever_ready,
            "conditions": {
                k: {"status": v.status, "since": v.since, "source": v.source}
                for k, v in self.conditions.items()
            },
            "reboot_started_at": self.reboot_started_at,
            "last_heartbeat": self.last_heartbeat,
            "excluded": self.excluded,
            "labels": dict(self.labels),
            "recent": list(self.recent),
            "adopted": self.adopted,
            "machine_requested_at": self.machine_requested_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeObservation:
        return cls(
            cluster=data["cluster"],
            node=data["node"],
            pool=data.get("pool"),
            role=Role(data.get("role", "worker")),
            first_seen=float(data.get("first_seen", 0.0)),
            exists=bool(data.get("exists", True)),
            ever_ready=bool(data.get("ever_ready", False)),
            conditions={
                k: ConditionObs(status=v["status"], since=float(v["since"]), source=v.get("source"))
                for k, v in data.get("conditions", {}).items()
            },
            reboot_started_at=data.get("reboot_started_at"),
            last_heartbeat=data.get("last_heartbeat"),
            excluded=bool(data.get("excluded", False)),
            labels=dict(data.get("labels", {})),
            recent=tuple(data.get("recent", ())),
            adopted=bool(data.get("adopted", False)),
            machine_requested_at=data.get("machine_requested_at"),
        )


class Health(enum.StrEnum):
    HEALTHY = "healthy"
    PENDING = "pending"  # a bad condition is present but has not persisted past its timeout
    STARTING = "starting"  # a new machine, not Ready yet, within nodeStartupTimeout
    REBOOTING = "rebooting"  # a planned reboot, within rebootTimeout
    UNHEALTHY = "unhealthy"  # persisted past a threshold: needs remediation
    GONE = "gone"  # the Node object was deleted


@dataclass(frozen=True)
class Verdict:
    health: Health
    reason: str  # machine-readable, CamelCase as in Cluster API: "ReadyUnknownTimeout"
    message: str  # human sentence with the numbers
    next_check_at: float | None  # when the verdict could change with no new event
    # The signals the verdict rests on, with their sources and times, for the audit log:
    # {"condition": "Ready=Unknown", "source": "kube", "since": ..., "for": ...}.
    signals: tuple[dict[str, Any], ...] = ()

    @property
    def needs_remediation(self) -> bool:
        return self.health is Health.UNHEALTHY


# Reboot arbitration: an agent asks (over MQTT) and the arbiter answers.
@dataclass(frozen=True)
class RebootRequest:
    cluster: str
    node: str
    id: str
    at: float
    reason: str | None = None


@dataclass(frozen=True)
class Permit:
    """An answer to a :class:`RebootRequest`."""

    id: str
    granted: bool
    reason: str  # "Granted" or the refusal reason (:mod:`healer.planner.reboots`)
    message: str
    retry_after: float | None = None  # when denied: ask again after this many seconds
    expires_at: float | None = None  # when granted: start rebooting before this time


@dataclass(frozen=True)
class BlockChange:
    """A blocking alert fired or resolved for a cluster."""

    cluster: str
    alert: str
    fingerprint: str
    firing: bool
    since: float
