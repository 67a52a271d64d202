"""Pod Security admission by namespace label and RBAC objects, through healer's adapter
(patch_namespace_labels, create/get/replace/list/delete_rbac): what cluster policy reconciles."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from healer.errors import TemporaryError
from tests.conformance.conftest import Target
from tests.realkube import TEST_LABEL

ENFORCE = "pod-security.kubernetes.io/enforce"
PAUSE = "registry.k8s.io/pause:3.10"
RESTRICTED_CONTAINER = {
    "name": "c",
    "image": PAUSE,
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def _pod(name: str, spec: dict) -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def _create(target: Target, ns: str, spec: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
    name = f"p-{uuid.uuid4().hex[:8]}"
    return await target.call("POST", f"/api/v1/namespaces/{ns}/pods", _pod(name, spec))


async def _create_once_labels_apply(
    target: Target,
    ns: str,
    spec: dict,  # type: ignore[type-arg]
    status: int,
    *,
    within: float = 10.0,
) -> tuple[int, dict]:  # type: ignore[type-arg]
    """Create the pod until the answer is ``status``, for ``within`` seconds at most; the last
    answer. The real kube-apiserver's Pod Security admission reads namespaces from its informer
    cache, so a label just patched takes effect a moment later (seen: a pod refused under the
    label removed the line before); the fake answers at once, on the first try."""
    deadline = time.monotonic() + within
    while True:
        answer = await _create(target, ns, spec)
        if answer[0] == status or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("level", "spec", "admitted"),
    [
        ("baseline", {"containers": [{"name": "c", "image": PAUSE}]}, True),
        (
            "baseline",
            {
                "containers": [
                    {"name": "c", "image": PAUSE, "securityContext": {"privileged": True}}
                ]
            },
            False,
        ),
        ("baseline", {"hostNetwork": True, "containers": [{"name": "c", "image": PAUSE}]}, False),
        (
            "baseline",
            {
                "containers": [{"name": "c", "image": PAUSE}],
                "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}],
            },
            False,
        ),
        ("restricted", {"containers": [{"name": "c", "image": PAUSE}]}, False),
        ("restricted", {"containers": [RESTRICTED_CONTAINER]}, True),
        (
            "privileged",
            {"hostPID": True, "containers": [{"name": "c", "image": PAUSE}]},
            True,
        ),
    ],
)
async def test_pod_security_label_admission(
    target: Target,
    level: str,
    spec: dict,  # type: ignore[type-arg]
    admitted: bool,
) -> None:
    ns = await target.namespace()
    assert await target.kube.patch_namespace_labels(ns, {ENFORCE: level})
    status, body = await _create_once_labels_apply(target, ns, spec, 201 if admitted else 403)
    if admitted:
        assert status == 201, body
    else:
        assert status == 403, body
        assert body["reason"] == "Forbidden"
        assert f'violates PodSecurity "{level}:latest"' in body["message"]


async def test_pod_security_label_removed_admits_again(target: Target) -> None:
    ns = await target.namespace({ENFORCE: "restricted"})
    spec = {"containers": [{"name": "c", "image": PAUSE}]}
    assert (await _create(target, ns, spec))[0] == 403
    assert await target.kube.patch_namespace_labels(ns, {ENFORCE: None})
    labels = {n.name: n.labels for n in await target.kube.list_namespaces()}[ns]
    assert ENFORCE not in labels
    assert (await _create_once_labels_apply(target, ns, spec, 201))[0] == 201
    assert not await target.kube.patch_namespace_labels("no-such-namespace", {ENFORCE: "baseline"})


async def test_rbac_objects_round_trip(target: Target) -> None:
    ns = await target.namespace()
    labels = {TEST_LABEL: "1", "app.kubernetes.io/managed-by": "healer"}
    name = f"r-{uuid.uuid4().hex[:8]}"
    rules = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}
    role = await target.kube.create_rbac("ClusterRole", name, None, labels, rules)
    assert role.content["rules"] == rules["rules"]
    binding = await target.kube.create_rbac(
        "RoleBinding",
        name,
        ns,
        labels,
        {
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
        },
    )
    assert binding.namespace == ns
    with pytest.raises(TemporaryError):  # 409: it exists
        await target.kube.create_rbac("ClusterRole", name, None, labels, rules)
    got = await target.kube.get_rbac("ClusterRole", name)
    assert got is not None and got.labels == labels
    wider = {"rules": [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get"]}]}
    replaced = await target.kube.replace_rbac(
        "ClusterRole", name, None, labels, wider, resource_version=got.resource_version
    )
    assert replaced is not None and replaced.content["rules"] == wider["rules"]
    with pytest.raises(TemporaryError):  # 409: read at a stale version
        await target.kube.replace_rbac(
            "ClusterRole", name, None, labels, rules, resource_version=got.resource_version
        )
    listed = await target.kube.list_rbac("RoleBinding", label_selector=TEST_LABEL)
    assert (ns, name) in {(b.namespace, b.name) for b in listed}
    # A binding's roleRef cannot change: 422 from the API, a PermanentError for healer.
    status, body = await target.call(
        "PATCH",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}",
        {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"}},
        content_type="application/merge-patch+json",
    )
    assert status == 422, body
    assert await target.kube.delete_rbac("RoleBinding", name, ns)
    assert not await target.kube.delete_rbac("RoleBinding", name, ns)
    assert await target.kube.delete_rbac("ClusterRole", name)
    assert await target.kube.get_rbac("ClusterRole", name) is None
