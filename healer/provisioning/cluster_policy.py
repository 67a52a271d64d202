"""Pod Security Admission labels and RBAC objects from the config, kept in place in the cluster.

Two halves, as everywhere in healer:

* pure: :func:`desired_namespace_labels` / :func:`plan_namespace_labels` and :func:`desired_rbac`
  / :func:`plan_rbac` compare what the config wants with what the API returned and produce
  changes; they are table-tested without a cluster;
* thin I/O: :func:`reconcile_cluster_policy` reads the cluster through
  :class:`healer.kube.client.KubeClient`, plans, applies, and returns one line per change. The daemon
  runs it periodically, so drift (a label changed by hand, a role edited with kubectl) is put
  back.

Ownership rules, so healer never fights or destroys what is not its own:

* Pod Security: on every namespace that is not exempt (``podSecurity.exemptNamespaces``, default
  ``kube-system``), healer owns the six
  ``pod-security.kubernetes.io/{enforce,audit,warn}[-version]`` labels: a configured mode is
  set, an unconfigured one removed. Other labels are never touched. A namespace's entry
  overrides the cluster default mode by mode.
* RBAC: objects healer creates carry ``healer.io/managed=true`` and ``healer.io/cluster=<name>``.
  An object of the same name without those labels is someone else's: reported as a conflict and
  left alone. Only labelled objects are updated, and only labelled objects that left the config
  are deleted. A binding whose ``roleRef`` changed is deleted and created again (the API refuses
  to change a roleRef in place).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from healer.clock import Clock, RealClock
from healer.config import (
    BindingConfig,
    ClusterConfig,
    PodSecurityConfig,
    RbacConfig,
    RoleConfig,
)
from healer.errors import KubeUnavailable, PermanentError, TemporaryError
from healer.kube.client import KubeClient
from healer.kube.records import NamespaceInfo, RbacObject
from healer.model import TAG_CLUSTER, TAG_MANAGED
from healer.provisioning.kubeadm.token_refresh import refresh_bootstrap_token

log = structlog.get_logger("healer.provisioning")

PSA_PREFIX = "pod-security.kubernetes.io/"
PSA_MODES = ("enforce", "audit", "warn")
PSA_LABELS = tuple(
    f"{PSA_PREFIX}{mode}{suffix}" for mode in PSA_MODES for suffix in ("", "-version")
)
RBAC_API_GROUP = "rbac.authorization.k8s.io"

# ====================================================================== Pod Security Admission


def desired_namespace_labels(
    psa: PodSecurityConfig, namespace: str
) -> dict[str, str | None] | None:
    """The six PSA labels the namespace should have (``None``: must be absent), or None when
    the namespace is exempt and healer leaves its labels alone."""
    if namespace in psa.exempt_namespaces:
        return None
    own = psa.namespaces.get(namespace)
    version = (own.version if own and own.version else None) or psa.default.version
    out: dict[str, str | None] = {}
    for mode in PSA_MODES:
        level = (getattr(own, mode) if own else None) or getattr(psa.default, mode)
        out[f"{PSA_PREFIX}{mode}"] = level
        out[f"{PSA_PREFIX}{mode}-version"] = version if level is not None and version else None
    return out


@dataclass(frozen=True)
class LabelChange:
    namespace: str
    patch: dict[str, str | None]  # label -> new value, None removes it
    before: dict[str, str]  # the same labels' values before, for the report

    def describe(self) -> str:
        parts = []
        for key, value in self.patch.items():
            was = self.before.get(key)
            now = "(removed)" if value is None else value
            parts.append(f"{key}={now}" + (f" (was {was})" if was is not None else ""))
        return f"namespace {self.namespace}: " + ", ".join(parts)


def plan_namespace_labels(
    psa: PodSecurityConfig, namespaces: Iterable[NamespaceInfo]
) -> list[LabelChange]:
    changes: list[LabelChange] = []
    for ns in sorted(namespaces, key=lambda n: n.name):
        desired = desired_namespace_labels(psa, ns.name)
        if desired is None:
            continue
        patch = {
            key: value
            for key, value in desired.items()
            if ns.labels.get(key) != value and not (value is None and key not in ns.labels)
        }
        if patch:
            before = {k: ns.labels[k] for k in patch if k in ns.labels}
            changes.append(LabelChange(ns.name, patch, before))
    return changes


# ====================================================================== RBAC

Key = tuple[str, str | None, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class DesiredObject:
    kind: str
    name: str
    namespace: str | None
    content: dict[str, Any]

    @property
    def key(self) -> Key:
        return (self.kind, self.namespace, self.name)


def _rules(role: RoleConfig) -> list[dict[str, Any]]:
    out = []
    for rule in role.rules:
        item: dict[str, Any] = {"verbs": list(rule.verbs)}
        for field, value in (
            ("apiGroups", rule.api_groups),
            ("resources", rule.resources),
            ("resourceNames", rule.resource_names),
            ("nonResourceURLs", rule.non_resource_urls),
        ):
            if value:
                item[field] = list(value)
        out.append(item)
    return out


def _binding_content(binding: BindingConfig) -> dict[str, Any]:
    subjects = []
    for s in binding.subjects:
        subject: dict[str, Any] = {"kind": s.kind, "name": s.name}
        if s.kind == "ServiceAccount":
            subject["namespace"] = s.namespace
        else:
            subject["apiGroup"] = RBAC_API_GROUP
            if s.namespace is not None:
                subject["namespace"] = s.namespace
        subjects.append(subject)
    return {
        "roleRef": {
            "apiGroup": RBAC_API_GROUP,
            "kind": binding.role_ref.kind,
            "name": binding.role_ref.name,
        },
        "subjects": subjects,
    }


def desired_rbac(rbac: RbacConfig) -> list[DesiredObject]:
    """Roles first, then bindings: the order they are created in."""
    out = [
        DesiredObject("ClusterRole", r.name, None, {"rules": _rules(r)}) for r in rbac.cluster_roles
    ]
    out += [DesiredObject("Role", r.name, r.namespace, {"rules": _rules(r)}) for r in rbac.roles]
    for b in rbac.bindings:
        kind = "RoleBinding" if b.namespace is not None else "ClusterRoleBinding"
        out.append(DesiredObject(kind, b.name, b.namespace, _binding_content(b)))
    return out


def normalize_content(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """The payload as the API server stores it, so that what healer wrote compares equal to
    what it reads back: empty lists dropped (Go's omitempty), the subject apiGroup defaulted."""
    if kind in ("Role", "ClusterRole"):
        out: dict[str, Any] = {
            "rules": [
                {k: list(v) for k, v in rule.items() if v not in (None, [], "")}
                for rule in content.get("rules") or []
            ]
        }
        if content.get("aggregationRule"):
            out["aggregationRule"] = content["aggregationRule"]
        return out
    subjects = []
    for subject in content.get("subjects") or []:
        s = {k: v for k, v in subject.items() if v not in (None, "")}
        if s.get("kind") in ("User", "Group"):
            s.setdefault("apiGroup", RBAC_API_GROUP)
        subjects.append(s)
    return {"roleRef": dict(content.get("roleRef") or {}), "subjects": subjects}


def managed_labels(cluster: str) -> dict[str, str]:
    return {TAG_MANAGED: "true", TAG_CLUSTER: cluster}


def is_managed(obj: RbacObject, cluster: str) -> bool:
    return obj.labels.get(TAG_MANAGED) == "true" and obj.labels.get(TAG_CLUSTER) == cluster


Verb = Literal["create", "update", "recreate", "delete", "conflict"]


@dataclass(frozen=True)
class RbacAction:
    verb: Verb
    kind: str
    name: str
    namespace: str | None
    desired: DesiredObject | None = None
    actual: RbacObject | None = None
    reason: str = ""

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        text = {
            "create": "created",
            "update": "put back",
            "recreate": "re-created (roleRef changed)",
            "delete": "deleted (no longer in the config)",
            "conflict": "left alone: exists without healer's labels",
        }[self.verb]
        return f"{self.kind} {where}: {text}" + (f" ({self.reason})" if self.reason else "")


def plan_rbac(
    cluster: str, desired: Iterable[DesiredObject], actual: Iterable[RbacObject]
) -> list[RbacAction]:
    """``actual``: healer's labelled objects of the cluster plus whatever exists under the
    desired names. Deletions come first (bindings before roles), then the rest in config order."""
    by_key = {(a.kind, a.namespace, a.name): a for a in actual}
    wanted = list(desired)
    wanted_keys = {d.key for d in wanted}
    labels = managed_labels(cluster)
    actions: list[RbacAction] = []
    order = {"RoleBinding": 0, "ClusterRoleBinding": 0, "Role": 1, "ClusterRole": 1}
    stale = [o for k, o in by_key.items() if k not in wanted_keys and is_managed(o, cluster)]
    for o in sorted(stale, key=lambda o: (order[o.kind], o.kind, o.namespace or "", o.name)):
        actions.append(RbacAction("delete", o.kind, o.name, o.namespace, actual=o))
    for d in wanted:
        a = by_key.get(d.key)
        if a is None:
            actions.append(RbacAction("create", d.kind, d.name, d.namespace, desired=d))
            continue
        if not is_managed(a, cluster):
            actions.append(RbacAction("conflict", d.kind, d.name, d.namespace, d, a))
            continue
        want = normalize_content(d.kind, d.content)
        have = normalize_content(a.kind, a.content)
        if d.kind.endswith("Binding") and want["roleRef"] != have["roleRef"]:
            actions.append(RbacAction("recreate", d.kind, d.name, d.namespace, d, a))
        elif want != have:
            changed = sorted(k for k in {*want, *have} if want.get(k) != have.get(k))
            actions.append(
                RbacAction(
                    "update",
                    d.kind,
                    d.name,
                    d.namespace,
                    d,
                    a,
                    reason=f"{', '.join(changed)} drifted",
                )
            )
        elif any(a.labels.get(k) != v for k, v in labels.items()):
            actions.append(RbacAction("update", d.kind, d.name, d.namespace, d, a, reason="labels"))
    return actions


# ====================================================================== I/O


async def _actual_rbac(
    kube: KubeClient, cluster: str, desired: list[DesiredObject]
) -> list[RbacObject]:
    selector = ",".join(f"{k}={v}" for k, v in managed_labels(cluster).items())
    found: dict[Key, RbacObject] = {}
    for kind in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"):
        for obj in await kube.list_rbac(kind, label_selector=selector):
            found[(obj.kind, obj.namespace, obj.name)] = obj
    for d in desired:
        if d.key not in found:
            named = await kube.get_rbac(d.kind, d.name, d.namespace)
            if named is not None:
                found[d.key] = named
    return list(found.values())


async def _apply_rbac(kube: KubeClient, cluster: str, action: RbacAction) -> bool:
    labels = managed_labels(cluster)
    if action.verb == "delete":
        return await kube.delete_rbac(action.kind, action.name, action.namespace)
    d = action.desired
    assert d is not None
    content = normalize_content(d.kind, d.content)
    if action.verb == "recreate":
        await kube.delete_rbac(action.kind, action.name, action.namespace)
    if action.verb in ("create", "recreate"):
        await kube.create_rbac(d.kind, d.name, d.namespace, labels, content)
        return True
    assert action.actual is not None
    # Labels other than healer's are kept; healer's are put back.
    merged = {**action.actual.labels, **labels}
    replaced = await kube.replace_rbac(
        d.kind,
        d.name,
        d.namespace,
        merged,
        content,
        resource_version=action.actual.resource_version,
    )
    # None: deleted between our read and our write; the next pass creates it.
    return replaced is not None


async def reconcile_pod_security(
    cluster: ClusterConfig, kube: KubeClient, *, dry_run: bool = False
) -> list[str]:
    psa = cluster.pod_security
    if psa is None:
        return []
    namespaces = await kube.list_namespaces()
    missing = sorted(set(psa.namespaces) - {ns.name for ns in namespaces})
    if missing:
        log.info("cluster_policy.namespaces_missing", cluster=cluster.name, namespaces=missing)
    changes: list[str] = []
    for change in plan_namespace_labels(psa, namespaces):
        if not dry_run and not await kube.patch_namespace_labels(change.namespace, change.patch):
            continue  # deleted meanwhile: nothing to label
        text = change.describe()
        changes.append(text)
        if not dry_run:
            log.info(
                "cluster_policy.namespace_labelled",
                cluster=cluster.name,
                namespace=change.namespace,
                change=text,
            )
    return changes


async def reconcile_rbac(
    cluster: ClusterConfig, kube: KubeClient, *, dry_run: bool = False
) -> list[str]:
    """Put the configured RBAC objects in place. Without an ``rbac`` section healer manages no
    RBAC at all (and deletes nothing); with an empty one it deletes what it created before."""
    if cluster.rbac is None:
        return []
    desired = desired_rbac(cluster.rbac)
    actions = plan_rbac(cluster.name, desired, await _actual_rbac(kube, cluster.name, desired))
    changes: list[str] = []
    for action in actions:
        text = action.describe()
        if action.verb == "conflict":
            log.warning(
                "cluster_policy.rbac_conflict",
                cluster=cluster.name,
                kind=action.kind,
                name=action.name,
                namespace=action.namespace,
                hint=f"add the labels {TAG_MANAGED}=true,{TAG_CLUSTER}={cluster.name} to let "
                "healer manage it, or rename it in the config",
            )
            continue
        if dry_run:
            changes.append(text)
            continue
        try:
            done = await _apply_rbac(kube, cluster.name, action)
        except KubeUnavailable:
            raise  # the whole API is away: stop this pass, the next one starts over
        except (PermanentError, TemporaryError) as exc:
            # One refused object (invalid rule, concurrent edit) must not block the others.
            log.warning(
                "cluster_policy.rbac_failed",
                cluster=cluster.name,
                kind=action.kind,
                name=action.name,
                namespace=action.namespace,
                verb=action.verb,
                error=str(exc),
            )
            continue
        if done:
            changes.append(text)
            log.info(
                "cluster_policy.rbac_changed",
                cluster=cluster.name,
                kind=action.kind,
                name=action.name,
                namespace=action.namespace,
                verb=action.verb,
            )
    return changes


async def reconcile_cluster_policy(
    cluster_cfg: ClusterConfig,
    kube: KubeClient,
    *,
    dry_run: bool = False,
    state_dir: Path | None = None,
    clock: Clock | None = None,
) -> list[str]:
    """One reconcile pass of Pod Security labels and RBAC for one cluster, and, given healer's
    ``state_dir`` for a cluster with a ``kubernetes`` section, of the join token's validity.
    Returns one line per change made (or, with ``dry_run``, that would be made). Safe to run
    at any interval; raises :class:`healer.errors.KubeUnavailable` when the API cannot be
    reached."""
    changes = await reconcile_pod_security(cluster_cfg, kube, dry_run=dry_run)
    changes += await reconcile_rbac(cluster_cfg, kube, dry_run=dry_run)
    if state_dir is not None and cluster_cfg.kubernetes is not None and not dry_run:
        now = (clock or RealClock()).wall()  # the token's expiry is the API server's time
        token = await refresh_bootstrap_token(cluster_cfg, kube, state_dir, now=now)
        if token is not None:
            changes.append(token)
    if changes and not dry_run:
        log.info("cluster_policy.reconciled", cluster=cluster_cfg.name, changes=len(changes))
    return changes
