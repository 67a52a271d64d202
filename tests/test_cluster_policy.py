"""Pod Security Admission labels and RBAC from the config: the pure diff (table tests) and the
reconcile loop against the fake API server over HTTP, with drift put back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from healer.config import ClusterConfig, PodSecurityConfig
from healer.errors import PermanentError
from healer.kube.client import KubeClient
from healer.kube.records import NamespaceInfo, RbacObject
from healer.lab.apiserver.server import FakeApiServer
from healer.provisioning.cluster_policy import (
    DesiredObject,
    desired_namespace_labels,
    desired_rbac,
    plan_namespace_labels,
    plan_rbac,
    reconcile_cluster_policy,
)
from tests import realkube
from tests.provisioning_support import cluster

E, A, W = (f"pod-security.kubernetes.io/{m}" for m in ("enforce", "audit", "warn"))
MANAGED = {"healer.io/managed": "true", "healer.io/cluster": "prod"}

PSA = PodSecurityConfig.model_validate(
    {
        "default": {
            "enforce": "baseline",
            "audit": "restricted",
            "warn": "restricted",
            "version": "latest",
        },
        "namespaces": {
            "payments": {"enforce": "restricted", "version": "v1.31"},
            "ci": {"enforce": "privileged"},
        },
        "exemptNamespaces": ["kube-system"],
    }
)

# ====================================================================== pure: Pod Security


@pytest.mark.parametrize(
    ("namespace", "expected"),
    [
        (
            "default",
            {E: "baseline", A: "restricted", W: "restricted"}
            | {f"{k}-version": "latest" for k in (E, A, W)},
        ),
        (
            "payments",
            {E: "restricted", A: "restricted", W: "restricted"}
            | {f"{k}-version": "v1.31" for k in (E, A, W)},
        ),
        (
            "ci",
            {E: "privileged", A: "restricted", W: "restricted"}
            | {f"{k}-version": "latest" for k in (E, A, W)},
        ),
        ("kube-system", None),
    ],
)
def test_desired_namespace_labels(namespace: str, expected: dict[str, str] | None) -> None:
    assert desired_namespace_labels(PSA, namespace) == expected


def test_unset_modes_and_versions_mean_absent_labels() -> None:
    psa = PodSecurityConfig.model_validate({"default": {"enforce": "restricted"}})
    assert desired_namespace_labels(psa, "apps") == {
        E: "restricted",
        f"{E}-version": None,
        A: None,
        f"{A}-version": None,
        W: None,
        f"{W}-version": None,
    }


def _ns(name: str, **labels: str) -> NamespaceInfo:
    return NamespaceInfo(name=name, labels=dict(labels), resource_version="1")


def test_plan_namespace_labels_patches_only_the_difference() -> None:
    psa = PodSecurityConfig.model_validate({"default": {"enforce": "baseline"}})
    in_place = _ns("good", **{E: "baseline", "team": "a"})
    drifted = _ns("drifted", **{E: "privileged", "team": "b"})
    extra = _ns("extra", **{E: "baseline", W: "restricted"})  # warn set by hand: not configured
    exempt = _ns("kube-system", **{E: "privileged"})
    changes = plan_namespace_labels(psa, [in_place, drifted, extra, exempt])
    assert [(c.namespace, c.patch) for c in changes] == [
        ("drifted", {E: "baseline"}),
        ("extra", {W: None}),
    ]
    assert changes[0].describe() == f"namespace drifted: {E}=baseline (was privileged)"
    assert changes[1].describe() == f"namespace extra: {W}=(removed) (was restricted)"


# ====================================================================== pure: RBAC

RBAC = {
    "clusterRoles": [
        {
            "name": "node-viewer",
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}],
        }
    ],
    "roles": [
        {
            "name": "deployer",
            "namespace": "apps",
            "rules": [
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "update"]}
            ],
        }
    ],
    "bindings": [
        {
            "name": "ops-view",
            "roleRef": {"kind": "ClusterRole", "name": "node-viewer"},
            "subjects": [{"kind": "Group", "name": "ops"}],
        },
        {
            "name": "ci-deploys",
            "namespace": "apps",
            "roleRef": {"kind": "Role", "name": "deployer"},
            "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "ci"}],
        },
    ],
}


def _as_server_returns(
    d: DesiredObject, labels: dict[str, str] | None = None, **content: Any
) -> RbacObject:
    return RbacObject(
        kind=d.kind,
        name=d.name,
        namespace=d.namespace,
        labels=dict(MANAGED if labels is None else labels),
        content=content or dict(d.content),
        resource_version="5",
    )


def test_desired_rbac_shapes() -> None:
    desired = {d.key: d for d in desired_rbac(cluster(rbac=RBAC).rbac)}  # type: ignore[arg-type]
    assert desired[("ClusterRoleBinding", None, "ops-view")].content == {
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "node-viewer",
        },
        "subjects": [{"kind": "Group", "name": "ops", "apiGroup": "rbac.authorization.k8s.io"}],
    }
    assert desired[("RoleBinding", "apps", "ci-deploys")].content["subjects"] == [
        {"kind": "ServiceAccount", "name": "ci", "namespace": "ci"}
    ]
    assert desired[("Role", "apps", "deployer")].content == {
        "rules": [{"verbs": ["get", "update"], "apiGroups": ["apps"], "resources": ["deployments"]}]
    }


def test_plan_rbac_table() -> None:
    desired = desired_rbac(cluster(rbac=RBAC).rbac)  # type: ignore[arg-type]
    cr, role, crb, rb = (
        next(d for d in desired if d.kind == k)
        for k in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
    )
    assert [a.verb for a in plan_rbac("prod", desired, [])] == ["create"] * 4

    # In place, as a server returns it (it adds apiGroup "" to ServiceAccount subjects): nothing.
    sa_defaulted = {
        "roleRef": rb.content["roleRef"],
        "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "ci", "apiGroup": ""}],
    }
    actual = [
        _as_server_returns(cr),
        _as_server_returns(role),
        _as_server_returns(crb),
        _as_server_returns(rb, **sa_defaulted),
    ]
    assert plan_rbac("prod", desired, actual) == []

    # A rule edited by hand, a roleRef changed, labels dropped, a stale object, a stranger.
    edited = _as_server_returns(
        role, rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    )
    moved = _as_server_returns(
        crb,
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        subjects=crb.content["subjects"],
    )
    stranger = _as_server_returns(cr, labels={"team": "platform"})
    stale = RbacObject("ClusterRoleBinding", "old", None, dict(MANAGED), {}, "9")
    other_cluster = RbacObject(
        "ClusterRoleBinding", "theirs", None, {**MANAGED, "healer.io/cluster": "staging"}, {}, "9"
    )
    actions = plan_rbac(
        "prod", desired, [edited, moved, stranger, stale, other_cluster, _as_server_returns(rb)]
    )
    assert [(a.verb, a.kind, a.name) for a in actions] == [
        ("delete", "ClusterRoleBinding", "old"),
        ("conflict", "ClusterRole", "node-viewer"),
        ("update", "Role", "deployer"),
        ("recreate", "ClusterRoleBinding", "ops-view"),
    ]
    assert actions[2].reason == "rules drifted"


# ============================================= HTTP: the fake API server and the real one


@pytest.fixture
def policy_cluster() -> ClusterConfig:
    return cluster(
        podSecurity={
            "default": {
                "enforce": "baseline",
                "audit": "restricted",
                "warn": "restricted",
                "version": "latest",
            },
            "namespaces": {"payments": {"enforce": "restricted"}},
        },
        rbac=RBAC,
    )


@pytest.fixture(params=["fake", realkube.REAL])
def cluster_api(
    request: pytest.FixtureRequest, fake_api: FakeApiServer, kube: KubeClient
) -> Iterator[tuple[Any, KubeClient]]:
    """The reconcile tests run on the fake API server and on the real one (tests/realkube.py):
    the server's namespace methods (add_namespace, namespace) and a client on it."""
    if request.param == "fake":
        yield fake_api, kube
        return
    yield request.getfixturevalue("realkube"), request.getfixturevalue("real_kube_client")


def _labels(api: Any, ns: str) -> dict[str, str]:
    obj = api.namespace(ns)
    assert obj is not None
    return {
        k: v for k, v in obj["metadata"].get("labels", {}).items() if k.startswith("pod-security")
    }


async def test_pod_security_labels_applied_and_drift_put_back(
    cluster_api: tuple[Any, KubeClient], policy_cluster: ClusterConfig
) -> None:
    api, kube = cluster_api
    api.add_namespace("payments", {"team": "money"})
    api.add_namespace("apps")
    changes = await reconcile_cluster_policy(policy_cluster.model_copy(update={"rbac": None}), kube)
    assert any(c.startswith("namespace payments:") for c in changes)
    assert _labels(api, "payments")[E] == "restricted"
    assert _labels(api, "apps") == {
        E: "baseline",
        A: "restricted",
        W: "restricted",
        f"{E}-version": "latest",
        f"{A}-version": "latest",
        f"{W}-version": "latest",
    }
    assert _labels(api, "kube-system") == {}  # exempt: untouched
    assert api.namespace("payments")["metadata"]["labels"]["team"] == "money"  # type: ignore[index]

    no_rbac = policy_cluster.model_copy(update={"rbac": None})
    assert await reconcile_cluster_policy(no_rbac, kube) == []  # idempotent

    # Someone relaxes a namespace by hand, and labels another one.
    await kube.patch_namespace_labels("apps", {E: "privileged", f"{W}-version": None})
    api.add_namespace("default", {A: "privileged"})
    changes = await reconcile_cluster_policy(no_rbac, kube)
    assert sorted(changes) == [
        f"namespace apps: {E}=baseline (was privileged), {W}-version=latest",
        f"namespace default: {A}=restricted (was privileged)",
    ]
    assert _labels(api, "apps")[E] == "baseline"
    assert _labels(api, "default")[A] == "restricted"
    assert await reconcile_cluster_policy(no_rbac, kube) == []


async def test_dry_run_reports_without_touching(
    cluster_api: tuple[Any, KubeClient], policy_cluster: ClusterConfig
) -> None:
    api, kube = cluster_api
    api.add_namespace("apps")
    planned = await reconcile_cluster_policy(policy_cluster, kube, dry_run=True)
    assert "ClusterRole node-viewer: created" in planned
    assert any(p.startswith("namespace apps:") for p in planned)
    assert _labels(api, "apps") == {}
    assert await kube.get_rbac("ClusterRole", "node-viewer") is None


async def test_rbac_created_edited_by_hand_put_back_and_removed_from_config(
    cluster_api: tuple[Any, KubeClient], policy_cluster: ClusterConfig
) -> None:
    api, kube = cluster_api
    api.add_namespace("apps")
    rbac_only = policy_cluster.model_copy(update={"pod_security": None})
    changes = await reconcile_cluster_policy(rbac_only, kube)
    assert sorted(changes) == [
        "ClusterRole node-viewer: created",
        "ClusterRoleBinding ops-view: created",
        "Role apps/deployer: created",
        "RoleBinding apps/ci-deploys: created",
    ]
    role = await kube.get_rbac("Role", "deployer", "apps")
    assert role is not None and role.labels == MANAGED
    assert role.content["rules"][0]["verbs"] == ["get", "update"]
    assert await reconcile_cluster_policy(rbac_only, kube) == []

    # kubectl edit: someone widens the role and adds a label of their own.
    await kube.replace_rbac(
        "Role",
        "deployer",
        "apps",
        {**role.labels, "edited-by": "bob"},
        {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
        resource_version=role.resource_version,
    )
    assert await reconcile_cluster_policy(rbac_only, kube) == [
        "Role apps/deployer: put back (rules drifted)"
    ]
    restored = await kube.get_rbac("Role", "deployer", "apps")
    assert restored is not None
    assert restored.content == role.content
    assert restored.labels["edited-by"] == "bob"  # other labels are not healer's to remove

    # A binding leaves the config: it is deleted; an unlabelled one nobody configured stays.
    await kube.create_rbac(
        "ClusterRoleBinding",
        "hand-made",
        None,
        {},
        {
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "User", "name": "eve", "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )
    fewer = rbac_only.model_copy(
        update={"rbac": rbac_only.rbac.model_copy(update={"bindings": rbac_only.rbac.bindings[1:]})}  # type: ignore[union-attr]
    )
    assert await reconcile_cluster_policy(fewer, kube) == [
        "ClusterRoleBinding ops-view: deleted (no longer in the config)"
    ]
    assert await kube.get_rbac("ClusterRoleBinding", "ops-view") is None
    assert await kube.get_rbac("ClusterRoleBinding", "hand-made") is not None
    assert await kube.get_rbac("ClusterRole", "node-viewer") is not None


async def test_roleref_change_recreates_the_binding(
    cluster_api: tuple[Any, KubeClient], policy_cluster: ClusterConfig
) -> None:
    api, kube = cluster_api
    api.add_namespace("apps")
    rbac_only = policy_cluster.model_copy(update={"pod_security": None})
    await reconcile_cluster_policy(rbac_only, kube)
    binding = await kube.get_rbac("ClusterRoleBinding", "ops-view")
    assert binding is not None
    # The API refuses to change a roleRef in place, as the real one does.
    changed = {
        **binding.content,
        "roleRef": {**binding.content["roleRef"], "name": "cluster-admin"},
    }
    with pytest.raises(PermanentError, match="cannot change roleRef"):
        await kube.replace_rbac(
            "ClusterRoleBinding",
            "ops-view",
            None,
            binding.labels,
            changed,
            resource_version=binding.resource_version,
        )
    # So someone deletes it and makes it point elsewhere; healer recreates it as configured.
    await kube.delete_rbac("ClusterRoleBinding", "ops-view")
    await kube.create_rbac("ClusterRoleBinding", "ops-view", None, binding.labels, changed)
    assert await reconcile_cluster_policy(rbac_only, kube) == [
        "ClusterRoleBinding ops-view: re-created (roleRef changed)"
    ]
    again = await kube.get_rbac("ClusterRoleBinding", "ops-view")
    assert again is not None and again.content["roleRef"]["name"] == "node-viewer"


async def test_an_object_healer_does_not_own_is_left_alone(
    cluster_api: tuple[Any, KubeClient], policy_cluster: ClusterConfig
) -> None:
    api, kube = cluster_api
    api.add_namespace("apps")
    theirs = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    await kube.create_rbac("ClusterRole", "node-viewer", None, {"team": "platform"}, theirs)
    rbac_only = policy_cluster.model_copy(update={"pod_security": None})
    changes = await reconcile_cluster_policy(rbac_only, kube)
    assert "ClusterRole node-viewer: created" not in changes and len(changes) == 3
    kept = await kube.get_rbac("ClusterRole", "node-viewer")
    assert kept is not None and kept.content == theirs and kept.labels == {"team": "platform"}


async def test_one_refused_object_does_not_stop_the_others(
    fake_api: FakeApiServer, kube: KubeClient, policy_cluster: ClusterConfig
) -> None:
    fake_api.add_namespace("apps")
    fake_api.fail_next("POST", r"/clusterroles$", 422)
    rbac_only = policy_cluster.model_copy(update={"pod_security": None})
    changes = await reconcile_cluster_policy(rbac_only, kube)
    assert len(changes) == 3 and "ClusterRole node-viewer: created" not in changes
    assert await reconcile_cluster_policy(rbac_only, kube) == ["ClusterRole node-viewer: created"]
