"""Taints on the fake API server, on the wire and through healer.kube, and the controller
manager's handling of ``node.kubernetes.io/out-of-service`` (non-graceful node shutdown).

A taint is only ``spec.taints``: written with a merge patch (the list is replaced whole, guarded by
the resourceVersion), validated like the real API server, and acted on by the fake's
kube-controller-manager: on a node that is not Ready and carries the out-of-service taint, pods
that do not tolerate it are deleted and the Terminating ones force-deleted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from healer.errors import PermanentError
from healer.kube.client import KubeClient
from healer.kube.records import OUT_OF_SERVICE_VALUE, TAINT_OUT_OF_SERVICE, Taint
from healer.lab.apiserver.server import FakeApiServer
from tests.test_fake_apiserver import Http

MERGE = "application/merge-patch+json"


@pytest.fixture
async def client(fake_api: FakeApiServer) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(fake_api, session)


OOS = {"key": TAINT_OUT_OF_SERVICE, "value": OUT_OF_SERVICE_VALUE, "effect": "NoExecute"}


async def _patch_taints(client: Http, node: str, taints: list[dict], rv: str | None = None):  # type: ignore[no-untyped-def]
    body: dict = {"spec": {"taints": taints}}
    if rv is not None:
        body["metadata"] = {"resourceVersion": rv}
    return await client.request("PATCH", f"/api/v1/nodes/{node}", body, content_type=MERGE)


async def test_a_taint_is_spec_taints_guarded_by_the_resource_version(
    fake_api: FakeApiServer, client: Http
) -> None:
    node = fake_api.add_node("n1")
    rv = node["metadata"]["resourceVersion"]
    status, body = await _patch_taints(client, "n1", [OOS], rv)
    assert status == 200, body
    assert OOS in body["spec"]["taints"]
    # The same write against the old version is a conflict, as on a real server.
    status, body = await _patch_taints(client, "n1", [], rv)
    assert status == 409 and body["reason"] == "Conflict"
    assert OOS in fake_api.node("n1")["spec"]["taints"]


async def test_taints_are_validated_like_the_real_api_server(
    fake_api: FakeApiServer, client: Http
) -> None:
    fake_api.add_node("n1")
    status, body = await _patch_taints(client, "n1", [{"key": "a", "effect": "Sometimes"}])
    assert status == 422 and body["reason"] == "Invalid"
    assert 'spec.taints[0].effect: Unsupported value: "Sometimes"' in body["message"]
    status, body = await _patch_taints(client, "n1", [{"key": "a", "effect": "NoSchedule"}] * 2)
    assert status == 422
    assert "taints must be unique by key and effect pair" in body["message"]
    status, body = await _patch_taints(client, "n1", [{"effect": "NoSchedule"}])
    assert status == 422 and "spec.taints[0].key: Required value" in body["message"]
    # Same key, two effects: allowed.
    two = [{"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoExecute"}]
    status, body = await _patch_taints(client, "n1", two)
    assert status == 200, body


async def test_out_of_service_on_a_ready_node_releases_nothing(
    fake_api: FakeApiServer, client: Http
) -> None:
    # The pod GC acts only on nodes that are not Ready: a live kubelet still runs the pods.
    fake_api.add_node("n1", ready=True)
    fake_api.add_pod("shop", "db-0", "n1", owner_kind="StatefulSet")
    status, body = await _patch_taints(client, "n1", [OOS])
    assert status == 200 and OOS in body["spec"]["taints"]
    fake_api.check_nodes()
    pod = fake_api.pod("shop", "db-0")
    assert pod is not None and "deletionTimestamp" not in pod["metadata"]


async def test_out_of_service_on_a_node_that_is_not_ready_force_deletes_its_pods(
    fake_api: FakeApiServer, client: Http
) -> None:
    fake_api.add_node("n1", ready=False)
    fake_api.add_pod("shop", "db-0", "n1", owner_kind="StatefulSet")
    fake_api.add_pod("kube-system", "proxy-n1", "n1", owner_kind="DaemonSet")
    fake_api.add_pod(
        "ops",
        "rescue",
        "n1",
        tolerations=[{"key": TAINT_OUT_OF_SERVICE, "operator": "Exists", "effect": "NoExecute"}],
    )
    # A graceful delete on a node that is not Ready leaves the pod Terminating...
    status, _ = await client.request("DELETE", "/api/v1/namespaces/shop/pods/db-0")
    assert status == 200
    fake_api.check_nodes()
    assert fake_api.pod("shop", "db-0") is not None  # ...and without the taint it stays so.

    rv = fake_api.node("n1")["metadata"]["resourceVersion"]
    taints = [*fake_api.node("n1")["spec"].get("taints", []), OOS]
    status, body = await _patch_taints(client, "n1", taints, rv)
    assert status == 200, body
    fake_api.check_nodes()
    assert fake_api.pod("shop", "db-0") is None
    assert fake_api.pod("kube-system", "proxy-n1") is None  # DaemonSets do not tolerate it
    assert fake_api.pod("ops", "rescue") is not None  # a pod that tolerates the taint stays
    assert fake_api.node("n1") is not None  # the Node itself is left alone


async def test_kube_client_adds_and_removes_a_taint_idempotently(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1")
    taint = Taint(key=TAINT_OUT_OF_SERVICE, effect="NoExecute", value=OUT_OF_SERVICE_VALUE)
    assert await kube.add_taint("n1", taint) is True
    assert await kube.add_taint("n1", taint) is True
    stored = [t for t in fake_api.node("n1")["spec"]["taints"] if t["key"] == TAINT_OUT_OF_SERVICE]
    assert len(stored) == 1
    assert stored[0]["value"] == "nodeshutdown" and stored[0]["timeAdded"].endswith("Z")
    info = await kube.get_node("n1")
    assert info is not None and taint.key in {t.key for t in info.taints}
    assert await kube.remove_taint("n1", TAINT_OUT_OF_SERVICE) is True
    assert TAINT_OUT_OF_SERVICE not in {
        t["key"] for t in fake_api.node("n1")["spec"].get("taints", [])
    }
    assert await kube.add_taint("ghost", taint) is False
    assert await kube.remove_taint("ghost", TAINT_OUT_OF_SERVICE) is False


async def test_kube_client_rereads_the_node_after_a_conflict(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1")
    fake_api.fail_next("PATCH", r"/nodes/n1$", 409, times=2)
    taint = Taint(key=TAINT_OUT_OF_SERVICE, effect="NoExecute", value=OUT_OF_SERVICE_VALUE)
    assert await kube.add_taint("n1", taint) is True
    assert fake_api.request_count("PATCH", "nodes") >= 3
    assert TAINT_OUT_OF_SERVICE in {t["key"] for t in fake_api.node("n1")["spec"]["taints"]}


async def test_kube_client_reports_an_invalid_taint_as_permanent(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1")
    try:
        await kube.add_taint("n1", Taint(key="bad key!", effect="NoExecute"))
    except PermanentError as exc:
        assert "422" in str(exc) and "qualified name" in str(exc)
    else:
        raise AssertionError("an invalid taint was accepted")
