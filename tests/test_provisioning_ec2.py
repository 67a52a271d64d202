"""Provisioning on EC2: libcloud's real EC2 and ELB drivers against a local moto server.

The assertions are on the requests as EC2 and ELB received them (tests/moto_ec2.py records them)
and, through boto3 back doors, on what the services then held: the security group opens 22 only
to the admin CIDRs and 6443 only to the load balancer's group, the ELB listens on TCP 6443 with a
health check, machines are private, and the user data travels with RunInstances.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from healer.cli.main import main
from healer.cloud.resources import TAG_RESOURCE
from healer.config import ClusterConfig, parse_config
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL
from healer.provisioning.apply import Inventory, apply, destroy, make_plan, plan_destroy
from healer.provisioning.userdata import render_user_data
from providers.libcloud_generic import LibcloudProvider
from tests.example_configs import pointed_at
from tests.moto_ec2 import Ec2Emulator, WireRequest, ec2_options

ADMIN = "203.0.113.0/24"
SUBNET = "10.30.1.0/24"
PUBLIC = "10.30.255.192/26"
ZONE = "us-east-1a"
MUTATING = (
    "Create",
    "Authorize",
    "Revoke",
    "Delete",
    "Modify",
    "Register",
    "Deregister",
    "Configure",
    "Attach",
    "Detach",
    "RunInstances",
    "TerminateInstances",
    "Apply",
)


def _config(**overrides: Any) -> ClusterConfig:
    doc: dict[str, Any] = {
        "name": "prod",
        "provider": {"plugin": "libcloud", "options": {"driver": "ec2"}},
        "network": {"cidr": "10.30.0.0/16", "subnetCidr": SUBNET, "location": ZONE},
        "adminCidrs": [ADMIN],
        "pools": [
            {"name": "cp", "role": "control-plane", "size": 3, "machine": {"size": "t3.micro"}},
            {"name": "workers", "size": 2, "machine": {"size": "t3.micro"}},
        ],
    }
    doc.update(overrides)
    return parse_config({"clusters": [doc]}).clusters[0]


def _user_data(cluster: ClusterConfig, pool: str, name: str) -> str:
    return render_user_data(cluster, pool, name)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture
def provider(ec2_prod: LibcloudProvider) -> LibcloudProvider:
    return ec2_prod  # tests/plugins/ec2.py


def _elb(ec2: Ec2Emulator) -> Any:
    return ec2.boto("elb")


async def _one_machine_applied(
    provider: LibcloudProvider, tmp_path: Path
) -> tuple[ClusterConfig, Inventory]:
    cluster = _config(
        pools=[{"name": "cp", "role": "control-plane", "size": 1, "machine": {"size": "t3.micro"}}]
    )
    inventory = Inventory(tmp_path, "prod")
    await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    return cluster, inventory


def _running(client: Any, **filters: Any) -> list[dict[str, Any]]:
    """The running instances EC2 holds (read through boto3, not through healer)."""
    return [
        i
        for r in client.describe_instances(**filters)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] == "running"
    ]


def _permissions(request: WireRequest) -> set[tuple[str, str | None, str | None, str]]:
    """(protocol, from, to, source) for every range in an Authorize/Revoke request."""
    p = request.params
    out = set()
    for n in range(1, 10):
        root = f"IpPermissions.{n}"
        if f"{root}.IpProtocol" not in p:
            continue
        key = (p[f"{root}.IpProtocol"], p.get(f"{root}.FromPort"), p.get(f"{root}.ToPort"))
        for m in range(1, 10):
            if f"{root}.IpRanges.{m}.CidrIp" in p:
                out.add((*key, p[f"{root}.IpRanges.{m}.CidrIp"]))
            if f"{root}.Groups.{m}.GroupId" in p:
                out.add((*key, "group " + p[f"{root}.Groups.{m}.GroupId"]))
    return out


def _tags(params: dict[str, str], root: str = "TagSpecification.1.Tag") -> dict[str, str]:
    return {
        params[f"{root}.{n}.Key"]: params[f"{root}.{n}.Value"]
        for n in range(1, 20)
        if f"{root}.{n}.Key" in params
    }


async def test_apply_sends_private_networking_tight_rules_and_an_api_load_balancer(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    cluster = _config()
    result = await apply(
        cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod")
    )
    assert len(result.created) == 5

    (vpc,) = ec2.calls("CreateVpc")
    assert vpc.params["CidrBlock"] == "10.30.0.0/16"
    assert _tags(vpc.params) == {
        "Name": "prod-net",
        TAG_MANAGED: "true",
        TAG_CLUSTER: "prod",
        TAG_RESOURCE: "network",
    }
    subnets = {s.params["CidrBlock"]: s.params for s in ec2.calls("CreateSubnet")}
    # The machines' private subnet, and a public /26 at the top of the VPC for NAT and ELB only.
    assert {c: (p["AvailabilityZone"], _tags(p)["Name"]) for c, p in subnets.items()} == {
        SUBNET: (ZONE, "prod-subnet"),
        PUBLIC: (ZONE, f"prod-public-{ZONE}"),
    }
    assert ec2.calls("ModifySubnetAttribute") == []  # MapPublicIpOnLaunch stays false
    (nat,) = ec2.calls("CreateNatGateway")
    assert _tags(nat.params)["Name"] == f"prod-nat-{ZONE}"

    groups = {g.params["GroupName"]: g for g in ec2.calls("CreateSecurityGroup")}
    assert set(groups) == {"prod-nodes", "prod-api-lb"}
    found = ec2.client.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["prod-nodes", "prod-api-lb"]}]
    )["SecurityGroups"]
    ids = {g["GroupName"]: g["GroupId"] for g in found}

    opened: dict[str, set[tuple[str, str | None, str | None, str]]] = {}
    for call in ec2.calls("AuthorizeSecurityGroupIngress"):
        opened.setdefault(call.params["GroupId"], set()).update(_permissions(call))
    # The machines: SSH from the admins only, the API from the LB's group only, the subnet.
    assert opened[ids["prod-nodes"]] == {
        ("-1", None, None, SUBNET),
        ("tcp", "22", "22", ADMIN),
        ("tcp", "6443", "6443", f"group {ids['prod-api-lb']}"),
    }
    # The LB: the API port from the admins and the cluster's subnet.
    assert opened[ids["prod-api-lb"]] == {
        ("tcp", "6443", "6443", ADMIN),
        ("tcp", "6443", "6443", SUBNET),
    }
    # Nothing is opened to the internet (0.0.0.0/0 appears only as the gateway's route).
    assert not any(
        "0.0.0.0/0" in v
        for r in ec2.wire.requests
        if r.action != "CreateRoute"
        for v in r.params.values()
    )

    (lb,) = ec2.calls("CreateLoadBalancer", "elb")
    p = lb.params
    assert (p["Listeners.member.1.Protocol"], p["Listeners.member.1.LoadBalancerPort"]) == (
        "TCP",
        "6443",
    )
    assert (p["Listeners.member.1.InstanceProtocol"], p["Listeners.member.1.InstancePort"]) == (
        "TCP",
        "6443",
    )
    subnet_id, public_id = (
        ec2.client.describe_subnets(Filters=[{"Name": "cidr-block", "Values": [cidr]}])["Subnets"][
            0
        ]["SubnetId"]
        for cidr in (SUBNET, PUBLIC)
    )
    assert p["Subnets.member.1"] == public_id and "Subnets.member.2" not in p
    assert p["SecurityGroups.member.1"] == ids["prod-api-lb"]
    assert "Scheme" not in p  # internet-facing: the admins reach the API through it
    assert _tags(p, "Tags.member")[TAG_POOL] == "cp"
    (check,) = ec2.calls("ConfigureHealthCheck", "elb")
    assert check.params["HealthCheck.Target"] == "HTTPS:6443/readyz"
    assert (check.params["HealthCheck.Interval"], check.params["HealthCheck.Timeout"]) == (
        "10",
        "5",
    )

    runs = ec2.calls("RunInstances")
    assert len(runs) == 5
    for run in runs:
        rp = run.params
        assert rp["SubnetId"] == subnet_id
        assert rp["SecurityGroupId.1"] == ids["prod-nodes"] and "SecurityGroupId.2" not in rp
        assert not any(k.startswith("NetworkInterface") for k in rp)  # no public address asked
        tags = _tags(rp)
        sent = base64.b64decode(rp["UserData"]).decode()
        assert sent == _user_data(cluster, tags[TAG_POOL], tags["Name"])

    instances = _running(ec2.client)
    assert len(instances) == 5
    assert all("PublicIpAddress" not in i for i in instances)
    cp_ids = sorted(m.id for m in result.created if m.tags[TAG_POOL] == "cp")
    (described,) = _elb(ec2).describe_load_balancers()["LoadBalancerDescriptions"]
    assert sorted(i["InstanceId"] for i in described["Instances"]) == cp_ids
    assert described["HealthCheck"]["Target"] == "HTTPS:6443/readyz"
    assert result.load_balancer is not None and list(result.load_balancer.members) == cp_ids

    # A second apply reads, and changes nothing.
    ec2.wire.requests.clear()
    again = await apply(
        cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod")
    )
    assert again.plan.actions == () and again.created == ()
    assert [r.action for r in ec2.wire.requests if str(r.action).startswith(MUTATING)] == []


async def test_an_internal_lb_and_public_addresses_when_asked_for(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    cluster = _config(
        network={"cidr": "10.30.0.0/16", "subnetCidr": SUBNET, "location": ZONE, "publicIps": True},
        loadBalancer={"internal": True},
        pools=[{"name": "cp", "role": "control-plane", "size": 1, "machine": {"size": "t3.micro"}}],
    )
    await apply(cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod"))

    (modify,) = ec2.calls("ModifySubnetAttribute")
    assert modify.params["MapPublicIpOnLaunch.Value"] == "true"
    (lb,) = ec2.calls("CreateLoadBalancer", "elb")
    assert lb.params["Scheme"] == "internal"
    _, _, again = await make_plan(cluster, provider, inventory=Inventory(tmp_path, "prod"))
    assert again.actions == ()


async def test_a_rule_opened_by_hand_is_taken_back_by_apply(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    cluster, inventory = await _one_machine_applied(provider, tmp_path)
    (group,) = ec2.client.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["prod-nodes"]}]
    )["SecurityGroups"]
    ec2.client.authorize_security_group_ingress(
        GroupId=group["GroupId"],
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )

    _, _, drift = await make_plan(cluster, provider, inventory=inventory)
    assert [str(a) for a in drift.actions] == ["~ firewall prod-nodes: - tcp/22 from 0.0.0.0/0"]
    ec2.wire.requests.clear()
    await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    (revoke,) = ec2.calls("RevokeSecurityGroupIngress")
    assert _permissions(revoke) == {("tcp", "22", "22", "0.0.0.0/0")}
    (group,) = ec2.client.describe_security_groups(GroupIds=[group["GroupId"]])["SecurityGroups"]
    assert all(r["CidrIp"] != "0.0.0.0/0" for p in group["IpPermissions"] for r in p["IpRanges"])


async def test_destroy_removes_every_healer_resource_of_the_cluster(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    cluster = _config()
    await apply(cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod"))
    # Someone else's VPC in the same account stays.
    theirs = ec2.client.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]

    the_plan = await plan_destroy("prod", provider)
    # LB, 5 machines, firewall, 2 route tables, NAT gateway, 2 subnets, network.
    assert len(the_plan.actions) == 13
    done = await destroy("prod", provider, the_plan=the_plan)
    assert len(done) == 13

    tagged = [{"Name": f"tag:{TAG_CLUSTER}", "Values": ["prod"]}]
    assert ec2.client.describe_vpcs(Filters=tagged)["Vpcs"] == []
    assert ec2.client.describe_subnets(Filters=tagged)["Subnets"] == []
    assert ec2.client.describe_security_groups(Filters=tagged)["SecurityGroups"] == []
    assert ec2.client.describe_internet_gateways(Filters=tagged)["InternetGateways"] == []
    assert ec2.client.describe_route_tables(Filters=tagged)["RouteTables"] == []
    nats = ec2.client.describe_nat_gateways(Filter=tagged)["NatGateways"]
    assert {n["State"] for n in nats} <= {"deleted"}
    assert ec2.client.describe_addresses(Filters=tagged)["Addresses"] == []  # EIP released
    assert _elb(ec2).describe_load_balancers()["LoadBalancerDescriptions"] == []
    assert [v["VpcId"] for v in ec2.client.describe_vpcs(VpcIds=[theirs])["Vpcs"]] == [theirs]
    assert (await plan_destroy("prod", provider)).actions == ()


ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")


def _three_zones() -> ClusterConfig:
    return _config(
        network={"cidr": "10.30.0.0/16", "subnetCidr": SUBNET},
        pools=[
            {
                "name": "cp",
                "role": "control-plane",
                "size": 3,
                "machine": {"size": "t3.micro", "zones": list(ZONES)},
            },
            {"name": "workers", "size": 4, "machine": {"size": "t3.micro", "zones": ZONES[:2]}},
        ],
    )


async def test_plan_lists_per_zone_private_subnets_nat_route_tables_and_the_lb(
    provider: LibcloudProvider, tmp_path: Path
) -> None:
    _, _, the_plan = await make_plan(_three_zones(), provider, inventory=Inventory(tmp_path, "p"))
    made = {(a.kind, a.name) for a in the_plan.actions if a.change == "+" and a.name}
    private = {"prod-subnet", "prod-subnet-us-east-1b", "prod-subnet-us-east-1c"}
    assert {n for k, n in made if k == "subnet"} == private | {f"prod-public-{z}" for z in ZONES}
    assert {n for k, n in made if k == "nat-gateway"} == {f"prod-nat-{z}" for z in ZONES}
    assert {n for k, n in made if k == "route-table"} == {
        "prod-public",
        *(f"prod-private-{z}" for z in ZONES),
    }
    assert ("load-balancer", "prod-api") in made
    lines = "\n".join(the_plan.lines())
    assert (
        "+ route-table prod-private-us-east-1b: 0.0.0.0/0 -> NAT gateway prod-nat-us-east-1b"
        in lines
    )


async def test_after_apply_no_instance_is_public_and_no_private_subnet_routes_to_the_igw(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    cluster = _three_zones()
    inventory = Inventory(tmp_path, "prod")
    result = await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    assert len(result.created) == 7
    c = ec2.client
    tagged = [{"Name": f"tag:{TAG_CLUSTER}", "Values": ["prod"]}]
    subnets = {s["SubnetId"]: s for s in c.describe_subnets(Filters=tagged)["Subnets"]}
    tier = {
        sid: {t["Key"]: t["Value"] for t in s.get("Tags", [])}.get("healer.io/tier", "private")
        for sid, s in subnets.items()
    }
    private = {sid for sid, t in tier.items() if t == "private"}
    public = {sid for sid, t in tier.items() if t == "public"}
    assert sorted(subnets[s]["AvailabilityZone"] for s in private) == list(ZONES)
    assert sorted(subnets[s]["AvailabilityZone"] for s in public) == list(ZONES)
    assert not any(subnets[s]["MapPublicIpOnLaunch"] for s in subnets)

    # What EC2 holds: every route table of the VPC, the main one included.
    vpc_id = next(iter(subnets.values()))["VpcId"]
    tables = c.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
        "RouteTables"
    ]
    explicit = {a["SubnetId"]: t for t in tables for a in t["Associations"] if a.get("SubnetId")}
    nats = {
        n["NatGatewayId"]: n
        for n in c.describe_nat_gateways(Filter=tagged)["NatGateways"]
        if n["State"] != "deleted"
    }
    assert sorted(subnets[n["SubnetId"]]["AvailabilityZone"] for n in nats.values()) == list(ZONES)
    assert all(n["SubnetId"] in public for n in nats.values())
    assert all(n["NatGatewayAddresses"][0].get("PublicIp") for n in nats.values())

    def default_route(table: dict[str, Any]) -> dict[str, Any]:
        (route,) = [r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
        return route

    for sid in private:
        # Explicitly associated (never the main table), 0.0.0.0/0 to its own zone's NAT.
        table = explicit[sid]
        assert not any(r.get("GatewayId", "").startswith("igw-") for r in table["Routes"])
        nat = nats[default_route(table)["NatGatewayId"]]
        assert subnets[nat["SubnetId"]]["AvailabilityZone"] == subnets[sid]["AvailabilityZone"]
    for sid in public:
        assert default_route(explicit[sid])["GatewayId"].startswith("igw-")
    (main,) = [t for t in tables if any(a.get("Main") for a in t["Associations"])]
    assert not any(r.get("GatewayId", "").startswith("igw-") for r in main["Routes"])

    instances = _running(c, Filters=tagged)
    assert len(instances) == 7
    assert all("PublicIpAddress" not in i for i in instances)
    assert all(i["SubnetId"] in private for i in instances)
    zone_of = {
        {t["Key"]: t["Value"] for t in i["Tags"]}["Name"]: i["Placement"]["AvailabilityZone"]
        for i in instances
    }
    for pool in cluster.pools:
        # Each machine in the subnet of its zone, the zone its node label names.
        for i in instances:
            tags = {t["Key"]: t["Value"] for t in i["Tags"]}
            if tags[TAG_POOL] == pool.name:
                assert subnets[i["SubnetId"]]["AvailabilityZone"] == pool.zone_for(tags["Name"])
    cp_zones = sorted(z for n, z in zone_of.items() if n.startswith("prod-cp-"))
    assert cp_zones == list(ZONES)  # the control plane over the three zones
    worker_zones = sorted(z for n, z in zone_of.items() if n.startswith("prod-workers-"))
    assert worker_zones == [ZONES[0], ZONES[0], ZONES[1], ZONES[1]]

    (lb,) = _elb(ec2).describe_load_balancers()["LoadBalancerDescriptions"]
    assert sorted(lb["Subnets"]) == sorted(public)

    # Read back, it is all as configured.
    ec2.wire.requests.clear()
    again = await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    assert again.plan.actions == ()
    assert [r.action for r in ec2.wire.requests if str(r.action).startswith(MUTATING)] == []


async def test_a_private_subnet_put_on_the_igw_by_hand_is_routed_back_to_its_nat(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    cluster, inventory = await _one_machine_applied(provider, tmp_path)
    c = ec2.client
    tagged = [{"Name": "tag:Name", "Values": [f"prod-private-{ZONE}"]}]
    (table,) = c.describe_route_tables(Filters=tagged)["RouteTables"]
    (igw,) = c.describe_internet_gateways(
        Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": ["prod"]}]
    )["InternetGateways"]
    c.replace_route(
        RouteTableId=table["RouteTableId"],
        DestinationCidrBlock="0.0.0.0/0",
        GatewayId=igw["InternetGatewayId"],
    )

    _, _, drift = await make_plan(cluster, provider, inventory=inventory)
    assert [str(a) for a in drift.actions] == [
        f"~ route-table prod-private-{ZONE}: 0.0.0.0/0 -> internet gateway -> "
        f"0.0.0.0/0 -> NAT gateway prod-nat-{ZONE}"
    ]
    await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    (table,) = c.describe_route_tables(Filters=tagged)["RouteTables"]
    (route,) = [r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    assert route.get("NatGatewayId", "").startswith("nat-") and "GatewayId" not in route


def test_the_ec2_example_plans_and_applies_with_private_machines_only(
    ec2: Ec2Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`healer plan` and `healer apply` on config/provision-ec2.yaml, its provider pointed at
    moto (the same region, eu-west-1), then EC2's state read back."""
    region = "eu-west-1"
    client = ec2.boto("ec2", region)
    client.register_image(Name="debian-12", RootDeviceName="/dev/sda1", Architecture="x86_64")
    options = ec2_options(ec2, region)
    secrets = {"key": "AKIDHEALERTEST\n", "secret": "healer-test-secret-value\n"}
    args = pointed_at("provision-ec2.yaml", tmp_path, options=options, secrets=secrets)

    assert main(["plan", *args]) == 0
    out = capsys.readouterr().out
    for line in (
        "+ subnet prod-subnet: 10.20.1.0/24 in eu-west-1a",
        "+ subnet prod-subnet-eu-west-1b: 10.20.2.0/24 in eu-west-1b",
        "+ subnet prod-subnet-eu-west-1c: 10.20.3.0/24 in eu-west-1c",
        "+ subnet prod-public-eu-west-1a: 10.20.255.192/26 in eu-west-1a",
        "+ nat-gateway prod-nat-eu-west-1b: egress to the internet in eu-west-1b",
        "+ route-table prod-private-eu-west-1c: 0.0.0.0/0 -> NAT gateway prod-nat-eu-west-1c "
        "for prod-subnet-eu-west-1c",
        "+ route-table prod-public: 0.0.0.0/0 -> internet gateway for prod-public-eu-west-1a, "
        "prod-public-eu-west-1b, prod-public-eu-west-1c",
        "+ load-balancer prod-api: public tcp/6443 -> 6443 on the members of pool "
        "control-plane, in prod-public-eu-west-1a, prod-public-eu-west-1b, prod-public-eu-west-1c",
    ):
        assert line in out, out

    assert main(["apply", *args, "--yes"]) == 0
    tagged = [{"Name": f"tag:{TAG_CLUSTER}", "Values": ["prod"]}]
    instances = _running(client, Filters=tagged)
    assert len(instances) == 7 and all("PublicIpAddress" not in i for i in instances)
    subnets = client.describe_subnets(Filters=tagged)["Subnets"]
    private = {
        s["SubnetId"]
        for s in subnets
        if not any(t["Key"] == "healer.io/tier" for t in s.get("Tags", []))
    }
    assert {i["SubnetId"] for i in instances} <= private and len(private) == 3
    tables = client.describe_route_tables()["RouteTables"]
    for table in tables:
        routes_to_igw = any(r.get("GatewayId", "").startswith("igw-") for r in table["Routes"])
        associated = {a.get("SubnetId") for a in table["Associations"]}
        main_table = any(a.get("Main") for a in table["Associations"])
        if routes_to_igw:
            assert not associated & private and not main_table
    assert main(["plan", *args, "--detailed-exitcode"]) == 0  # nothing left to do


async def test_destroy_releases_the_elastic_ip_of_a_nat_gateway_deleted_by_hand(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    await _one_machine_applied(provider, tmp_path)
    tagged = [{"Name": f"tag:{TAG_CLUSTER}", "Values": ["prod"]}]
    (nat,) = ec2.client.describe_nat_gateways(Filter=tagged)["NatGateways"]
    ec2.client.delete_nat_gateway(NatGatewayId=nat["NatGatewayId"])
    assert len(ec2.client.describe_addresses(Filters=tagged)["Addresses"]) == 1

    await destroy("prod", provider, the_plan=await plan_destroy("prod", provider))
    assert ec2.client.describe_addresses(Filters=tagged)["Addresses"] == []
    assert ec2.client.describe_vpcs(Filters=tagged)["Vpcs"] == []


async def test_an_elb_left_in_a_private_subnet_moves_to_the_public_one_keeping_its_name(
    provider: LibcloudProvider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    """As an ELB made before healer had public subnets: in the machines' subnet, which no longer
    routes to the internet gateway."""
    cluster, inventory = await _one_machine_applied(provider, tmp_path)
    elb = _elb(ec2)
    (before,) = elb.describe_load_balancers()["LoadBalancerDescriptions"]
    ids = {
        cidr: ec2.client.describe_subnets(Filters=[{"Name": "cidr-block", "Values": [cidr]}])[
            "Subnets"
        ][0]["SubnetId"]
        for cidr in (SUBNET, PUBLIC)
    }
    elb.attach_load_balancer_to_subnets(LoadBalancerName="prod-api", Subnets=[ids[SUBNET]])
    elb.detach_load_balancer_from_subnets(LoadBalancerName="prod-api", Subnets=[ids[PUBLIC]])

    _, _, drift = await make_plan(cluster, provider, inventory=inventory)
    assert [str(a) for a in drift.actions] == [
        f"~ load-balancer prod-api: subnets prod-subnet -> prod-public-{ZONE}"
    ]
    await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    (after,) = elb.describe_load_balancers()["LoadBalancerDescriptions"]
    assert after["Subnets"] == [ids[PUBLIC]]
    assert after["DNSName"] == before["DNSName"]  # the cluster's API address is kept
