"""Reconciling a cluster's infrastructure over a libcloud driver: the generic ``ensure_*``
operations and the per-cloud backend seam.

:class:`DriverInfra` is the :class:`~healer.cloud.resources.InfraProvider` every shipped plugin
uses. It owns what all clouds share: the ownership checks (a spec must carry this cluster's tags;
only healer's resources are deleted), find-or-create by name, carrying out each resource's diff
(:mod:`healer.cloud.diff`: the same rules ``healer plan`` shows, so a conflict is refused and an
update is made exactly as planned), and running every blocking call in the provider's bounded
executor (:meth:`~providers.driver_provider.DriverProvider.run_blocking`), so libcloud never runs
on the event loop and its errors are mapped and scrubbed like the machine calls'.

An :class:`InfraBackend` (lab, EC2, GCE) implements the primitives in the cloud's own terms. Its
methods run in worker threads, take the thread's driver, and may block.

The backend also places machines: :class:`~providers.driver_provider.DriverProvider` asks it,
for every machine it creates, for the driver arguments that put the machine in the cluster's
subnet behind its firewall (:meth:`InfraBackend.placement`), and to add a new machine to the load
balancer of its pool (:meth:`InfraBackend.attach`). Replacements made by the daemon therefore land
where ``healer apply`` put the first machines, with no extra step.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import structlog
from libcloud.compute.base import NodeDriver

from healer.cloud import diff as rules
from healer.cloud.diff import Change, Diff
from healer.cloud.machines import Machine, MachineRequest, tags_match
from healer.cloud.resources import (
    TAG_RESOURCE,
    TAG_TIER,
    Capabilities,
    Firewall,
    FirewallSpec,
    Kind,
    LoadBalancer,
    LoadBalancerSpec,
    NatGateway,
    NatSpec,
    Network,
    NetworkSpec,
    RouteTable,
    RouteTableSpec,
    Subnet,
    SubnetSpec,
)
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL

log = structlog.get_logger("providers")
T = TypeVar("T")
R = TypeVar("R", Network, Subnet, Firewall, LoadBalancer, NatGateway, RouteTable)
Lister = Callable[[NodeDriver, Mapping[str, str]], list[R]]


@dataclass(frozen=True)
class _Ensure(Generic[R]):
    """How to bring one resource to its spec: find it, judge it (its diff in
    :mod:`healer.cloud.diff`), make it; what an update changes the diff itself says."""

    spec: NetworkSpec | SubnetSpec | FirewallSpec | LoadBalancerSpec | NatSpec | RouteTableSpec
    lister: Lister[R]
    rule: Callable[[R | None], Diff]
    create: Callable[[NodeDriver], R]


class Executor(Protocol):
    """What the reconciler needs of its provider (a
    :class:`~providers.driver_provider.DriverProvider`): its names, its bounded worker pool with
    the error mapping, and its per-key locks."""

    name: str
    cluster: str

    async def run_blocking(self, op: str, fn: Callable[..., T], *args: Any) -> T: ...

    def lock(self, key: str) -> asyncio.Lock: ...


@dataclass(frozen=True)
class Placement:
    """Where a cluster's machines go, found by tags at create time."""

    network: Network
    subnet: Subnet
    firewalls: tuple[Firewall, ...]


class InfraBackend(abc.ABC):
    """One cloud's primitives. ``tags`` filters always include ``TAG_RESOURCE``. The deletes
    take their resource positionally, so one method may serve several kinds (the lab's does)."""

    capabilities: Capabilities

    # networks
    @abc.abstractmethod
    def list_networks(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Network]: ...

    @abc.abstractmethod
    def create_network(self, driver: NodeDriver, spec: NetworkSpec) -> Network: ...

    @abc.abstractmethod
    def add_internet_gateway(self, driver: NodeDriver, network: Network) -> None:
        """Give ``network`` a way to and from the internet (never removed but by delete)."""

    @abc.abstractmethod
    def delete_network(self, driver: NodeDriver, network: Network, /) -> bool: ...

    # subnets
    @abc.abstractmethod
    def list_subnets(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Subnet]: ...

    @abc.abstractmethod
    def create_subnet(self, driver: NodeDriver, spec: SubnetSpec, network: Network) -> Subnet: ...

    @abc.abstractmethod
    def set_subnet_public_ips(self, driver: NodeDriver, subnet: Subnet, public: bool) -> None: ...

    @abc.abstractmethod
    def delete_subnet(self, driver: NodeDriver, subnet: Subnet, /) -> bool: ...

    # firewalls
    @abc.abstractmethod
    def list_firewalls(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Firewall]: ...

    @abc.abstractmethod
    def create_firewall(
        self, driver: NodeDriver, spec: FirewallSpec, network: Network
    ) -> Firewall: ...

    @abc.abstractmethod
    def change_permissions(
        self, driver: NodeDriver, firewall: Firewall, spec: FirewallSpec, diff: Diff
    ) -> None:
        """Add ``diff.add`` and remove ``diff.remove`` (the firewall's diff) from ``firewall``."""

    @abc.abstractmethod
    def delete_firewall(self, driver: NodeDriver, firewall: Firewall, /) -> bool: ...

    # load balancers
    @abc.abstractmethod
    def list_load_balancers(
        self, driver: NodeDriver, tags: Mapping[str, str]
    ) -> list[LoadBalancer]: ...

    @abc.abstractmethod
    def create_load_balancer(
        self, driver: NodeDriver, spec: LoadBalancerSpec, network: Network, subnet: Subnet
    ) -> LoadBalancer: ...

    @abc.abstractmethod
    def update_load_balancer(
        self, driver: NodeDriver, lb: LoadBalancer, spec: LoadBalancerSpec
    ) -> None:
        """Bring the health check, the allowed sources and (where reported) the subnets it spans
        to ``spec``."""

    @abc.abstractmethod
    def change_members(
        self, driver: NodeDriver, lb: LoadBalancer, *, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        """Register and deregister machines (by id)."""

    @abc.abstractmethod
    def delete_load_balancer(self, driver: NodeDriver, lb: LoadBalancer, /) -> bool: ...

    def close(self) -> None:
        """Release connections of the backend's own (called once the workers are done)."""
        return None

    # NAT gateways and route tables: only a backend whose capabilities set ``nat`` has them.
    def list_nat_gateways(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[NatGateway]:
        return []

    def create_nat_gateway(self, driver: NodeDriver, spec: NatSpec, network: Network) -> NatGateway:
        raise PermanentError(f"{self.capabilities.provider} builds no NAT gateways")

    def delete_nat_gateway(self, driver: NodeDriver, nat: NatGateway, /) -> bool:
        return False

    def list_route_tables(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[RouteTable]:
        return []

    def create_route_table(
        self, driver: NodeDriver, spec: RouteTableSpec, network: Network
    ) -> RouteTable:
        raise PermanentError(f"{self.capabilities.provider} builds no route tables")

    def set_routes(self, driver: NodeDriver, table: RouteTable, spec: RouteTableSpec) -> None:
        """Bring ``table``'s default route and subnet associations to ``spec``."""
        raise PermanentError(f"{self.capabilities.provider} builds no route tables")

    def delete_route_table(self, driver: NodeDriver, table: RouteTable, /) -> bool:
        return False

    # machines
    @abc.abstractmethod
    def placement_kwargs(
        self, driver: NodeDriver, placement: Placement, request: MachineRequest
    ) -> dict[str, Any]:
        """``create_node`` keyword arguments that put the machine in ``placement``."""


def new_firewall(rid: str, spec: FirewallSpec, network: Network) -> Firewall:
    """A firewall just made for ``spec``, before any permission: the reconciler adds those."""
    return Firewall(
        id=rid, name=spec.name, network_id=network.id, permissions=frozenset(), tags=dict(spec.tags)
    )


def _subnet_for(subnets: Sequence[Subnet], location: str | None) -> Subnet | None:
    """The subnet of ``location`` (a zone, or the region of a zone where subnets are regional);
    without a location, the first by name when there is one subnet or the cluster began with
    one (``<cluster>-subnet``, which sorts first)."""
    ordered = sorted(subnets, key=lambda s: s.name)
    if location is None:
        return ordered[0]
    for subnet in ordered:
        if subnet.location is None or location == subnet.location:
            return subnet
        if location.startswith(f"{subnet.location}-"):  # a zone of the subnet's region
            return subnet
    return None


def _cluster_tags(
    cluster: str, kind: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: kind, **(extra or {})}


class DriverInfra:
    """:class:`~healer.cloud.resources.InfraProvider` over a provider's executor and a backend."""

    def __init__(self, provider: Executor, backend: InfraBackend) -> None:
        self._provider = provider
        self.backend = backend
        self.name = provider.name
        self.cluster = provider.cluster

    def __repr__(self) -> str:
        return f"DriverInfra(name={self.name!r}, cluster={self.cluster!r})"

    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    # -- networks, subnets, firewalls, load balancers ------------------------------------------

    async def list_networks(self, tags: Mapping[str, str]) -> list[Network]:
        return await self._list("network", self.backend.list_networks, tags)

    async def list_subnets(self, tags: Mapping[str, str]) -> list[Subnet]:
        return await self._list("subnet", self.backend.list_subnets, tags)

    async def list_firewalls(self, tags: Mapping[str, str]) -> list[Firewall]:
        return await self._list("firewall", self.backend.list_firewalls, tags)

    async def list_load_balancers(self, tags: Mapping[str, str]) -> list[LoadBalancer]:
        return await self._list("load-balancer", self.backend.list_load_balancers, tags)

    async def ensure_network(self, spec: NetworkSpec) -> Network:
        rule, make = (
            partial(rules.network_diff, spec),
            partial(self.backend.create_network, spec=spec),
        )
        return await self._ensure("network", _Ensure(spec, self.backend.list_networks, rule, make))

    async def ensure_subnet(self, spec: SubnetSpec, network: Network) -> Subnet:
        backend = self.backend
        caps = backend.capabilities
        if spec.location is None and caps.subnet_location_required:
            raise PermanentError(
                f"provider {self.name}: ensure_subnet({spec.name}): a subnet here lives in one "
                f"{caps.subnet_scope}; set network.location (see {caps.docs})"
            )
        rule = partial(rules.subnet_diff, spec, network=network)
        make = partial(backend.create_subnet, spec=spec, network=network)
        return await self._ensure("subnet", _Ensure(spec, backend.list_subnets, rule, make))

    async def ensure_firewall(self, spec: FirewallSpec, network: Network) -> Firewall:
        rule = partial(rules.firewall_diff, spec, network=network)
        make = partial(self.backend.create_firewall, spec=spec, network=network)
        return await self._ensure(
            "firewall", _Ensure(spec, self.backend.list_firewalls, rule, make)
        )

    async def ensure_load_balancer(
        self, spec: LoadBalancerSpec, network: Network, subnet: Subnet
    ) -> LoadBalancer:
        op = f"ensure_load_balancer({spec.name})"
        caps = self.backend.capabilities
        if spec.health_check.protocol not in caps.health_check_protocols:
            raise PermanentError(
                f"provider {self.name}: {op}: health check protocol {spec.health_check.protocol} "
                f"is not available here (only {', '.join(sorted(caps.health_check_protocols))}); "
                f"see {caps.docs}"
            )
        if spec.internal and not caps.lb_internal:
            raise PermanentError(
                f"provider {self.name}: {op}: cannot build an internal load balancer; "
                f"see {caps.docs}"
            )
        lister, rule = self.backend.list_load_balancers, partial(rules.load_balancer_diff, spec)
        make = partial(self.backend.create_load_balancer, spec=spec, network=network, subnet=subnet)
        return await self._ensure("load-balancer", _Ensure(spec, lister, rule, make))

    async def list_nat_gateways(self, tags: Mapping[str, str]) -> list[NatGateway]:
        return await self._list("nat-gateway", self.backend.list_nat_gateways, tags)

    async def list_route_tables(self, tags: Mapping[str, str]) -> list[RouteTable]:
        return await self._list("route-table", self.backend.list_route_tables, tags)

    async def ensure_nat_gateway(self, spec: NatSpec, network: Network) -> NatGateway:
        rule = rules.nat_diff
        make = partial(self.backend.create_nat_gateway, spec=spec, network=network)
        lister = self.backend.list_nat_gateways
        return await self._ensure("nat-gateway", _Ensure(spec, lister, partial(rule, spec), make))

    async def ensure_route_table(self, spec: RouteTableSpec, network: Network) -> RouteTable:
        rule = partial(rules.route_table_diff, spec)
        make = partial(self.backend.create_route_table, spec=spec, network=network)
        lister = self.backend.list_route_tables
        return await self._ensure("route-table", _Ensure(spec, lister, rule, make))

    async def delete_nat_gateway(self, nat: NatGateway) -> bool:
        return await self._delete("nat-gateway", nat, self.backend.delete_nat_gateway)

    async def delete_route_table(self, table: RouteTable) -> bool:
        return await self._delete("route-table", table, self.backend.delete_route_table)

    async def delete_network(self, network: Network) -> bool:
        return await self._delete("network", network, self.backend.delete_network)

    async def delete_subnet(self, subnet: Subnet) -> bool:
        return await self._delete("subnet", subnet, self.backend.delete_subnet)

    async def delete_firewall(self, firewall: Firewall) -> bool:
        return await self._delete("firewall", firewall, self.backend.delete_firewall)

    async def delete_load_balancer(self, lb: LoadBalancer) -> bool:
        return await self._delete("load-balancer", lb, self.backend.delete_load_balancer)

    async def _list(self, kind: Kind, lister: Lister[R], tags: Mapping[str, str]) -> list[R]:
        wanted = {**tags, TAG_RESOURCE: kind}
        op = f"list_{_snake(kind)}s({_fmt(wanted)})"
        return await self._run(op, self._list_sync, lister, wanted)

    async def _ensure(self, kind: Kind, how: _Ensure[R]) -> R:
        op = f"ensure_{_snake(kind)}({how.spec.name})"
        self._check_spec(op, how.spec.tags, kind)
        async with self._provider.lock(f"{kind}:{how.spec.name}"):
            return await self._run(op, self._ensure_sync, how)

    def _ensure_sync(self, driver: NodeDriver, op: str, how: _Ensure[R]) -> R:
        """Carry out the resource's diff (:mod:`healer.cloud.diff`), the one ``plan`` shows."""
        found = self._find(driver, op, how.lister, how.spec.name, how.spec.tags)
        diff = how.rule(found)
        if found is None:
            found = how.create(driver)
            _created(self.name, diff.kind, found.name, found.id)
            diff = how.rule(found)  # a cloud may take only part of a spec on create
        if diff.change is Change.CONFLICT:
            raise PermanentError(f"provider {self.name}: {op}: {diff}")
        if diff.change is Change.NONE:
            return found
        self._update(driver, found, how.spec, diff)
        log.info(
            "provider.infra_updated",
            provider=self.name,
            kind=diff.kind,
            resource=found.name,
            change=diff.detail,
        )
        again = self._find(driver, op, how.lister, how.spec.name, how.spec.tags)
        left = how.rule(again)
        if again is None or left.change is not Change.NONE:
            raise PermanentError(
                f"provider {self.name}: {op}: the cloud did not take the change "
                f"({diff.detail}); {'it is gone' if again is None else f'still: {left.detail}'}"
            )
        return again

    def _update(
        self,
        driver: NodeDriver,
        found: Network | Subnet | Firewall | LoadBalancer | NatGateway | RouteTable,
        spec: NetworkSpec | SubnetSpec | FirewallSpec | LoadBalancerSpec | NatSpec | RouteTableSpec,
        diff: Diff,
    ) -> None:
        """Make the changes ``diff`` names, through the backend's primitive for each."""
        backend = self.backend
        if diff.add_internet_gateway and isinstance(found, Network):
            backend.add_internet_gateway(driver, found)
        if diff.public_ips is not None and isinstance(found, Subnet):
            backend.set_subnet_public_ips(driver, found, diff.public_ips)
        if (diff.add or diff.remove) and isinstance(found, Firewall):
            assert isinstance(spec, FirewallSpec)
            backend.change_permissions(driver, found, spec, diff)
        lb_changed = diff.health_check or diff.allowed_sources or diff.subnets
        if lb_changed and isinstance(found, LoadBalancer):
            assert isinstance(spec, LoadBalancerSpec)
            backend.update_load_balancer(driver, found, spec)
        if diff.routes and isinstance(found, RouteTable):
            assert isinstance(spec, RouteTableSpec)
            backend.set_routes(driver, found, spec)

    async def _delete(
        self, kind: Kind, resource: R, deleter: Callable[[NodeDriver, R], bool]
    ) -> bool:
        op = f"delete_{_snake(kind)}({resource.name}, id={resource.id})"
        self._check_owned(op, resource.tags)
        return await self._run(op, lambda d, _op: deleter(d, resource))

    async def set_load_balancer_members(
        self, lb: LoadBalancer, machines: Sequence[Machine]
    ) -> LoadBalancer:
        op = f"set_load_balancer_members({lb.name})"
        self._check_owned(op, lb.tags)
        for machine in machines:
            if machine.tags.get(TAG_CLUSTER) != self.cluster:
                raise PermanentError(
                    f"provider {self.name}: {op}: machine {machine.name} is not tagged "
                    f"{TAG_CLUSTER}={self.cluster}"
                )
        wanted = sorted({m.id for m in machines})
        async with self._provider.lock(f"load-balancer:{lb.name}"):
            return await self._run(op, self._members_sync, lb, wanted)

    def _members_sync(
        self, driver: NodeDriver, op: str, lb: LoadBalancer, wanted: list[str]
    ) -> LoadBalancer:
        current = self._find(driver, op, self.backend.list_load_balancers, lb.name, lb.tags)
        if current is None:
            raise PermanentError(f"provider {self.name}: {op}: the load balancer is gone")
        add, remove = rules.member_changes(current.members, wanted)
        if not add and not remove:
            return current
        self._change_members(driver, current, add, remove)
        again = self._find(driver, op, self.backend.list_load_balancers, lb.name, lb.tags)
        assert again is not None
        return again

    # -- machine placement (called by DriverProvider in its worker threads) ----------------------

    def find_placement(self, driver: NodeDriver, location: str | None = None) -> Placement | None:
        """The cluster's network, private subnet (the one of ``location``'s zone or region, the
        first when there is no location) and firewalls, when healer built them; else ``None``."""
        subnets = [
            s
            for s in self.backend.list_subnets(driver, _cluster_tags(self.cluster, "subnet"))
            if s.tags.get(TAG_TIER) != "public"
        ]
        if not subnets:
            return None
        subnet = _subnet_for(subnets, location)
        if subnet is None:
            names = ", ".join(f"{s.name} ({s.location})" for s in subnets)
            raise PermanentError(
                f"provider {self.name}: cluster {self.cluster} has no private subnet for "
                f"location {location} (it has {names}); add the zone to a pool and run "
                "`healer apply`"
            )
        networks = [
            n
            for n in self.backend.list_networks(driver, _cluster_tags(self.cluster, "network"))
            if n.id == subnet.network_id
        ]
        if not networks:
            raise PermanentError(
                f"provider {self.name}: subnet {subnet.name} of cluster {self.cluster} is in "
                f"network {subnet.network_id}, which is not healer's"
            )
        firewalls = tuple(
            f
            for f in self.backend.list_firewalls(driver, _cluster_tags(self.cluster, "firewall"))
            if f.network_id == subnet.network_id
        )
        return Placement(network=networks[0], subnet=subnet, firewalls=firewalls)

    def placement_kwargs(self, driver: NodeDriver, request: MachineRequest) -> dict[str, Any]:
        placement = self.find_placement(driver, request.location)
        if placement is None:
            return {}
        return self.backend.placement_kwargs(driver, placement, request)

    def attach(self, driver: NodeDriver, machine: Machine) -> None:
        """Add ``machine`` to the load balancer of its pool, if the cluster has one."""
        self._membership(driver, machine, member=True)

    def detach(self, driver: NodeDriver, machine: Machine) -> None:
        """Take ``machine`` out of any load balancer of the cluster before it is destroyed."""
        self._membership(driver, machine, member=False)

    def _membership(self, driver: NodeDriver, machine: Machine, *, member: bool) -> None:
        pool = machine.tags.get(TAG_POOL)
        if pool is None or self.find_placement(driver) is None:
            return
        lbs = self.backend.list_load_balancers(
            driver, _cluster_tags(self.cluster, "load-balancer", {TAG_POOL: pool})
        )
        for lb in lbs:
            if (machine.id in lb.members) is member:
                continue
            add, remove = ([machine.id], []) if member else ([], [machine.id])
            self._change_members(driver, lb, add, remove)

    def _change_members(
        self, driver: NodeDriver, lb: LoadBalancer, add: list[str], remove: list[str]
    ) -> None:
        self.backend.change_members(driver, lb, add=add, remove=remove)
        log.info(
            "provider.load_balancer_members",
            provider=self.name,
            load_balancer=lb.name,
            added=add,
            removed=remove,
        )

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        return await self._provider.run_blocking(op, fn, *args)

    @staticmethod
    def _list_sync(
        driver: NodeDriver,
        op: str,
        lister: Callable[[NodeDriver, Mapping[str, str]], list[R]],
        tags: Mapping[str, str],
    ) -> list[R]:
        # Backends may filter loosely on the server; the tag test here is the one that counts.
        return sorted(
            (r for r in lister(driver, tags) if tags_match(r.tags, tags)), key=lambda r: r.name
        )

    def _find(
        self,
        driver: NodeDriver,
        op: str,
        lister: Callable[[NodeDriver, Mapping[str, str]], list[R]],
        name: str,
        tags: Mapping[str, str],
    ) -> R | None:
        ours = {TAG_CLUSTER: self.cluster, TAG_RESOURCE: tags[TAG_RESOURCE]}
        found = [r for r in lister(driver, ours) if r.name == name and tags_match(r.tags, ours)]
        if len(found) > 1:
            ids = ", ".join(sorted(r.id for r in found))
            raise PermanentError(
                f"provider {self.name}: {op}: {len(found)} resources are named {name!r} ({ids}); "
                "healer will not pick one"
            )
        if found and not tags_match(found[0].tags, tags):
            raise PermanentError(
                f"provider {self.name}: {op}: {name} ({found[0].id}) exists with other tags "
                f"({dict(found[0].tags)}); healer will not adopt it"
            )
        return found[0] if found else None

    def _check_spec(self, op: str, tags: Mapping[str, str], kind: str) -> None:
        if tags.get(TAG_CLUSTER) != self.cluster or tags.get(TAG_MANAGED) != "true":
            raise PermanentError(
                f"provider {self.name}: {op}: the spec must carry {TAG_MANAGED}=true and "
                f"{TAG_CLUSTER}={self.cluster}"
            )
        if tags.get(TAG_RESOURCE) != kind:
            raise PermanentError(
                f"provider {self.name}: {op}: the spec must carry {TAG_RESOURCE}={kind}"
            )

    def _check_owned(self, op: str, tags: Mapping[str, str]) -> None:
        if tags.get(TAG_CLUSTER) != self.cluster or tags.get(TAG_MANAGED) != "true":
            raise PermanentError(
                f"provider {self.name}: {op} refused: not tagged {TAG_MANAGED}=true and "
                f"{TAG_CLUSTER}={self.cluster}; healer only deletes what it made"
            )


def _created(provider: str, kind: str, name: str, rid: str) -> None:
    log.info("provider.infra_created", provider=provider, kind=kind, resource=name, id=rid)


def _snake(kind: str) -> str:
    return kind.replace("-", "_")


def _fmt(tags: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
