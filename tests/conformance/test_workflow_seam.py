"""The remediation workflow (cordon, drain, fence, delete, replace) on the fake API server and
on the real one: a dead node drained kubectl-style through the Eviction API (a ReplicaSet pod
evicted, a StatefulSet pod held by its budget, DaemonSet and mirror pods left alone), its Node
deleted and its machine replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from healer.clock import RealClock
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import Store
from healer.workflow.runner import STEPS, WorkflowRunner
from providers.lab.plugin import LabProvider
from tests.conformance.conftest import Target
from tests.helpers import lab_cloud_with_worker, lab_like_config, running_workflow

OLD = "lab-workers-old00001"
NEW = "lab-workers-wf012345"
POOL = {"healer.io/pool": "workers"}


async def _owner(target: Target, ns: str, kind: str, name: str) -> dict[str, Any]:
    """A workload object to own a pod (its controller does not run on the real server)."""
    plural = {"ReplicaSet": "replicasets", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}
    template = {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    if kind != "DaemonSet":
        spec["replicas"] = 1
    if kind == "StatefulSet":
        spec["serviceName"] = name
    if target.fake is not None:  # the fake stores no workloads: an owner it cannot resolve
        return {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": f"uid-{name}"}
    body = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    obj = await target.ok("POST", f"/apis/apps/v1/namespaces/{ns}/{plural[kind]}", body)
    return {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": obj["metadata"]["uid"]}


async def _replacement_kubelet(target: Target, provider: LabProvider) -> None:
    """Plays the replacement's kubelet: once its machine exists, its Node turns up Ready."""
    while True:
        for m in await provider.list_machines({"healer.io/cluster": "lab"}):
            if m.name != OLD and await target.kube.get_node(m.name) is None:
                await target.kube.register_node(m.name, POOL)
                await target.kube.renew_lease(m.name, m.name, 40)
                await target.kube.set_node_ready(m.name, "True", "KubeletReady", "ready")
        await asyncio.sleep(0.1)


async def test_dead_node_is_drained_kubectl_style_and_replaced(
    target: Target, tmp_path: Path
) -> None:
    ns = await target.namespace()
    await target.kube.register_node(OLD, POOL)
    await target.kube.renew_lease(OLD, OLD, 40)
    await target.kube.set_node_ready(OLD, "True", "KubeletReady", "ready")
    node_uid = (await target.ok("GET", f"/api/v1/nodes/{OLD}"))["metadata"]["uid"]
    web = await target.pod(
        ns, OLD, labels={"app": "web"}, owner=await _owner(target, ns, "ReplicaSet", "web")
    )
    db = await target.pod(
        ns, OLD, labels={"app": "db"}, owner=await _owner(target, ns, "StatefulSet", "db")
    )
    proxy = await target.pod(
        ns, OLD, labels={"app": "proxy"}, owner=await _owner(target, ns, "DaemonSet", "proxy")
    )
    mirror = await _mirror_pod(target, ns, node_uid)
    await target.pdb(ns, {"app": "db"}, min_available=1)
    # The kubelet dies: the node as its controller leaves it.
    await target.kube.set_node_ready(
        OLD, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
    )

    provider = await lab_cloud_with_worker(tmp_path, OLD)
    store = Store.open(tmp_path)
    helper = asyncio.create_task(_replacement_kubelet(target, provider))
    try:
        cfg = lab_like_config(
            remediation={
                "drainTimeout": "1s",
                "retry": {"attempts": 3, "initialDelay": 0.05, "maxDelay": 0.1},
            }
        )
        runner = WorkflowRunner(
            config=cfg,
            store=store,
            clock=RealClock(),
            kube={"lab": target.kube},
            providers={"lab": provider},
            user_data=render_user_data,
            join_poll_interval=0.05,
        )
        wf = running_workflow(store, OLD, NEW)
        await runner.start(wf)
        async with asyncio.timeout(30):
            await runner.wait_idle()
        final = store.workflow(wf.id)
        assert final is not None and final.state == "succeeded", final and final.error
        drain = next(
            s for s in store.steps(final.id) if s["step"] == "drain" and s["status"] == "done"
        )["detail"]
        assert drain["evicted"] == [f"{ns}/{web}"]
        assert "disruption budget" in drain["blocked"][f"{ns}/{db}"]
        assert drain["timed_out"] is True
        assert any(f"{ns}/{proxy}" in s and "DaemonSet" in s for s in drain["skipped"])
        assert any(f"{ns}/{mirror}" in s and "mirror" in s for s in drain["skipped"])
        # The DaemonSet pod was never evicted by the drain (the out-of-service taint of the
        # release step is the taint manager's business afterwards).
        assert f"{ns}/{proxy}" not in drain["evicted"]
        assert await target.kube.get_node(OLD) is None
        assert await provider.get_machine(OLD) is None
        assert await target.kube.get_node(NEW) is not None
        assert [s["step"] for s in store.steps(final.id) if s["status"] == "done"] == [
            "created",
            *STEPS,
        ]
        # The old Node's Lease was owned by it: the garbage collector takes it too.
        await target.eventually(
            lambda: _absent(
                target, f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{OLD}"
            ),
            timeout=15,
            what="old lease collected",
        )
    finally:
        helper.cancel()
        await asyncio.gather(helper, return_exceptions=True)
        await provider.close()
        store.close()


async def _mirror_pod(target: Target, ns: str, node_uid: str) -> str:
    name = f"etcd-{OLD}"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": {"kubernetes.io/config.mirror": "x"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": OLD,
                    "uid": node_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": OLD,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    await target.ok("POST", f"/api/v1/namespaces/{ns}/pods", body)
    await target.set_pod_phase(ns, name, "Running")
    return name


async def _absent(target: Target, path: str) -> bool:
    return await target.get(path) is None
