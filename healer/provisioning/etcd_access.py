"""healer's own way into a cluster's etcd: a client certificate minted from the cluster's etcd
CA (the one :mod:`healer.provisioning.pki` created for ``healer apply``), and the
:class:`~healer.etcd.EtcdClient` of ``etcd.mode``.

The certificate is minted in memory each time the daemon builds its clients (its key never
touches the disk) and is valid for :data:`CLIENT_VALIDITY`; kubeadm's etcd accepts any client
certificate its CA signed (``--client-cert-auth``), as it does for the API server's
``apiserver-etcd-client``. Configured ``caFile``/``certFile``/``keyFile`` are used instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from healer.config import ClusterConfig, EtcdConfig
from healer.errors import ConfigError, KubeUnavailable
from healer.etcd import DirectEndpoints, Endpoints, EtcdClient, EtcdTls
from healer.model import LABEL_CONTROL_PLANE
from healer.planner.etcd_quorum import EtcdMember
from healer.provisioning.keystore import ClusterState
from healer.provisioning.pki import ETCD_CA, CertKey, ClusterPki

if TYPE_CHECKING:  # the Kubernetes client, for `etcd.mode: portforward` only (not `healer status`)
    from healer.kube.portforward import PortForward
    from healer.kube.records import NodeInfo

CLIENT_NAME = "healer-etcd-client"
CLIENT_VALIDITY = dt.timedelta(days=365)
_BACKDATE = dt.timedelta(minutes=5)


def issue_etcd_cert(
    ca: CertKey,
    *,
    common_name: str,
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    server: bool = False,
    validity: dt.timedelta = CLIENT_VALIDITY,
) -> CertKey:
    """A leaf certificate signed by the etcd CA ``ca``: client auth always, server auth (with
    the names given) too when ``server`` (an etcd member's serving and peer certificate)."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return CertKey(cert, cert.public_bytes(serialization.Encoding.PEM), key)


def client_tls(state_dir: Path, cluster: ClusterConfig) -> EtcdTls:
    """The TLS material healer speaks to ``cluster``'s etcd with."""
    cfg = cluster.etcd
    if cfg.ca_file is not None and cfg.cert_file is not None and cfg.key_file is not None:
        try:
            return EtcdTls(
                cfg.ca_file.read_bytes(), cfg.cert_file.read_bytes(), cfg.key_file.read_bytes()
            )
        except OSError as exc:
            raise ConfigError(f"clusters.{cluster.name}.etcd: {exc}") from exc
    pki = ClusterPki(ClusterState(state_dir, cluster.name))
    ca_cert = pki.directory / ETCD_CA.cert
    if not ca_cert.exists():
        raise ConfigError(
            f"clusters.{cluster.name}.etcd: no etcd CA at {ca_cert} (healer apply creates it); "
            "set etcd.caFile, certFile and keyFile for a cluster healer did not provision"
        )
    ca = pki.ca(ETCD_CA)
    leaf = issue_etcd_cert(ca, common_name=CLIENT_NAME)
    return EtcdTls(ca.cert_pem, leaf.cert_pem, leaf.key_pem())


class PortForwardEndpoints:
    """``etcd.mode: portforward``: one loopback listener per control-plane node, tunnelled
    through the Kubernetes API to its etcd static pod (``<podPrefix><node>``); the member named
    after a node is reached through that node's tunnel."""

    def __init__(self, kube: PortForwarding, cfg: EtcdConfig) -> None:
        self._kube = kube
        self._cfg = cfg
        self._tunnels: dict[str, PortForward] = {}

    async def _nodes(self) -> list[str]:
        try:
            nodes, _ = await self._kube.list_nodes()
        except KubeUnavailable:
            return sorted(self._tunnels)  # the tunnels fail too, each with its reason
        return sorted(n.name for n in nodes if LABEL_CONTROL_PLANE in n.labels)

    async def _url(self, node: str) -> str:
        tunnel = self._tunnels.get(node)
        if tunnel is None:
            tunnel = self._kube.port_forward(
                namespace=self._cfg.namespace,
                pod=f"{self._cfg.pod_prefix}{node}",
                port=self._cfg.port,
            )
            self._tunnels[node] = tunnel
        return f"https://127.0.0.1:{await tunnel.start()}"

    async def seeds(self) -> list[str]:
        return [await self._url(node) for node in await self._nodes()]

    async def for_member(self, member: EtcdMember) -> str | None:
        if not member.name or member.name not in await self._nodes():
            return None
        return await self._url(member.name)

    async def close(self) -> None:
        tunnels, self._tunnels = self._tunnels, {}
        for tunnel in tunnels.values():
            await tunnel.close()


class PortForwarding(Protocol):
    """What :class:`PortForwardEndpoints` needs of the cluster's :class:`KubeClient`."""

    async def list_nodes(self) -> tuple[list[NodeInfo], str]: ...

    def port_forward(self, *, namespace: str, pod: str, port: int) -> PortForward: ...


def etcd_client(
    state_dir: Path, cluster: ClusterConfig, *, kube: PortForwarding | None = None
) -> EtcdClient | None:
    """The cluster's :class:`EtcdClient` by ``etcd.mode``, or None when it is ``off``.
    ``portforward`` tunnels through ``kube``, the cluster's Kubernetes client."""
    cfg = cluster.etcd
    if not cfg.enabled:
        return None
    endpoints: Endpoints
    if cfg.mode == "portforward":
        if kube is None:
            raise ConfigError(f"clusters.{cluster.name}.etcd: portforward needs the cluster's API")
        endpoints = PortForwardEndpoints(kube, cfg)
    else:
        endpoints = DirectEndpoints(cfg.endpoints)
    return EtcdClient(
        cluster=cluster.name,
        endpoints=endpoints,
        tls=client_tls(state_dir, cluster),
        timeout=cfg.timeout,
    )
