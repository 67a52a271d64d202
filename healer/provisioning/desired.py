"""The infrastructure a cluster should have, computed from its config: a pure function.

:func:`desired_state` turns a :class:`~healer.config.ClusterConfig` and the provider's
:class:`~healer.cloud.resources.Capabilities` into specs: one private network and subnet, one firewall
for the cluster's machines, the API load balancer in front of the control-plane pool, and the
pools themselves. Everything is tagged with healer's ownership tags (cluster, pool where relevant,
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
import re
from dataclasses import dataclass

from healer.cloud.resources import (
    TAG_RESOURCE,
    Capabilities,
    FirewallRule,
    FirewallSpec,
    HealthCheck,
    LoadBalancerSpec,
    NetworkSpec,
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
    if location is not None and caps.subnet_scope == "region":
        location = region_of(location)
    for pool in cluster.pools:
        loc = pool.machine.location
        if loc is None or location is None:
            continue
        inside = loc == location if caps.subnet_scope == "zone" else region_of(loc) == location
        if not inside:
            problems.append(
                f"{where}: pool {pool.name} is in {loc}, outside the subnet's {caps.subnet_scope} "
                f"{location}; healer builds one subnet, so every pool must be placed in it"
            )

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
            sources=(net.subnet_cidr,),
            description="machine to machine inside the cluster's subnet",
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

    network = NetworkSpec(
        name=names.network,
        cidr=net.cidr,
        tags=infra_tags(cluster.name, "network"),
        internet_gateway=net.public_ips or (want_lb and not lb_cfg.internal),
    )
    subnet = SubnetSpec(
        name=names.subnet,
        network=names.network,
        cidr=net.subnet_cidr,
        location=location,
        tags=infra_tags(cluster.name, "subnet"),
        public_ips=net.public_ips,
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
            # Kubelets and controllers inside the subnet use the API address too.
            allowed = tuple(sorted({*api_clients, net.subnet_cidr}))
        lb = LoadBalancerSpec(
            name=names.load_balancer,
            network=names.network,
            subnet=names.subnet,
            port=lb_cfg.port,
            target_port=API_PORT,
            health_check=health,
            allowed_sources=allowed,
            internal=lb_cfg.internal,
            tags=infra_tags(cluster.name, "load-balancer", cp.name),
        )
    return Desired(
        cluster=cluster.name,
        network=network,
        subnet=subnet,
        firewall=firewall,
        load_balancer=lb,
        pools=cluster.pools,
        control_plane=base.control_plane,
        problems=tuple(problems),
    )


def _pool_location(cluster: ClusterConfig, cp: PoolConfig | None) -> str | None:
    if cp is not None and cp.machine.location:
        return cp.machine.location
    return next((p.machine.location for p in cluster.pools if p.machine.location), None)


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
