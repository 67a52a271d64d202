"""A cluster's topology in the config: its provider plugin, its pools and their machines, its
private network and its API load balancer (what ``healer plan``/``apply`` build from; see
docs/provisioning.md).
"""

from __future__ import annotations

import hashlib
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
from healer.config.rollout import RolloutPolicy
from healer.config.types import (
    Cidr,
    Duration,
    SecretRef,
)
from healer.config.types import (
    ConfigModel as _Model,
)
from healer.model import Role
from healer.naming import machine_name

# Names tried for a replacement in its predecessor's zone (see PoolConfig.replacement_name).
_REPLACEMENT_TRIES = 64


class MachineSpec(_Model):
    size: str = "small"
    image: str = "debian-12"
    location: str | None = None
    zones: tuple[str, ...] = Field(
        (),
        description="spread the pool over these zones (instead of one 'location'); each "
        "machine gets one, the least used first, and its node the label "
        "topology.kubernetes.io/zone",
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_placement(self) -> MachineSpec:
        if self.zones and self.location is not None:
            raise ValueError("set either location or zones, not both")
        if len(set(self.zones)) != len(self.zones):
            raise ValueError(f"zones lists a zone twice: {list(self.zones)}")
        return self


class PoolConfig(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    role: Role = Role.WORKER
    size: int = Field(ge=0, le=10000)
    machine: MachineSpec = MachineSpec()
    labels: dict[str, str] = Field(default_factory=dict)
    health: HealthPolicy = HealthPolicy()
    remediation: RemediationPolicy = RemediationPolicy()
    rollout: RolloutPolicy = RolloutPolicy()

    @property
    def zones(self) -> tuple[str, ...]:
        """The zones the pool's machines go to (empty: wherever the provider puts them)."""
        spec = self.machine
        return spec.zones or ((spec.location,) if spec.location else ())

    def zone_for(self, name: str) -> str | None:
        """The zone of the machine called ``name``: a pure function of the name, so the machine
        and its node's zone label agree wherever either is made (see
        :func:`healer.provisioning.pools.next_name`, which picks names to balance the zones)."""
        zones = self.zones
        if len(zones) <= 1:
            return zones[0] if zones else None
        digest = hashlib.sha256(name.encode()).digest()
        return zones[int.from_bytes(digest[:4], "big") % len(zones)]

    def replacement_name(self, cluster: str, old: str, token: str) -> str:
        """The name of the machine that replaces ``old``, in ``old``'s zone: ``machine_name(
        cluster, pool, token)`` when that name lands there (always in a pool of one zone or
        none), else the first of a bounded series of tokens derived from ``token`` whose name
        does. Deterministic (a workflow re-derives the same name from its id); as unique as
        ``token``. A repair or a rolling replacement thus keeps the pool's spread over zones."""
        first = machine_name(cluster, self.name, token)
        if len(self.zones) <= 1:
            return first
        zone = self.zone_for(old)
        for attempt in range(_REPLACEMENT_TRIES):
            derived = hashlib.sha256(f"{token}/{attempt}".encode()).hexdigest()
            name = first if attempt == 0 else machine_name(cluster, self.name, derived)
            if self.zone_for(name) == zone:
                return name
        # Each try fits 1 in len(zones): missing 64 in a row is as likely as never.
        return first


class ProviderConfig(_Model):
    plugin: str = Field(description="entry-point name in the 'healer.providers' group")
    options: dict[str, Any] = Field(default_factory=dict)
    credentials: dict[str, SecretRef] = Field(default_factory=dict)


class NetworkConfig(_Model):
    """The cluster's private network: private subnets per zone, NAT egress (docs/provisioning.md)."""

    cidr: Cidr
    subnet_cidr: Cidr = Field(
        alias="subnetCidr",
        description="the first zone's private subnet; each further zone takes the next block of "
        "the same size, and public subnets take /26 blocks from the top of cidr",
    )
    location: str | None = Field(
        None,
        description="the first subnet's zone (EC2, lab) or region (GCE); default: the "
        "control-plane pool's first zone",
    )
    public_ips: bool = Field(
        False, alias="publicIps", description="give every machine a public address as well"
    )
    nat: bool = Field(
        True,
        description="egress to the internet for private machines (packages, updates): a NAT "
        "gateway per zone on EC2, Cloud NAT on GCE",
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
