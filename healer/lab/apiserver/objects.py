"""Objects as the kubelet and the apiserver first make them: a registered Node with its
conditions, a node Lease, a Namespace; the pods' default grace period; condition lookups."""

from __future__ import annotations

from healer.lab.apiserver.resources import NODE_LEASE_NAMESPACE, Obj, rfc3339, rfc3339_micro

DEFAULT_POD_GRACE = 30


def condition(ctype: str, status: str, reason: str, message: str, now: float) -> Obj:
    return {
        "type": ctype,
        "status": status,
        "lastHeartbeatTime": rfc3339(now),
        "lastTransitionTime": rfc3339(now),
        "reason": reason,
        "message": message,
    }


def find_condition(obj: Obj | None, ctype: str) -> Obj | None:
    if obj is None:
        return None
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond  # type: ignore[no-any-return]
    return None


def new_node(name: str, labels: dict[str, str] | None, *, ready: bool, now: float) -> Obj:
    """A Node as a kubelet registers it: the pressure conditions False, Ready as asked."""
    ready_cond = (
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", now)
        if ready
        else condition(
            "Ready",
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false",
            now,
        )
    )
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {},
        "status": {
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                    now,
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                    now,
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                    now,
                ),
                ready_cond,
            ],
            "addresses": [{"type": "Hostname", "address": name}],
        },
    }


def node_owner(node: Obj) -> list[Obj]:
    """The ``ownerReferences`` a kubelet puts on its lease: its Node, by name and uid."""
    meta = node["metadata"]
    return [{"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta["uid"]}]


def new_lease(node: str, *, holder: str | None, renew: float, owner: Obj | None = None) -> Obj:
    """``kube-node-lease/<node>`` as the kubelet first creates it, owned by ``owner`` (its Node)
    when that exists."""
    meta: Obj = {"name": node, "namespace": NODE_LEASE_NAMESPACE}
    if owner is not None:
        meta["ownerReferences"] = node_owner(owner)
    return {
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": meta,
        "spec": {
            "holderIdentity": holder or node,
            "leaseDurationSeconds": 40,
            "renewTime": rfc3339_micro(renew),
        },
    }


def new_namespace(name: str) -> Obj:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
