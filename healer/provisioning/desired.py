"""The infrastructure a cluster should have, computed from its config: a pure function.

:func:`desired_state` turns a :class:`~healer.config.ClusterConfig` and the provider's
:class:`~healer.cloud.resources.Capabilities` into specs: one private network; a private subnet per
zone the pools use (per region where subnets are regional); egress for private machines through a
NAT (a NAT gateway per zone in a public subnet of that zone, with a route table per zone sending
0.0.0.0/0 to it and a public route table to the internet gateway, on EC2; Cloud NAT for the
subnetwork on GCE), so no private subnet ever routes to the internet gateway; one firewall for the
cluster's machines, the API load balancer in front of the control-plane pool (in the public
subnets, or with the machines when internal), and the pools themselves. Everything is tagged with healer's ownership tags (cluster, pool where relevant,
``healer.io/managed``) and ``healer.io/resource``. What the config asks for and the provider cannot
build is reported in ``Desired.problems`` rather than raised, so ``validate`` and ``plan`` can show
every problem at once.

The firewall admits, and nothing else from anywhere:

- SSH (22) from ``adminCidrs`` only (no rule at all when the list is empty);
- the API port (6443) through the load balancer: from the LB itself where it is a proxy (its
  security group on EC2), or, where it passes client packets through (GCE), from the API clients'
  CIDRs and the cloud's health checkers;
- anything from inside the subnet (node to node, and the API for kubelets).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from healer.cloud.resources import (
    INTERNET,
    NAT_ROUTE,
    TAG_RESOURCE,
    TAG_TIER,
    Capabilities,
    FirewallRule,
    FirewallSpec,
    HealthCheck,
    LoadBalancerSpec,
    NatSpec,
    NetworkSpec,
    RouteTableSpec,
    SubnetSpec,
    lb_source,
)
from healer.config import ClusterConfig, PoolConfig
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL, Role

API_PORT = 6443  # kube-apiserver's bind port on every control-plane machine
SSH_PORT = 22
LB_NAME_MAX = 32  # EC2 classic ELB names; the tightest limit of the supported clouds
_ZONE = re.compile(r"^(?P<region>.+)-[a-z]$")


@dataclass(frozen=True)
class Names:
    network: str
    subnet: str
    firewall: str
    load_balancer: str


def resource_names(cluster: str) -> Names:
    return Names(
        network=f"{cluster}-net",
        subnet=f"{cluster}-subnet",
        firewall=f"{cluster}-nodes",
        load_balancer=_bounded(f"{cluster}-api", LB_NAME_MAX),
    )


def _bounded(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def infra_tags(cluster: str, kind: str, pool: str | None = None) -> dict[str, str]:
    tags = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: kind}
    if pool is not None:
        tags[TAG_POOL] = pool
    return tags


def region_of(location: str) -> str:
    """``europe-west1-b`` -> ``europe-west1``; a region is returned unchanged."""
    match = _ZONE.match(location)
    return match.group("region") if match else location


@dataclass(frozen=True)
class Desired:
    cluster: str
    network: NetworkSpec | None
    subnet: SubnetSpec | None
    firewall: FirewallSpec | None
    load_balancer: LoadBalancerSpec | None
    pools: tuple[PoolConfig, ...]
    control_plane: str | None  # the control-plane pool's name: the LB's members
    problems: tuple[str, ...] = ()
    # The private subnets of further zones, then the public ones (NAT gateways and the LB only).
    more_subnets: tuple[SubnetSpec, ...] = ()
    nat_gateways: tuple[NatSpec, ...] = ()
    route_tables: tuple[RouteTableSpec, ...] = ()

    @property
    def subnets(self) -> tuple[SubnetSpec, ...]:
        return ((self.subnet,) if self.subnet else ()) + self.more_subnets


def control_plane_pool(cluster: ClusterConfig) -> PoolConfig | None:
    return next((p for p in cluster.pools if p.role is Role.CONTROL_PLANE), None)


def desired_state(cluster: ClusterConfig, caps: Capabilities) -> Desired:
    """What ``cluster`` should have on a provider with ``caps``. Pure."""
    cp = control_plane_pool(cluster)
    base = Desired(
        cluster=cluster.name,
        network=None,
        subnet=None,
        firewall=None,
        load_balancer=None,
        pools=cluster.pools,
        control_plane=cp.name if cp else None,
    )
    net = cluster.network
    if net is None:
        return base
    problems: list[str] = []
    where = f"cluster {cluster.name}"
    docs = f"see {caps.docs}"
    for piece in caps.missing():
        problems.append(
            f"{where}: provider {caps.provider} cannot build {piece}, which the 'network' block "
            f"asks for; {docs} for the on-premises alternative"
        )
    names = resource_names(cluster.name)
    lb_cfg = cluster.load_balancer
    want_lb = lb_cfg.enabled and cp is not None
    api_clients = tuple(lb_cfg.api_cidrs if lb_cfg.api_cidrs is not None else cluster.admin_cidrs)

    location = net.location or _pool_location(cluster, cp)
    if location is None and caps.subnet_location_required:
        problems.append(
            f"{where}: network.location is required on {caps.provider} (the subnet's "
            f"{caps.subnet_scope}); set it or give the control-plane pool a machine.location"
        )
    zones = _zones(cluster, location, caps)
    layout = _layout(cluster, caps, zones, problems)

    hc_cfg = lb_cfg.health_check
    health = HealthCheck(
        protocol=hc_cfg.protocol,
        port=hc_cfg.port,
        path=hc_cfg.path if hc_cfg.protocol in ("http", "https") else "",
        interval=max(1, round(hc_cfg.interval)),
        timeout=max(1, round(hc_cfg.timeout)),
        healthy_threshold=hc_cfg.healthy_threshold,
        unhealthy_threshold=hc_cfg.unhealthy_threshold,
    )
    if want_lb:
        if health.protocol not in caps.health_check_protocols:
            problems.append(
                f"{where}: loadBalancer.healthCheck.protocol {health.protocol} is not available "
                f"on {caps.provider} (only {', '.join(sorted(caps.health_check_protocols))}); "
                f"{docs}"
            )
        if lb_cfg.internal and not caps.lb_internal:
            problems.append(
                f"{where}: loadBalancer.internal: {caps.provider} cannot build an internal load "
                f"balancer; {docs}"
            )

    rules = [
        FirewallRule(
            name="intra-subnet",
            protocol="all",
            ports=None,
            sources=layout.private_cidrs,
            description="machine to machine inside the cluster's private subnets",
        )
    ]
    if cluster.admin_cidrs:
        rules.append(
            FirewallRule(
                name="ssh-admin",
                protocol="tcp",
                ports=(SSH_PORT, SSH_PORT),
                sources=tuple(cluster.admin_cidrs),
                description="SSH from the admin networks only",
            )
        )
    if want_lb:
        api_ports = {API_PORT, health.port}
        if caps.lb_passthrough:
            # The LB hands over the client's own packets: admit the clients and the cloud's
            # health checkers themselves, on the API port and the health-check port only.
            for port in sorted(api_ports):
                clients = list(api_clients) if port == API_PORT else []
                checkers = list(caps.health_check_sources) if port == health.port else []
                sources = tuple(dict.fromkeys(clients + checkers))
                if sources:
                    rules.append(
                        FirewallRule(
                            name=f"api-{port}",
                            protocol="tcp",
                            ports=(port, port),
                            sources=sources,
                            description="the API through the pass-through load balancer",
                        )
                    )
        else:
            for port in sorted(api_ports):
                rules.append(
                    FirewallRule(
                        name=f"api-{port}",
                        protocol="tcp",
                        ports=(port, port),
                        sources=(lb_source(names.load_balancer),),
                        description="the API from the load balancer only",
                    )
                )

    public_lb = want_lb and not lb_cfg.internal
    network = NetworkSpec(
        name=names.network,
        cidr=net.cidr,
        tags=infra_tags(cluster.name, "network"),
        internet_gateway=net.public_ips or public_lb or bool(layout.nats),
    )
    tier = {"public": {TAG_TIER: "public"}, "private": {}}
    private, public = (
        [
            SubnetSpec(
                name=name,
                network=names.network,
                cidr=cidr,
                location=zone,
                tags={**infra_tags(cluster.name, "subnet"), **tier[kind]},
                public_ips=net.public_ips and kind == "private",
            )
            for name, cidr, zone in places
        ]
        for kind, places in (("private", layout.private), ("public", layout.public))
    )
    firewall = FirewallSpec(
        name=names.firewall,
        network=names.network,
        rules=tuple(rules),
        tags=infra_tags(cluster.name, "firewall"),
    )
    lb = None
    if want_lb:
        assert cp is not None
        allowed: tuple[str, ...] = ()
        if not caps.lb_passthrough:
            # Kubelets and controllers inside the subnets use the API address too.
            allowed = tuple(sorted({*api_clients, *layout.private_cidrs}))
        # A public LB sits in the public subnets where there are any, an internal one with the
        # machines.
        homes = public if public_lb and public else private
        lb = LoadBalancerSpec(
            name=names.load_balancer,
            network=names.network,
            subnet=homes[0].name,
            port=lb_cfg.port,
            target_port=API_PORT,
            health_check=health,
            allowed_sources=allowed,
            internal=lb_cfg.internal,
            tags=infra_tags(cluster.name, "load-balancer", cp.name),
            subnets=tuple(s.name for s in homes),
        )
    return Desired(
        cluster=cluster.name,
        network=network,
        subnet=private[0],
        firewall=firewall,
        load_balancer=lb,
        pools=cluster.pools,
        control_plane=base.control_plane,
        problems=tuple(problems),
        more_subnets=tuple(private[1:] + public),
        nat_gateways=tuple(
            NatSpec(
                name=name,
                network=names.network,
                subnet=subnet,
                location=zone,
                tags=infra_tags(cluster.name, "nat-gateway"),
            )
            for name, subnet, zone in layout.nats
        ),
        route_tables=tuple(
            RouteTableSpec(
                name=name,
                network=names.network,
                subnets=subnets,
                default_route=route,
                tags=infra_tags(cluster.name, "route-table"),
            )
            for name, subnets, route in layout.tables
        ),
    )


@dataclass(frozen=True)
class _Layout:
    """Names, ranges and zones of the subnets, NAT gateways and route tables."""

    private: tuple[tuple[str, str, str | None], ...]  # (name, cidr, zone or region)
    public: tuple[tuple[str, str, str | None], ...] = ()
    nats: tuple[tuple[str, str, str | None], ...] = ()  # (name, subnet, zone or region)
    tables: tuple[tuple[str, tuple[str, ...], str | None], ...] = ()  # (name, subnets, route)

    @property
    def private_cidrs(self) -> tuple[str, ...]:
        return tuple(cidr for _, cidr, _ in self.private)


def _zones(cluster: ClusterConfig, location: str | None, caps: Capabilities) -> list[str | None]:
    """Where the cluster's private subnets go: one per zone its pools use ("zone" scope: the
    network's location first, then the control plane's zones, then the others'), or the one
    region of a "region"-scoped provider."""
    cp = control_plane_pool(cluster)
    ordered = [p for p in cluster.pools if p is cp] + [p for p in cluster.pools if p is not cp]
    found = [location] + [z for p in ordered for z in p.zones]
    if caps.subnet_scope == "region":
        found = [region_of(z) if z else None for z in found]
    zones: list[str | None] = list(dict.fromkeys(z for z in found if z is not None))
    if caps.subnet_scope == "region":
        zones = zones[:1]  # further regions are reported by _layout
    return zones or [None]


PUBLIC_PREFIX = 26  # public subnets hold NAT gateways and ELB nodes only (an ELB wants >= /27)


def _layout(
    cluster: ClusterConfig, caps: Capabilities, zones: list[str | None], problems: list[str]
) -> _Layout:
    """The first zone's private subnet is ``subnetCidr``; each further zone takes the next block
    of the same size; public subnets are /26 blocks taken from the top of ``cidr``."""
    net = cluster.network
    assert net is not None
    where = f"cluster {cluster.name}"
    names = resource_names(cluster.name)
    network = ipaddress.ip_network(net.cidr)
    first = ipaddress.ip_network(net.subnet_cidr)
    if caps.subnet_scope == "region":
        region = zones[0]
        for pool in cluster.pools:
            outside = [z for z in pool.zones if region is not None and region_of(z) != region]
            if outside:
                problems.append(
                    f"{where}: pool {pool.name} is in {', '.join(outside)}, outside the subnet's "
                    f"region {region}; healer builds the cluster in one region"
                )
        nats: tuple[tuple[str, str, str | None], ...] = ()
        if caps.nat == "region" and net.nat and not net.public_ips:
            nats = ((f"{cluster.name}-nat", names.subnet, region),)
        return _Layout(private=((names.subnet, str(first), region),), nats=nats)

    private = []
    for i, zone in enumerate(zones):
        block = ipaddress.ip_network(
            (int(first.network_address) + i * first.num_addresses, first.prefixlen)
        )
        name = names.subnet if i == 0 else f"{names.subnet}-{zone}"
        private.append((name, str(block), zone))
    taken = [ipaddress.ip_network(cidr) for _, cidr, _ in private]
    want_lb = cluster.load_balancer.enabled and control_plane_pool(cluster) is not None
    public_lb = want_lb and not cluster.load_balancer.internal
    nat = caps.nat == "zone" and net.nat and not net.public_ips
    public: list[tuple[str, str, str | None]] = []
    if not net.public_ips and caps.nat == "zone" and (nat or public_lb):
        size = 1 << (network.max_prefixlen - PUBLIC_PREFIX)
        top = int(network.broadcast_address) + 1
        for i, zone in enumerate(zones):
            block = ipaddress.ip_network((top - (i + 1) * size, PUBLIC_PREFIX))
            public.append((f"{cluster.name}-public-{zone}", str(block), zone))
            taken.append(block)
    for i, block in enumerate(taken):
        if not block.subnet_of(network):  # type: ignore[arg-type]
            problems.append(
                f"{where}: subnet {block} of zone {zones[i % len(zones)]} does not fit in "
                f"network.cidr {network}; widen cidr or narrow subnetCidr (one block per zone)"
            )
            break
        if any(block.overlaps(other) for other in taken[:i]):
            problems.append(
                f"{where}: subnet {block} overlaps another of the cluster's subnets; the public "
                f"subnets take /{PUBLIC_PREFIX} blocks from the top of network.cidr {network}"
            )
            break
    if caps.nat != "zone":
        return _Layout(private=tuple(private))
    nats = tuple((f"{cluster.name}-nat-{zone}", name, zone) for name, _, zone in public)
    tables: list[tuple[str, tuple[str, ...], str | None]] = []
    if net.public_ips:
        tables.append((f"{cluster.name}-public", tuple(n for n, _, _ in private), INTERNET))
    else:
        for i, (name, _, zone) in enumerate(private):
            route = f"{NAT_ROUTE}{nats[i][0]}" if nat else None
            tables.append((f"{cluster.name}-private-{zone}", (name,), route))
        if public:
            tables.append((f"{cluster.name}-public", tuple(n for n, _, _ in public), INTERNET))
    return _Layout(
        private=tuple(private), public=tuple(public), nats=nats if nat else (), tables=tuple(tables)
    )


def _pool_location(cluster: ClusterConfig, cp: PoolConfig | None) -> str | None:
    if cp is not None and cp.zones:
        return cp.zones[0]
    return next((p.zones[0] for p in cluster.pools if p.zones), None)


def capability_report(cluster: ClusterConfig, caps: Capabilities) -> list[str]:
    """Lines for ``healer validate``: what the provider lacks and what the config asks of it."""
    lines = []
    missing = caps.missing()
    if missing:
        lines.append(
            f"provider {caps.provider} cannot build {', '.join(missing)}; the on-premises "
            f"alternative is in {caps.docs}"
        )
    else:
        lines.append(f"provider {caps.provider} builds networks, firewalls and load balancers")
    if cluster.network is not None:
        lines.extend(f"note: {n}" for n in caps.notes)
        if any(c.endswith("/0") for c in cluster.admin_cidrs):
            lines.append("warning: adminCidrs admits SSH from the whole internet")
    return lines
