"""The infrastructure boundary: private networks, subnets, NAT gateways, route tables, firewalls
and load balancers.

This module owns the records that cross the plugin boundary for cluster infrastructure (the
``*Spec`` records say what healer wants, the others what the cloud reported), the
:class:`InfraProvider` protocol a plugin implements for them, and :class:`Capabilities`: what a
provider can build, so that ``healer validate`` and ``healer plan`` can say what is missing before
anything is touched. Like :mod:`healer.cloud.machines` it imports nothing from libcloud.

Vocabulary shared by every implementation:

- A firewall is a set of :class:`Permission` (protocol, port range, one source). A source is a
  CIDR or ``lb:<name>``: "traffic that comes through the load balancer ``<name>``". A provider
  whose load balancer is a proxy (EC2's ELB, the lab) admits the LB's own security group; one
  whose LB passes client packets through unchanged (GCE's Network Load Balancer) cannot, and
  says so with ``Capabilities.lb_passthrough`` so the desired state admits the API clients and
  the cloud's health checkers by address instead.
- Egress: private machines reach the internet through NAT (:class:`NatSpec`); where the cloud
  routes by explicit tables (EC2), every subnet healer makes is associated with a
  :class:`RouteTableSpec` of its own, so none relies on the network's main table.
- Every resource carries healer's ownership tags; ``TAG_RESOURCE`` says which kind of
  resource it is, so a cluster's security group for its LB is never mistaken for its node
  firewall.
- ``ensure_*`` is idempotent: the resource is found by name and tags and created if missing;
  mutable properties (firewall permissions, LB health check, allowed sources) are brought to the
  spec; an immutable difference (a network's CIDR) raises ``PermanentError`` naming it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from healer.cloud.machines import Machine, Provider

TAG_RESOURCE = "healer.io/resource"
LB_SOURCE = "lb:"
GROUP_SOURCE = "group:"
DOCS = "docs/provisioning.md"

Kind = Literal["network", "subnet", "firewall", "load-balancer", "nat-gateway", "route-table"]
TAG_TIER = "healer.io/tier"  # "public" on the subnets that hold only NAT gateways and the LB
INTERNET = "internet"  # a route table's default route to the network's internet gateway
NAT_ROUTE = "nat:"  # ... or to the NAT gateway named after the prefix
PROTOCOLS = ("tcp", "udp", "icmp", "all")


@dataclass(frozen=True)
class Capabilities:
    """What a provider can build. Static: known without credentials or a call to the cloud."""

    provider: str
    supports_networks: bool = False
    supports_firewalls: bool = False
    supports_load_balancers: bool = False
    # The LB forwards the client's own packets (GCE's NLB): the node firewall must admit
    # API clients and the cloud's health checkers by address; it cannot name the LB as a source.
    lb_passthrough: bool = False
    lb_internal: bool = True  # can build an LB without a public address
    health_check_protocols: frozenset[str] = frozenset({"tcp", "http", "https"})
    health_check_sources: tuple[str, ...] = ()  # CIDRs the cloud's health checkers come from
    subnet_scope: Literal["zone", "region"] = "zone"
    subnet_location_required: bool = True  # the cloud has no default zone or region for it
    # Egress for private machines: "zone" = a NAT gateway per zone in a public subnet, reached
    # through explicit route tables (EC2); "region" = one managed NAT per region serving the
    # private subnetwork, the network's own routes unchanged (GCE Cloud NAT); "" = none.
    nat: Literal["zone", "region", ""] = ""
    notes: tuple[str, ...] = ()
    docs: str = DOCS

    @classmethod
    def builds_all(cls, provider: str, **overrides: Any) -> Capabilities:
        """A provider that builds networks, firewalls and load balancers; ``overrides`` are the
        other fields where it differs from the defaults."""
        return cls(
            provider=provider,
            supports_networks=True,
            supports_firewalls=True,
            supports_load_balancers=True,
            **overrides,
        )

    def missing(self) -> list[str]:
        """The pieces this provider cannot build, in words (empty when it has them all)."""
        out = []
        if not self.supports_networks:
            out.append("private networks and subnets")
        if not self.supports_firewalls:
            out.append("firewalls")
        if not self.supports_load_balancers:
            out.append("load balancers")
        return out


def no_infra(provider: str, why: str) -> Capabilities:
    return Capabilities(
        provider=provider,
        notes=(
            f"{why}; build the network, firewall and API load balancer yourself "
            f"(see {DOCS}#on-premises-and-providers-without-these-pieces)",
        ),
    )


# -- firewall vocabulary ------------------------------------------------------------------------


def lb_source(name: str) -> str:
    return f"{LB_SOURCE}{name}"


def check_source(source: str) -> str:
    """``source`` normalised; ``ValueError`` when it is none of: a CIDR, ``lb:<name>``, or
    ``group:<id>`` (a cloud security group healer did not make, only ever read back)."""
    for prefix in (LB_SOURCE, GROUP_SOURCE):
        if source.startswith(prefix):
            if not source[len(prefix) :]:
                raise ValueError(f"source {source!r} needs a name after {prefix!r}")
            return source
    return str(ipaddress.ip_network(source, strict=True))


@dataclass(frozen=True, order=True)
class Permission:
    """One admitted flow: ``protocol`` on ports ``from_port``..``to_port`` from ``source``.

    ``all`` and ``icmp`` carry no ports. Inbound only: healer leaves outbound traffic open.
    """

    protocol: str
    from_port: int | None
    to_port: int | None
    source: str

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; use one of {PROTOCOLS}")
        if (self.from_port is None) != (self.to_port is None):
            raise ValueError("a port range needs both ends")
        if self.protocol in ("all", "icmp") and self.from_port is not None:
            raise ValueError(f"protocol {self.protocol} takes no ports")
        if (
            self.from_port is not None
            and self.to_port is not None
            and not 0 < self.from_port <= self.to_port <= 65535
        ):
            raise ValueError(f"bad port range {self.from_port}-{self.to_port}")
        object.__setattr__(self, "source", check_source(self.source))

    @property
    def ports(self) -> str:
        if self.from_port is None:
            return ""
        if self.from_port == self.to_port:
            return f"/{self.from_port}"
        return f"/{self.from_port}-{self.to_port}"

    def __str__(self) -> str:
        return f"{self.protocol}{self.ports} from {self.source}"


@dataclass(frozen=True)
class FirewallRule:
    """A named group of permissions: one protocol and port range from several sources."""

    name: str
    protocol: str
    ports: tuple[int, int] | None
    sources: tuple[str, ...]
    description: str = ""

    def permissions(self) -> frozenset[Permission]:
        low, high = self.ports if self.ports is not None else (None, None)
        return frozenset(Permission(self.protocol, low, high, s) for s in self.sources)


# -- what healer wants ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    cidr: str
    tags: Mapping[str, str]
    # An internet gateway (EC2): needed by a public LB and by machines with public addresses.
    internet_gateway: bool = True


@dataclass(frozen=True)
class SubnetSpec:
    name: str
    network: str  # the network's name
    cidr: str
    location: str | None  # a zone (EC2, lab) or a zone or region (GCE: its region is used)
    tags: Mapping[str, str]
    public_ips: bool = False  # give machines placed here a public address


@dataclass(frozen=True)
class NatSpec:
    """Egress to the internet for machines without a public address."""

    name: str
    network: str
    subnet: str  # "zone" NAT: the public subnet it sits in; "region" NAT: the subnet it serves
    location: str | None  # its zone ("zone" NAT) or region ("region" NAT)
    tags: Mapping[str, str]


@dataclass(frozen=True)
class RouteTableSpec:
    """A route table associated explicitly with ``subnets`` (names), so that none of them relies
    on the network's main table. ``default_route`` is :data:`INTERNET`, ``nat:<NAT name>`` or
    ``None`` (no way out)."""

    name: str
    network: str
    subnets: tuple[str, ...]
    default_route: str | None
    tags: Mapping[str, str]


@dataclass(frozen=True)
class FirewallSpec:
    name: str
    network: str
    rules: tuple[FirewallRule, ...]
    tags: Mapping[str, str]

    def permissions(self) -> frozenset[Permission]:
        out: set[Permission] = set()
        for rule in self.rules:
            out |= rule.permissions()
        return frozenset(out)


@dataclass(frozen=True)
class HealthCheck:
    protocol: str  # tcp | http | https
    port: int
    path: str = ""  # for http(s)
    interval: int = 10
    timeout: int = 5
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3

    def __str__(self) -> str:
        path = self.path if self.protocol in ("http", "https") else ""
        return (
            f"{self.protocol}:{self.port}{path} every {self.interval}s "
            f"(timeout {self.timeout}s, {self.healthy_threshold} up/{self.unhealthy_threshold} down)"
        )


@dataclass(frozen=True)
class LoadBalancerSpec:
    """A TCP load balancer: ``port`` forwarded to ``target_port`` of every member."""

    name: str
    network: str
    subnet: str
    port: int
    target_port: int
    health_check: HealthCheck
    allowed_sources: tuple[str, ...]  # CIDRs that may use it (enforced by proxying LBs)
    internal: bool
    tags: Mapping[str, str]  # TAG_POOL names the pool whose machines are its members
    # Every subnet (name) it spans, one per zone, ``subnet`` first; empty: ``subnet`` alone.
    subnets: tuple[str, ...] = ()


# -- what the cloud reported ------------------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    cidr: str
    tags: Mapping[str, str]
    internet_gateway: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Subnet:
    id: str
    name: str
    network_id: str
    cidr: str
    location: str | None
    tags: Mapping[str, str]
    public_ips: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NatGateway:
    id: str
    name: str
    network_id: str
    subnet: str  # the subnet's name (see NatSpec.subnet)
    location: str | None
    tags: Mapping[str, str]
    address: str | None = None  # its public address
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteTable:
    id: str
    name: str
    network_id: str
    subnets: tuple[str, ...]  # names of the subnets associated with it, sorted
    default_route: str | None  # as in RouteTableSpec
    tags: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Firewall:
    id: str
    name: str
    network_id: str
    permissions: frozenset[Permission]
    tags: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadBalancer:
    id: str
    name: str
    address: str | None  # DNS name or IP clients use
    port: int
    target_port: int
    health_check: HealthCheck | None
    allowed_sources: tuple[str, ...]
    internal: bool
    members: tuple[str, ...]  # machine ids, sorted
    tags: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Names of the subnets it spans, sorted, where the provider places LBs in subnets and says
    # so (EC2); empty: not reported, and not compared.
    subnets: tuple[str, ...] = ()


@runtime_checkable
class InfraProvider(Protocol):
    """A provider's network, firewall and load-balancer operations.

    Lists return the resources carrying every tag in ``tags`` and ``TAG_RESOURCE`` of their
    kind. Deletes refuse (``PermanentError``) a resource not tagged as healer's for this
    provider's cluster and answer ``False`` when it was already gone.
    """

    name: str

    def capabilities(self) -> Capabilities: ...

    async def list_networks(self, tags: Mapping[str, str]) -> list[Network]: ...

    async def ensure_network(self, spec: NetworkSpec) -> Network: ...

    async def delete_network(self, network: Network) -> bool: ...

    async def list_subnets(self, tags: Mapping[str, str]) -> list[Subnet]: ...

    async def ensure_subnet(self, spec: SubnetSpec, network: Network) -> Subnet: ...

    async def delete_subnet(self, subnet: Subnet) -> bool: ...

    async def list_firewalls(self, tags: Mapping[str, str]) -> list[Firewall]: ...

    async def ensure_firewall(self, spec: FirewallSpec, network: Network) -> Firewall: ...

    async def delete_firewall(self, firewall: Firewall) -> bool: ...

    async def list_load_balancers(self, tags: Mapping[str, str]) -> list[LoadBalancer]: ...

    async def ensure_load_balancer(
        self, spec: LoadBalancerSpec, network: Network, subnet: Subnet
    ) -> LoadBalancer: ...

    async def set_load_balancer_members(
        self, lb: LoadBalancer, machines: Sequence[Machine]
    ) -> LoadBalancer:
        """Make ``machines`` exactly the members of ``lb``."""
        ...

    async def delete_load_balancer(self, lb: LoadBalancer) -> bool: ...


@runtime_checkable
class EgressProvider(Protocol):
    """NAT gateways and route tables: a provider whose ``Capabilities.nat`` is set has them
    (the same conventions as :class:`InfraProvider`)."""

    async def list_nat_gateways(self, tags: Mapping[str, str]) -> list[NatGateway]: ...

    async def ensure_nat_gateway(self, spec: NatSpec, network: Network) -> NatGateway: ...

    async def delete_nat_gateway(self, nat: NatGateway) -> bool: ...

    async def list_route_tables(self, tags: Mapping[str, str]) -> list[RouteTable]: ...

    async def ensure_route_table(self, spec: RouteTableSpec, network: Network) -> RouteTable: ...

    async def delete_route_table(self, table: RouteTable) -> bool: ...


def egress_of(provider: Provider) -> EgressProvider | None:
    """The provider's NAT and route-table operations, or ``None`` when it has none."""
    infra = infra_of(provider)
    if infra is None or not infra.capabilities().nat or not isinstance(infra, EgressProvider):
        return None
    return infra


def infra_of(provider: Provider) -> InfraProvider | None:
    """The provider's infrastructure operations, or ``None`` when it has none."""
    infra = getattr(provider, "infra", None)
    return infra if isinstance(infra, InfraProvider) else None
