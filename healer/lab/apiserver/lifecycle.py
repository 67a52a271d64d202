"""The controllers healer depends on, played on the store:

* the node lifecycle controller: a node whose lease (or status heartbeat) is older than
  ``lease_grace`` turns ``Ready=Unknown`` and gets the ``node.kubernetes.io/unreachable:NoExecute``
  taint; the controller-owned taints follow Ready and ``spec.unschedulable``;
* the kubelet's part of pod deletion: a pod being deleted on a Ready node goes away, while one on
  a node that is not Ready stays ``Terminating`` until it is force-deleted, as on a real dead node;
* kube-controller-manager's non-graceful node shutdown handling: on a node that is not Ready and
  carries ``node.kubernetes.io/out-of-service:NoExecute``, the taint manager deletes every pod
  that does not tolerate the taint and the pod garbage collector force-deletes the pods left
  ``Terminating`` there (volumes are not modelled);
* the pod garbage collector's orphan pass: pods bound to a Node that no longer exists are
  force-deleted once the node has been gone for ``podgc_quarantine`` (40 s in the real
  controller, not configurable there), not at the DELETE;
* the node lifecycle controller's zone disruption states: per zone (the
  ``topology.kubernetes.io/region``/``zone`` labels), no ``unreachable`` taint is added while a
  zone of this small a cluster is in partial disruption, and with every node of every zone not
  Ready ("master disruption") the controller taints nothing and lifts the taints it added.

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


# Zone states of the node lifecycle controller (its defaults: --unhealthy-zone-threshold 0.55,
# --large-cluster-size-threshold 50; below that size a partially disrupted zone evicts nothing).
UNHEALTHY_ZONE_THRESHOLD = 0.55
LARGE_CLUSTER_SIZE = 50
ZONE_NORMAL = "Normal"
ZONE_PARTIAL = "PartialDisruption"
ZONE_FULL = "FullDisruption"


def check_nodes(
    store: Store,
    clock: Clock,
    *,
    lease_grace: float,
    podgc_quarantine: float,
    orphaned_since: dict[str, float],
) -> None:
    """One pass of the node lifecycle controller and pod garbage collector. ``orphaned_since``
    is the PodGC's memory across passes: when each missing node was first seen missing."""
    now = clock.now()
    for (_, name), node in list(store.objects["nodes"].items()):
        ready = find_condition(node, "Ready")
        if ready is not None and ready.get("status") == "Unknown":
            continue
        if now - _last_probe(store, name, node) <= lease_grace:
            continue
        _mark_unknown(store, node, now)
    _taint_by_zone_state(store, now)
    for (_, name), node in list(store.objects["nodes"].items()):
        if has_taint(node, TAINT_OUT_OF_SERVICE, "NoExecute") and not node_ready(store, name):
            _release_out_of_service(store, clock, name)
    _collect_orphans(store, now, podgc_quarantine, orphaned_since)


def _collect_orphans(
    store: Store, now: float, quarantine: float, orphaned_since: dict[str, float]
) -> None:
    """PodGC's ``gcOrphaned``: a pod bound to a missing node goes (force-deleted) once the node
    has been missing for ``quarantine`` seconds; a node registered again in between keeps its
    pods."""
    live = {name for (_, name) in store.objects["nodes"]}
    bound = {p.get("spec", {}).get("nodeName") for p in store.objects["pods"].values()} - {None, ""}
    for node in list(orphaned_since):
        if node in live or node not in bound:
            del orphaned_since[node]
    for node in bound - live:
        since = orphaned_since.setdefault(str(node), now)
        if now - since < quarantine:
            continue
        for pod in pods_on(store, str(node)):
            meta = pod["metadata"]
            store.remove(BY_PLURAL["pods"], meta["namespace"], meta["name"])
            log.info(
                "fake_apiserver.pod_force_deleted",
                pod=f"{meta['namespace']}/{meta['name']}",
                node=node,
                why="orphaned",
            )
        del orphaned_since[str(node)]


def zone_key(node: Obj) -> str:
    labels = node["metadata"].get("labels") or {}
    return (
        f"{labels.get('topology.kubernetes.io/region', '')}:"
        f"{labels.get('topology.kubernetes.io/zone', '')}"
    )


def zone_states(store: Store) -> dict[str, str]:
    """The node lifecycle controller's ``ComputeZoneState`` for every zone."""
    counts: dict[str, list[int]] = {}
    for (_, name), node in store.objects["nodes"].items():
        counts.setdefault(zone_key(node), [0, 0])[0 if node_ready(store, name) else 1] += 1
    states = {}
    for zone, (ready, not_ready) in counts.items():
        if ready == 0 and not_ready > 0:
            states[zone] = ZONE_FULL
        elif not_ready > 2 and not_ready / (ready + not_ready) >= UNHEALTHY_ZONE_THRESHOLD:
            states[zone] = ZONE_PARTIAL
        else:
            states[zone] = ZONE_NORMAL
    return states


def _taint_by_zone_state(store: Store, now: float) -> None:
    """The unreachable taint of a node whose Ready is Unknown, as the controller's zone states
    allow it: added in a Normal or fully disrupted zone (while another zone is healthy), held
    back in a partially disrupted zone of a small cluster, and lifted from every node when all
    zones are fully disrupted."""
    states = zone_states(store)
    master_disruption = bool(states) and all(s == ZONE_FULL for s in states.values())
    small = len(store.objects["nodes"]) <= LARGE_CLUSTER_SIZE
    for node in list(store.objects["nodes"].values()):
        ready = find_condition(node, "Ready")
        unknown = ready is not None and ready.get("status") == "Unknown"
        tainted = has_taint(node, TAINT_UNREACHABLE, "NoExecute")
        if master_disruption:
            want = False
        elif unknown:
            want = tainted or not (small and states[zone_key(node)] == ZONE_PARTIAL)
        else:
            continue
        if want == tainted:
            continue
        updated = copy.deepcopy(node)
        if want:
            set_taint(updated, TAINT_UNREACHABLE, "NoExecute", now)
        else:
            drop_taint(updated, TAINT_UNREACHABLE)
            if updated.get("spec", {}).get("taints") == []:
                del updated["spec"]["taints"]
        store.put(BY_PLURAL["nodes"], "", updated, "MODIFIED")


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
    # The unreachable taint follows in the zone pass (_taint_by_zone_state).
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
    """Delete a Node. Its pods stay until the pod GC's quarantine passes (check_nodes); the
    kubelet's lease goes later through the garbage collector if the Node owns it."""
    return store.remove(BY_PLURAL["nodes"], "", name)


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
