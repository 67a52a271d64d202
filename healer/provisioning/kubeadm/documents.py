"""kubeadm's configuration documents (InitConfiguration, JoinConfiguration, ClusterConfiguration)
and the API server's own (EncryptionConfiguration, the audit Policy, AdmissionConfiguration):
pure functions of the cluster's config, the endpoint and the secrets.

The API server runs with ``authorization-mode: Node,RBAC``, ``profiling: false``, Secrets
encrypted at rest (``secretbox`` or ``aescbc``, ``identity`` last so existing plain Secrets stay
readable while being re-written), an optional audit policy, and Pod Security Admission defaults
when the cluster configures ``podSecurity``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from healer.config import ClusterConfig, KubernetesConfig, PodSecurityConfig, PoolConfig
from healer.errors import ConfigError
from healer.model import LABEL_CLUSTER, LABEL_POOL, LABEL_ROLE, LABEL_ZONE
from healer.provisioning.keystore import SecretValue
from healer.provisioning.kubeadm.endpoint import API_PORT, ApiEndpoint
from healer.provisioning.kubeadm.tokens import (
    BOOTSTRAP_TOKEN_GROUP,
    ENCRYPTION_KEY_NAME,
    KubeadmSecrets,
)
from healer.provisioning.pki import ApiSans

ENCRYPTION_DIR = "/etc/kubernetes/encryption"
ENCRYPTION_CONFIG = f"{ENCRYPTION_DIR}/config.yaml"
AUDIT_DIR = "/etc/kubernetes/audit"
AUDIT_POLICY = f"{AUDIT_DIR}/policy.yaml"
AUDIT_LOG_DIR = "/var/log/kubernetes/audit"
ADMISSION_DIR = "/etc/kubernetes/admission"
ADMISSION_CONFIG = f"{ADMISSION_DIR}/config.yaml"

# Kubelets may only set node labels outside these namespaces (NodeRestriction); a refused
# --node-labels entry stops the kubelet from starting at all.
_RESTRICTED_LABEL_SUFFIXES = ("kubernetes.io", "k8s.io")
_ALLOWED_KUBELET_LABELS = (
    "kubelet.kubernetes.io/",
    "node.kubernetes.io/",
    "topology.kubernetes.io/",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "node.kubernetes.io/instance-type",
)


def api_version(kubernetes_version: str) -> str:
    """v1beta4 from Kubernetes 1.31 (where it became the default), v1beta3 before."""
    minor = int(kubernetes_version.lstrip("v").split(".")[1])
    return "kubeadm.k8s.io/v1beta4" if minor >= 31 else "kubeadm.k8s.io/v1beta3"


def _args(version: str, values: dict[str, str]) -> Any:
    """extraArgs: a map in v1beta3, a list of name/value pairs in v1beta4."""
    if version.endswith("v1beta4"):
        return [{"name": k, "value": v} for k, v in values.items()]
    return dict(values)


def encryption_configuration(
    provider: str,
    key: SecretValue,
    *,
    name: str = ENCRYPTION_KEY_NAME,
    more: Sequence[tuple[str, SecretValue]] = (),
) -> dict[str, Any]:
    """Secrets encrypted with ``key`` (called ``name``), readable with the ``more`` keys too (a
    rotation: healer.provisioning.rotation); ``identity`` last reads Secrets written before."""
    keys = [{"name": name, "secret": key.reveal()}]
    keys += [{"name": n, "secret": k.reveal()} for n, k in more]
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {provider: {"keys": keys}},
                    {"identity": {}},
                ],
            }
        ],
    }


def default_audit_policy() -> dict[str, Any]:
    """Metadata for everything; the bodies of Secrets, ConfigMaps and token reviews are never
    logged (they hold credentials); RBAC changes with their bodies; noisy read-only health
    and system watches not at all."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
            {
                "level": "None",
                "users": ["system:kube-proxy"],
                "verbs": ["watch"],
                "resources": [{"group": "", "resources": ["endpoints", "services"]}],
            },
            {
                "level": "Metadata",
                "resources": [
                    {"group": "", "resources": ["secrets", "configmaps"]},
                    {"group": "authentication.k8s.io", "resources": ["tokenreviews"]},
                ],
            },
            {
                "level": "RequestResponse",
                "resources": [{"group": "rbac.authorization.k8s.io"}],
                "verbs": ["create", "update", "patch", "delete"],
            },
            {"level": "Metadata"},
        ],
    }


def audit_policy(k8s: KubernetesConfig) -> dict[str, Any]:
    path = k8s.audit.policy_file
    if path is None:
        return default_audit_policy()
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(
            f"kubernetes.audit.policyFile {path}: cannot read: {exc.strerror}"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"kubernetes.audit.policyFile {path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "Policy":
        raise ConfigError(
            f"kubernetes.audit.policyFile {path}: expected an audit.k8s.io/v1 Policy document"
        )
    return doc


def admission_configuration(psa: PodSecurityConfig) -> dict[str, Any]:
    """The cluster-wide Pod Security Admission defaults and exemptions, so the default holds
    for every namespace from its first pod on, before healer has labelled it."""
    defaults: dict[str, str] = {}
    for mode in ("enforce", "audit", "warn"):
        level = getattr(psa.default, mode)
        defaults[mode] = level or "privileged"
        defaults[f"{mode}-version"] = psa.default.version or "latest"
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [
            {
                "name": "PodSecurity",
                "configuration": {
                    "apiVersion": "pod-security.admission.config.k8s.io/v1",
                    "kind": "PodSecurityConfiguration",
                    "defaults": defaults,
                    "exemptions": {
                        "usernames": [],
                        "runtimeClasses": [],
                        "namespaces": list(psa.exempt_namespaces),
                    },
                },
            }
        ],
    }


def _volume(name: str, path: str, *, read_only: bool) -> dict[str, Any]:
    return {
        "name": name,
        "hostPath": path,
        "mountPath": path,
        "readOnly": read_only,
        "pathType": "DirectoryOrCreate",
    }


def cluster_configuration(
    cluster: ClusterConfig, endpoint: ApiEndpoint, sans: ApiSans
) -> dict[str, Any]:
    k8s = cluster.kubernetes
    assert k8s is not None
    version = api_version(k8s.version)
    args: dict[str, str] = {
        "authorization-mode": "Node,RBAC",
        "encryption-provider-config": ENCRYPTION_CONFIG,
        "profiling": "false",
    }
    volumes = [_volume("healer-encryption", ENCRYPTION_DIR, read_only=True)]
    if k8s.audit.enabled:
        args |= {
            "audit-policy-file": AUDIT_POLICY,
            "audit-log-path": f"{AUDIT_LOG_DIR}/audit.log",
            "audit-log-maxage": str(k8s.audit.max_age_days),
            "audit-log-maxbackup": str(k8s.audit.max_backups),
            "audit-log-maxsize": str(k8s.audit.max_size_mb),
        }
        volumes += [
            _volume("healer-audit-policy", AUDIT_DIR, read_only=True),
            _volume("healer-audit-log", AUDIT_LOG_DIR, read_only=False),
        ]
    if cluster.pod_security is not None:
        args["admission-control-config-file"] = ADMISSION_CONFIG
        volumes.append(_volume("healer-admission", ADMISSION_DIR, read_only=True))
    quiet = {"profiling": "false"}
    return {
        "apiVersion": version,
        "kind": "ClusterConfiguration",
        "clusterName": cluster.name,
        "kubernetesVersion": k8s.version,
        "controlPlaneEndpoint": endpoint.address,
        "networking": {
            "podSubnet": k8s.pod_subnet,
            "serviceSubnet": k8s.service_subnet,
            "dnsDomain": k8s.dns_domain,
        },
        "apiServer": {
            "certSANs": list(sans.all),
            "extraArgs": _args(version, args),
            "extraVolumes": volumes,
        },
        "controllerManager": {"extraArgs": _args(version, quiet)},
        "scheduler": {"extraArgs": _args(version, quiet)},
    }


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s"


def kubelet_labels(cluster: ClusterConfig, pool: PoolConfig, name: str = "") -> str:
    """``--node-labels`` for the kubelet: healer's identity labels, the zone of machine ``name``
    (:meth:`PoolConfig.zone_for`, where it was created; the zone guards read it) and the pool's
    labels the kubelet is allowed to set on itself (the rest would stop it from starting)."""
    labels = {LABEL_CLUSTER: cluster.name, LABEL_POOL: pool.name, LABEL_ROLE: str(pool.role)}
    zone = pool.zone_for(name)
    if zone:
        labels[LABEL_ZONE] = zone
    for key, value in pool.labels.items():
        prefix = key.split("/", 1)[0] if "/" in key else ""
        restricted = any(
            prefix == s or prefix.endswith("." + s) for s in _RESTRICTED_LABEL_SUFFIXES
        )
        if not restricted or key.startswith(_ALLOWED_KUBELET_LABELS):
            labels[key] = value
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _node_registration(version: str, name: str, labels: str) -> dict[str, Any]:
    return {"name": name, "kubeletExtraArgs": _args(version, {"node-labels": labels})}


def init_configuration(
    k8s: KubernetesConfig, secrets_: KubeadmSecrets, *, name: str, labels: str
) -> dict[str, Any]:
    version = api_version(k8s.version)
    return {
        "apiVersion": version,
        "kind": "InitConfiguration",
        "bootstrapTokens": [
            {
                "token": secrets_.bootstrap_token.reveal(),
                "description": "healer: machines join with this token",
                "ttl": _duration(k8s.bootstrap_token_ttl),
                "usages": ["signing", "authentication"],
                "groups": [BOOTSTRAP_TOKEN_GROUP],
            }
        ],
        "nodeRegistration": _node_registration(version, name, labels),
        "localAPIEndpoint": {"bindPort": API_PORT},
    }


def join_configuration(
    k8s: KubernetesConfig,
    secrets_: KubeadmSecrets,
    *,
    endpoint: ApiEndpoint,
    ca_cert_hash: str,
    name: str,
    labels: str,
    control_plane: bool,
) -> dict[str, Any]:
    version = api_version(k8s.version)
    doc: dict[str, Any] = {
        "apiVersion": version,
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": endpoint.address,
                "token": secrets_.bootstrap_token.reveal(),
                "caCertHashes": [ca_cert_hash],
            }
        },
        "nodeRegistration": _node_registration(version, name, labels),
    }
    if control_plane:
        doc["controlPlane"] = {"localAPIEndpoint": {"bindPort": API_PORT}}
    return doc


def dump_documents(docs: Iterable[dict[str, Any]]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
