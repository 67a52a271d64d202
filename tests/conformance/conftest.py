"""One target per Kubernetes API the conformance suite runs against: the lab's fake API server
(healer/lab/apiserver), configured with the real control plane's grace periods, and the real
kube-apiserver + kube-controller-manager of :mod:`tests.realkube` (skipped without its binaries).

A test gets a :class:`Target`: healer's own adapter on it (``kube``), raw HTTP for what the
adapter has no call for (``call``), and builders that do what a kubelet or an operator would
(nodes, pods with their status patched, budgets the disruption controller has seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from healer.kube.client import KubeClient
from healer.kube.records import parse_time
from healer.lab.apiserver.server import FakeApiServer
from tests import realkube

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
FAKE_PODGC_QUARANTINE = 5.0


@dataclass
class Target:
    name: str  # "fake" or "real"
    url: str
    token: str
    kubeconfig: Path
    kube: KubeClient
    http: aiohttp.ClientSession
    ssl_context: ssl.SSLContext | bool
    node_grace: float
    monitor_period: float
    podgc_quarantine: float
    fake: FakeApiServer | None = None
    real: realkube.RealKube | None = None
    kubelets: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        kwargs: dict[str, Any] = {"headers": headers, "ssl": self.ssl_context}
        if body is not None:
            headers["Content-Type"] = content_type
            kwargs["data"] = json.dumps(body)
        async with self.http.request(method, self.url + path, **kwargs) as resp:
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, await resp.text()

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, answer = await self.call(method, path, body, **kw)
        assert status in (200, 201), f"{method} {path}: {status} {answer}"
        return answer

    async def eventually(
        self, predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = predicate()
            if inspect.isawaitable(got):
                got = await got
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"[{self.name}] timed out after {timeout}s: {what}")
            await asyncio.sleep(interval)

    async def compact(self) -> None:
        """Forget the history: etcd's compaction on the real server, the store's on the fake."""
        if self.fake is not None:
            self.fake.compact()
        else:
            assert self.real is not None
            await asyncio.to_thread(self.real.compact)

    # -- builders ------------------------------------------------------------------------------
    async def namespace(self, labels: dict[str, str] | None = None) -> str:
        name = f"c-{uuid.uuid4().hex[:8]}"
        meta = {"name": name, "labels": {realkube.TEST_LABEL: "1", **(labels or {})}}
        await self.ok("POST", "/api/v1/namespaces", {"metadata": meta})
        if self.name == "real":  # the ServiceAccount admission plugin needs "default" first
            await self.eventually(
                lambda: self._exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
                timeout=20,
                what=f"{name}'s default ServiceAccount",
            )
        return name

    async def _exists(self, path: str) -> bool:
        return (await self.call("GET", path))[0] == 200

    async def node(self, labels: dict[str, str] | None = None, *, kubelet: bool = True) -> str:
        """A node as a kubelet registers it: the Node, Ready=True, a Lease owned by the Node,
        and (``kubelet``) a task renewing that Lease every second until :meth:`stop_kubelet`."""
        name = f"n-{uuid.uuid4().hex[:8]}"
        await self.kube.register_node(name, labels or {})
        await self.kube.renew_lease(name, name, 40)
        await self.kube.set_node_ready(name, "True", "KubeletReady", "kubelet is ready")
        if kubelet:
            self.kubelets[name] = asyncio.create_task(self._renew(name))
        return name

    async def _renew(self, node: str) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.kube.renew_lease(node, node, 40)

    async def stop_kubelet(self, node: str) -> float:
        """Stop renewing ``node``'s Lease; returns the last renewal's wall time."""
        task = self.kubelets.pop(node)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        lease = await self.get(
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        )
        assert lease is not None
        renewed = parse_time(lease["spec"]["renewTime"])
        assert renewed is not None
        return renewed

    async def stop_all_kubelets(self) -> None:
        for task in self.kubelets.values():
            task.cancel()
        await asyncio.gather(*self.kubelets.values(), return_exceptions=True)
        self.kubelets.clear()

    async def pod(
        self,
        ns: str,
        node: str | None,
        *,
        labels: dict[str, str] | None = None,
        phase: str = "Running",
        owner: dict[str, Any] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> str:
        name = f"p-{uuid.uuid4().hex[:8]}"
        meta: dict[str, Any] = {"name": name, "labels": labels or {}}
        if owner is not None:
            meta["ownerReferences"] = [owner]
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": spec
            or {
                **({"nodeName": node} if node else {}),
                "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
            },
        }
        await self.ok("POST", f"/api/v1/namespaces/{ns}/pods", body)
        if phase != "Pending":
            await self.set_pod_phase(ns, name, phase)
        return name

    async def set_pod_phase(self, ns: str, name: str, phase: str) -> None:
        """Patch the pod's status as its kubelet would: phase, Ready and containers."""
        ready = "True" if phase == "Running" else "False"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            ],
        }
        await self.ok(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            {"status": status},
            content_type=STRATEGIC,
        )

    async def pdb(self, ns: str, selector: dict[str, str], min_available: int) -> str:
        """A PodDisruptionBudget, returned once the disruption controller has computed its
        status (the eviction subresource refuses every pod of a budget it has not seen)."""
        name = f"b-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": selector}},
        }
        await self.ok("POST", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", body)
        await self.pdb_settled(ns, name)
        return name

    async def pdb_settled(self, ns: str, name: str) -> dict[str, Any]:
        path = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}"

        async def observed() -> dict[str, Any] | None:
            status, body = await self.call("GET", path)
            st = body.get("status") or {}
            if status == 200 and st.get("observedGeneration") == body["metadata"].get(
                "generation", 1
            ):
                return dict(st)
            return None

        return dict(await self.eventually(observed, timeout=20, what=f"budget {name} observed"))

    async def get(self, path: str) -> dict[str, Any] | None:
        status, body = await self.call("GET", path)
        if status == 404:
            return None
        assert status == 200, f"GET {path}: {status} {body}"
        return dict(body)


@pytest.fixture(params=["fake", realkube.REAL])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        )
        server: dict[str, Any]
        if request.param == "fake":
            api = FakeApiServer(
                lease_grace=realkube.NODE_GRACE,
                monitor_period=realkube.NODE_MONITOR_PERIOD,
                # The real controller's 40 s cannot be shortened; the fake's can, and the test
                # judges each target by its own quarantine.
                podgc_quarantine=FAKE_PODGC_QUARANTINE,
            )
            await api.start()
            stack.push_async_callback(api.stop)
            kubeconfig = api.write_kubeconfig(tmp_path / "fake-kubeconfig")
            server = {
                "url": api.url,
                "token": api.token,
                "ssl_context": False,
                "node_grace": api.lease_grace,
                "monitor_period": api.monitor_period,
                "podgc_quarantine": api.podgc_quarantine,
                "fake": api,
            }
        else:
            rk: realkube.RealKube = request.getfixturevalue("realkube_session")
            stack.push_async_callback(asyncio.to_thread, rk.wipe)
            kubeconfig = rk.kubeconfig
            server = {
                "url": rk.url,
                "token": realkube.TOKEN,
                "ssl_context": ssl.create_default_context(cafile=str(rk.workdir / "ca.crt")),
                "node_grace": rk.node_grace,
                "monitor_period": rk.monitor_period,
                "podgc_quarantine": realkube.PODGC_QUARANTINE,
                "real": rk,
            }
        kube = await KubeClient.from_kubeconfig(kubeconfig, request_timeout=10.0)
        stack.push_async_callback(kube.close)
        target = Target(name=request.param, kubeconfig=kubeconfig, kube=kube, http=http, **server)
        stack.push_async_callback(target.stop_all_kubelets)
        yield target
