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


def pdb_status(store: Store, pdb: Obj) -> Obj:
    ns = pdb["metadata"]["namespace"]
    selector = pdb.get("spec", {}).get("selector") or {}
    matching = [
        p
        for (pns, _), p in store.objects["pods"].items()
        if pns == ns and selector_matches(selector, p["metadata"].get("labels") or {})
    ]
    expected = len(matching)
    healthy = sum(1 for p in matching if _pod_healthy(store, p))
    spec = pdb.get("spec", {})
    if spec.get("minAvailable") is not None:
        desired = _scaled(spec["minAvailable"], expected)
    elif spec.get("maxUnavailable") is not None:
        desired = max(0, expected - _scaled(spec["maxUnavailable"], expected))
    else:
        desired = 0
    return {
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": max(0, healthy - desired),
        "observedGeneration": 1,
    }


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
            # An unhealthy pod may go while the budget is met (unhealthyPodEvictionPolicy
            # IfHealthyBudget, the default); a healthy one needs a disruption to spare.
            if _pod_healthy(store, pod):
                allowed = status["disruptionsAllowed"] > 0
            else:
                allowed = status["currentHealthy"] >= status["desiredHealthy"]
            if not allowed:
                raise ApiError(
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    details={
                        "causes": [
                            {
                                "reason": "DisruptionBudget",
                                "message": (
                                    f"The disruption budget {pdb['metadata']['name']} needs "
                                    f"{status['desiredHealthy']} healthy pods and has "
                                    f"{status['currentHealthy']} currently"
                                ),
                            }
                        ]
                    },
                )
    delete_pod(store, clock, ns, name, None)
    return status_object(201, "", reason="")
