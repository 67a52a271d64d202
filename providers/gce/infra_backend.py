"""GCE infrastructure through libcloud: a custom-mode VPC network, a subnetwork, Cloud NAT,
firewall rules and a passthrough load balancer.

What gets built for a cluster (names from :mod:`healer.provisioning.desired`):

- the network is a custom-mode network (no automatic subnetworks); GCE gives it a route to the
  internet gateway itself, used only by machines with an external address;
- the subnet is a regional subnetwork with Private Google Access; machines, in any zone of its
  region, get no external address unless ``network.publicIps`` is set;
- the NAT gateway is a Cloud Router with Cloud NAT for that subnetwork
  (:mod:`providers.gce.cloud_nat`): the private machines' only way out;
- the firewall is a set of GCE firewall rules, one per protocol and port range, named
  ``<firewall>-<protocol>[-<ports>]`` and applied to instances carrying the network tag
  ``<firewall>`` (every healer machine of the cluster gets it). GCE denies all other ingress;
- the load balancer is a regional health check (HTTPS :6443/readyz by default), instance groups
  per zone, a backend service and a forwarding rule, external or internal
  (:mod:`providers.gce.lb`). It passes client packets through unchanged, so 6443 on the nodes
  admits the API clients and Google's health-check ranges by address.

Networks, subnetworks, firewall rules, routers, health checks and backend services have no
labels, so
healer's tags are written as JSON into each resource's ``description`` (``healer:{...}``) and read
back from there. Resource names are unique in a project (per region for regional ones), so names
serve as ids here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from libcloud.common.google import ResourceNotFoundError
from libcloud.compute.base import NodeDriver

from healer.cloud.diff import Diff
from healer.cloud.machines import MachineRequest, tags_match
from healer.cloud.resources import (
    Capabilities,
    Firewall,
    FirewallSpec,
    LoadBalancer,
    Network,
    NetworkSpec,
    Permission,
    Subnet,
    SubnetSpec,
)
from healer.errors import PermanentError
from providers.gce import CAPABILITIES
from providers.gce.api import describe, described, gce_of, meta_of
from providers.gce.cloud_nat import CloudNat
from providers.gce.lb import BackendServiceLbs
from providers.reconciler import InfraBackend, Placement, new_firewall

R = TypeVar("R", Network, Subnet, Firewall, LoadBalancer)


def _rule_suffix(protocol: str, low: int | None, high: int | None) -> str:
    if low is None:
        return protocol
    return f"{protocol}-{low}" if low == high else f"{protocol}-{low}-{high}"


def _permissions_of(rule: Any) -> list[Permission]:
    """A GCE firewall rule's allowed entries times its source ranges (and source tags)."""
    sources = list(rule.source_ranges or []) + [f"group:tag:{t}" for t in rule.source_tags or []]
    out: list[Permission] = []
    for allowed in rule.allowed or []:
        protocol = str(allowed.get("IPProtocol", "all")).lower()
        ports = allowed.get("ports") or []
        ranges: list[tuple[int | None, int | None]]
        if protocol in ("all", "icmp"):
            ranges = [(None, None)]
        elif not ports:
            ranges = [(1, 65535)]
        else:
            ranges = []
            for text in ports:
                low, _, high = str(text).partition("-")
                ranges.append((int(low), int(high or low)))
        for low_port, high_port in ranges:
            out.extend(Permission(protocol, low_port, high_port, s) for s in sources)
    return out


class GceInfraBackend(CloudNat, BackendServiceLbs, InfraBackend):
    capabilities: Capabilities = CAPABILITIES

    # -- networks ------------------------------------------------------------------------------

    def list_networks(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Network]:
        return [
            Network(
                id=net.name,
                name=net.name,
                cidr=str(meta.get("cidr", "")),
                tags=meta["tags"],
                internet_gateway=True,  # every GCE network routes to the internet gateway
                extra={"selfLink": net.extra.get("selfLink"), "mode": net.extra.get("mode")},
            )
            for net, meta in described(gce_of(driver).ex_list_networks(), tags)
        ]

    def create_network(self, driver: NodeDriver, spec: NetworkSpec) -> Network:
        # GCE custom networks have no range of their own; the config's is kept in the
        # description so that a plan can compare it.
        gce_of(driver).ex_create_network(
            spec.name, None, description=describe(spec.tags, cidr=spec.cidr), mode="custom"
        )
        return self._one(self.list_networks(driver, spec.tags), spec.name)

    def add_internet_gateway(self, driver: NodeDriver, network: Network) -> None:
        return None  # a GCE network always has its default route to the internet gateway

    def delete_network(self, driver: NodeDriver, network: Network) -> bool:
        gce = gce_of(driver)
        try:
            found = gce.ex_get_network(network.name)
        except ResourceNotFoundError:
            return False
        return bool(gce.ex_destroy_network(found))

    # -- subnets -------------------------------------------------------------------------------

    def list_subnets(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Subnet]:
        return [
            Subnet(
                id=sub.name,
                name=sub.name,
                network_id=sub.network.name if sub.network is not None else "",
                cidr=sub.cidr,
                location=sub.region.name if sub.region is not None else None,
                tags=meta["tags"],
                public_ips=bool(meta.get("public_ips", False)),
                extra={"selfLink": sub.extra.get("selfLink")},
            )
            for sub, meta in described(gce_of(driver).ex_list_subnetworks(region="all"), tags)
        ]

    def create_subnet(self, driver: NodeDriver, spec: SubnetSpec, network: Network) -> Subnet:
        gce_of(driver).ex_create_subnetwork(
            spec.name,
            cidr=spec.cidr,
            network=network.name,
            region=spec.location,
            description=describe(spec.tags, public_ips=spec.public_ips),
            privateipgoogleaccess=True,  # Google APIs (e.g. the registry) without a public IP
        )
        return self._one(self.list_subnets(driver, spec.tags), spec.name)

    def set_subnet_public_ips(self, driver: NodeDriver, subnet: Subnet, public: bool) -> None:
        gce = gce_of(driver)
        request = f"/regions/{subnet.location}/subnetworks/{subnet.name}"
        current = gce.connection.request(request, method="GET").object
        gce.connection.async_request(
            request,
            method="PATCH",
            data={
                "description": describe(subnet.tags, public_ips=public),
                "fingerprint": current.get("fingerprint"),
            },
        )

    def delete_subnet(self, driver: NodeDriver, subnet: Subnet) -> bool:
        gce = gce_of(driver)
        try:
            gce.ex_get_subnetwork(subnet.name, region=subnet.location)
        except ResourceNotFoundError:
            return False
        return bool(gce.ex_destroy_subnetwork(subnet.name, region=subnet.location))

    # -- firewalls -----------------------------------------------------------------------------

    def _rules(self, driver: NodeDriver, tags: Mapping[str, str]) -> dict[str, list[Any]]:
        """healer's GCE firewall rules carrying ``tags``, by the healer firewall they make up."""
        groups: dict[str, list[Any]] = defaultdict(list)
        for rule in gce_of(driver).ex_list_firewalls():
            meta = meta_of(rule.extra.get("description"))
            if meta is None or not tags_match(meta["tags"], tags) or "firewall" not in meta:
                continue
            groups[str(meta["firewall"])].append(rule)
        return groups

    def list_firewalls(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Firewall]:
        out = []
        for name, rules in sorted(self._rules(driver, tags).items()):
            perms: set[Permission] = set()
            for rule in rules:
                perms.update(_permissions_of(rule))
            first = meta_of(rules[0].extra.get("description")) or {"tags": {}}
            out.append(
                Firewall(
                    id=name,
                    name=name,
                    network_id=rules[0].network.name,
                    permissions=frozenset(perms),
                    tags=first["tags"],
                    extra={"rules": sorted(r.name for r in rules)},
                )
            )
        return out

    def create_firewall(self, driver: NodeDriver, spec: FirewallSpec, network: Network) -> Firewall:
        # A GCE "firewall" of healer's is its rules; they are created with the permissions.
        return new_firewall(spec.name, spec, network)

    def change_permissions(
        self, driver: NodeDriver, firewall: Firewall, spec: FirewallSpec, diff: Diff
    ) -> None:
        add, remove = diff.add, diff.remove
        gce = gce_of(driver)
        wanted = (firewall.permissions - remove) | add
        for perm in wanted:
            if ":" in perm.source:
                raise PermanentError(
                    f"firewall {firewall.name}: GCE rules here take addresses only, not "
                    f"{perm.source!r} (a pass-through load balancer cannot be named as a source)"
                )
        by_range: dict[tuple[str, int | None, int | None], list[str]] = defaultdict(list)
        for perm in wanted:
            by_range[perm.protocol, perm.from_port, perm.to_port].append(perm.source)
        notes = {(r.protocol, *(r.ports or (None, None))): r.description for r in spec.rules}
        existing = {r.name: r for r in self._rules(driver, firewall.tags).get(firewall.name, [])}
        keep: set[str] = set()
        for (protocol, low, high), sources in sorted(by_range.items(), key=str):
            name = f"{firewall.name}-{_rule_suffix(protocol, low, high)}"
            keep.add(name)
            ranges = sorted(sources)
            allowed: dict[str, Any] = {"IPProtocol": protocol}
            if low is not None:
                allowed["ports"] = [str(low) if low == high else f"{low}-{high}"]
            rule = existing.get(name)
            if rule is None:
                note = notes.get((protocol, low, high), "")
                gce.ex_create_firewall(
                    name,
                    allowed=[allowed],
                    network=firewall.network_id,
                    source_ranges=ranges,
                    target_tags=[firewall.name],
                    description=describe(firewall.tags, firewall=firewall.name, note=note),
                )
            elif (
                sorted(rule.source_ranges or []) != ranges
                or rule.source_tags
                or (rule.allowed != [allowed])
            ):
                rule.source_ranges = ranges
                rule.source_tags = None
                rule.allowed = [allowed]
                rule.target_tags = [firewall.name]
                gce.ex_update_firewall(rule)
        for name, rule in existing.items():
            if name not in keep:
                gce.ex_destroy_firewall(rule)

    def delete_firewall(self, driver: NodeDriver, firewall: Firewall) -> bool:
        rules = self._rules(driver, firewall.tags).get(firewall.name, [])
        for rule in rules:
            gce_of(driver).ex_destroy_firewall(rule)
        return bool(rules)

    # -- machines ------------------------------------------------------------------------------

    def placement_kwargs(
        self, driver: NodeDriver, placement: Placement, request: MachineRequest
    ) -> dict[str, Any]:
        return {
            "ex_network": placement.network.name,
            "ex_subnetwork": placement.subnet.name,
            "ex_tags": sorted(f.name for f in placement.firewalls),  # firewall target tags
            "external_ip": "ephemeral" if placement.subnet.public_ips else None,
        }

    @staticmethod
    def _one(items: Sequence[R], name: str) -> R:
        found = [i for i in items if i.name == name]
        if len(found) != 1:
            raise PermanentError(f"GCE does not list {name!r} after creating it")
        return found[0]


def make_backend(key: str, secret: str | None, keywords: Mapping[str, Any]) -> GceInfraBackend:
    """The backend of the registry row; it needs nothing but the provider's own driver."""
    return GceInfraBackend()
