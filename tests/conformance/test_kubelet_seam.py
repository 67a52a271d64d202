"""The lab's simulated kubelet (healer/lab/kubelet.py) on the fake API server and on the real
one: it registers its Node, keeps a Lease owned by it, runs the pods bound to it (Pending ->
Running and Ready; a deleted pod confirmed gone), and once its machine is destroyed (the kubelet
dead, the Node deleted) nothing of it is left: no Lease, no renewals."""

from __future__ import annotations

import asyncio
import uuid

from healer.clock import RealClock
from healer.lab.kubelet import KubeletState, SimulatedKubelet
from tests.conformance.conftest import Target

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


async def test_kubelet_runs_its_pods_and_leaves_nothing_when_destroyed(target: Target) -> None:
    node = f"n-{uuid.uuid4().hex[:8]}"
    kubelet = SimulatedKubelet(
        client=target.kube,
        node=node,
        labels={"healer.io/pool": "workers"},
        clock=RealClock(),
        renew_interval=0.5,
    )
    task = asyncio.create_task(kubelet.run())
    try:
        await target.eventually(lambda: _ready(target, node), timeout=10, what="node Ready")
        lease = await target.get(f"{LEASES}/{node}")
        obj = await target.get(f"/api/v1/nodes/{node}")
        assert lease is not None and obj is not None
        assert [(o["kind"], o["uid"]) for o in lease["metadata"]["ownerReferences"]] == [
            ("Node", obj["metadata"]["uid"])
        ]
        ns = await target.namespace()
        pod = await target.pod(ns, node, phase="Pending")
        path = f"/api/v1/namespaces/{ns}/pods/{pod}"

        async def running() -> bool:
            got = await target.get(path)
            assert got is not None
            ready = [
                c["status"] for c in got["status"].get("conditions", []) if c["type"] == "Ready"
            ]
            return got["status"]["phase"] == "Running" and ready == ["True"]

        await target.eventually(running, timeout=10, what="pod Running and Ready")
        # A graceful delete: only the kubelet's confirmation removes the object on a real server.
        await target.ok("DELETE", path)
        await target.eventually(lambda: _absent(target, path), timeout=10, what="pod gone")

        # The machine is destroyed: its kubelet dies, healer deletes the Node.
        kubelet.crash()
        assert await target.kube.delete_node(node)
        await target.eventually(
            lambda: _absent(target, f"{LEASES}/{node}"), timeout=15, what="lease collected"
        )
        await asyncio.sleep(1.5)  # three renewal intervals: a live kubelet would recreate it
        assert await target.get(f"{LEASES}/{node}") is None
        assert kubelet.state is KubeletState.CRASHED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _ready(target: Target, node: str) -> bool:
    info = await target.kube.get_node(node)
    return info is not None and info.ready == "True"


async def _absent(target: Target, path: str) -> bool:
    return await target.get(path) is None
