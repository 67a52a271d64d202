"""Infrastructure over a libcloud driver: the generic ensure logic and the per-cloud backend seam.

:class:`DriverInfra` is the :class:`~healer.cloud.resources.InfraProvider` every shipped plugin uses. It
owns what all clouds share: the ownership checks (a spec must carry this cluster's tags; only
healer's resources are deleted), find-or-create by name, firewall reconciliation as set
differences of permissions, and running every blocking call in the provider's bounded executor
(:meth:`~providers.driver_provider.DriverProvider.run_blocking`), so libcloud never runs on the
event loop and its errors are mapped and scrubbed like the machine calls'.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from libcloud.compute.base import NodeDriver

from healer.cloud.machines import Machine, MachineRequest, tags_match
from healer.cloud.resources import (
    TAG_RESOURCE,
    Capabilities,
    Firewall,
    FirewallSpec,
    LoadBalancer,
    LoadBalancerSpec,
    Network,
    NetworkSpec,
    Permission,
    Subnet,
    SubnetSpec,
)
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL

if TYPE_CHECKING:
    from providers.driver_provider import DriverProvider

log = structlog.get_logger("providers")
T = TypeVar("T")
R = TypeVar("R", Network, Subnet, Firewall, LoadBalancer)


@dataclass(frozen=True)
class Placement:
    """Where a cluster's machines go, found by tags at create time."""

    network: Network
    subnet: Subnet
    firewalls: tuple[Firewall, ...]


class InfraBackend(abc.ABC):
    """One cloud's primitives. ``tags`` filters always include ``TAG_RESOURCE``."""

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
    def delete_network(self, driver: NodeDriver, network: Network) -> bool: ...

    # subnets
    @abc.abstractmethod
    def list_subnets(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Subnet]: ...

    @abc.abstractmethod
    def create_subnet(self, driver: NodeDriver, spec: SubnetSpec, network: Network) -> Subnet: ...

    @abc.abstractmethod
    def set_subnet_public_ips(self, driver: NodeDriver, subnet: Subnet, public: bool) -> None: ...

    @abc.abstractmethod
    def delete_subnet(self, driver: NodeDriver, subnet: Subnet) -> bool: ...

    # firewalls
    @abc.abstractmethod
    def list_firewalls(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Firewall]: ...

    @abc.abstractmethod
    def create_firewall(
        self, driver: NodeDriver, spec: FirewallSpec, network: Network
    ) -> Firewall: ...

    @abc.abstractmethod
    def change_permissions(
        self,
        driver: NodeDriver,
        firewall: Firewall,
        spec: FirewallSpec,
        *,
        add: frozenset[Permission],
        remove: frozenset[Permission],
    ) -> None: ...

    @abc.abstractmethod
    def delete_firewall(self, driver: NodeDriver, firewall: Firewall) -> bool: ...

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
        """Bring the health check and the allowed sources to ``spec``."""

    @abc.abstractmethod
    def change_members(
        self, driver: NodeDriver, lb: LoadBalancer, *, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        """Register and deregister machines (by id)."""

    @abc.abstractmethod
    def delete_load_balancer(self, driver: NodeDriver, lb: LoadBalancer) -> bool: ...

    def close(self) -> None:
        """Release connections of the backend's own (called once the workers are done)."""
        return None

    # machines
    @abc.abstractmethod
    def placement_kwargs(
        self, driver: NodeDriver, placement: Placement, request: MachineRequest
    ) -> dict[str, Any]:
        """``create_node`` keyword arguments that put the machine in ``placement``."""


def _cluster_tags(
    cluster: str, kind: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: kind, **(extra or {})}


class DriverInfra:
    """:class:`~healer.cloud.resources.InfraProvider` over a :class:`DriverProvider` and a backend."""

    def __init__(self, provider: DriverProvider, backend: InfraBackend) -> None:
        self._provider = provider
        self.backend = backend
        self.name = provider.name
        self.cluster = provider.cluster

    def __repr__(self) -> str:
        return f"DriverInfra(name={self.name!r}, cluster={self.cluster!r})"

    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    # -- networks ------------------------------------------------------------------------------

    async def list_networks(self, tags: Mapping[str, str]) -> list[Network]:
        wanted = {**tags, TAG_RESOURCE: "network"}
        return await self._run(
            f"list_networks({_fmt(wanted)})", self._list_sync, self.backend.list_networks, wanted
        )

    async def ensure_network(self, spec: NetworkSpec) -> Network:
        op = f"ensure_network({spec.name})"
        self._check_spec(op, spec.tags, "network")
        async with self._provider.lock(f"network:{spec.name}"):
            return await self._run(op, self._ensure_network_sync, spec)

    def _ensure_network_sync(self, driver: NodeDriver, op: str, spec: NetworkSpec) -> Network:
        found = self._find(driver, op, self.backend.list_networks, spec.name, spec.tags)
        if found is None:
            made = self.backend.create_network(driver, spec)
            _created(self.name, "network", made.name, made.id)
            return made
        if found.cidr != spec.cidr:
            raise PermanentError(
                f"provider {self.name}: {op}: network {found.name} ({found.id}) has CIDR "
                f"{found.cidr}, the config wants {spec.cidr}; a network's range cannot be changed "
                "in place (destroy and apply again)"
            )
        if spec.internet_gateway and not found.internet_gateway:
            self.backend.add_internet_gateway(driver, found)
            log.info("provider.network_updated", provider=self.name, network=found.name)
            again = self._find(driver, op, self.backend.list_networks, spec.name, spec.tags)
            assert again is not None
            return again
        return found

    async def delete_network(self, network: Network) -> bool:
        op = f"delete_network({network.name}, id={network.id})"
        self._check_owned(op, network.tags)
        return await self._run(op, lambda d, _op: self.backend.delete_network(d, network))

    # -- subnets -------------------------------------------------------------------------------

    async def list_subnets(self, tags: Mapping[str, str]) -> list[Subnet]:
        wanted = {**tags, TAG_RESOURCE: "subnet"}
        return await self._run(
            f"list_subnets({_fmt(wanted)})", self._list_sync, self.backend.list_subnets, wanted
        )

    async def ensure_subnet(self, spec: SubnetSpec, network: Network) -> Subnet:
        op = f"ensure_subnet({spec.name})"
        self._check_spec(op, spec.tags, "subnet")
        async with self._provider.lock(f"subnet:{spec.name}"):
            return await self._run(op, self._ensure_subnet_sync, spec, network)

    def _ensure_subnet_sync(
        self, driver: NodeDriver, op: str, spec: SubnetSpec, network: Network
    ) -> Subnet:
        found = self._find(driver, op, self.backend.list_subnets, spec.name, spec.tags)
        if found is None:
            made = self.backend.create_subnet(driver, spec, network)
            _created(self.name, "subnet", made.name, made.id)
            return made
        if found.cidr != spec.cidr or found.network_id != network.id:
            raise PermanentError(
                f"provider {self.name}: {op}: subnet {found.name} ({found.id}) is {found.cidr} in "
                f"network {found.network_id}, the config wants {spec.cidr} in {network.id}; a "
                "subnet cannot be moved or resized in place (destroy and apply again)"
            )
        if found.public_ips != spec.public_ips:
            self.backend.set_subnet_public_ips(driver, found, spec.public_ips)
            log.info("provider.subnet_updated", provider=self.name, subnet=found.name)
            again = self._find(driver, op, self.backend.list_subnets, spec.name, spec.tags)
            assert again is not None
            return again
        return found

    async def delete_subnet(self, subnet: Subnet) -> bool:
        op = f"delete_subnet({subnet.name}, id={subnet.id})"
        self._check_owned(op, subnet.tags)
        return await self._run(op, lambda d, _op: self.backend.delete_subnet(d, subnet))

    # -- firewalls -----------------------------------------------------------------------------

    async def list_firewalls(self, tags: Mapping[str, str]) -> list[Firewall]:
        wanted = {**tags, TAG_RESOURCE: "firewall"}
        return await self._run(
            f"list_firewalls({_fmt(wanted)})", self._list_sync, self.backend.list_firewalls, wanted
        )

    async def ensure_firewall(self, spec: FirewallSpec, network: Network) -> Firewall:
        op = f"ensure_firewall({spec.name})"
        self._check_spec(op, spec.tags, "firewall")
        async with self._provider.lock(f"firewall:{spec.name}"):
            return await self._run(op, self._ensure_firewall_sync, spec, network)

    def _ensure_firewall_sync(
        self, driver: NodeDriver, op: str, spec: FirewallSpec, network: Network
    ) -> Firewall:
        found = self._find(driver, op, self.backend.list_firewalls, spec.name, spec.tags)
        if found is None:
            found = self.backend.create_firewall(driver, spec, network)
            _created(self.name, "firewall", found.name, found.id)
        elif found.network_id != network.id:
            raise PermanentError(
                f"provider {self.name}: {op}: firewall {found.name} ({found.id}) belongs to "
                f"network {found.network_id}, not {network.id}"
            )
        wanted = spec.permissions()
        add, remove = wanted - found.permissions, found.permissions - wanted
        if not add and not remove:
            return found
        self.backend.change_permissions(driver, found, spec, add=add, remove=remove)
        log.info(
            "provider.firewall_updated",
            provider=self.name,
            firewall=spec.name,
            added=sorted(map(str, add)),
            removed=sorted(map(str, remove)),
        )
        again = self._find(driver, op, self.backend.list_firewalls, spec.name, spec.tags)
        if again is None or again.permissions != wanted:
            got = sorted(map(str, again.permissions)) if again else "(gone)"
            raise PermanentError(
                f"provider {self.name}: {op}: the cloud did not take the rules; it holds {got}"
            )
        return again

    async def delete_firewall(self, firewall: Firewall) -> bool:
        op = f"delete_firewall({firewall.name}, id={firewall.id})"
        self._check_owned(op, firewall.tags)
        return await self._run(op, lambda d, _op: self.backend.delete_firewall(d, firewall))

    # -- load balancers ------------------------------------------------------------------------

    async def list_load_balancers(self, tags: Mapping[str, str]) -> list[LoadBalancer]:
        wanted = {**tags, TAG_RESOURCE: "load-balancer"}
        return await self._run(
            f"list_load_balancers({_fmt(wanted)})",
            self._list_sync,
            self.backend.list_load_balancers,
            wanted,
        )

    async def ensure_load_balancer(
        self, spec: LoadBalancerSpec, network: Network, subnet: Subnet
    ) -> LoadBalancer:
        op = f"ensure_load_balancer({spec.name})"
        self._check_spec(op, spec.tags, "load-balancer")
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
        async with self._provider.lock(f"lb:{spec.name}"):
            return await self._run(op, self._ensure_lb_sync, spec, network, subnet)

    def _ensure_lb_sync(
        self,
        driver: NodeDriver,
        op: str,
        spec: LoadBalancerSpec,
        network: Network,
        subnet: Subnet,
    ) -> LoadBalancer:
        found = self._find(driver, op, self.backend.list_load_balancers, spec.name, spec.tags)
        if found is None:
            made = self.backend.create_load_balancer(driver, spec, network, subnet)
            _created(self.name, "load-balancer", made.name, made.id)
            found = made
        if (found.port, found.target_port, found.internal) != (
            spec.port,
            spec.target_port,
            spec.internal,
        ):
            raise PermanentError(
                f"provider {self.name}: {op}: load balancer {found.name} listens on "
                f"{found.port} -> {found.target_port} ({'internal' if found.internal else 'public'})"
                f", the config wants {spec.port} -> {spec.target_port} "
                f"({'internal' if spec.internal else 'public'}); destroy it to change that"
            )
        if found.health_check == spec.health_check and found.allowed_sources == tuple(
            sorted(spec.allowed_sources)
        ):
            return found
        self.backend.update_load_balancer(driver, found, spec)
        log.info("provider.load_balancer_updated", provider=self.name, load_balancer=spec.name)
        again = self._find(driver, op, self.backend.list_load_balancers, spec.name, spec.tags)
        assert again is not None
        return again

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
        async with self._provider.lock(f"lb:{lb.name}"):
            return await self._run(op, self._members_sync, lb, wanted)

    def _members_sync(
        self, driver: NodeDriver, op: str, lb: LoadBalancer, wanted: list[str]
    ) -> LoadBalancer:
        current = self._find(driver, op, self.backend.list_load_balancers, lb.name, lb.tags)
        if current is None:
            raise PermanentError(f"provider {self.name}: {op}: the load balancer is gone")
        add = sorted(set(wanted) - set(current.members))
        remove = sorted(set(current.members) - set(wanted))
        if not add and not remove:
            return current
        self.backend.change_members(driver, current, add=add, remove=remove)
        log.info(
            "provider.load_balancer_members",
            provider=self.name,
            load_balancer=lb.name,
            added=add,
            removed=remove,
        )
        again = self._find(driver, op, self.backend.list_load_balancers, lb.name, lb.tags)
        assert again is not None
        return again

    async def delete_load_balancer(self, lb: LoadBalancer) -> bool:
        op = f"delete_load_balancer({lb.name})"
        self._check_owned(op, lb.tags)
        return await self._run(op, lambda d, _op: self.backend.delete_load_balancer(d, lb))

    # -- machine placement (called by DriverProvider in its worker threads) ----------------------

    def find_placement(self, driver: NodeDriver) -> Placement | None:
        """The cluster's network, subnet and firewalls, when healer built them; else ``None``."""
        subnets = self.backend.list_subnets(driver, _cluster_tags(self.cluster, "subnet"))
        if not subnets:
            return None
        if len(subnets) > 1:
            names = ", ".join(sorted(s.name for s in subnets))
            raise PermanentError(
                f"provider {self.name}: cluster {self.cluster} has {len(subnets)} subnets "
                f"({names}); healer places machines in exactly one"
            )
        subnet = subnets[0]
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
        placement = self.find_placement(driver)
        if placement is None:
            return {}
        return self.backend.placement_kwargs(driver, placement, request)

    def attach(self, driver: NodeDriver, machine: Machine) -> None:
        """Add ``machine`` to the load balancer of its pool, if the cluster has one."""
        pool = machine.tags.get(TAG_POOL)
        if pool is None or self.find_placement(driver) is None:
            return
        lbs = self.backend.list_load_balancers(
            driver, _cluster_tags(self.cluster, "load-balancer", {TAG_POOL: pool})
        )
        for lb in lbs:
            if machine.id not in lb.members:
                self.backend.change_members(driver, lb, add=[machine.id], remove=[])
                log.info(
                    "provider.load_balancer_members",
                    provider=self.name,
                    load_balancer=lb.name,
                    added=[machine.id],
                    removed=[],
                )

    def detach(self, driver: NodeDriver, machine: Machine) -> None:
        """Take ``machine`` out of any load balancer of the cluster before it is destroyed."""
        pool = machine.tags.get(TAG_POOL)
        if pool is None or self.find_placement(driver) is None:
            return
        lbs = self.backend.list_load_balancers(
            driver, _cluster_tags(self.cluster, "load-balancer", {TAG_POOL: pool})
        )
        for lb in lbs:
            if machine.id in lb.members:
                self.backend.change_members(driver, lb, add=[], remove=[machine.id])

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


def _fmt(tags: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
