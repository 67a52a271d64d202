"""What one machine needs to become a node: the kubeadm documents, the audit and admission
files, the kernel settings and the bootstrap script (``bootstrap.sh``, package data) that runs
``kubeadm init`` or ``kubeadm join`` (its user data), and, for a control-plane machine, its keys:
the cluster's CAs with their private keys, the service-account key and the EncryptionConfiguration
(:attr:`NodeBootstrap.keys`).

The keys are never in user data (the cloud's metadata service serves it to anything on the
machine that can reach it): :mod:`healer.provisioning.keydelivery` pushes them over SSH once the
machine is up, and the bootstrap script waits for them before kubeadm runs. The only secret in
user data is the bootstrap token, in a root-only file the script deletes once the node joined
(a worker needs nothing else; its CA is pinned by ``caCertHashes``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import structlog
import yaml

from healer.config import ClusterConfig, PoolConfig
from healer.model import Role
from healer.provisioning.keystore import ClusterState, read_private, write_private
from healer.provisioning.kubeadm.documents import (
    ADMISSION_CONFIG,
    AUDIT_POLICY,
    ENCRYPTION_CONFIG,
    admission_configuration,
    audit_policy,
    cluster_configuration,
    dump_documents,
    encryption_configuration,
    init_configuration,
    join_configuration,
    kubelet_labels,
)
from healer.provisioning.kubeadm.endpoint import ApiEndpoint, resolve_endpoint
from healer.provisioning.kubeadm.tokens import (
    KubeadmSecrets,
    encryption_key_name,
    ensure_secrets,
)
from healer.provisioning.machinefiles import MachineFile
from healer.provisioning.pki import ApiSans, ClusterPki, api_server_sans

log = structlog.get_logger("healer.provisioning")

KUBEADM_CONFIG = "/etc/healer/kubeadm/kubeadm.yaml"
# Written last by the key push: the files it delivered, one path a line. The bootstrap script of
# a control-plane machine waits for it (``kubernetes.keyWait``) before it runs kubeadm.
KEYS_READY = "/etc/healer/kubeadm/keys-ready"
BOOTSTRAP_ENV = "/etc/healer/kubeadm/bootstrap.env"
BOOTSTRAP_SCRIPT = "/usr/local/sbin/healer-bootstrap"
PKI_DIR = "/etc/kubernetes/pki"
# With 30 s between attempts and kubeadm's own 5-minute discovery timeout: about an hour.
JOIN_ATTEMPTS = 10

_MODULES = "overlay\nbr_netfilter\n"
_SYSCTL = (
    "net.bridge.bridge-nf-call-iptables = 1\n"
    "net.bridge.bridge-nf-call-ip6tables = 1\n"
    "net.ipv4.ip_forward = 1\n"
)


def bootstrap_source() -> str:
    """``bootstrap.sh`` as shipped in the package, with its comments."""
    return resources.files("healer.provisioning.kubeadm").joinpath("bootstrap.sh").read_text()


@functools.cache
def bootstrap_script() -> bytes:
    """The script as the machine gets it: the comments stay in the package, and on the machine
    every byte counts against EC2's user data limit."""
    return "".join(
        line
        for number, line in enumerate(bootstrap_source().splitlines(keepends=True))
        if number == 0 or not line.lstrip().startswith("#")
    ).encode()


def is_init_node(state: ClusterState, name: str) -> bool:
    """Whether ``name`` is the machine that runs ``kubeadm init``: the first control-plane
    machine ever rendered for this cluster, recorded once and for all."""
    path = state.path("kubeadm", "init-node")
    write_private(path, name.encode())
    recorded = read_private(path)
    assert recorded is not None
    return recorded.decode().strip() == name


@dataclass(frozen=True)
class NodeBootstrap:
    """What one machine needs to become a node: files and the command that runs kubeadm."""

    mode: str  # "init" | "join"
    files: tuple[MachineFile, ...]  # user data: nothing here may be a private key
    command: tuple[str, ...]
    keys: tuple[MachineFile, ...] = ()  # pushed over SSH, never in user data; KEYS_READY last


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
        labels = kubelet_labels(cluster, pool, name)
        control_plane = pool.role is Role.CONTROL_PLANE
        files: list[MachineFile] = [
            MachineFile("/etc/modules-load.d/healer-kubernetes.conf", _MODULES.encode()),
            MachineFile("/etc/sysctl.d/90-healer-kubernetes.conf", _SYSCTL.encode()),
            MachineFile(BOOTSTRAP_SCRIPT, bootstrap_script(), mode="0700"),
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
        keys: list[MachineFile] = []
        if control_plane:
            files += self._control_plane_files()
            keys = self.key_files(pki, secrets_)
        mode = "init" if init else "join"
        env = (
            f"KUBERNETES_VERSION={k8s.version}\n"
            f"KUBEADM_MODE={mode}\n"
            f"KUBEADM_CONFIG={KUBEADM_CONFIG}\n"
            f"INSTALL_PACKAGES={'true' if k8s.install_packages else 'false'}\n"
            f"JOIN_ATTEMPTS={JOIN_ATTEMPTS}\n"
        )
        if keys:
            env += f"KEYS_READY={KEYS_READY}\nKEY_WAIT={int(k8s.key_wait)}\n"
        if init and k8s.cni.install:
            env += (
                f"CNI_MANIFEST_URL={k8s.cni.manifest_url}\n"
                f"CNI_MANIFEST_SHA256={k8s.cni.sha256}\n"
                f"POD_SUBNET={k8s.pod_subnet}\n"
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
        return NodeBootstrap(
            mode=mode, files=tuple(files), command=(BOOTSTRAP_SCRIPT,), keys=tuple(keys)
        )

    def key_files(self, pki: ClusterPki, secrets_: KubeadmSecrets) -> list[MachineFile]:
        """A control-plane machine's keys, for the push: the CAs (certificates and private
        keys, where kubeadm looks for them), the service-account key pair, the
        EncryptionConfiguration, and last the :data:`KEYS_READY` list of them."""
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
        enc = encryption_configuration(
            k8s.encryption.provider,
            secrets_.encryption_key,
            name=encryption_key_name(self._state),
        )
        files.append(
            MachineFile(
                ENCRYPTION_CONFIG,
                yaml.safe_dump(enc, sort_keys=False).encode(),
                mode="0600",
                secret=True,
            )
        )
        listing = "".join(f"{f.path}\n" for f in files).encode()
        return [*files, MachineFile(KEYS_READY, listing, mode="0600")]

    def _control_plane_files(self) -> list[MachineFile]:
        k8s = self._k8s
        files: list[MachineFile] = []
        if k8s.audit.enabled:
            policy = yaml.safe_dump(audit_policy(k8s), sort_keys=False)
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
