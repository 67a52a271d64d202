"""The rules per infrastructure resource (healer/cloud/diff.py), table-driven: spec and what the
cloud has in, one change out. ``plan`` prints these and the providers' ``ensure_*`` carry them
out (tests/test_infra_contract.py checks that the two agree on every backend)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from healer.cloud import resources as r
from healer.cloud.diff import (
    Change,
    Diff,
    firewall_diff,
    load_balancer_diff,
    member_changes,
    nat_diff,
    network_diff,
    route_table_diff,
    subnet_diff,
)
from healer.model import TAG_POOL

TAGS = {"healer.io/cluster": "c"}
NET_SPEC = r.NetworkSpec(name="c-net", cidr="10.0.0.0/16", tags=TAGS, internet_gateway=True)
NET = r.Network(id="n-1", name="c-net", cidr="10.0.0.0/16", tags=TAGS, internet_gateway=True)
SUB_SPEC = r.SubnetSpec(
    name="c-subnet", network="c-net", cidr="10.0.1.0/24", location="zone-a", tags=TAGS
)
SUB = r.Subnet(
    id="s-1", name="c-subnet", network_id="n-1", cidr="10.0.1.0/24", location="zone-a", tags=TAGS
)
SSH = r.FirewallRule(name="ssh", protocol="tcp", ports=(22, 22), sources=("203.0.113.0/24",))
FW_SPEC = r.FirewallSpec(name="c-nodes", network="c-net", rules=(SSH,), tags=TAGS)
FW = r.Firewall(
    id="f-1", name="c-nodes", network_id="n-1", permissions=SSH.permissions(), tags=TAGS
)
CHECK = r.HealthCheck(protocol="tcp", port=6443)
LB_SPEC = r.LoadBalancerSpec(
    name="c-api",
    network="c-net",
    subnet="c-subnet",
    port=6443,
    target_port=6443,
    health_check=CHECK,
    allowed_sources=("10.0.1.0/24", "203.0.113.0/24"),
    internal=False,
    tags={**TAGS, TAG_POOL: "cp"},
)
LB = r.LoadBalancer(
    id="lb-1",
    address="lb.example",
    members=(),
    allowed_sources=("203.0.113.0/24", "10.0.1.0/24"),  # order does not matter
    **{f: getattr(LB_SPEC, f) for f in ("name", "port", "target_port", "health_check", "internal")},
    tags=LB_SPEC.tags,
)
OTHER_NET = dataclasses.replace(NET, id="n-2")
NAT_SPEC = r.NatSpec(
    name="c-nat-a", network="c-net", subnet="c-public-a", location="zone-a", tags=TAGS
)
NAT = r.NatGateway(
    id="nat-1", name="c-nat-a", network_id="n-1", subnet="c-public-a", location="zone-a", tags=TAGS
)
RT_SPEC = r.RouteTableSpec(
    name="c-private-a",
    network="c-net",
    subnets=("c-subnet",),
    default_route="nat:c-nat-a",
    tags=TAGS,
)
RT = r.RouteTable(
    id="rtb-1",
    name="c-private-a",
    network_id="n-1",
    subnets=("c-subnet",),
    default_route="nat:c-nat-a",
    tags=TAGS,
)
WEB = r.Permission("tcp", 443, 443, "0.0.0.0/0")


def _with(resource: Any, **changes: Any) -> Any:
    return dataclasses.replace(resource, **changes)


CASES: list[tuple[str, Diff, Change, str, dict[str, Any]]] = [
    # network
    ("network missing", network_diff(NET_SPEC, None), Change.CREATE, "internet gateway", {}),
    ("network as configured", network_diff(NET_SPEC, NET), Change.NONE, "", {}),
    (
        "network range changed",
        network_diff(_with(NET_SPEC, cidr="10.9.0.0/16"), NET),
        Change.CONFLICT,
        "range cannot change in place",
        {},
    ),
    (
        "gateway wanted, none there",
        network_diff(NET_SPEC, _with(NET, internet_gateway=False)),
        Change.UPDATE,
        "add an internet gateway",
        {"add_internet_gateway": True},
    ),
    (
        "gateway there, not wanted: never removed",
        network_diff(_with(NET_SPEC, internet_gateway=False), NET),
        Change.NONE,
        "",
        {},
    ),
    # subnet
    ("subnet missing", subnet_diff(SUB_SPEC, None, NET), Change.CREATE, "in zone-a", {}),
    ("subnet as configured", subnet_diff(SUB_SPEC, SUB, NET), Change.NONE, "", {}),
    (
        "subnet resized",
        subnet_diff(_with(SUB_SPEC, cidr="10.0.2.0/24"), SUB, NET),
        Change.CONFLICT,
        "cannot move in place",
        {},
    ),
    (
        "subnet in another network",
        subnet_diff(SUB_SPEC, SUB, OTHER_NET),
        Change.CONFLICT,
        "in network n-2",
        {},
    ),
    (
        "subnet in another zone",
        subnet_diff(_with(SUB_SPEC, location="zone-b"), SUB, NET),
        Change.CONFLICT,
        "zone-b",
        {},
    ),
    (
        "subnet location left to the cloud",
        subnet_diff(_with(SUB_SPEC, location=None), SUB, NET),
        Change.NONE,
        "",
        {},
    ),
    (
        "public addresses wanted",
        subnet_diff(_with(SUB_SPEC, public_ips=True), SUB, NET),
        Change.UPDATE,
        "public addresses for machines created from now on",
        {"public_ips": True},
    ),
    (
        "a public subnet says what it is for",
        subnet_diff(_with(SUB_SPEC, tags={**TAGS, r.TAG_TIER: "public"}), None, NET),
        Change.CREATE,
        "NAT gateways and the load balancer only, no machines",
        {},
    ),
    # NAT gateway
    ("nat missing", nat_diff(NAT_SPEC, None), Change.CREATE, "through subnet c-public-a", {}),
    ("nat as configured", nat_diff(NAT_SPEC, NAT), Change.NONE, "", {}),
    (
        "nat in another subnet",
        nat_diff(_with(NAT_SPEC, subnet="c-public-b", location="zone-b"), NAT),
        Change.CONFLICT,
        "cannot move",
        {},
    ),
    # route table
    (
        "route table missing",
        route_table_diff(RT_SPEC, None),
        Change.CREATE,
        "0.0.0.0/0 -> NAT gateway c-nat-a for c-subnet",
        {},
    ),
    ("route table as configured", route_table_diff(RT_SPEC, RT), Change.NONE, "", {}),
    (
        "a private subnet routed to the internet gateway",
        route_table_diff(RT_SPEC, _with(RT, default_route=r.INTERNET)),
        Change.UPDATE,
        "0.0.0.0/0 -> internet gateway -> 0.0.0.0/0 -> NAT gateway c-nat-a",
        {"routes": True},
    ),
    (
        "a subnet not associated (it would use the main table)",
        route_table_diff(RT_SPEC, _with(RT, subnets=())),
        Change.UPDATE,
        "subnets - -> c-subnet",
        {"routes": True},
    ),
    (
        "no way out wanted, a route there",
        route_table_diff(_with(RT_SPEC, default_route=None), RT),
        Change.UPDATE,
        "-> no route out",
        {"routes": True},
    ),
    # firewall
    ("firewall missing", firewall_diff(FW_SPEC, None, NET), Change.CREATE, "tcp/22", {}),
    ("firewall as configured", firewall_diff(FW_SPEC, FW, NET), Change.NONE, "", {}),
    (
        "firewall in another network",
        firewall_diff(FW_SPEC, FW, OTHER_NET),
        Change.CONFLICT,
        "belongs to network n-1, not n-2",
        {},
    ),
    (
        "a rule too many, one missing",
        firewall_diff(FW_SPEC, _with(FW, permissions=frozenset({WEB})), NET),
        Change.UPDATE,
        "+ tcp/22 from 203.0.113.0/24; - tcp/443 from 0.0.0.0/0",
        {"add": SSH.permissions(), "remove": frozenset({WEB})},
    ),
    # load balancer
    ("lb missing", load_balancer_diff(LB_SPEC, None), Change.CREATE, "members of pool cp", {}),
    ("lb as configured", load_balancer_diff(LB_SPEC, LB), Change.NONE, "", {}),
    (
        "lb on another port",
        load_balancer_diff(_with(LB_SPEC, port=443), LB),
        Change.CONFLICT,
        "destroy it to change that",
        {},
    ),
    (
        "lb turned internal",
        load_balancer_diff(_with(LB_SPEC, internal=True), LB),
        Change.CONFLICT,
        "wants internal",
        {},
    ),
    (
        "lb health check changed",
        load_balancer_diff(_with(LB_SPEC, health_check=_with(CHECK, interval=30)), LB),
        Change.UPDATE,
        "health check",
        {"health_check": True, "allowed_sources": False},
    ),
    (
        "lb in other subnets (an ELB from before the public subnets)",
        load_balancer_diff(
            _with(LB_SPEC, subnet="c-public-a", subnets=("c-public-a", "c-public-b")),
            _with(LB, subnets=("c-subnet",)),
        ),
        Change.UPDATE,
        "subnets c-subnet -> c-public-a, c-public-b",
        {"subnets": True, "health_check": False},
    ),
    (
        "lb subnets not reported: not compared",
        load_balancer_diff(_with(LB_SPEC, subnets=("c-public-a",)), LB),
        Change.NONE,
        "",
        {},
    ),
    (
        "lb clients changed",
        load_balancer_diff(_with(LB_SPEC, allowed_sources=("10.0.1.0/24",)), LB),
        Change.UPDATE,
        "clients 10.0.1.0/24, 203.0.113.0/24 -> 10.0.1.0/24",
        {"health_check": False, "allowed_sources": True},
    ),
]


@pytest.mark.parametrize(
    ("diff", "change", "words", "fields"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rules(diff: Diff, change: Change, words: str, fields: dict[str, Any]) -> None:
    assert diff.change is change
    assert words in diff.detail
    for name, value in fields.items():
        assert getattr(diff, name) == value, name
    if change is not Change.CREATE:
        assert diff.resource_id is not None and diff.resource_id in str(diff)


def test_member_changes_are_sorted_set_differences() -> None:
    assert member_changes(["i-3", "i-1"], ["i-2", "i-1", "i-0"]) == (["i-0", "i-2"], ["i-3"])
    assert member_changes([], []) == ([], [])
