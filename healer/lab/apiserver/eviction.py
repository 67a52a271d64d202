"""PodDisruptionBudgets and the eviction subresource: a budget's status as the disruption
controller computes it, and an eviction granted (a graceful delete) or refused with ``429``
when it would break a budget."""

from __future__ import annotations

import math

from healer.clock import Clock
from healer.lab.apiserver.errors import ApiError, not_found, status_object
from healer.lab.apiserver.lifecycle import delete_pod, node_ready
from healer.lab.apiserver.objects import find_condition
from healer.lab.apiserver.resources import BY_PLURAL, Obj
from healer.lab.apiserver.selectors import selector_matches
from healer.lab.apiserver.store import Store


def _scaled(value: int | str, total: int) -> int:
    """An IntOrString budget: ``"50%"`` of ``total`` rounds up, as the disruption controller."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def _pod_healthy(store: Store, pod: Obj) -> bool:
    """Healthy as the disruption controller counts it: not being deleted and Ready (a Running
    pod whose kubelet reports it not Ready is not healthy)."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    ready = find_condition(pod, "Ready")
    if ready is None or ready.get("status") != "True":
        return False
    # Pods on a node that is not Ready get Ready=False from the node controller.
    return node_ready(store, pod.get("spec", {}).get("nodeName"))


def _controller_of(pod: Obj) -> Obj | None:
    """``metav1.GetControllerOf``: the owner reference marked ``controller: true``."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def _workload(store: Store, plural: str, ns: str, ref: Obj) -> Obj | None:
    """The stored workload ``ref`` points at (same kind, name and uid), if any."""
    obj = store.get(plural, ns, str(ref.get("name", "")))
    if obj is None or obj["metadata"].get("uid") != ref.get("uid"):
        return None
    return obj


_SCALED_KINDS = {"ReplicaSet": "replicasets", "StatefulSet": "statefulsets"}


def _controller_scale(store: Store, ns: str, ref: Obj) -> tuple[str, int] | None:
    """The disruption controller's finders: a ReplicaSet that a Deployment controls counts the
    Deployment's replicas, any other ReplicaSet or StatefulSet its own; None when not found."""
    plural = _SCALED_KINDS.get(str(ref.get("kind")))
    if str(ref.get("apiVersion", "")).split("/")[0] != "apps" or plural is None:
        return None
    owner = _workload(store, plural, ns, ref)
    if owner is None:
        return None
    parent = _controller_of(owner)
    if plural == "replicasets" and parent is not None and parent.get("kind") == "Deployment":
        deployment = _workload(store, "deployments", ns, parent)
        if deployment is not None:
            owner = deployment
    return str(owner["metadata"]["uid"]), int(owner.get("spec", {}).get("replicas", 1))


def _expected_scale(store: Store, ns: str, pods: list[Obj]) -> int | None:
    """The sum of the scales of the pods' controllers (pods without one are left out); None
    when a controller cannot be found, which fails the controller's sync."""
    scales: dict[str, int] = {}
    for pod in pods:
        ref = _controller_of(pod)
        if ref is None:
            continue
        found = _controller_scale(store, ns, ref)
        if found is None:
            return None
        scales[found[0]] = found[1]
    return sum(scales.values())


def pdb_status(store: Store, pdb: Obj) -> Obj:
    """The status the disruption controller writes. With ``maxUnavailable`` or a percentage
    ``minAvailable`` the expected pods are the owning controllers' replicas; with an integer
    ``minAvailable`` the matching pods. A budget whose pods' controller cannot be found is not
    observed (no ``observedGeneration``) and allows no disruption."""
    ns = pdb["metadata"]["namespace"]
    spec = pdb.get("spec", {})
    selector = spec.get("selector") or {}
    matching = [
        p
        for (pns, _), p in store.objects["pods"].items()
        if pns == ns and selector_matches(selector, p["metadata"].get("labels") or {})
    ]
    healthy = sum(1 for p in matching if _pod_healthy(store, p))
    min_available = spec.get("minAvailable")
    max_unavailable = spec.get("maxUnavailable")
    expected: int | None = len(matching)
    if max_unavailable is not None or isinstance(min_available, str):
        expected = _expected_scale(store, ns, matching)
    if expected is None:
        return {
            "currentHealthy": 0,
            "desiredHealthy": 0,
            "expectedPods": 0,
            "disruptionsAllowed": 0,
        }
    if max_unavailable is not None:
        desired = max(0, expected - _scaled(max_unavailable, expected))
    elif min_available is not None:
        desired = _scaled(min_available, expected)
    else:
        desired = 0
    return {
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": max(0, healthy - desired) if expected > 0 else 0,
        "observedGeneration": 1,
    }


def _too_many_requests(cause: str) -> ApiError:
    return ApiError(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
        details={"causes": [{"reason": "DisruptionBudget", "message": cause}]},
    )


def evict(store: Store, clock: Clock, ns: str, name: str) -> Obj:
    res = BY_PLURAL["pods"]
    pod = store.get("pods", ns, name)
    if pod is None:
        raise not_found(res, name)
    # A pod already terminating or not running does not count against any budget.
    ignore_budgets = bool(pod["metadata"].get("deletionTimestamp")) or pod.get("status", {}).get(
        "phase"
    ) in ("Pending", "Succeeded", "Failed")
    if not ignore_budgets:
        labels = pod["metadata"].get("labels") or {}
        pdbs = [
            p
            for (pns, _), p in store.objects["poddisruptionbudgets"].items()
            if pns == ns and selector_matches(p.get("spec", {}).get("selector") or {}, labels)
        ]
        if len(pdbs) > 1:
            raise ApiError(
                500,
                "This pod has more than one PodDisruptionBudget, which the eviction "
                "subresource does not support.",
            )
        for pdb in pdbs:
            status = pdb_status(store, pdb)
            budget = pdb["metadata"]["name"]
            # An unhealthy pod may go while the budget is met (unhealthyPodEvictionPolicy
            # IfHealthyBudget, the default) and needs some healthy pods; every other eviction
            # takes one of the disruptions the controller last allowed.
            desired = status["desiredHealthy"]
            if not _pod_healthy(store, pod) and status["currentHealthy"] >= desired > 0:
                continue
            if "observedGeneration" not in status:
                raise _too_many_requests(
                    f"The disruption budget {budget} is still being processed by the server."
                )
            if status["disruptionsAllowed"] <= 0:
                raise _too_many_requests(
                    f"The disruption budget {budget} needs {desired} healthy pods and has "
                    f"{status['currentHealthy']} currently"
                )
    delete_pod(store, clock, ns, name, None)
    return status_object(201, "", reason="")
