"""Where a cluster's Kubernetes API is: the load balancer (``<host>:6443``) from the config
(``kubernetes.controlPlaneEndpoint``) or from ``endpoint.json`` in the cluster's state dir, which
infrastructure provisioning writes with :func:`record_api_endpoint` once the load balancer exists.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from healer.config import KubernetesConfig
from healer.errors import ConfigError
from healer.provisioning.keystore import ClusterState, replace_public

log = structlog.get_logger("healer.provisioning")

API_PORT = 6443


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
