"""Carrying out a plan: reading what a cluster has, ``apply`` and ``destroy``.

The decisions are in :mod:`healer.provisioning.desired` and :mod:`healer.provisioning.plan`; this
module only does the I/O, through the provider's :class:`~healer.cloud.machines.Provider` and
:class:`~healer.cloud.resources.InfraProvider`, both of which run libcloud off the event loop.

``apply`` is idempotent because every step is: it computes the plan, stops when there is nothing
to do or something it must not do (a conflict), then ensures network -> subnet -> firewall -> load
balancer -> pools (:func:`~healer.provisioning.pools.ensure_pools`, the daemon's drift repair) ->
load-balancer members. The provider places each new machine in the cluster's subnet behind its
firewall, and puts control-plane machines behind the load balancer, as it does for replacements.

``destroy`` deletes only resources tagged ``healer.io/managed=true`` and
``healer.io/cluster=<name>``, load balancer first and network last, and waits (on the injected
clock) while the cloud still reports a dependency, as EC2 does until terminated instances are gone.

The inventory (``<state dir>/provisioning/<cluster>.json``) is what the last apply saw per pool,
so that ``plan`` can name a machine that disappeared; it never decides anything.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from healer.clock import Clock, RealClock
from healer.cloud.machines import Machine, Provider
from healer.cloud.resources import (
    Capabilities,
    EgressProvider,
    InfraProvider,
    LoadBalancer,
    NatGateway,
    egress_of,
    infra_of,
    no_infra,
)
from healer.config import ClusterConfig
from healer.errors import ConfigError, HealerError, PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL
from healer.provisioning.desired import Desired, desired_state
from healer.provisioning.keydelivery import KeyDelivery
from healer.provisioning.plan import Action, Actual, Change, Plan, destroy_plan, plan
from healer.provisioning.pools import UserData, ensure_pools

log = structlog.get_logger("healer.provisioning")

# Errors the clouds give while a dependent resource is still going away.
_IN_USE = ("DependencyViolation", "resourceInUseByAnotherResource", "ResourceInUse", "in use by")


class Inventory:
    """Machine names per pool as the last ``apply`` saw them, in one small JSON file."""

    def __init__(self, state_dir: Path, cluster: str) -> None:
        self.path = Path(state_dir) / "provisioning" / f"{cluster}.json"

    def load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: unreadable provisioning inventory: {exc}") from exc
        machines = data.get("machines") if isinstance(data, dict) else None
        if not isinstance(machines, dict):
            raise ConfigError(f"{self.path}: provisioning inventory has no 'machines' mapping")
        return {str(k): [str(n) for n in v] for k, v in machines.items()}

    def save(self, machines: Mapping[str, Sequence[Machine]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machines": {pool: sorted(m.name for m in ms) for pool, ms in machines.items()}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def capabilities_of(provider: Provider) -> Capabilities:
    infra = infra_of(provider)
    if infra is None:
        return no_infra(provider.name, f"provider {provider.name} has no infrastructure support")
    return infra.capabilities()


async def observe(cluster: str, provider: Provider, *, pools: Sequence[str] = ()) -> Actual:
    """Every resource tagged as healer's for ``cluster``."""
    owned = {TAG_MANAGED: "true", TAG_CLUSTER: cluster}
    machines: dict[str, list[Machine]] = {p: [] for p in pools}
    for machine in await provider.list_machines(owned):
        machines.setdefault(machine.tags.get(TAG_POOL, "(no pool)"), []).append(machine)
    frozen = {p: tuple(sorted(ms, key=lambda m: m.name)) for p, ms in machines.items()}
    infra = infra_of(provider)
    if infra is None:
        return Actual(machines=frozen)
    egress = egress_of(provider)
    return Actual(
        networks=tuple(await infra.list_networks(owned)),
        subnets=tuple(await infra.list_subnets(owned)),
        firewalls=tuple(await infra.list_firewalls(owned)),
        load_balancers=tuple(await infra.list_load_balancers(owned)),
        machines=frozen,
        nat_gateways=tuple(await egress.list_nat_gateways(owned)) if egress else (),
        route_tables=tuple(await egress.list_route_tables(owned)) if egress else (),
    )


async def make_plan(
    cluster: ClusterConfig, provider: Provider, *, inventory: Inventory
) -> tuple[Desired, Actual, Plan]:
    desired = desired_state(cluster, capabilities_of(provider))
    actual = await observe(cluster.name, provider, pools=[p.name for p in cluster.pools])
    return desired, actual, plan(desired, actual, inventory.load())


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    created: tuple[Machine, ...]
    load_balancer: LoadBalancer | None
    keys_delivered: tuple[str, ...] = ()  # control-plane machines that got their keys


async def apply(
    cluster: ClusterConfig,
    provider: Provider,
    *,
    user_data: UserData,
    inventory: Inventory,
    on_plan: Callable[[Plan], None] | None = None,
    on_load_balancer: Callable[[LoadBalancer], None] | None = None,
    keys: KeyDelivery | None = None,
) -> ApplyResult:
    """Bring ``cluster`` to its config. Raises ``PermanentError`` on a conflict, before any
    change. With ``keys``, every control-plane machine still waiting for its keys (new, or left
    behind by an earlier run) gets them pushed last (:mod:`healer.provisioning.keydelivery`)."""
    desired, _actual, the_plan = await make_plan(cluster, provider, inventory=inventory)
    if on_plan is not None:
        on_plan(the_plan)
    if the_plan.conflicts:
        lines = "\n  ".join(str(a) for a in the_plan.conflicts)
        raise PermanentError(
            f"cluster {cluster.name}: apply refused, nothing was changed:\n  {lines}"
        )
    lb: LoadBalancer | None = None
    created: list[Machine] = []
    if the_plan.changes:
        lb = await _ensure_infra(desired, the_plan, provider)
        if lb is not None and on_load_balancer is not None:
            # Before any machine is rendered: their kubeadm configuration joins through it.
            on_load_balancer(lb)
        created = await ensure_pools(cluster, provider, user_data=user_data)
        if lb is not None and desired.control_plane is not None:
            infra = infra_of(provider)
            assert infra is not None
            members = await provider.list_machines(
                {TAG_MANAGED: "true", TAG_CLUSTER: cluster.name, TAG_POOL: desired.control_plane}
            )
            lb = await infra.set_load_balancer_members(lb, members)
    delivered = await keys.deliver_pending(cluster, provider) if keys is not None else []
    after = await observe(cluster.name, provider, pools=[p.name for p in cluster.pools])
    inventory.save({p.name: after.machines.get(p.name, ()) for p in cluster.pools})
    if lb is None and desired.load_balancer is not None:
        lb = next((x for x in after.load_balancers if x.name == desired.load_balancer.name), None)
    log.info(
        "provisioning.applied",
        cluster=cluster.name,
        actions=len(the_plan.actions),
        machines_created=len(created),
    )
    return ApplyResult(
        plan=the_plan, created=tuple(created), load_balancer=lb, keys_delivered=tuple(delivered)
    )


async def _ensure_infra(
    desired: Desired, the_plan: Plan, provider: Provider
) -> LoadBalancer | None:
    if desired.network is None:
        return None
    infra = infra_of(provider)
    if infra is None:  # desired_state reported it as a problem, so the plan had a conflict
        raise PermanentError(f"provider {provider.name} cannot build networks")
    assert desired.subnet is not None and desired.firewall is not None
    network = await infra.ensure_network(desired.network)
    subnets = {s.name: await infra.ensure_subnet(s, network) for s in desired.subnets}
    egress = egress_of(provider)
    if egress is not None:  # NAT gateways before the routes to them
        for nat in desired.nat_gateways:
            await egress.ensure_nat_gateway(nat, network)
        for table in desired.route_tables:
            await egress.ensure_route_table(table, network)
    await infra.ensure_firewall(desired.firewall, network)
    lb = None
    if desired.load_balancer is not None:
        home = subnets[desired.load_balancer.subnet]
        lb = await infra.ensure_load_balancer(desired.load_balancer, network, home)
    for action in the_plan.actions:
        if action.change is not Change.DELETE:
            continue
        if action.kind == "load-balancer":
            for found in await infra.list_load_balancers(_owned(desired.cluster)):
                if found.id == action.resource_id:
                    await infra.delete_load_balancer(found)
        elif action.kind == "firewall":
            for fw in await infra.list_firewalls(_owned(desired.cluster)):
                if fw.id == action.resource_id:
                    await infra.delete_firewall(fw)
    return lb


def _owned(cluster: str) -> dict[str, str]:
    return {TAG_MANAGED: "true", TAG_CLUSTER: cluster}


async def plan_destroy(cluster: str, provider: Provider) -> Plan:
    return destroy_plan(cluster, await observe(cluster, provider))


async def destroy(
    cluster: str,
    provider: Provider,
    *,
    the_plan: Plan,
    clock: Clock | None = None,
    patience: float = 600.0,
    on_action: Callable[[Action], None] | None = None,
) -> list[Action]:
    """Delete what ``the_plan`` lists (from :func:`plan_destroy`), re-reading each resource.

    A delete the cloud refuses because a dependent resource is still going away is retried for
    up to ``patience`` seconds of ``clock`` time.
    """
    clock = clock or RealClock()
    infra = infra_of(provider)
    done: list[Action] = []
    owned = _owned(cluster)
    deadline = clock.now() + patience
    for action in the_plan.actions:
        deleted = await _patiently(
            functools.partial(_delete_one, action, provider, infra, owned), clock, deadline, action
        )
        if deleted:
            done.append(action)
            if on_action is not None:
                on_action(action)
    log.info("provisioning.destroyed", cluster=cluster, deleted=len(done))
    return done


async def _delete_one(
    action: Action, provider: Provider, infra: InfraProvider | None, owned: Mapping[str, str]
) -> bool:
    if action.kind == "machine":
        for m in await provider.list_machines(owned):
            if m.id == action.resource_id:
                return await provider.destroy_machine(m)
        return False
    if infra is None:
        return False
    if action.kind == "load-balancer":
        for lb in await infra.list_load_balancers(owned):
            if lb.id == action.resource_id:
                return await infra.delete_load_balancer(lb)
    elif action.kind == "firewall":
        for fw in await infra.list_firewalls(owned):
            if fw.id == action.resource_id:
                return await infra.delete_firewall(fw)
    elif action.kind in ("nat-gateway", "route-table"):
        return await _delete_egress(action, egress_of(provider), owned)
    elif action.kind == "subnet":
        for sub in await infra.list_subnets(owned):
            if sub.id == action.resource_id:
                return await infra.delete_subnet(sub)
    elif action.kind == "network":
        for net in await infra.list_networks(owned):
            if net.id == action.resource_id:
                return await infra.delete_network(net)
    return False


async def _delete_egress(
    action: Action, egress: EgressProvider | None, owned: Mapping[str, str]
) -> bool:
    if egress is None:
        return False
    if action.kind == "nat-gateway":
        # Not listed any more while the cloud finishes deleting it (EC2); the provider still
        # finds it by id, to release what it held (its Elastic IP) on a retry.
        listed = [n for n in await egress.list_nat_gateways(owned) if n.id == action.resource_id]
        gone = NatGateway(str(action.resource_id), action.name, "", "", None, dict(owned))
        return await egress.delete_nat_gateway(listed[0] if listed else gone)
    for table in await egress.list_route_tables(owned):
        if table.id == action.resource_id:
            return await egress.delete_route_table(table)
    return False


async def _patiently(
    fn: Callable[[], Awaitable[bool]], clock: Clock, deadline: float, action: Action
) -> bool:
    delay = 2.0
    while True:
        try:
            return await fn()
        except HealerError as exc:
            in_use = any(marker in str(exc) for marker in _IN_USE)
            if not in_use or clock.now() + delay > deadline:
                raise
            log.info(
                "provisioning.destroy_waiting",
                resource=f"{action.kind} {action.name}",
                wait=delay,
                error=str(exc),
            )
            await clock.sleep(delay)
            delay = min(delay * 2, 30.0)
