"""Nodes through healer's adapter: cordon and its taint, a Lease owned by its Node and what the
garbage collector does with it, Ready=Unknown once the Lease stops (the node-monitor grace
period, shortened on the real controller-manager and set the same on the fake), and what
happens to a deleted Node's pods (PodGC force-deletes them after its 40 s quarantine)."""

from __future__ import annotations

import asyncio
import time

from healer.kube.records import parse_time
from tests.conformance.conftest import Target

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def _taints(node: dict) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(t["key"], t["effect"]) for t in node.get("spec", {}).get("taints") or []}


async def test_cordon_sets_unschedulable_and_its_taint(target: Target) -> None:
    node = await target.node()
    assert await target.kube.cordon(node)
    info = await target.kube.get_node(node)
    assert info is not None and info.unschedulable

    async def tainted() -> bool:
        obj = await target.get(f"/api/v1/nodes/{node}")
        return obj is not None and ("node.kubernetes.io/unschedulable", "NoSchedule") in _taints(
            obj
        )

    await target.eventually(tainted, timeout=10, what="unschedulable taint")
    assert not await target.kube.cordon("no-such-node")


async def test_lease_is_owned_by_its_node_and_goes_with_it(target: Target) -> None:
    node = await target.node(kubelet=False)
    lease = await target.get(f"{LEASES}/{node}")
    obj = await target.get(f"/api/v1/nodes/{node}")
    assert lease is not None and obj is not None
    [owner] = lease["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", node, obj["metadata"]["uid"])
    assert await target.kube.delete_node(node)
    await target.eventually(
        lambda: _absent(target, f"{LEASES}/{node}"), timeout=15, what="owned lease collected"
    )


async def test_lease_without_owner_outlives_its_node(target: Target) -> None:
    node = await target.node(kubelet=False)
    lease = await target.get(f"{LEASES}/{node}")
    assert lease is not None
    await target.ok(
        "PATCH",
        f"{LEASES}/{node}",
        {"metadata": {"ownerReferences": None}},
        content_type="application/merge-patch+json",
    )
    assert await target.kube.delete_node(node)
    # The real garbage collector acts within a second or two on an owned object; give it more.
    await _quiet(target, 4.0)
    assert await target.get(f"{LEASES}/{node}") is not None


async def test_node_goes_unknown_after_its_lease_stops(target: Target) -> None:
    # A second, healthy node in the zone: with every node of the only zone down, the
    # controller is in "full disruption" and taints nothing (next test).
    await target.node()
    node = await target.node()
    await _quiet(target, 2.0)
    last_renewal = await target.stop_kubelet(node)

    async def unknown() -> dict | None:  # type: ignore[type-arg]
        obj = await target.get(f"/api/v1/nodes/{node}")
        assert obj is not None
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        return obj if ready["status"] == "Unknown" else None

    limit = target.node_grace + target.monitor_period + 5.0
    obj = await target.eventually(unknown, timeout=limit, what="Ready=Unknown", interval=0.1)
    seen_after = time.time() - last_renewal
    assert target.node_grace - 1.0 <= seen_after <= limit, seen_after
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NodeStatusUnknown"
    assert ready["message"] == "Kubelet stopped posting node status."
    transition = parse_time(ready["lastTransitionTime"])
    assert transition is not None and transition - last_renewal >= target.node_grace - 1.0

    async def unreachable() -> bool:
        got = await target.get(f"/api/v1/nodes/{node}")
        return got is not None and ("node.kubernetes.io/unreachable", "NoExecute") in _taints(got)

    await target.eventually(unreachable, timeout=10, what="unreachable taint")
    # The kubelet is back: Ready again, the taint goes.
    await target.kube.renew_lease(node, node, 40)
    await target.kube.set_node_ready(node, "True", "KubeletReady", "kubelet is ready")

    async def clean() -> bool:
        got = await target.get(f"/api/v1/nodes/{node}")
        return got is not None and not _taints(got)

    await target.eventually(clean, timeout=10, what="taints gone when Ready again")


async def test_no_unreachable_taint_when_every_node_is_down(target: Target) -> None:
    node = await target.node()
    await target.stop_kubelet(node)

    async def unknown() -> bool:
        obj = await target.get(f"/api/v1/nodes/{node}")
        assert obj is not None
        return any(
            c["type"] == "Ready" and c["status"] == "Unknown" for c in obj["status"]["conditions"]
        )

    await target.eventually(unknown, timeout=target.node_grace + 8, what="Ready=Unknown")
    await _quiet(target, 3.0)
    obj = await target.get(f"/api/v1/nodes/{node}")
    assert obj is not None
    assert ("node.kubernetes.io/unreachable", "NoExecute") not in _taints(obj)


async def test_a_deleted_nodes_pods_stay_until_podgc(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    pod = await target.pod(ns, node)
    pending = await target.pod(ns, node, phase="Pending")
    await target.stop_kubelet(node)
    deleted_at = time.monotonic()
    assert await target.kube.delete_node(node)
    await _quiet(target, 3.0)
    # Nothing removes them at once: the pods are orphans until PodGC's quarantine passes.
    for name in (pod, pending):
        assert await target.get(f"/api/v1/namespaces/{ns}/pods/{name}") is not None, name

    async def both_gone() -> bool:
        # One by one: the real PodGC deletes the two orphans a moment apart (seen: the pending
        # one still there as the running one had gone).
        return all([await _absent(target, f"/api/v1/namespaces/{ns}/pods/{n}") for n in names])

    names = (pod, pending)
    await target.eventually(
        both_gone,
        timeout=target.podgc_quarantine + 30,
        what="PodGC removed the deleted node's pods",
        interval=1.0,
    )
    gone_after = time.monotonic() - deleted_at
    assert gone_after >= target.podgc_quarantine - 1.0, gone_after


async def _absent(target: Target, path: str) -> bool:
    return await target.get(path) is None


async def _quiet(target: Target, seconds: float) -> None:
    """Let the controllers run for ``seconds`` (real time: both servers run real controllers)."""
    await asyncio.sleep(seconds)
