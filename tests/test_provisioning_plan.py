"""Desired infrastructure and the plan: pure functions, tested table-driven without any cloud."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from healer.cloud.machines import Machine, MachineState
from healer.cloud.registry import capabilities_for
from healer.cloud.resources import (
    TAG_RESOURCE,
    Capabilities,
    Firewall,
    LoadBalancer,
    NatGateway,
    Network,
    Permission,
    RouteTable,
    Subnet,
)
from healer.config import ClusterConfig, parse_config
from healer.errors import ConfigError
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL
from healer.provisioning.desired import (
    capability_report,
    desired_state,
    region_of,
    resource_names,
)
from healer.provisioning.plan import Actual, Change, destroy_plan, plan
from providers.ec2 import CAPABILITIES as EC2
from providers.gce import CAPABILITIES as GCE
from providers.gce import HEALTH_CHECK_SOURCES as GCE_HEALTH_CHECK_SOURCES
from providers.lab import CAPABILITIES as LAB

ADMIN = "203.0.113.0/24"
SUBNET = "10.20.1.0/24"


def cluster(**overrides: Any) -> ClusterConfig:
    doc: dict[str, Any] = {
        "name": "prod",
        "provider": {"plugin": "lab"},
        "network": {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "lab-a"},
        "adminCidrs": [ADMIN],
        "pools": [
            {"name": "cp", "role": "control-plane", "size": 3},
            {"name": "workers", "size": 2},
        ],
    }
    doc.update(overrides)
    return parse_config({"clusters": [doc]}).clusters[0]


def perms(caps: Capabilities = LAB, **overrides: Any) -> set[str]:
    fw = desired_state(cluster(**overrides), caps).firewall
    assert fw is not None
    return {str(p) for p in fw.permissions()}


# -- desired state ---------------------------------------------------------------------------


def test_a_proxying_lb_is_the_only_source_of_the_api_port() -> None:
    assert perms(
        EC2, network={"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "us-east-1a"}
    ) == {
        f"all from {SUBNET}",
        f"tcp/22 from {ADMIN}",
        "tcp/6443 from lb:prod-api",
    }


def test_a_pass_through_lb_admits_the_api_clients_and_googles_checkers_by_address() -> None:
    got = perms(
        GCE,
        network={"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "us-central1-a"},
        loadBalancer={
            "apiCidrs": ["198.51.100.0/24"],
            "healthCheck": {"protocol": "http", "port": 80, "path": "/healthz"},
        },
    )
    assert got == {
        f"all from {SUBNET}",
        f"tcp/22 from {ADMIN}",
        "tcp/6443 from 198.51.100.0/24",
        *(f"tcp/80 from {r}" for r in GCE_HEALTH_CHECK_SOURCES),
    }


@pytest.mark.parametrize(
    ("overrides", "absent"),
    [
        ({"adminCidrs": []}, "tcp/22"),  # no admin networks: no SSH at all
        ({"loadBalancer": {"enabled": False}}, "tcp/6443"),  # the subnet rule still admits it
    ],
)
def test_rules_that_are_not_asked_for_are_not_made(overrides: dict[str, Any], absent: str) -> None:
    assert not any(p.startswith(absent) for p in perms(**overrides))


def test_nothing_is_open_to_the_whole_internet_by_default() -> None:
    for caps, location in ((LAB, "lab-a"), (EC2, "us-east-1a")):
        network = {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": location}
        assert not any("0.0.0.0/0" in p for p in perms(caps, network=network))


def test_every_resource_is_tagged_as_healers_and_the_lb_with_its_pool() -> None:
    d = desired_state(cluster(), LAB)
    for spec, kind in (
        (d.network, "network"),
        (d.subnet, "subnet"),
        (d.firewall, "firewall"),
        (d.load_balancer, "load-balancer"),
    ):
        assert spec is not None
        assert spec.tags[TAG_MANAGED] == "true"
        assert spec.tags[TAG_CLUSTER] == "prod"
        assert spec.tags[TAG_RESOURCE] == kind
    assert d.load_balancer is not None and d.load_balancer.tags[TAG_POOL] == "cp"
    # The LB admits the admins and the cluster's own subnet (kubelets use its address too).
    assert d.load_balancer.allowed_sources == (SUBNET, ADMIN)


def test_no_network_block_means_machines_only() -> None:
    d = desired_state(cluster(network=None), EC2)
    assert (d.network, d.subnet, d.firewall, d.load_balancer) == (None, None, None, None)
    assert d.problems == ()


@pytest.mark.parametrize(
    ("caps", "overrides", "problem"),
    [
        (
            capabilities_for("libcloud", {"driver": "openstack"}),
            {},
            "cannot build private networks and subnets",
        ),
        (
            Capabilities.builds_all("x", health_check_protocols=frozenset({"http"})),
            {"network": {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "us-east1"}},
            "healthCheck.protocol https is not available",
        ),
        (
            Capabilities.builds_all("x", lb_internal=False),
            {
                "network": {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "us-east1"},
                "loadBalancer": {"internal": True},
            },
            "cannot build an internal load balancer",
        ),
        (EC2, {"network": {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET}}, "network.location"),
        (
            GCE,
            {
                "network": {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "us-east1"},
                "pools": [
                    {
                        "name": "cp",
                        "role": "control-plane",
                        "size": 1,
                        "machine": {"location": "europe-west1-b"},
                    },
                ],
            },
            "pool cp is in europe-west1-b, outside the subnet's region us-east1",
        ),
        (
            EC2,
            {"network": {"cidr": "10.20.0.0/24", "subnetCidr": "10.20.0.0/24", "location": "a-1a"}},
            "overlaps another of the cluster's subnets",
        ),
        (
            EC2,
            {
                "network": {"cidr": "10.20.0.0/23", "subnetCidr": "10.20.1.0/24"},
                "pools": [{"name": "w", "size": 2, "machine": {"zones": ["a-1a", "a-1b"]}}],
            },
            "does not fit in network.cidr 10.20.0.0/23",
        ),
    ],
)
def test_what_a_provider_cannot_build_is_a_problem_naming_it(
    caps: Capabilities, overrides: dict[str, Any], problem: str
) -> None:
    problems = desired_state(cluster(**overrides), caps).problems
    assert any(problem in p for p in problems), problems


def test_gce_subnets_are_regional() -> None:
    network = {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "europe-west1-b"}
    d = desired_state(
        cluster(network=network, loadBalancer={"healthCheck": {"protocol": "http"}}), GCE
    )
    assert d.subnet is not None and d.subnet.location == "europe-west1"
    assert region_of("europe-west1") == "europe-west1"


def test_load_balancer_names_fit_elb_limits() -> None:
    names = resource_names("a" * 40)
    assert len(names.load_balancer) <= 32
    assert names.load_balancer != resource_names("a" * 39 + "b").load_balancer


def test_capability_report_points_to_the_on_premises_docs() -> None:
    c = cluster(provider={"plugin": "libcloud", "options": {"driver": "openstack"}})
    lines = capability_report(c, capabilities_for("libcloud", {"driver": "openstack"}))
    assert "cannot build private networks and subnets, firewalls, load balancers" in lines[0]
    assert "docs/provisioning.md" in lines[0]


@pytest.mark.parametrize(
    ("network", "error"),
    [
        ({"cidr": "10.0.0.1/16", "subnetCidr": "10.0.1.0/24"}, "has host bits set"),
        ({"cidr": "10.0.0.0/16", "subnetCidr": "10.9.1.0/24"}, "is not inside cidr"),
    ],
)
def test_bad_cidrs_are_config_errors_naming_the_field(network: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=rf"clusters\[0\]\.network.*{error}"):
        cluster(network=network)


# -- the plan --------------------------------------------------------------------------------


def _machine(name: str, pool: str, mid: str | None = None) -> Machine:
    return Machine(
        id=mid or f"id-{name}",
        name=name,
        state=MachineState.RUNNING,
        tags={TAG_MANAGED: "true", TAG_CLUSTER: "prod", TAG_POOL: pool},
    )


def _built(c: ClusterConfig, caps: Capabilities = LAB) -> Actual:
    """What the cloud reports once ``c`` has been applied in full."""
    d = desired_state(c, caps)
    assert d.network and d.subnet and d.firewall and d.load_balancer
    cps = tuple(_machine(f"prod-cp-{i}", "cp") for i in range(3))
    return Actual(
        networks=(Network("net-1", d.network.name, d.network.cidr, d.network.tags, True),),
        subnets=(Subnet("sub-1", d.subnet.name, "net-1", d.subnet.cidr, "lab-a", d.subnet.tags),),
        firewalls=(
            Firewall("fw-1", d.firewall.name, "net-1", d.firewall.permissions(), d.firewall.tags),
        ),
        load_balancers=(
            LoadBalancer(
                id="lb-1",
                name=d.load_balancer.name,
                address="198.51.100.7",
                port=6443,
                target_port=6443,
                health_check=d.load_balancer.health_check,
                allowed_sources=d.load_balancer.allowed_sources,
                internal=False,
                members=tuple(sorted(m.id for m in cps)),
                tags=d.load_balancer.tags,
            ),
        ),
        machines={
            "cp": cps,
            "workers": (
                _machine("prod-workers-0", "workers"),
                _machine("prod-workers-1", "workers"),
            ),
        },
    )


def test_an_empty_cloud_gets_everything_in_dependency_order() -> None:
    p = plan(desired_state(cluster(), LAB), Actual())
    kinds = [(a.change, a.kind) for a in p.actions]
    assert kinds == [
        (Change.CREATE, "network"),
        (Change.CREATE, "subnet"),
        (Change.CREATE, "firewall"),
        (Change.CREATE, "load-balancer"),
        *[(Change.CREATE, "machine")] * 5,
    ]
    assert "joins load balancer prod-api" in str(p.actions[4])


def test_a_built_cluster_has_nothing_to_do() -> None:
    c = cluster()
    p = plan(desired_state(c, LAB), _built(c), {"cp": ["prod-cp-0"]})
    assert p.actions == () and not p.changes


def test_a_missing_machine_is_named_from_what_the_last_apply_saw() -> None:
    c = cluster()
    built = _built(c)
    machines = dict(built.machines)
    machines["workers"] = machines["workers"][:1]
    p = plan(
        desired_state(c, LAB),
        replace(built, machines=machines),
        {"workers": ["prod-workers-0", "prod-workers-1"]},
    )
    (action,) = p.actions
    assert action.change is Change.CREATE and action.pool == "workers"
    assert "replaces prod-workers-1, which is gone" in str(action)


def test_firewall_drift_is_an_update_listing_each_permission() -> None:
    c = cluster()
    built = _built(c)
    fw = built.firewalls[0]
    opened = fw.permissions | {Permission("tcp", 22, 22, "0.0.0.0/0")}
    closed = opened - {Permission("tcp", 22, 22, ADMIN)}
    p = plan(desired_state(c, LAB), replace(built, firewalls=(replace(fw, permissions=closed),)))
    (action,) = p.actions
    assert action.change is Change.UPDATE and action.kind == "firewall"
    assert action.detail == f"+ tcp/22 from {ADMIN}; - tcp/22 from 0.0.0.0/0"


def test_a_changed_network_range_is_a_conflict_not_an_update() -> None:
    c = cluster()
    built = _built(c)
    moved = replace(built.networks[0], cidr="10.99.0.0/16")
    p = plan(desired_state(c, LAB), replace(built, networks=(moved,)))
    assert [a.kind for a in p.conflicts] == ["network"]


def test_load_balancer_drift_health_check_clients_and_members() -> None:
    c = cluster(loadBalancer={"apiCidrs": ["198.51.100.0/24"]})
    built = _built(cluster())
    lb = replace(built.load_balancers[0], members=("id-prod-cp-0", "i-stale"))
    p = plan(desired_state(c, LAB), replace(built, load_balancers=(lb,)))
    details = [a.detail for a in p.actions if a.kind == "load-balancer"]
    assert details[0] == f"clients {SUBNET}, {ADMIN} -> {SUBNET}, 198.51.100.0/24"
    assert details[1] == (
        "members + prod-cp-1 (id-prod-cp-1); + prod-cp-2 (id-prod-cp-2); - i-stale"
    )


def test_disabling_the_lb_deletes_it_and_closes_its_port() -> None:
    c = cluster(loadBalancer={"enabled": False})
    p = plan(desired_state(c, LAB), _built(cluster()))
    assert [(a.change, a.kind) for a in p.actions] == [
        (Change.UPDATE, "firewall"),
        (Change.DELETE, "load-balancer"),
    ]
    assert p.actions[0].detail == "- tcp/6443 from lb:prod-api"


def test_pools_are_never_scaled_down_by_a_plan() -> None:
    c = cluster()
    built = _built(c)
    machines = dict(built.machines)
    machines["workers"] = (*machines["workers"], _machine("prod-workers-2", "workers"))
    p = plan(desired_state(c, LAB), replace(built, machines=machines))
    assert p.actions == ()
    assert any("does not scale pools down" in n for n in p.notes)


def test_destroy_deletes_the_lb_first_and_the_network_last() -> None:
    p = destroy_plan("prod", _built(cluster()))
    kinds = [a.kind for a in p.actions]
    assert kinds[0] == "load-balancer" and kinds[-2:] == ["subnet", "network"]
    assert kinds.count("machine") == 5
    assert all(a.change is Change.DELETE for a in p.actions)


# -- zones, NAT and route tables -----------------------------------------------------------------

THREE = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]


def _spread(lb: dict[str, Any] | None = None, **network: Any) -> ClusterConfig:
    return cluster(
        network={"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, **network},
        loadBalancer=lb or {},
        pools=[
            {"name": "cp", "role": "control-plane", "size": 3, "machine": {"zones": THREE}},
            {"name": "workers", "size": 2, "machine": {"zones": THREE[1:]}},
        ],
    )


@pytest.mark.parametrize(
    ("network", "lb", "subnets", "nats", "tables"),
    [
        (  # the default: private subnets per zone, NAT per zone in a public /26
            {},
            {},
            {
                "prod-subnet": ("10.20.1.0/24", "eu-west-1a", False),
                "prod-subnet-eu-west-1b": ("10.20.2.0/24", "eu-west-1b", False),
                "prod-subnet-eu-west-1c": ("10.20.3.0/24", "eu-west-1c", False),
                "prod-public-eu-west-1a": ("10.20.255.192/26", "eu-west-1a", True),
                "prod-public-eu-west-1b": ("10.20.255.128/26", "eu-west-1b", True),
                "prod-public-eu-west-1c": ("10.20.255.64/26", "eu-west-1c", True),
            },
            {f"prod-nat-{z}": f"prod-public-{z}" for z in THREE},
            {
                "prod-private-eu-west-1a": (("prod-subnet",), "nat:prod-nat-eu-west-1a"),
                "prod-private-eu-west-1b": (("prod-subnet-eu-west-1b",), "nat:prod-nat-eu-west-1b"),
                "prod-private-eu-west-1c": (("prod-subnet-eu-west-1c",), "nat:prod-nat-eu-west-1c"),
                "prod-public": (tuple(f"prod-public-{z}" for z in THREE), "internet"),
            },
        ),
        (  # no NAT and an internal LB: no public subnet, no way out
            {"nat": False},
            {"internal": True},
            {
                "prod-subnet": ("10.20.1.0/24", "eu-west-1a", False),
                "prod-subnet-eu-west-1b": ("10.20.2.0/24", "eu-west-1b", False),
                "prod-subnet-eu-west-1c": ("10.20.3.0/24", "eu-west-1c", False),
            },
            {},
            {
                "prod-private-eu-west-1a": (("prod-subnet",), None),
                "prod-private-eu-west-1b": (("prod-subnet-eu-west-1b",), None),
                "prod-private-eu-west-1c": (("prod-subnet-eu-west-1c",), None),
            },
        ),
        (  # public addresses: the machines' subnets route to the internet gateway, no NAT
            {"publicIps": True},
            {},
            {
                "prod-subnet": ("10.20.1.0/24", "eu-west-1a", False),
                "prod-subnet-eu-west-1b": ("10.20.2.0/24", "eu-west-1b", False),
                "prod-subnet-eu-west-1c": ("10.20.3.0/24", "eu-west-1c", False),
            },
            {},
            {
                "prod-public": (
                    ("prod-subnet", "prod-subnet-eu-west-1b", "prod-subnet-eu-west-1c"),
                    "internet",
                )
            },
        ),
    ],
)
def test_ec2_builds_a_private_subnet_per_zone_and_never_routes_one_to_the_igw(
    network: dict[str, Any],
    lb: dict[str, Any],
    subnets: dict[str, tuple[str, str, bool]],
    nats: dict[str, str],
    tables: dict[str, tuple[tuple[str, ...], str | None]],
) -> None:
    d = desired_state(_spread(lb, **network), EC2)
    assert d.problems == ()
    got = {
        s.name: (s.cidr, s.location, s.tags.get("healer.io/tier") == "public") for s in d.subnets
    }
    assert got == subnets
    assert {n.name: n.subnet for n in d.nat_gateways} == nats
    assert {t.name: (t.subnets, t.default_route) for t in d.route_tables} == tables
    private = {n for n, (_, _, public) in subnets.items() if not public}
    for table in d.route_tables:
        if set(table.subnets) & private and not network.get("publicIps"):
            assert table.default_route != "internet"
    assert d.load_balancer is not None
    public = [n for n, (_, _, p) in subnets.items() if p]
    assert list(d.load_balancer.subnets) == (public or sorted(private))


def test_gce_has_one_regional_subnet_and_cloud_nat_for_it() -> None:
    zones = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
    c = cluster(
        network={"cidr": "10.20.0.0/16", "subnetCidr": SUBNET},
        pools=[{"name": "cp", "role": "control-plane", "size": 3, "machine": {"zones": zones}}],
    )
    d = desired_state(c, GCE)
    assert d.problems == ()
    assert [(s.name, s.location) for s in d.subnets] == [("prod-subnet", "europe-west1")]
    assert [(n.name, n.subnet, n.location) for n in d.nat_gateways] == [
        ("prod-nat", "prod-subnet", "europe-west1")
    ]
    assert d.route_tables == ()
    public = cluster(network={**c.network.model_dump(by_alias=True), "publicIps": True})  # type: ignore[union-attr]
    assert desired_state(public, GCE).nat_gateways == ()


def test_the_firewall_admits_every_private_subnet_and_no_public_one() -> None:
    d = desired_state(_spread(), EC2)
    assert d.firewall is not None
    (intra,) = [r for r in d.firewall.rules if r.name == "intra-subnet"]
    assert intra.sources == ("10.20.1.0/24", "10.20.2.0/24", "10.20.3.0/24")


def test_new_machines_fill_the_least_used_zone_and_carry_its_label() -> None:
    from healer.provisioning.kubeadm.documents import kubelet_labels
    from healer.provisioning.pools import next_name

    c = _spread()
    pool = c.pools[0]
    names: list[str] = []
    for _ in range(6):
        names.append(next_name("prod", pool, names))
    assert sorted(pool.zone_for(n) or "" for n in names) == sorted(THREE * 2)
    # A zone that lost its machines is refilled first.
    survivors = [n for n in names if pool.zone_for(n) != "eu-west-1b"]
    assert pool.zone_for(next_name("prod", pool, survivors)) == "eu-west-1b"
    for name in names:
        labels = kubelet_labels(c, pool, name).split(",")
        assert f"topology.kubernetes.io/zone={pool.zone_for(name)}" in labels
    one_zone = cluster(pools=[{"name": "w", "size": 1, "machine": {"location": "lab-a"}}])
    assert one_zone.pools[0].zone_for("anything") == "lab-a"
    assert "topology.kubernetes.io/zone" not in kubelet_labels(cluster(), cluster().pools[0], "x")


@pytest.mark.parametrize(
    ("machine", "error"),
    [
        ({"location": "a", "zones": ["a", "b"]}, "either location or zones"),
        ({"zones": ["a", "a"]}, "lists a zone twice"),
    ],
)
def test_zones_are_checked(machine: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        cluster(pools=[{"name": "w", "size": 1, "machine": machine}])


def test_plan_lists_egress_and_shows_a_route_to_the_igw_as_drift() -> None:
    d = desired_state(_spread(), EC2)
    assert d.network is not None
    fresh = plan(d, Actual())
    kinds = [a.kind for a in fresh.actions]
    assert kinds.count("subnet") == 6 and kinds.count("nat-gateway") == 3
    assert kinds.count("route-table") == 4 and kinds.count("load-balancer") == 1
    net = Network("vpc-1", d.network.name, d.network.cidr, d.network.tags, internet_gateway=True)
    subnets = tuple(
        Subnet(f"s-{s.name}", s.name, "vpc-1", s.cidr, s.location, s.tags) for s in d.subnets
    )
    nats = tuple(
        NatGateway(f"n-{n.name}", n.name, "vpc-1", n.subnet, n.location, n.tags)
        for n in d.nat_gateways
    )
    tables = tuple(
        RouteTable(
            f"r-{t.name}",
            t.name,
            "vpc-1",
            tuple(sorted(t.subnets)),
            "internet" if t.name == "prod-private-eu-west-1b" else t.default_route,
            t.tags,
        )
        for t in d.route_tables
    )
    actual = Actual(networks=(net,), subnets=subnets, nat_gateways=nats, route_tables=tables)
    drift = [str(a) for a in plan(d, actual).actions if a.kind in ("route-table", "subnet")]
    assert drift == [
        "~ route-table prod-private-eu-west-1b: 0.0.0.0/0 -> internet gateway -> "
        "0.0.0.0/0 -> NAT gateway prod-nat-eu-west-1b"
    ]
    gone = [a.kind for a in destroy_plan("prod", actual).actions]
    assert gone == ["route-table"] * 4 + ["nat-gateway"] * 3 + ["subnet"] * 6 + ["network"]


def test_the_kubeadm_join_document_labels_the_node_with_its_machines_zone(tmp_path: Path) -> None:
    from healer.provisioning.keystore import ClusterState
    from healer.provisioning.kubeadm.machine import KUBEADM_CONFIG, KubeadmBuilder
    from tests.provisioning_support import kube_cluster

    c = kube_cluster(
        pools=[
            {"name": "cp", "role": "control-plane", "size": 1},
            {"name": "workers", "size": 3, "machine": {"zones": THREE}},
        ]
    )
    builder = KubeadmBuilder(ClusterState(tmp_path, "prod"), c)
    workers = c.pools[1]
    for name in ("prod-workers-0a1b2c3d", "prod-workers-4e5f6a7b", "prod-workers-8c9d0e1f"):
        node = builder.machine(workers, name)
        (content,) = [f.content for f in node.files if f.path == KUBEADM_CONFIG]
        (join,) = [d for d in yaml.safe_load_all(content) if d["kind"] == "JoinConfiguration"]
        raw = join["nodeRegistration"]["kubeletExtraArgs"]
        args = {a["name"]: a["value"] for a in raw} if isinstance(raw, list) else raw
        labels = dict(pair.split("=", 1) for pair in args["node-labels"].split(","))
        assert labels["topology.kubernetes.io/zone"] == workers.zone_for(name)
