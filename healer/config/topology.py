"""A cluster's topology in the config: its provider plugin, its pools and their machines, its
private network and its API load balancer (what ``healer plan``/``apply`` build from; see
docs/provisioning.md).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from healer.config.health import (
    HealthPolicy,
    RemediationPolicy,
)
from healer.config.types import (
    Cidr,
    Duration,
    SecretRef,
)
from healer.config.types import (
    ConfigModel as _Model,
)
from healer.model import Role


class MachineSpec(_Model):
    size: str = "small"
    image: str = "debian-12"
    location: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class PoolConfig(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    role: Role = Role.WORKER
    size: int = Field(ge=0, le=10000)
    machine: MachineSpec = MachineSpec()
    labels: dict[str, str] = Field(default_factory=dict)
    health: HealthPolicy = HealthPolicy()
    remediation: RemediationPolicy = RemediationPolicy()


class ProviderConfig(_Model):
    plugin: str = Field(description="entry-point name in the 'healer.providers' group")
    options: dict[str, Any] = Field(default_factory=dict)
    credentials: dict[str, SecretRef] = Field(default_factory=dict)


class NetworkConfig(_Model):
    """The cluster's private network and its one subnet (provisioning; docs/provisioning.md)."""

    cidr: Cidr
    subnet_cidr: Cidr = Field(alias="subnetCidr")
    location: str | None = Field(
        None,
        description="the subnet's zone (EC2, lab) or region (GCE); default: the control-plane "
        "pool's location",
    )
    public_ips: bool = Field(
        False, alias="publicIps", description="give every machine a public address as well"
    )

    @model_validator(mode="after")
    def _inside(self) -> NetworkConfig:
        net, sub = ipaddress.ip_network(self.cidr), ipaddress.ip_network(self.subnet_cidr)
        if sub.version != net.version or not sub.subnet_of(net):  # type: ignore[arg-type]
            raise ValueError(f"subnetCidr {self.subnet_cidr} is not inside cidr {self.cidr}")
        return self


class HealthCheckConfig(_Model):
    protocol: Literal["tcp", "http", "https"] = "https"
    port: int = Field(6443, ge=1, le=65535)
    path: str = "/readyz"
    interval: Duration = 10.0
    timeout: Duration = 5.0
    healthy_threshold: int = Field(2, alias="healthyThreshold", ge=2, le=10)
    unhealthy_threshold: int = Field(3, alias="unhealthyThreshold", ge=2, le=10)


class LoadBalancerConfig(_Model):
    """The API load balancer in front of the control-plane pool (needs ``network``)."""

    enabled: bool = True
    port: int = Field(6443, ge=1, le=65535)
    internal: bool = Field(False, description="no public address; reachable inside the network")
    api_cidrs: tuple[Cidr, ...] | None = Field(
        None, alias="apiCidrs", description="who may reach the API (default: adminCidrs)"
    )
    health_check: HealthCheckConfig = Field(HealthCheckConfig(), alias="healthCheck")
