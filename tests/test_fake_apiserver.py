"""The fake API server on the wire: JSON shapes, errors, watches, PATCH flavours, controllers.

These tests speak raw HTTP (aiohttp) so they pin what the fake sends, independently of the
client in healer.kube, which has its own tests against this server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from healer.clock import VirtualClock
from healer.lab.apiserver.resources import (
    ANNOTATION_MIRROR,
    TAINT_UNREACHABLE,
    rfc3339,
    rfc3339_micro,
)
from healer.lab.apiserver.server import FakeApiServer


class Http:
    """A minimal authenticated client for the fake."""

    def __init__(self, server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.headers = {"Authorization": f"Bearer {server.token}"}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with asyncio.timeout(5):
            async with self.session.request(
                method, self.server.url + path, data=data, headers=headers, params=params
            ) as resp:
                return resp.status, await resp.json()

    async def watch(self, path: str, **params: str) -> list[dict[str, Any]]:
        """Read a whole watch stream (the caller makes sure it ends)."""
        events = []
        async with asyncio.timeout(5):
            async with self.session.get(
                self.server.url + path, headers=self.headers, params={"watch": "true", **params}
            ) as resp:
                assert resp.status == 200
                async for line in resp.content:
                    if line.strip():
                        events.append(json.loads(line))
        return events


@pytest.fixture
async def http(fake_api: FakeApiServer) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(fake_api, session)


@pytest.fixture
async def vhttp(fake_api_virtual: FakeApiServer) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(fake_api_virtual, session)


# ---------------------------------------------------------------- objects and lists


async def test_node_object_and_list_have_real_shapes(fake_api: FakeApiServer, http: Http) -> None:
    fake_api.add_node("n1", {"healer.io/pool": "a"})
    status, node = await http.request("GET", "/api/v1/nodes/n1")
    assert status == 200
    assert node["kind"] == "Node" and node["apiVersion"] == "v1"
    meta = node["metadata"]
    assert meta["name"] == "n1" and meta["uid"] and meta["resourceVersion"].isdigit()
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["labels"] == {"healer.io/pool": "a"}
    types = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert types["Ready"] == "True" and types["MemoryPressure"] == "False"

    status, listing = await http.request("GET", "/api/v1/nodes")
    assert status == 200
    assert listing["kind"] == "NodeList" and listing["apiVersion"] == "v1"
    assert listing["metadata"]["resourceVersion"] == fake_api.resource_version
    assert [i["metadata"]["name"] for i in listing["items"]] == ["n1"]


async def test_errors_are_status_objects(fake_api: FakeApiServer, http: Http) -> None:
    status, body = await http.request("GET", "/api/v1/nodes/ghost")
    assert status == 404
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'nodes "ghost" not found',
        "reason": "NotFound",
        "details": {"name": "ghost", "group": "", "kind": "nodes"},
        "code": 404,
    }
    status, body = await http.request("DELETE", "/api/v1/nodes/ghost")
    assert (status, body["reason"]) == (404, "NotFound")


async def test_create_twice_is_already_exists(http: Http) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    status, created = await http.request("POST", "/api/v1/nodes", node)
    assert status == 201 and created["metadata"]["uid"]
    status, body = await http.request("POST", "/api/v1/nodes", node)
    assert status == 409
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'nodes "n1" already exists'


async def test_unauthenticated_requests_are_refused(fake_api: FakeApiServer, http: Http) -> None:
    async with http.session.get(fake_api.url + "/api/v1/nodes") as resp:
        assert resp.status == 401
        assert (await resp.json())["reason"] == "Unauthorized"


# ---------------------------------------------------------------- patches


async def test_merge_and_strategic_patches_on_nodes(fake_api: FakeApiServer, http: Http) -> None:
    fake_api.add_node("n1", {"keep": "1", "drop": "1"})
    status, _ = await http.request(
        "PATCH",
        "/api/v1/nodes/n1",
        {"metadata": {"labels": {"drop": None, "new": "2"}}, "spec": {"unschedulable": True}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    node = fake_api.node("n1")
    assert node is not None
    assert node["metadata"]["labels"] == {"keep": "1", "new": "2"}
    assert node["spec"]["unschedulable"] is True
    # The controller-owned unschedulable taint follows spec.unschedulable, as in a real cluster.
    assert {"node.kubernetes.io/unschedulable"} <= {t["key"] for t in node["spec"]["taints"]}

    taints = [{"key": "example.com/x", "effect": "NoSchedule"}]
    status, _ = await http.request(
        "PATCH",
        "/api/v1/nodes/n1",
        {"spec": {"taints": taints, "unschedulable": False}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200
    node = fake_api.node("n1")
    assert node is not None
    assert node["spec"]["taints"] == taints


async def test_status_patch_merges_conditions_by_type(fake_api: FakeApiServer, http: Http) -> None:
    fake_api.add_node("n1")
    patch = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "X"}]}}
    status, node = await http.request(
        "PATCH",
        "/api/v1/nodes/n1/status",
        patch,
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200
    conditions = {c["type"]: c for c in node["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "X"
    assert conditions["DiskPressure"]["status"] == "False"  # untouched, not replaced
    assert "node.kubernetes.io/not-ready" in {t["key"] for t in node["spec"].get("taints", [])}


async def test_json_patch_is_unsupported_media_type(fake_api: FakeApiServer, http: Http) -> None:
    fake_api.add_node("n1")
    status, body = await http.request(
        "PATCH",
        "/api/v1/nodes/n1",
        [{"op": "add", "path": "/spec/unschedulable", "value": True}],
        content_type="application/json-patch+json",
    )
    assert status == 415 and body["reason"] == "UnsupportedMediaType"


async def test_namespace_labels_merge_patch(http: Http) -> None:
    status, body = await http.request(
        "PATCH",
        "/api/v1/namespaces/default",
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    assert body["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "default",
        "pod-security.kubernetes.io/enforce": "baseline",
    }
    status, listing = await http.request("GET", "/api/v1/namespaces")
    assert "kube-node-lease" in {i["metadata"]["name"] for i in listing["items"]}


# ---------------------------------------------------------------- leases


async def test_lease_put_uses_optimistic_concurrency(http: Http) -> None:
    path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "n1"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40},
    }
    status, created = await http.request("POST", path, lease)
    assert status == 201
    status, body = await http.request("POST", path, lease)
    assert (status, body["reason"]) == (409, "AlreadyExists")

    stale = json.loads(json.dumps(created))
    created["spec"]["renewTime"] = "2024-01-01T00:00:00.000001Z"
    status, updated = await http.request("PUT", f"{path}/n1", created)
    assert status == 200
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]

    status, body = await http.request("PUT", f"{path}/n1", stale)
    assert status == 409
    assert body["reason"] == "Conflict"
    assert body["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "n1"'
    )


# ---------------------------------------------------------------- watches


async def test_watch_replays_history_after_resource_version(
    fake_api_virtual: FakeApiServer, vhttp: Http, virtual_clock: VirtualClock
) -> None:
    fake = fake_api_virtual
    fake.add_node("n1")
    since = fake.resource_version
    fake.add_node("n2")
    fake.delete_node("n1")

    async def read() -> list[dict[str, Any]]:
        return await vhttp.watch(
            "/api/v1/nodes", resourceVersion=since, timeoutSeconds="30", allowWatchBookmarks="1"
        )

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)  # let the stream open (real socket) before ending it in time
    await virtual_clock.advance(30)
    async with asyncio.timeout(5):
        events = await reader
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events[:2]] == [
        ("ADDED", "n2"),
        ("DELETED", "n1"),
    ]
    assert events[0]["object"]["kind"] == "Node"
    # timeoutSeconds ends the stream; a bookmark right before carries the current version.
    assert events[-1]["type"] == "BOOKMARK"
    assert events[-1]["object"]["metadata"]["resourceVersion"] == fake.resource_version


async def test_watch_from_compacted_version_is_200_then_410_error(
    fake_api: FakeApiServer, http: Http
) -> None:
    fake_api.add_node("n1")
    old = fake_api.resource_version
    fake_api.add_node("n2")
    fake_api.compact()
    events = await http.watch("/api/v1/nodes", resourceVersion=old)
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    error = events[0]["object"]
    assert error["kind"] == "Status"
    assert (error["code"], error["reason"]) == (410, "Expired")
    assert error["message"].startswith(f"too old resource version: {old}")


async def test_history_limit_overflow_expires_old_versions(http: Http) -> None:
    fake = FakeApiServer(history_limit=3)
    await fake.start()
    try:
        fake.add_node("n0")
        old = fake.resource_version
        for i in range(1, 6):
            fake.add_node(f"n{i}")
        http.server = fake
        http.headers = {"Authorization": f"Bearer {fake.token}"}
        events = await http.watch("/api/v1/nodes", resourceVersion=old)
        assert events[0]["object"]["code"] == 410
    finally:
        await fake.stop()


async def test_watch_filters_by_namespace_and_field_selector(
    fake_api: FakeApiServer, http: Http
) -> None:
    since = fake_api.resource_version
    fake_api.add_node("n1")
    fake_api.add_pod("a", "p1", "n1")
    fake_api.add_pod("b", "p2", "n1")
    fake_api.add_pod("a", "p3", "n2")

    async def read() -> list[dict[str, Any]]:
        return await http.watch(
            "/api/v1/namespaces/a/pods",
            resourceVersion=since,
            fieldSelector="spec.nodeName=n1",
        )

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    fake_api.set_unreachable(True)  # ends open watches, like a partition
    events = await reader
    fake_api.set_unreachable(False)
    assert [e["object"]["metadata"]["name"] for e in events] == ["p1"]


# ---------------------------------------------------------------- pods and evictions


async def test_pod_list_selectors(fake_api: FakeApiServer, http: Http) -> None:
    fake_api.add_node("n1")
    fake_api.add_pod("a", "web-1", "n1", labels={"app": "web"})
    fake_api.add_pod("a", "db-1", "n1", labels={"app": "db"})
    fake_api.add_pod("b", "web-2", "n2", labels={"app": "web"})
    cases = [
        ("/api/v1/pods", {"fieldSelector": "spec.nodeName=n1"}, ["db-1", "web-1"]),
        ("/api/v1/pods", {"labelSelector": "app=web"}, ["web-1", "web-2"]),
        ("/api/v1/pods", {"labelSelector": "app!=web"}, ["db-1"]),
        ("/api/v1/pods", {"labelSelector": "app in (db,web),!missing"}, ["db-1", "web-1", "web-2"]),
        ("/api/v1/namespaces/b/pods", {}, ["web-2"]),
    ]
    for path, params, expected in cases:
        status, listing = await http.request("GET", path, params=params)
        assert status == 200, params
        assert listing["kind"] == "PodList"
        assert sorted(i["metadata"]["name"] for i in listing["items"]) == expected, params


async def test_eviction_blocked_by_pdb_answers_429_with_cause(
    fake_api: FakeApiServer, http: Http
) -> None:
    for node in ("n1", "n2"):
        fake_api.add_node(node)
    fake_api.add_pod("a", "web-1", "n1", labels={"app": "web"})
    fake_api.add_pod("a", "web-2", "n2", labels={"app": "web"})
    fake_api.add_pdb("a", "web-pdb", {"app": "web"}, min_available=2)
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web-1"}}
    status, body = await http.request("POST", "/api/v1/namespaces/a/pods/web-1/eviction", eviction)
    assert status == 429
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "reason": "TooManyRequests",
        "details": {
            "causes": [
                {
                    "reason": "DisruptionBudget",
                    "message": "The disruption budget web-pdb needs 2 healthy pods and has 2 "
                    "currently",
                }
            ]
        },
        "code": 429,
    }
    status, pdb = await http.request("GET", "/apis/policy/v1/namespaces/a/poddisruptionbudgets")
    assert pdb["items"][0]["status"]["disruptionsAllowed"] == 0


@pytest.mark.parametrize(
    ("budget", "allowed"),
    [
        ({"min_available": 1}, True),
        ({"min_available": "50%"}, True),
        ({"min_available": "100%"}, False),
        ({"max_unavailable": 1}, True),
        ({"max_unavailable": 0}, False),
        ({"max_unavailable": "0%"}, False),
    ],
)
async def test_pdb_budgets(
    fake_api: FakeApiServer, http: Http, budget: dict[str, Any], allowed: bool
) -> None:
    for node in ("n1", "n2"):
        fake_api.add_node(node)
    fake_api.add_replicaset("a", "web", replicas=2)
    fake_api.add_pod("a", "web-1", "n1", labels={"app": "web"}, owner_kind="ReplicaSet")
    fake_api.add_pod("a", "web-2", "n2", labels={"app": "web"}, owner_kind="ReplicaSet")
    fake_api.add_pdb("a", "web-pdb", {"app": "web"}, **budget)
    status, _ = await http.request("POST", "/api/v1/namespaces/a/pods/web-1/eviction", {})
    assert status == (201 if allowed else 429)
    assert (fake_api.pod("a", "web-1") is None) == allowed


@pytest.mark.parametrize(
    ("owner_kind", "budget", "cause"),
    [
        # A scaled budget expects the controllers' replicas: pods no controller owns make none.
        (None, {"max_unavailable": 1}, "needs 0 healthy pods and has 2 currently"),
        (None, {"min_available": "50%"}, "needs 0 healthy pods and has 2 currently"),
        # A ReplicaSet that was never created: the disruption controller's sync fails and the
        # budget is never observed.
        ("ReplicaSet", {"max_unavailable": 1}, "is still being processed by the server."),
    ],
)
async def test_scaled_budget_without_a_known_controller_allows_nothing(
    fake_api: FakeApiServer,
    http: Http,
    owner_kind: str | None,
    budget: dict[str, Any],
    cause: str,
) -> None:
    """As kube-controller-manager answers (tests/conformance/test_budget_scale.py)."""
    fake_api.add_node("n1")
    for name in ("web-1", "web-2"):
        fake_api.add_pod("a", name, "n1", labels={"app": "web"}, owner_kind=owner_kind)
    fake_api.add_pdb("a", "web-pdb", {"app": "web"}, **budget)
    _, pdb = await http.request("GET", "/apis/policy/v1/namespaces/a/poddisruptionbudgets/web-pdb")
    assert ("observedGeneration" in pdb["status"]) == (owner_kind is None)
    status, body = await http.request("POST", "/api/v1/namespaces/a/pods/web-1/eviction", {})
    assert status == 429
    assert body["details"]["causes"][0]["message"].endswith(cause)
    assert fake_api.pod("a", "web-1") is not None


async def test_evicted_pod_on_live_node_goes_on_dead_node_stays_terminating(
    fake_api: FakeApiServer, http: Http
) -> None:
    fake_api.add_node("alive")
    fake_api.add_node("dead", ready=False)
    fake_api.add_pod("a", "p-alive", "alive")
    fake_api.add_pod("a", "p-dead", "dead")
    for name in ("p-alive", "p-dead"):
        status, _ = await http.request("POST", f"/api/v1/namespaces/a/pods/{name}/eviction", {})
        assert status == 201
    assert fake_api.pod("a", "p-alive") is None
    stuck = fake_api.pod("a", "p-dead")
    assert stuck is not None and stuck["metadata"]["deletionTimestamp"]
    # Deleting again with a grace period changes nothing; only a force delete removes it.
    status, _ = await http.request("DELETE", "/api/v1/namespaces/a/pods/p-dead")
    assert status == 200 and fake_api.pod("a", "p-dead") is not None
    status, _ = await http.request(
        "DELETE", "/api/v1/namespaces/a/pods/p-dead", params={"gracePeriodSeconds": "0"}
    )
    assert status == 200 and fake_api.pod("a", "p-dead") is None


async def test_terminating_pods_finish_when_the_kubelet_comes_back(
    fake_api: FakeApiServer, http: Http
) -> None:
    fake_api.add_node("n1", ready=False)
    fake_api.add_pod("a", "p", "n1")
    await http.request("DELETE", "/api/v1/namespaces/a/pods/p")
    assert fake_api.pod("a", "p") is not None
    patch = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    await http.request(
        "PATCH",
        "/api/v1/nodes/n1/status",
        patch,
        content_type="application/strategic-merge-patch+json",
    )
    assert fake_api.pod("a", "p") is None


async def test_owner_and_mirror_pods(fake_api: FakeApiServer) -> None:
    fake_api.add_node("n1")
    ds = fake_api.add_pod("kube-system", "proxy-abcde", "n1", owner_kind="DaemonSet")
    mirror = fake_api.add_pod(
        "kube-system", "etcd-n1", "n1", annotations={ANNOTATION_MIRROR: "hash"}
    )
    assert ds["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    assert ds["metadata"]["ownerReferences"][0]["name"] == "proxy"
    assert mirror["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert {p["metadata"]["name"] for p in fake_api.pods_on("n1")} == {"proxy-abcde", "etcd-n1"}


async def test_deleting_a_node_collects_its_pods_and_then_its_lease(
    fake_api: FakeApiServer,
) -> None:
    node = fake_api.add_node("n1")
    lease = fake_api.set_lease("n1")
    # As a kubelet makes it: owned by its Node (apiVersion, kind, name, uid).
    assert lease["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": node["metadata"]["uid"]}
    ]
    fake_api.add_pod("a", "p", "n1")
    assert fake_api.delete_node("n1")
    # The lease is the garbage collector's: it goes on its next pass, not with the delete.
    assert fake_api.lease("n1") is not None
    fake_api.check_nodes()
    assert fake_api.lease("n1") is None
    # The pods are PodGC's: they stay until the node has been gone for its quarantine
    # (40 s in kube-controller-manager), as on a real server (tests/conformance).
    assert [p["metadata"]["name"] for p in fake_api.pods_on("n1")] == ["p"]
    fake_api.podgc_quarantine = 0.0
    fake_api.check_nodes()
    assert fake_api.pods_on("n1") == []
    assert not fake_api.delete_node("n1")


LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def _lease(name: str, owners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owners is not None:
        meta["ownerReferences"] = owners
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
    }


def _node_ref(node: dict[str, Any]) -> dict[str, Any]:
    meta = node["metadata"]
    return {"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta["uid"]}


async def test_garbage_collector_deletes_owned_objects_after_the_delete(
    fake_api_virtual: FakeApiServer, vhttp: Http, virtual_clock: VirtualClock
) -> None:
    """kube-controller-manager's garbage collector, with the default background propagation:
    the DELETE of a Node is answered at once, its Lease still there; the collector deletes it
    afterwards. A lease with no owner is never collected, one owned by a kind the fake does not
    keep (unknown here: counted as present) neither, and one owned by an older Node of the same
    name (another uid) is."""
    fake = fake_api_virtual
    n1 = fake.add_node("n1")
    n2 = fake.add_node("n2")
    for lease in (
        _lease("n1", [_node_ref(n1)]),
        _lease("n2", [_node_ref(n2)]),
        _lease("ownerless"),
        _lease(
            "by-a-daemonset",
            [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "0f5c"}],
        ),
    ):
        status, _ = await vhttp.request("POST", LEASES, lease)
        assert status == 201

    status, body = await vhttp.request("DELETE", "/api/v1/nodes/n1")
    assert status == 200 and body["kind"] == "Status" and body["status"] == "Success"
    status, _ = await vhttp.request("GET", f"{LEASES}/n1")
    assert status == 200  # not deleted with the Node: the collector has not run yet

    await virtual_clock.advance(fake.monitor_period)
    status, body = await vhttp.request("GET", f"{LEASES}/n1")
    assert status == 404 and body["reason"] == "NotFound"
    listing = await vhttp.request("GET", LEASES)
    assert {i["metadata"]["name"] for i in listing[1]["items"]} == {
        "n2",
        "ownerless",
        "by-a-daemonset",
    }

    # A Node deleted and registered again under its name is another owner: the old lease goes.
    fake.delete_node("n2")
    fake.add_node("n2")
    await virtual_clock.advance(fake.monitor_period)
    assert fake.lease("n2") is None


async def test_garbage_collector_keeps_an_object_with_a_live_owner(
    fake_api_virtual: FakeApiServer, vhttp: Http, virtual_clock: VirtualClock
) -> None:
    """Owned by two Nodes, one deleted: kept, with only the live owner's reference left."""
    fake = fake_api_virtual
    a, b = fake.add_node("a"), fake.add_node("b")
    status, _ = await vhttp.request("POST", LEASES, _lease("shared", [_node_ref(a), _node_ref(b)]))
    assert status == 201
    fake.delete_node("a")
    await virtual_clock.advance(fake.monitor_period)
    status, body = await vhttp.request("GET", f"{LEASES}/shared")
    assert status == 200 and body["metadata"]["ownerReferences"] == [_node_ref(b)]


# ---------------------------------------------------------------- node lifecycle controller


async def test_node_without_lease_renewal_turns_unknown_and_tainted(
    fake_api_virtual: FakeApiServer, virtual_clock: VirtualClock
) -> None:
    fake = fake_api_virtual
    fake.add_node("n1")
    fake.set_lease("n1")
    # A healthy second node: with every node down the controller taints nothing.
    fake.add_node("n2")
    await virtual_clock.advance(30)
    fake.set_lease("n1")  # renewed at +30: good until +70
    fake.set_lease("n2")
    await virtual_clock.advance(35)
    fake.set_lease("n2")
    node = fake.node("n1")
    assert node is not None
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    await virtual_clock.advance(10)
    node = fake.node("n1")
    assert node is not None
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "Unknown"
    assert ready["reason"] == "NodeStatusUnknown"
    assert ready["message"] == "Kubelet stopped posting node status."
    # Detected on the first monitor pass after renewTime + grace (+70 < t <= +71).
    assert ready["lastTransitionTime"] == rfc3339(virtual_clock.now() - 4)
    assert {
        "key": TAINT_UNREACHABLE,
        "effect": "NoExecute",
        "timeAdded": rfc3339(virtual_clock.now() - 4),
    } in node["spec"]["taints"]


async def test_ready_again_removes_unreachable_taint(
    fake_api_virtual: FakeApiServer, vhttp: Http, virtual_clock: VirtualClock
) -> None:
    fake = fake_api_virtual
    fake.add_node("n1")
    fake.add_node("n2")  # healthy: with every node down the controller taints nothing
    await virtual_clock.advance(30)
    fake.set_lease("n2")
    await virtual_clock.advance(15)
    node = fake.node("n1")
    assert node is not None and TAINT_UNREACHABLE in {t["key"] for t in node["spec"]["taints"]}
    patch = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": rfc3339(virtual_clock.now()),
                }
            ]
        }
    }
    status, _ = await vhttp.request(
        "PATCH",
        "/api/v1/nodes/n1/status",
        patch,
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200
    node = fake.node("n1")
    assert node is not None and "taints" not in node["spec"]
    await virtual_clock.advance(5)  # the fresh heartbeat keeps it Ready
    node = fake.node("n1")
    assert node is not None
    assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"


# ---------------------------------------------------------------- faults and counters


async def test_fail_next_injects_errors_then_recovers(fake_api: FakeApiServer, http: Http) -> None:
    fake_api.fail_next("GET", r"^/api/v1/nodes$", 500, times=2)
    fake_api.fail_next("LIST", r"/pods$", 429)
    assert (await http.request("GET", "/api/v1/nodes"))[0] == 500
    assert (await http.request("GET", "/api/v1/pods"))[0] == 429
    status, body = await http.request("GET", "/api/v1/nodes")
    assert status == 500 and body["reason"] == "InternalError"
    assert (await http.request("GET", "/api/v1/nodes"))[0] == 200
    assert fake_api.request_count("LIST", "nodes") == 3
    assert fake_api.request_count("LIST", "pods") == 1


async def test_unreachable_modes(fake_api: FakeApiServer, http: Http) -> None:
    fake_api.set_unreachable(True)
    status, body = await http.request("GET", "/api/v1/nodes")
    assert (status, body["reason"]) == (503, "ServiceUnavailable")
    fake_api.set_unreachable(True, mode="close")
    with pytest.raises(aiohttp.ClientError):
        await http.request("GET", "/api/v1/nodes")
    fake_api.set_unreachable(False)
    assert (await http.request("GET", "/api/v1/nodes"))[0] == 200


def test_time_formats() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339_micro(1.5) == "1970-01-01T00:00:01.500000Z"
