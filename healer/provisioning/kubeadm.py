"""kubeadm configuration for a cluster's machines: init on the first control-plane machine, join
for every other machine, first boot and replacements alike.

What it decides:

* ``controlPlaneEndpoint`` is the load balancer (``<host>:6443``), so machines join through a
  stable address while control-plane machines come and go. It comes from the config
  (``kubernetes.controlPlaneEndpoint``) or from ``endpoint.json`` in the cluster's state dir,
  which infrastructure provisioning writes with :func:`record_api_endpoint` once the load
  balancer exists.
* The API server runs with ``authorization-mode: Node,RBAC``, ``profiling: false``, Secrets
  encrypted at rest (an ``EncryptionConfiguration`` with a generated 32-byte key, ``secretbox``
  or ``aescbc``, ``identity`` last so existing plain Secrets stay readable while being
  re-written), an optional audit policy, and Pod Security Admission defaults when the cluster
  configures ``podSecurity``.
* The bootstrap token (from the config by reference, or generated) and the encryption key are
  kept 0600 in the state dir. They reach the machine only inside its user data, in files readable
  by root only; the bootstrap script deletes the kubeadm file with the token once the node has
  joined, and never passes a secret on a command line.
* The control-plane machines receive healer's CAs (:mod:`healer.provisioning.pki`), so kubeadm
  signs every machine's certificates with the same CA. No ``certificateKey`` is needed: it exists
  for kubeadm's own certificate upload, which expires after two hours and would leave later
  replacements unable to join.

Which machine runs ``kubeadm init`` is recorded once, in ``kubeadm/init-node``: the first
control-plane machine rendered for the cluster. Every other machine, including a replacement of
that first one, joins.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from healer.config import ClusterConfig, KubernetesConfig, PodSecurityConfig, PoolConfig
from healer.errors import ConfigError
from healer.kube import KubeClient, format_time, parse_time
from healer.model import LABEL_CLUSTER, LABEL_POOL, LABEL_ROLE, Role
from healer.provisioning.keystore import (
    ClusterState,
    SecretValue,
    private_value,
    read_private,
    replace_public,
    write_private,
)
from healer.provisioning.machinefiles import MachineFile
from healer.provisioning.pki import ApiSans, ClusterPki, api_server_sans

log = structlog.get_logger("healer.provisioning")

API_PORT = 6443
KUBEADM_CONFIG = "/etc/healer/kubeadm/kubeadm.yaml"
BOOTSTRAP_ENV = "/etc/healer/kubeadm/bootstrap.env"
BOOTSTRAP_SCRIPT = "/usr/local/sbin/healer-bootstrap"
PKI_DIR = "/etc/kubernetes/pki"
ENCRYPTION_DIR = "/etc/kubernetes/encryption"
ENCRYPTION_CONFIG = f"{ENCRYPTION_DIR}/config.yaml"
AUDIT_DIR = "/etc/kubernetes/audit"
AUDIT_POLICY = f"{AUDIT_DIR}/policy.yaml"
AUDIT_LOG_DIR = "/var/log/kubernetes/audit"
ADMISSION_DIR = "/etc/kubernetes/admission"
ADMISSION_CONFIG = f"{ADMISSION_DIR}/config.yaml"
ENCRYPTION_KEY_NAME = "healer-key-1"
# With 30 s between attempts and kubeadm's own 5-minute discovery timeout: about an hour.
JOIN_ATTEMPTS = 10

_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
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


# -------------------------------------------------------------------- the API endpoint


@dataclass(frozen=True)
class ApiEndpoint:
    host: str  # the load balancer's address or DNS name
    port: int = API_PORT
    dns_name: str | None = None  # a DNS name for the same address, added to the SANs

    @property
    def address(self) -> str:
        try:
            if ipaddress.ip_address(self.host).version == 6:
                return f"[{self.host}]:{self.port}"
        except ValueError:
            pass
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> ApiEndpoint:
    """``"10.0.0.10"``, ``"api.example.com:6443"``, ``"[fd00::1]:6443"``."""
    text = text.strip()
    m = re.fullmatch(
        r"\[(?P<v6>[0-9a-fA-F:.]+)\](?::(?P<p6>\d+))?|(?P<host>[^:\s]+)(?::(?P<port>\d+))?", text
    )
    if m is None:
        raise ConfigError(f"controlPlaneEndpoint {text!r}: expected host or host:port")
    host = m["v6"] or m["host"]
    port = int(m["p6"] or m["port"] or API_PORT)
    if not 0 < port < 65536:
        raise ConfigError(f"controlPlaneEndpoint {text!r}: port out of range")
    return ApiEndpoint(host=host, port=port)


def record_api_endpoint(
    state_dir: Path, cluster: str, host: str, *, port: int = API_PORT, dns_name: str | None = None
) -> Path:
    """Remember where the cluster's API is (the load balancer). Called by infrastructure
    provisioning once the load balancer exists; machines rendered afterwards join through it."""
    path = ClusterState(state_dir, cluster).path("endpoint.json")
    doc = {"host": host, "port": port, "dnsName": dns_name}
    replace_public(path, (json.dumps(doc, indent=2) + "\n").encode())
    log.info("provisioning.api_endpoint_recorded", cluster=cluster, host=host, port=port)
    return path


def load_api_endpoint(state: ClusterState) -> ApiEndpoint | None:
    path = state.root / "endpoint.json"
    try:
        doc = json.loads(path.read_text())
        return ApiEndpoint(
            host=str(doc["host"]),
            port=int(doc.get("port") or API_PORT),
            dns_name=doc.get("dnsName"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable API endpoint record: {exc}") from exc


def resolve_endpoint(state: ClusterState, k8s: KubernetesConfig) -> ApiEndpoint:
    if k8s.control_plane_endpoint:
        return parse_endpoint(k8s.control_plane_endpoint)
    recorded = load_api_endpoint(state)
    if recorded is None:
        raise ConfigError(
            f"cluster {state.cluster}: no Kubernetes API endpoint known yet; create the load "
            "balancer first (`healer apply`) or set kubernetes.controlPlaneEndpoint"
        )
    return recorded


# -------------------------------------------------------------------- secrets


@dataclass(frozen=True)
class KubeadmSecrets:
    bootstrap_token: SecretValue  # "abcdef.0123456789abcdef"
    encryption_key: SecretValue  # base64 of 32 random bytes

    @property
    def token_id(self) -> str:
        """The public half of the bootstrap token (safe to log)."""
        return self.bootstrap_token.reveal().split(".", 1)[0]


def generate_bootstrap_token() -> str:
    pick = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(22))
    return f"{pick[:6]}.{pick[6:]}"


def check_bootstrap_token(value: str, where: str) -> str:
    if _TOKEN.fullmatch(value) is None:
        raise ConfigError(
            f"{where}: not a kubeadm bootstrap token (expected [a-z0-9]{{6}}.[a-z0-9]{{16}})"
        )
    return value


def _check_encryption_key(value: str, where: Path) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: the encryption key must be 32 bytes, base64-encoded")
    return value


def ensure_secrets(state: ClusterState, k8s: KubernetesConfig) -> KubeadmSecrets:
    """The cluster's bootstrap token and encryption key: loaded, or generated once (0600)."""
    if k8s.bootstrap_token is not None:
        token = check_bootstrap_token(
            k8s.bootstrap_token.reveal(), f"cluster {state.cluster}: kubernetes.bootstrapToken"
        )
    else:
        token_path = state.path("secrets", "bootstrap-token")
        raw, created = private_value(token_path, lambda: generate_bootstrap_token().encode())
        token = check_bootstrap_token(raw.decode().strip(), str(token_path))
        if created:
            log.info(
                "kubeadm.bootstrap_token_created",
                cluster=state.cluster,
                token_id=token.split(".", 1)[0],
            )
    key_path = state.path("secrets", "encryption-key")
    raw_key, key_created = private_value(
        key_path, lambda: base64.b64encode(secrets.token_bytes(32))
    )
    key = _check_encryption_key(raw_key.decode().strip(), key_path)
    if key_created:
        log.info("kubeadm.encryption_key_created", cluster=state.cluster, path=str(key_path))
    return KubeadmSecrets(SecretValue(token), SecretValue(key))


def is_init_node(state: ClusterState, name: str) -> bool:
    """Whether ``name`` is the machine that runs ``kubeadm init``: the first control-plane
    machine ever rendered for this cluster, recorded once and for all."""
    path = state.path("kubeadm", "init-node")
    write_private(path, name.encode())
    recorded = read_private(path)
    assert recorded is not None
    return recorded.decode().strip() == name


BOOTSTRAP_TOKEN_NAMESPACE = "kube-system"
BOOTSTRAP_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"


async def refresh_bootstrap_token(
    cluster: ClusterConfig, kube: KubeClient, state_dir: Path, *, now: float
) -> str | None:
    """Keep the cluster's join token valid in the cluster, so that a replacement machine can
    join at any time and not only within the token's TTL after ``kubeadm init``.

    The token's Secret (``kube-system/bootstrap-token-<id>``, the format kubeadm writes) is
    re-written with a fresh expiration once less than half its TTL remains, or created if it
    is missing. Returns a line describing the change, or None."""
    k8s = cluster.kubernetes
    if k8s is None:
        return None
    secrets_ = ensure_secrets(ClusterState(state_dir, cluster.name), k8s)
    token_id, token_secret = secrets_.bootstrap_token.reveal().split(".", 1)
    name = f"bootstrap-token-{token_id}"
    current = await kube.get_secret(BOOTSTRAP_TOKEN_NAMESPACE, name)
    if current is not None and current.data.get("token-secret") == token_secret.encode():
        raw = current.data.get("expiration", b"").decode()
        expires = parse_time(raw)
        if not raw or (expires is not None and expires - now > k8s.bootstrap_token_ttl / 2):
            return None  # no expiry at all, or still valid for long enough
    until = format_time(now + k8s.bootstrap_token_ttl)
    await kube.put_secret(
        BOOTSTRAP_TOKEN_NAMESPACE,
        name,
        type_="bootstrap.kubernetes.io/token",
        data={
            "token-id": token_id.encode(),
            "token-secret": token_secret.encode(),
            "expiration": until.encode(),
            "usage-bootstrap-authentication": b"true",
            "usage-bootstrap-signing": b"true",
            "auth-extra-groups": BOOTSTRAP_TOKEN_GROUP.encode(),
            "description": b"healer: machines join with this token",
        },
        resource_version=current.resource_version if current is not None else None,
    )
    log.info(
        "kubeadm.bootstrap_token_refreshed", cluster=cluster.name, token_id=token_id, until=until
    )
    return f"bootstrap token {token_id}: valid until {until}"


# -------------------------------------------------------------------- documents


def api_version(kubernetes_version: str) -> str:
    """v1beta4 from Kubernetes 1.31 (where it became the default), v1beta3 before."""
    minor = int(kubernetes_version.lstrip("v").split(".")[1])
    return "kubeadm.k8s.io/v1beta4" if minor >= 31 else "kubeadm.k8s.io/v1beta3"


def _args(version: str, values: dict[str, str]) -> Any:
    """extraArgs: a map in v1beta3, a list of name/value pairs in v1beta4."""
    if version.endswith("v1beta4"):
        return [{"name": k, "value": v} for k, v in values.items()]
    return dict(values)


def encryption_configuration(provider: str, key: SecretValue) -> dict[str, Any]:
    """Secrets encrypted with ``key``; ``identity`` last reads Secrets written before."""
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {provider: {"keys": [{"name": ENCRYPTION_KEY_NAME, "secret": key.reveal()}]}},
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


def _audit_policy(k8s: KubernetesConfig) -> dict[str, Any]:
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


def kubelet_labels(cluster: ClusterConfig, pool: PoolConfig) -> str:
    """``--node-labels`` for the kubelet: healer's identity labels and the pool's labels the
    kubelet is allowed to set on itself (the rest would stop it from starting)."""
    labels = {LABEL_CLUSTER: cluster.name, LABEL_POOL: pool.name, LABEL_ROLE: str(pool.role)}
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


# -------------------------------------------------------------------- the machine's part

BOOTSTRAP_SH = r"""#!/bin/bash
# healer-bootstrap: prepare this machine for Kubernetes and run kubeadm (init or join).
# Installed by healer's cloud-init user data. Safe to run again: it stops once the node is in the
# cluster. Secrets are read from root-only files, never passed on a command line.
set -euo pipefail
# HEALER_BOOTSTRAP_ROOT: an alternative root for the files below, for tests only.
ROOT="${HEALER_BOOTSTRAP_ROOT:-}"
# shellcheck source=/dev/null
. "$ROOT/etc/healer/kubeadm/bootstrap.env"

if [ -f "$ROOT/etc/kubernetes/kubelet.conf" ]; then
  echo "healer-bootstrap: already part of the cluster"
  rm -f "$KUBEADM_CONFIG"
  exit 0
fi

swapoff -a
sed -i '/\sswap\s/ s/^#*/#/' "$ROOT/etc/fstab"
modprobe overlay
modprobe br_netfilter
sysctl --system >/dev/null

if [ "$INSTALL_PACKAGES" = "true" ]; then
  minor="${KUBERNETES_VERSION%.*}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q apt-transport-https ca-certificates curl gpg containerd
  install -d -m 0755 /etc/apt/keyrings
  curl -fsSL "https://pkgs.k8s.io/core:/stable:/${minor}/deb/Release.key" \
    | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
  repo="https://pkgs.k8s.io/core:/stable:/${minor}/deb/"
  echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] ${repo} /" \
    > /etc/apt/sources.list.d/kubernetes.list
  apt-get update -q
  apt-get install -y -q "kubelet=${KUBERNETES_VERSION#v}-*" "kubeadm=${KUBERNETES_VERSION#v}-*" \
    "kubectl=${KUBERNETES_VERSION#v}-*"
  # Kubernetes upgrades are deliberate: unattended-upgrades must not move these packages.
  apt-mark hold kubelet kubeadm kubectl
  mkdir -p /etc/containerd
  containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' \
    > /etc/containerd/config.toml
  systemctl restart containerd
  systemctl enable kubelet
fi

case "$KUBEADM_MODE" in
  init) kubeadm init --config "$KUBEADM_CONFIG" --skip-token-print ;;
  join)
    # Machines created together with the first control-plane machine wait for its API to
    # answer through the load balancer: retry, cleaning up a half-done attempt each time.
    for attempt in $(seq 1 "$JOIN_ATTEMPTS"); do
      if kubeadm join --config "$KUBEADM_CONFIG"; then
        break
      fi
      if [ "$attempt" -eq "$JOIN_ATTEMPTS" ]; then
        echo "healer-bootstrap: kubeadm join failed $attempt times" >&2
        exit 1
      fi
      kubeadm reset --force || true
      sleep "${JOIN_RETRY_DELAY:-30}"
    done
    ;;
  *) echo "healer-bootstrap: unknown mode '$KUBEADM_MODE'" >&2; exit 2 ;;
esac
# The file holds the bootstrap token; the node no longer needs it.
rm -f "$KUBEADM_CONFIG"
echo "healer-bootstrap: $KUBEADM_MODE done"
"""

# The comments stay here; on the machine every byte counts against EC2's user data limit.
_BOOTSTRAP_SH_BYTES = "".join(
    line
    for number, line in enumerate(BOOTSTRAP_SH.splitlines(keepends=True))
    if number == 0 or not line.lstrip().startswith("#")
).encode()

_MODULES = "overlay\nbr_netfilter\n"
_SYSCTL = (
    "net.bridge.bridge-nf-call-iptables = 1\n"
    "net.bridge.bridge-nf-call-ip6tables = 1\n"
    "net.ipv4.ip_forward = 1\n"
)


@dataclass(frozen=True)
class NodeBootstrap:
    """What one machine needs to become a node: files and the command that runs kubeadm."""

    mode: str  # "init" | "join"
    files: tuple[MachineFile, ...]
    command: tuple[str, ...]


class KubeadmBuilder:
    """Renders the kubeadm part of a machine's user data for one cluster."""

    def __init__(self, state: ClusterState, cluster: ClusterConfig) -> None:
        if cluster.kubernetes is None:
            raise ValueError(f"cluster {cluster.name} has no 'kubernetes' section")
        self._state = state
        self._cluster = cluster
        self._k8s = cluster.kubernetes

    def sans(self, endpoint: ApiEndpoint, control_plane_ips: Iterable[str] = ()) -> ApiSans:
        k8s = self._k8s
        extra = [endpoint.dns_name] if endpoint.dns_name else []
        return api_server_sans(
            endpoint_host=endpoint.host,
            control_plane_ips=control_plane_ips,
            service_subnet=k8s.service_subnet,
            dns_domain=k8s.dns_domain,
            extra=[*extra, *k8s.extra_sans],
        )

    def machine(self, pool: PoolConfig, name: str) -> NodeBootstrap:
        cluster, k8s, state = self._cluster, self._k8s, self._state
        endpoint = resolve_endpoint(state, k8s)
        secrets_ = ensure_secrets(state, k8s)
        pki = ClusterPki(state)
        labels = kubelet_labels(cluster, pool)
        control_plane = pool.role is Role.CONTROL_PLANE
        files: list[MachineFile] = [
            MachineFile("/etc/modules-load.d/healer-kubernetes.conf", _MODULES.encode()),
            MachineFile("/etc/sysctl.d/90-healer-kubernetes.conf", _SYSCTL.encode()),
            MachineFile(BOOTSTRAP_SCRIPT, _BOOTSTRAP_SH_BYTES, mode="0700"),
        ]
        init = control_plane and is_init_node(state, name)
        if init:
            docs = [
                init_configuration(k8s, secrets_, name=name, labels=labels),
                cluster_configuration(cluster, endpoint, self.sans(endpoint)),
            ]
        else:
            docs = [
                join_configuration(
                    k8s,
                    secrets_,
                    endpoint=endpoint,
                    ca_cert_hash=pki.ca_cert_hash(),
                    name=name,
                    labels=labels,
                    control_plane=control_plane,
                )
            ]
        files.append(
            MachineFile(KUBEADM_CONFIG, dump_documents(docs).encode(), mode="0600", secret=True)
        )
        if control_plane:
            files += self._control_plane_files(pki, secrets_)
        mode = "init" if init else "join"
        env = (
            f"KUBERNETES_VERSION={k8s.version}\n"
            f"KUBEADM_MODE={mode}\n"
            f"KUBEADM_CONFIG={KUBEADM_CONFIG}\n"
            f"INSTALL_PACKAGES={'true' if k8s.install_packages else 'false'}\n"
            f"JOIN_ATTEMPTS={JOIN_ATTEMPTS}\n"
        )
        files.append(MachineFile(BOOTSTRAP_ENV, env.encode(), mode="0600"))
        log.debug(
            "kubeadm.machine_rendered",
            cluster=cluster.name,
            pool=pool.name,
            node=name,
            mode=mode,
            endpoint=endpoint.address,
            token_id=secrets_.token_id,
        )
        return NodeBootstrap(mode=mode, files=tuple(files), command=(BOOTSTRAP_SCRIPT,))

    def _control_plane_files(self, pki: ClusterPki, secrets_: KubeadmSecrets) -> list[MachineFile]:
        k8s = self._k8s
        files = [
            MachineFile(
                f"{PKI_DIR}/{f.path}",
                f.content,
                mode="0600" if f.private else "0644",
                secret=f.private,
            )
            for f in pki.control_plane_files()
        ]
        enc = encryption_configuration(k8s.encryption.provider, secrets_.encryption_key)
        files.append(
            MachineFile(
                ENCRYPTION_CONFIG,
                yaml.safe_dump(enc, sort_keys=False).encode(),
                mode="0600",
                secret=True,
            )
        )
        if k8s.audit.enabled:
            policy = yaml.safe_dump(_audit_policy(k8s), sort_keys=False)
            files.append(MachineFile(AUDIT_POLICY, policy.encode(), mode="0600"))
        if self._cluster.pod_security is not None:
            admission = admission_configuration(self._cluster.pod_security)
            files.append(
                MachineFile(
                    ADMISSION_CONFIG,
                    yaml.safe_dump(admission, sort_keys=False).encode(),
                    mode="0600",
                )
            )
        return files
