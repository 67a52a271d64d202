"""healer's own records of Kubernetes objects, parsed from the API's JSON, and the API's time
formats. Pure: no client here, so every layer may read these records."""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

NODE_LEASE_NAMESPACE = "kube-node-lease"
ANNOTATION_MIRROR = "kubernetes.io/config.mirror"
# Non-graceful node shutdown (GA in Kubernetes 1.28): on a node that is not Ready and carries
# this taint, kube-controller-manager force-deletes the pods and detaches their volumes at once.
# Only for a machine known to be off: the pods' old copies must not be running any more.
TAINT_OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_VALUE = "nodeshutdown"

Json = dict[str, Any]


class EvictResult(enum.Enum):
    EVICTED = "evicted"  # the eviction was accepted; the pod is terminating or gone
    BLOCKED = "blocked"  # a PodDisruptionBudget refused it (HTTP 429); try again later
    GONE = "gone"  # the pod no longer exists (HTTP 404)


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute
    value: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: dict[str, str]
    unschedulable: bool
    # condition type -> (status "True"|"False"|"Unknown", lastTransitionTime as epoch seconds)
    conditions: dict[str, tuple[str, float]]
    taints: tuple[Taint, ...]
    created_at: float
    resource_version: str

    @property
    def ready(self) -> str | None:
        """The Ready condition's status, or None when the node has not reported one."""
        cond = self.conditions.get("Ready")
        return cond[0] if cond else None


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str | None
    owner_kinds: tuple[str, ...]  # kinds in metadata.ownerReferences, e.g. ("DaemonSet",)
    is_mirror: bool  # a static pod's mirror: the API cannot evict or really delete it
    deleting: bool  # metadata.deletionTimestamp is set ("Terminating")
    phase: str

    @property
    def is_daemonset(self) -> bool:
        return "DaemonSet" in self.owner_kinds


@dataclass(frozen=True)
class LeaseInfo:
    name: str  # for node leases, the node name
    holder: str | None
    renew_time: float | None
    duration: int | None
    resource_version: str


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: dict[str, str]
    resource_version: str


@dataclass(frozen=True)
class RbacObject:
    """A Role, ClusterRole, RoleBinding or ClusterRoleBinding. ``content`` is the kind's own
    payload as JSON: ``{"rules": [...]}`` for roles, ``{"roleRef": {...}, "subjects": [...]}``
    for bindings."""

    kind: str
    name: str
    namespace: str | None
    labels: dict[str, str]
    content: dict[str, Any]
    resource_version: str


@dataclass(frozen=True)
class SecretInfo:
    namespace: str
    name: str
    type: str
    data: dict[str, bytes] = field(repr=False)  # decoded; never shown in reprs or logs
    labels: dict[str, str]
    resource_version: str


RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
_RBAC_CONTENT = {
    "Role": ("rules",),
    "ClusterRole": ("rules", "aggregationRule"),
    "RoleBinding": ("roleRef", "subjects"),
    "ClusterRoleBinding": ("roleRef", "subjects"),
}


@dataclass(frozen=True)
class WatchEvent:
    """One watch event. ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK; a BOOKMARK carries no
    object, only a ``resource_version`` to resume from."""

    type: str
    obj: NodeInfo | LeaseInfo | None
    resource_version: str


# ------------------------------------------------------------------ time


def format_time(ts: float) -> str:
    """RFC 3339 with seconds precision, as ``metav1.Time``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(ts: float) -> str:
    """RFC 3339 with microseconds, as ``metav1.MicroTime`` (lease renewTime)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# ------------------------------------------------------------------ JSON -> records


def node_from_json(obj: Json, *, now: float) -> NodeInfo:
    """``now`` stands in for a condition's missing lastTransitionTime: a condition with no known
    start must not look as if it had been bad since 1970."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    conditions: dict[str, tuple[str, float]] = {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        since = parse_time(cond.get("lastTransitionTime"))
        if since is None:
            since = parse_time(cond.get("lastHeartbeatTime"))
        conditions[str(cond.get("type"))] = (
            str(cond.get("status", "Unknown")),
            since if since is not None else now,
        )
    taints = tuple(
        Taint(key=str(t.get("key", "")), effect=str(t.get("effect", "")), value=t.get("value"))
        for t in spec.get("taints") or []
    )
    return NodeInfo(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        unschedulable=bool(spec.get("unschedulable", False)),
        conditions=conditions,
        taints=taints,
        created_at=parse_time(meta.get("creationTimestamp")) or now,
        resource_version=str(meta.get("resourceVersion", "")),
    )


def pod_from_json(obj: Json) -> PodInfo:
    meta = obj.get("metadata") or {}
    return PodInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        node=(obj.get("spec") or {}).get("nodeName"),
        owner_kinds=tuple(str(o.get("kind", "")) for o in meta.get("ownerReferences") or []),
        is_mirror=ANNOTATION_MIRROR in (meta.get("annotations") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
        phase=str((obj.get("status") or {}).get("phase", "Unknown")),
    )


def lease_from_json(obj: Json) -> LeaseInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    return LeaseInfo(
        name=str(meta.get("name", "")),
        holder=spec.get("holderIdentity"),
        renew_time=parse_time(spec.get("renewTime")),
        duration=int(duration) if duration is not None else None,
        resource_version=str(meta.get("resourceVersion", "")),
    )


def namespace_from_json(obj: Json) -> NamespaceInfo:
    meta = obj.get("metadata") or {}
    return NamespaceInfo(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def secret_from_json(obj: Json) -> SecretInfo:
    meta = obj.get("metadata") or {}
    return SecretInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        type=str(obj.get("type", "Opaque")),
        data={k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()},
        labels=dict(meta.get("labels") or {}),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def rbac_from_json(kind: str, obj: Json) -> RbacObject:
    meta = obj.get("metadata") or {}
    return RbacObject(
        kind=kind,
        name=str(meta.get("name", "")),
        namespace=meta.get("namespace"),
        labels=dict(meta.get("labels") or {}),
        content={k: obj[k] for k in _RBAC_CONTENT[kind] if obj.get(k) is not None},
        resource_version=str(meta.get("resourceVersion", "")),
    )
