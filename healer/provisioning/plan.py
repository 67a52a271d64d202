"""Desired against actual: the plan of ``healer plan``, ``apply`` and ``destroy``. Pure.

:func:`plan` compares :class:`~healer.provisioning.desired.Desired` with what the cloud reported
(:class:`Actual`) and returns one :class:`Action` per change, each a line a person can read:

- ``+`` create: a missing network, subnet, NAT gateway, route table, firewall, load balancer
  or machine;
- ``~`` update: firewall permissions, a load balancer's health check, allowed sources or members,
  a subnet's public addressing, a missing internet gateway, a route table's default route or
  subnet associations; a machine whose pool's spec changed:
  a rolling replacement (:mod:`healer.provisioning.rolling`);
- ``-`` delete: a firewall or load balancer of the cluster that the config no longer wants;
- ``!`` conflict: a difference that cannot be changed in place (a network's range). ``apply``
  refuses to start while there is one.

What is a create, an update or a conflict for each infrastructure resource is decided by
:mod:`healer.cloud.diff`, the same rules the providers' ``ensure_*`` operations carry out.

Things healer deliberately does not do are notes, not actions: it never scales a pool down (that
needs a drain; remediation owns it) and never deletes a network or subnet outside ``destroy``.

``known`` is what the last ``apply`` saw per pool (see :mod:`healer.provisioning.apply`). It only
explains a missing machine ("replaces lab-workers-3f9a1c2e, which is gone"); how many machines to
create is decided by the cloud's tags alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from healer.cloud import diff as rules
from healer.cloud.diff import Change as Change  # re-exported: a plan's actions speak in it
from healer.cloud.machines import Machine
from healer.cloud.resources import (
    Firewall,
    LoadBalancer,
    NatGateway,
    Network,
    RouteTable,
    Subnet,
)
from healer.config.rollout import TAG_SPEC, rollout_limits, spec_fingerprint
from healer.provisioning.desired import Desired
from healer.provisioning.rolling import outdated_machines


@dataclass(frozen=True)
class Action:
    change: Change
    kind: str  # network | subnet | firewall | load-balancer | machine
    name: str  # the resource's name ("" for a machine not yet named)
    detail: str
    pool: str | None = None
    resource_id: str | None = None

    def __str__(self) -> str:
        if self.name:
            return f"{self.change} {self.kind} {self.name}: {self.detail}"
        return f"{self.change} {self.kind} {self.detail}"


@dataclass(frozen=True)
class Actual:
    """Everything healer-tagged for one cluster, as the cloud reported it."""

    networks: tuple[Network, ...] = ()
    subnets: tuple[Subnet, ...] = ()
    firewalls: tuple[Firewall, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    machines: Mapping[str, tuple[Machine, ...]] = field(default_factory=dict)  # by pool tag
    nat_gateways: tuple[NatGateway, ...] = ()
    route_tables: tuple[RouteTable, ...] = ()


@dataclass(frozen=True)
class Plan:
    cluster: str
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    @property
    def conflicts(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.change is Change.CONFLICT)

    def lines(self) -> list[str]:
        out = [str(a) for a in self.actions]
        out.extend(f"  note: {n}" for n in self.notes)
        return out


R = TypeVar("R", Network, Subnet, Firewall, LoadBalancer, NatGateway, RouteTable)


def _one(items: Sequence[R], name: str) -> list[R]:
    return [i for i in items if i.name == name]


def plan(
    desired: Desired, actual: Actual, known: Mapping[str, Sequence[str]] | None = None
) -> Plan:
    """The actions that take ``actual`` to ``desired``, in the order ``apply`` performs them."""
    actions: list[Action] = []
    notes: list[str] = []
    known = known or {}

    for problem in desired.problems:
        actions.append(Action(Change.CONFLICT, "config", "", problem))

    if desired.network is None:
        for kind, items in (
            ("network", actual.networks),
            ("subnet", actual.subnets),
            ("firewall", actual.firewalls),
            ("load balancer", actual.load_balancers),
        ):
            for item in items:
                notes.append(
                    f"{kind} {item.name} ({item.id}) exists but the config has no 'network' "
                    "block; healer leaves it alone (`healer destroy` removes it)"
                )
    else:
        actions.extend(_infra_actions(desired, actual, notes))

    actions.extend(_machine_actions(desired, actual, known, notes))
    actions.extend(_roll_actions(desired, actual, notes))
    actions.extend(_member_actions(desired, actual))
    return Plan(cluster=desired.cluster, actions=tuple(actions), notes=tuple(notes))


def _action(diff: rules.Diff) -> list[Action]:
    """The plan line for one resource's diff (none when it is as configured)."""
    if diff.change is Change.NONE:
        return []
    return [Action(diff.change, diff.kind, diff.name, diff.detail, resource_id=diff.resource_id)]


def _found(items: Sequence[R], name: str) -> R | None:
    same = _one(items, name)
    return same[0] if same else None


def _infra_actions(desired: Desired, actual: Actual, notes: list[str]) -> list[Action]:
    out: list[Action] = []
    net_spec, sub_spec, fw_spec = desired.network, desired.subnet, desired.firewall
    assert net_spec is not None and sub_spec is not None and fw_spec is not None

    network = _found(actual.networks, net_spec.name)
    out += _action(rules.network_diff(net_spec, network))
    for other_net in actual.networks:
        if other_net.name != net_spec.name:
            notes.append(
                f"network {other_net.name} ({other_net.id}) is not in the config; left alone"
            )

    for spec in desired.subnets:
        out += _action(rules.subnet_diff(spec, _found(actual.subnets, spec.name), network))
    for nat in desired.nat_gateways:
        out += _action(rules.nat_diff(nat, _found(actual.nat_gateways, nat.name)))
    for table in desired.route_tables:
        out += _action(rules.route_table_diff(table, _found(actual.route_tables, table.name)))
    subnet_names = {s.name for s in desired.subnets}
    for other_sub in actual.subnets:
        if other_sub.name not in subnet_names:
            notes.append(
                f"subnet {other_sub.name} ({other_sub.id}) is not in the config; left alone"
            )

    out += _action(rules.firewall_diff(fw_spec, _found(actual.firewalls, fw_spec.name), network))
    for other_fw in actual.firewalls:
        if other_fw.name != fw_spec.name:
            out.append(
                Action(
                    Change.DELETE,
                    "firewall",
                    other_fw.name,
                    "not in the desired state",
                    resource_id=other_fw.id,
                )
            )

    lb_spec = desired.load_balancer
    if lb_spec is not None:
        out += _action(
            rules.load_balancer_diff(lb_spec, _found(actual.load_balancers, lb_spec.name))
        )
    keep = {lb_spec.name} if lb_spec is not None else set()
    for other in actual.load_balancers:
        if other.name not in keep:
            out.append(
                Action(
                    Change.DELETE,
                    "load-balancer",
                    other.name,
                    "not in the desired state"
                    + (" (loadBalancer.enabled is false)" if lb_spec is None else ""),
                    resource_id=other.id,
                )
            )
    return out


def _machine_actions(
    desired: Desired,
    actual: Actual,
    known: Mapping[str, Sequence[str]],
    notes: list[str],
) -> list[Action]:
    out: list[Action] = []
    lb = desired.load_balancer
    for pool in desired.pools:
        have = actual.machines.get(pool.name, ())
        names = {m.name for m in have}
        gone = [n for n in known.get(pool.name, ()) if n not in names]
        spec = pool.machine
        where = f" in {', '.join(pool.zones)}" if pool.zones else ""
        joins = (
            f"; joins load balancer {lb.name}"
            if lb is not None and pool.name == desired.control_plane
            else ""
        )
        missing = pool.size - len(have)
        for i in range(max(0, missing)):
            replaces = f"; replaces {gone[i]}, which is gone" if i < len(gone) else ""
            out.append(
                Action(
                    Change.CREATE,
                    "machine",
                    "",
                    f"in pool {pool.name} ({spec.size}, {spec.image}{where}), "
                    f"{len(have) + i + 1} of {pool.size}{replaces}{joins}",
                    pool=pool.name,
                )
            )
        if missing < 0:
            surplus = ", ".join(sorted(names))
            notes.append(
                f"pool {pool.name} has {len(have)} machines ({surplus}), the config says "
                f"{pool.size}: healer does not scale pools down; drain and delete the extra "
                "machines yourself"
            )
    configured = {p.name for p in desired.pools}
    for pool_name, machines in sorted(actual.machines.items()):
        if pool_name not in configured and machines:
            notes.append(
                f"{len(machines)} machine(s) of pool {pool_name!r}, which the config does not "
                f"have: {', '.join(sorted(m.name for m in machines))}"
            )
    return out


def _roll_actions(desired: Desired, actual: Actual, notes: list[str]) -> list[Action]:
    """A rolling replacement for each machine whose spec tag is not its pool's
    (:mod:`healer.provisioning.rolling`); ``apply`` carries them out through the remediation
    workflow."""
    out: list[Action] = []
    for pool in desired.pools:
        found = outdated_machines(spec_fingerprint(pool), actual.machines.get(pool.name, ()))
        if found.untagged:
            names = ", ".join(m.name for m in found.untagged)
            notes.append(
                f"pool {pool.name}: {names} carry no {TAG_SPEC} tag (made before rolling "
                "updates, or not by healer), so healer cannot tell what they were made from and "
                "does not roll them; `healer remediate NODE --yes` replaces one"
            )
        if not found.outdated:
            continue
        limits = rollout_limits(pool)
        spec = pool.machine
        if limits.max_unavailable == 0 and limits.max_surge == 0:
            out.append(
                Action(
                    Change.CONFLICT,
                    "machine",
                    "",
                    f"pool {pool.name} needs a rolling replacement, but its machines are "
                    "replaced in place (control plane) and rollout.maxUnavailable is 0: set it "
                    "to at least 1",
                    pool=pool.name,
                )
            )
            continue
        for machine, had in found.outdated:
            out.append(
                Action(
                    Change.UPDATE,
                    "machine",
                    machine.name,
                    f"rolling replacement in pool {pool.name}: spec {had} -> "
                    f"{found.fingerprint} ({spec.size}, {spec.image}); maxSurge "
                    f"{limits.max_surge}, maxUnavailable {limits.max_unavailable}",
                    pool=pool.name,
                    resource_id=machine.id,
                )
            )
    return out


def _member_actions(desired: Desired, actual: Actual) -> list[Action]:
    lb_spec = desired.load_balancer
    if lb_spec is None or desired.control_plane is None:
        return []
    lbs = _one(actual.load_balancers, lb_spec.name)
    if not lbs:
        return []
    lb = lbs[0]
    machines = actual.machines.get(desired.control_plane, ())
    by_id = {m.id: m.name for m in machines}
    add, remove = rules.member_changes(lb.members, by_id)
    if not add and not remove:
        return []
    parts = [f"+ {by_id[i]} ({i})" for i in add] + [f"- {i}" for i in remove]
    return [
        Action(
            Change.UPDATE,
            "load-balancer",
            lb.name,
            "members " + "; ".join(parts),
            resource_id=lb.id,
        )
    ]


def destroy_plan(cluster: str, actual: Actual) -> Plan:
    """Everything healer-tagged for ``cluster``, in the order it can be deleted."""
    actions: list[Action] = []
    for lb in actual.load_balancers:
        actions.append(
            Action(Change.DELETE, "load-balancer", lb.name, lb.address or "-", resource_id=lb.id)
        )
    for pool, machines in sorted(actual.machines.items()):
        for m in sorted(machines, key=lambda m: m.name):
            actions.append(
                Action(
                    Change.DELETE,
                    "machine",
                    m.name,
                    f"{m.id} in pool {pool}",
                    pool=pool,
                    resource_id=m.id,
                )
            )
    for fw in actual.firewalls:
        actions.append(Action(Change.DELETE, "firewall", fw.name, fw.id, resource_id=fw.id))
    for table in actual.route_tables:
        actions.append(
            Action(Change.DELETE, "route-table", table.name, table.id, resource_id=table.id)
        )
    for nat in actual.nat_gateways:
        actions.append(Action(Change.DELETE, "nat-gateway", nat.name, nat.id, resource_id=nat.id))
    for sub in actual.subnets:
        actions.append(
            Action(Change.DELETE, "subnet", sub.name, f"{sub.cidr} ({sub.id})", resource_id=sub.id)
        )
    for net in actual.networks:
        actions.append(
            Action(Change.DELETE, "network", net.name, f"{net.cidr} ({net.id})", resource_id=net.id)
        )
    return Plan(cluster=cluster, actions=tuple(actions))
