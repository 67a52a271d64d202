"""One rule set per infrastructure resource: what healer wants against what the cloud has. Pure.

Each ``*_diff`` function takes a spec (:mod:`healer.cloud.resources`) and the resource found by
its name (or ``None``) and returns one :class:`Diff`: create it, update it in place (and what
to change), leave it, or a conflict that cannot be changed in place, with words a person can
read. ``healer plan`` shows these diffs (:mod:`healer.provisioning.plan`) and the provider
plugins' ``ensure_*`` operations carry out the very same ones, so what ``plan`` says is what
``apply`` does.

The rules:

- network: a different CIDR is a conflict; a missing internet gateway is added;
- subnet: another CIDR, network or location is a conflict; public addressing is updated;
- firewall: one in another network is a conflict; permissions are brought to the spec (set
  differences);
- load balancer: another port, target port or scheme (internal/public) is a conflict; the
  health check, the allowed sources and the subnets it spans (where the provider reports them)
  are updated;
- load-balancer members: machine ids added and removed (:func:`member_changes`);
- NAT gateway: another subnet or location is a conflict (it cannot move);
- route table: its default route and its subnet associations are brought to the spec.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from healer.cloud import resources as res
from healer.model import TAG_POOL

__all__ = [
    "Change",
    "Diff",
    "firewall_diff",
    "load_balancer_diff",
    "member_changes",
    "nat_diff",
    "network_diff",
    "route_table_diff",
    "subnet_diff",
]


class Change(enum.StrEnum):
    """What to do about a resource, as ``healer plan`` prints it."""

    CREATE = "+"
    UPDATE = "~"
    DELETE = "-"
    CONFLICT = "!"  # cannot be changed in place; ``apply`` refuses to start
    NONE = "="  # as configured


@dataclass(frozen=True)
class Diff:
    """The verdict for one resource. An update names what it changes; the other fields keep
    their defaults."""

    change: Change
    kind: res.Kind
    name: str
    detail: str = ""  # what is created or changed, or why it cannot be
    resource_id: str | None = None
    add_internet_gateway: bool = False  # network
    public_ips: bool | None = None  # subnet: the addressing to set
    add: frozenset[res.Permission] = frozenset()  # firewall
    remove: frozenset[res.Permission] = frozenset()  # firewall
    health_check: bool = False  # load balancer: the health check differs
    allowed_sources: bool = False  # load balancer: the allowed sources differ
    routes: bool = False  # route table: its default route or associations differ
    subnets: bool = False  # load balancer: the subnets it spans differ

    def __str__(self) -> str:
        where = f" ({self.resource_id})" if self.resource_id else ""
        return f"{self.kind} {self.name}{where}: {self.detail}"


class _Found(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


def _none(kind: res.Kind, found: _Found) -> Diff:
    return Diff(Change.NONE, kind, found.name, "as configured", resource_id=found.id)


def _conflict(kind: res.Kind, found: _Found, detail: str) -> Diff:
    return Diff(Change.CONFLICT, kind, found.name, detail, resource_id=found.id)


def _update(kind: res.Kind, found: _Found, detail: str, **what: Any) -> Diff:
    """An update of ``found``; ``what`` are the :class:`Diff` fields saying what changes."""
    return Diff(Change.UPDATE, kind, found.name, detail, resource_id=found.id, **what)


def network_diff(spec: res.NetworkSpec, found: res.Network | None) -> Diff:
    if found is None:
        gateway = " with an internet gateway" if spec.internet_gateway else ""
        return Diff(Change.CREATE, "network", spec.name, f"{spec.cidr}{gateway}")
    if found.cidr != spec.cidr:
        return _conflict(
            "network",
            found,
            f"is {found.cidr} in the cloud, {spec.cidr} in the config; a network's range cannot "
            "change in place (destroy, then apply)",
        )
    if spec.internet_gateway and not found.internet_gateway:
        return _update(
            "network",
            found,
            "add an internet gateway (a public load balancer or public addresses need one)",
            add_internet_gateway=True,
        )
    return _none("network", found)


def subnet_diff(
    spec: res.SubnetSpec, found: res.Subnet | None, network: res.Network | None
) -> Diff:
    """``network`` is the cluster's network as found (``None`` when it is yet to be made)."""
    where = f" in {spec.location}" if spec.location else ""
    addressing = "public addresses" if spec.public_ips else "private addresses only"
    if spec.tags.get(res.TAG_TIER) == "public":
        addressing = "public tier: NAT gateways and the load balancer only, no machines"
    if found is None:
        return Diff(
            Change.CREATE,
            "subnet",
            spec.name,
            f"{spec.cidr}{where} in network {spec.network}, {addressing}",
        )
    moved = found.cidr != spec.cidr or (network is not None and found.network_id != network.id)
    relocated = spec.location is not None and found.location != spec.location
    if moved or relocated:
        wanted_net = f" in network {network.id}" if network is not None else ""
        return _conflict(
            "subnet",
            found,
            f"is {found.cidr} in {found.location or '?'} (network {found.network_id}) in the "
            f"cloud, the config wants {spec.cidr}{where}{wanted_net}; a subnet cannot move in "
            "place (destroy, then apply)",
        )
    if found.public_ips != spec.public_ips:
        return _update(
            "subnet",
            found,
            f"{addressing} for machines created from now on",
            public_ips=spec.public_ips,
        )
    return _none("subnet", found)


def firewall_diff(
    spec: res.FirewallSpec, found: res.Firewall | None, network: res.Network | None
) -> Diff:
    """``network`` is the cluster's network as found (``None`` when it is yet to be made)."""
    wanted = spec.permissions()
    if found is None:
        rules = "; ".join(str(p) for p in sorted(wanted))
        return Diff(Change.CREATE, "firewall", spec.name, f"admits only {rules}")
    if network is not None and found.network_id != network.id:
        return _conflict(
            "firewall",
            found,
            f"belongs to network {found.network_id}, not {network.id}; a firewall cannot move "
            "in place (destroy, then apply)",
        )
    add, remove = wanted - found.permissions, found.permissions - wanted
    if not add and not remove:
        return _none("firewall", found)
    parts = [f"+ {p}" for p in sorted(add)] + [f"- {p}" for p in sorted(remove)]
    return _update("firewall", found, "; ".join(parts), add=add, remove=remove)


def _scheme(internal: bool) -> str:
    return "internal" if internal else "public"


def load_balancer_diff(spec: res.LoadBalancerSpec, found: res.LoadBalancer | None) -> Diff:
    kind = _scheme(spec.internal)
    if found is None:
        sources = ", ".join(spec.allowed_sources) or "anywhere the firewall admits"
        pool = spec.tags.get(TAG_POOL, "?")
        return Diff(
            Change.CREATE,
            "load-balancer",
            spec.name,
            f"{kind} tcp/{spec.port} -> {spec.target_port} on the members of pool {pool}, in "
            f"{', '.join(spec.subnets or (spec.subnet,))}; health check {spec.health_check}; "
            f"clients {sources}",
        )
    if (found.port, found.target_port, found.internal) != (
        spec.port,
        spec.target_port,
        spec.internal,
    ):
        return _conflict(
            "load-balancer",
            found,
            f"is {_scheme(found.internal)} tcp/{found.port} -> {found.target_port} in the cloud, "
            f"the config wants {kind} tcp/{spec.port} -> {spec.target_port}; destroy it to "
            "change that",
        )
    changes = []
    health = found.health_check != spec.health_check
    if health:
        changes.append(f"health check {found.health_check} -> {spec.health_check}")
    have, want = tuple(sorted(found.allowed_sources)), tuple(sorted(spec.allowed_sources))
    if have != want:
        changes.append(f"clients {', '.join(have) or '-'} -> {', '.join(want) or '-'}")
    spans = tuple(sorted(spec.subnets or (spec.subnet,)))
    moved = bool(found.subnets) and found.subnets != spans
    if moved:
        changes.append(f"subnets {', '.join(found.subnets)} -> {', '.join(spans)}")
    if not changes:
        return _none("load-balancer", found)
    return _update(
        "load-balancer",
        found,
        "; ".join(changes),
        health_check=health,
        allowed_sources=have != want,
        subnets=moved,
    )


def nat_diff(spec: res.NatSpec, found: res.NatGateway | None) -> Diff:
    where = f" in {spec.location}" if spec.location else ""
    if found is None:
        return Diff(
            Change.CREATE,
            "nat-gateway",
            spec.name,
            f"egress to the internet{where} through subnet {spec.subnet}",
        )
    if found.subnet != spec.subnet or (spec.location and found.location != spec.location):
        return _conflict(
            "nat-gateway",
            found,
            f"is in subnet {found.subnet} ({found.location or '?'}) in the cloud, the config "
            f"wants {spec.subnet}{where}; a NAT gateway cannot move (destroy, then apply)",
        )
    return _none("nat-gateway", found)


def _route(target: str | None) -> str:
    if target is None:
        return "no route out"
    if target.startswith(res.NAT_ROUTE):
        return f"0.0.0.0/0 -> NAT gateway {target[len(res.NAT_ROUTE) :]}"
    return "0.0.0.0/0 -> internet gateway"


def route_table_diff(spec: res.RouteTableSpec, found: res.RouteTable | None) -> Diff:
    subnets = ", ".join(spec.subnets)
    if found is None:
        return Diff(
            Change.CREATE, "route-table", spec.name, f"{_route(spec.default_route)} for {subnets}"
        )
    changes = []
    if found.default_route != spec.default_route:
        changes.append(f"{_route(found.default_route)} -> {_route(spec.default_route)}")
    if tuple(sorted(found.subnets)) != tuple(sorted(spec.subnets)):
        have = ", ".join(sorted(found.subnets)) or "-"
        changes.append(f"subnets {have} -> {', '.join(sorted(spec.subnets))}")
    if not changes:
        return _none("route-table", found)
    return _update("route-table", found, "; ".join(changes), routes=True)


def member_changes(current: Iterable[str], wanted: Iterable[str]) -> tuple[list[str], list[str]]:
    """Machine ids to add to and to remove from a load balancer, each sorted."""
    have, want = set(current), set(wanted)
    return sorted(want - have), sorted(have - want)
