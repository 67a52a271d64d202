"""The controllers healer depends on, played on the store:

* the node lifecycle controller: a node whose lease (or status heartbeat) is older than
  ``lease_grace`` turns ``Ready=Unknown`` and gets the ``node.kubernetes.io/unreachable:NoExecute``
  taint; the controller-owned taints follow Ready and ``spec.unschedulable``;
* the kubelet's part of pod deletion: a pod being deleted on a Ready node goes away, while one on
  a node that is not Ready stays ``Terminating`` until it is force-deleted, as on a real dead node;
* kube-controller-manager's non-graceful node shutdown handling: on a node that is not Ready and
  carries ``node.kubernetes.io/out-of-service:NoExecute``, the taint manager deletes every pod
  that does not tolerate the taint and the pod garbage collector force-deletes the pods left
  ``Terminating`` there (volumes are not modelled); pods bound to a deleted node are collected.

The kubelet's lease, owned by its Node, goes with it through the garbage collector
(:mod:`healer.lab.apiserver.garbage`), after the DELETE, as in a real cluster.
"""

from __future__ import annotations

import copy

import structlog

from healer.clock import Clock
from healer.lab.apiserver.errors import not_found
from healer.lab.apiserver.objects import DEFAULT_POD_GRACE, find_condition
from healer.lab.apiserver.resources import (
    BY_PLURAL,
    NODE_LEASE_NAMESPACE,
    TAINT_NOT_READY,
    TAINT_OUT_OF_SERVICE,
    TAINT_UNREACHABLE,
    TAINT_UNSCHEDULABLE,
    Obj,
    parse_time,
    rfc3339,
)
from healer.lab.apiserver.store import Store
from healer.lab.apiserver.taints import drop_taint, has_taint, set_taint, tolerates

log = structlog.get_logger(__name__)


def pods_on(store: Store, node: str) -> list[Obj]:
    return [
        copy.deepcopy(p)
        for p in store.objects["pods"].values()
        if p.get("spec", {}).get("nodeName") == node
    ]


def node_ready(store: Store, name: str | None) -> bool:
    if not name:
        return False
    node = store.get("nodes", "", name)
    cond = find_condition(node, "Ready") if node else None
    return cond is not None and cond.get("status") == "True"


def check_nodes(store: Store, clock: Clock, *, lease_grace: float) -> None:
    """One pass of the node lifecycle controller and pod garbage collector."""
    now = clock.now()
    for (_, name), node in list(store.objects["nodes"].items()):
        ready = find_condition(node, "Ready")
        if ready is not None and ready.get("status") == "Unknown":
            continue
        if now - _last_probe(store, name, node) <= lease_grace:
            continue
        _mark_unknown(store, node, now)
    for (_, name), node in list(store.objects["nodes"].items()):
        if has_taint(node, TAINT_OUT_OF_SERVICE, "NoExecute") and not node_ready(store, name):
            _release_out_of_service(store, clock, name)
    live = {name for (_, name) in store.objects["nodes"]}
    for (ns, pname), pod in list(store.objects["pods"].items()):
        bound = pod.get("spec", {}).get("nodeName")
        if bound and bound not in live:
            store.remove(BY_PLURAL["pods"], ns, pname)


def _release_out_of_service(store: Store, clock: Clock, node: str) -> None:
    """kube-controller-manager on an out-of-service node that is not Ready: the taint
    manager evicts what does not tolerate the taint (an ordinary graceful delete, which on
    a node that is not Ready leaves the pod Terminating), then the pod GC's
    ``gcTerminating`` force-deletes the Terminating pods."""
    pods = BY_PLURAL["pods"]
    for pod in pods_on(store, node):
        meta = pod["metadata"]
        if not meta.get("deletionTimestamp") and not tolerates(
            pod, TAINT_OUT_OF_SERVICE, "NoExecute"
        ):
            delete_pod(store, clock, meta["namespace"], meta["name"], None)
    for pod in pods_on(store, node):
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            store.remove(pods, meta["namespace"], meta["name"])
            log.info(
                "fake_apiserver.pod_force_deleted",
                pod=f"{meta['namespace']}/{meta['name']}",
                node=node,
                why="out-of-service",
            )


def _last_probe(store: Store, name: str, node: Obj) -> float:
    """When the kubelet was last heard from: lease renewal, status heartbeat or creation."""
    times = [parse_time(node["metadata"].get("creationTimestamp")) or 0.0]
    ready = find_condition(node, "Ready")
    if ready is not None:
        times.append(parse_time(ready.get("lastHeartbeatTime")) or 0.0)
    lease = store.get("leases", NODE_LEASE_NAMESPACE, name)
    if lease is not None:
        times.append(parse_time(lease.get("spec", {}).get("renewTime")) or 0.0)
    return max(times)


def _mark_unknown(store: Store, node: Obj, now: float) -> None:
    node = copy.deepcopy(node)
    conditions = node.setdefault("status", {}).setdefault("conditions", [])
    never_posted = find_condition(node, "Ready") is None
    if never_posted:
        conditions.append({"type": "Ready"})
    # The real controller turns every kubelet-owned condition Unknown, not only Ready.
    for cond in conditions:
        if cond.get("status") != "Unknown":
            cond["lastTransitionTime"] = rfc3339(now)
        cond["status"] = "Unknown"
        cond["reason"] = "NodeStatusUnknown"
        cond["message"] = (
            "Kubelet never posted node status."
            if never_posted
            else "Kubelet stopped posting node status."
        )
    set_taint(node, TAINT_UNREACHABLE, "NoExecute", now)
    drop_taint(node, TAINT_NOT_READY)
    store.put(BY_PLURAL["nodes"], "", node, "MODIFIED")
    log.info("fake_apiserver.node_unknown", node=node["metadata"]["name"])


def sync_node_taints(store: Store, clock: Clock, name: str) -> None:
    """Keep the controller-owned taints in line with Ready and spec.unschedulable, and let
    a Ready kubelet finish pods that were being deleted while it was away."""
    node = store.get("nodes", "", name)
    if node is None:
        return
    updated = copy.deepcopy(node)
    now = clock.now()
    ready = find_condition(updated, "Ready")
    status = ready.get("status") if ready else None
    if status == "True":
        drop_taint(updated, TAINT_UNREACHABLE)
        drop_taint(updated, TAINT_NOT_READY)
    elif status == "False":
        drop_taint(updated, TAINT_UNREACHABLE)
        set_taint(updated, TAINT_NOT_READY, "NoExecute", now)
    if updated.get("spec", {}).get("unschedulable"):
        set_taint(updated, TAINT_UNSCHEDULABLE, "NoSchedule", now)
    else:
        drop_taint(updated, TAINT_UNSCHEDULABLE)
    if updated.get("spec", {}).get("taints") == []:
        del updated["spec"]["taints"]
    if updated.get("spec") != node.get("spec"):
        store.put(BY_PLURAL["nodes"], "", updated, "MODIFIED")
    if status == "True":
        for pod in pods_on(store, name):
            if pod["metadata"].get("deletionTimestamp"):
                store.remove(
                    BY_PLURAL["pods"], pod["metadata"]["namespace"], pod["metadata"]["name"]
                )


def remove_node(store: Store, name: str) -> Obj | None:
    removed = store.remove(BY_PLURAL["nodes"], "", name)
    # The pod GC removes pods bound to a node that no longer exists. The kubelet's lease is
    # not touched here: the garbage collector deletes it later if the Node owns it.
    for pod in pods_on(store, name):
        store.remove(BY_PLURAL["pods"], pod["metadata"]["namespace"], pod["metadata"]["name"])
    return removed


def delete_pod(store: Store, clock: Clock, ns: str, name: str, grace: int | None) -> Obj:
    """A graceful (or, with ``grace=0``, forced) pod delete and what the node's kubelet makes
    of it."""
    res = BY_PLURAL["pods"]
    pod = store.get("pods", ns, name)
    if pod is None:
        raise not_found(res, name)
    node = pod.get("spec", {}).get("nodeName")
    if grace == 0 or not node or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        removed = store.remove(res, ns, name)
        assert removed is not None
        return copy.deepcopy(removed)
    if grace is None:
        grace = int(pod.get("spec", {}).get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE))
    if not pod["metadata"].get("deletionTimestamp"):
        pod = copy.deepcopy(pod)
        pod["metadata"]["deletionTimestamp"] = rfc3339(clock.now() + grace)
        pod["metadata"]["deletionGracePeriodSeconds"] = grace
        pod = store.put(res, ns, pod, "MODIFIED")
    answer = copy.deepcopy(pod)
    # A live kubelet stops the containers and the pod goes; a dead one never confirms, so
    # the pod stays Terminating until someone force-deletes it.
    if node_ready(store, node):
        store.remove(res, ns, name)
    return answer
