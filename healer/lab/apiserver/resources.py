"""The API surface the fake serves: the resource table, the URL paths, the well-known names
(namespaces, taints, annotations) and the wire formats of times and query booleans."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

NODE_LEASE_NAMESPACE = "kube-node-lease"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
ANNOTATION_MIRROR = "kubernetes.io/config.mirror"
# RBAC objects and Secrets have no spec or status: their payload (rules, roleRef, subjects,
# data) sits at the top level, and a PUT replaces all of it.
RBAC_GROUP = "rbac.authorization.k8s.io"
NO_SPEC = frozenset({"secrets", "roles", "clusterroles", "rolebindings", "clusterrolebindings"})
# Workloads (apps/v1) are stored for the disruption controller, which reads the scale of those
# that have one (SCALED); no controller of theirs runs (as on tests/realkube.py's control plane).
SCALED = frozenset({"replicasets", "deployments", "statefulsets"})
WORKLOADS = SCALED | {"daemonsets"}

PATH = re.compile(
    r"(?P<prefix>/api/v1|/apis/policy/v1|/apis/coordination\.k8s\.io/v1|/apis/apps/v1"
    r"|/apis/rbac\.authorization\.k8s\.io/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?/?"
)


@dataclass(frozen=True)
class Resource:
    prefix: str
    plural: str
    kind: str
    api_version: str
    group: str
    namespaced: bool

    @property
    def qualified(self) -> str:
        """How the apiserver names the resource in messages: ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = {
    (r.prefix, r.plural): r
    for r in (
        Resource("/api/v1", "nodes", "Node", "v1", "", namespaced=False),
        Resource("/api/v1", "namespaces", "Namespace", "v1", "", namespaced=False),
        Resource("/api/v1", "pods", "Pod", "v1", "", namespaced=True),
        Resource("/api/v1", "secrets", "Secret", "v1", "", namespaced=True),
        Resource(
            "/apis/policy/v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            "policy/v1",
            "policy",
            namespaced=True,
        ),
        Resource(
            "/apis/coordination.k8s.io/v1",
            "leases",
            "Lease",
            "coordination.k8s.io/v1",
            "coordination.k8s.io",
            namespaced=True,
        ),
        *(
            Resource("/apis/apps/v1", plural, kind, "apps/v1", "apps", namespaced=True)
            for plural, kind in (
                ("replicasets", "ReplicaSet"),
                ("deployments", "Deployment"),
                ("statefulsets", "StatefulSet"),
                ("daemonsets", "DaemonSet"),
            )
        ),
        *(
            Resource(
                "/apis/rbac.authorization.k8s.io/v1",
                plural,
                kind,
                "rbac.authorization.k8s.io/v1",
                RBAC_GROUP,
                namespaced=namespaced,
            )
            for plural, kind, namespaced in (
                ("roles", "Role", True),
                ("clusterroles", "ClusterRole", False),
                ("rolebindings", "RoleBinding", True),
                ("clusterrolebindings", "ClusterRoleBinding", False),
            )
        ),
    )
}
BY_PLURAL = {r.plural: r for r in RESOURCES.values()}


def rfc3339(ts: float) -> str:
    """``metav1.Time``: seconds precision, UTC, ``Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(ts: float) -> str:
    """``metav1.MicroTime`` (lease renewTime): microsecond precision."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value).timestamp()


def truthy(value: str | None) -> bool:
    """Query booleans as Go's strconv.ParseBool reads them (the Python client sends "True")."""
    return value in ("1", "t", "T", "true", "TRUE", "True")
