"""Provisioning on EC2: libcloud's real EC2 and ELB drivers against a local moto server.

The assertions are on the requests as EC2 and ELB received them (tests/moto_ec2.py records them)
and, through boto3 back doors, on what the services then held: the security group opens 22 only
to the admin CIDRs and 6443 only to the load balancer's group, the ELB listens on TCP 6443 with a
health check, machines are private, and the user data travels with RunInstances.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
import structlog

from healer.cloud.resources import TAG_RESOURCE
from healer.config import ClusterConfig, parse_config
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL
from healer.provisioning.apply import Inventory, apply, destroy, make_plan, plan_destroy
from healer.provisioning.userdata import render_user_data
from providers.libcloud_generic import LibcloudProvider
from tests.moto_ec2 import REGION, Ec2Emulator, WireRequest, ec2_provider

ADMIN = "203.0.113.0/24"
SUBNET = "10.30.1.0/24"
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
async def provider(ec2: Ec2Emulator, tmp_path: Path) -> AsyncIterator[LibcloudProvider]:
    ec2.register_image("debian-12")
    p = ec2_provider(ec2, cluster="prod", state_dir=tmp_path)
    try:
        yield p
    finally:
        await p.close()


def _elb(ec2: Ec2Emulator) -> Any:
    return boto3.client(
        "elb",
        region_name=REGION,
        endpoint_url=ec2.url,
        aws_access_key_id="AKIDBACKDOOR",
        aws_secret_access_key="backdoor",
    )


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
    (subnet,) = ec2.calls("CreateSubnet")
    assert (subnet.params["CidrBlock"], subnet.params["AvailabilityZone"]) == (SUBNET, ZONE)
    assert ec2.calls("ModifySubnetAttribute") == []  # MapPublicIpOnLaunch stays false

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
    subnet_id = ec2.client.describe_subnets(Filters=[{"Name": "cidr-block", "Values": [SUBNET]}])[
        "Subnets"
    ][0]["SubnetId"]
    assert p["Subnets.member.1"] == subnet_id
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

    instances = [
        i
        for r in ec2.client.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] == "running"
    ]
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
    cluster = _config(
        pools=[{"name": "cp", "role": "control-plane", "size": 1, "machine": {"size": "t3.micro"}}]
    )
    inventory = Inventory(tmp_path, "prod")
    await apply(cluster, provider, user_data=_user_data, inventory=inventory)
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
    assert len(the_plan.actions) == 9
    done = await destroy("prod", provider, the_plan=the_plan)
    assert len(done) == 9

    tagged = [{"Name": f"tag:{TAG_CLUSTER}", "Values": ["prod"]}]
    assert ec2.client.describe_vpcs(Filters=tagged)["Vpcs"] == []
    assert ec2.client.describe_subnets(Filters=tagged)["Subnets"] == []
    assert ec2.client.describe_security_groups(Filters=tagged)["SecurityGroups"] == []
    assert ec2.client.describe_internet_gateways(Filters=tagged)["InternetGateways"] == []
    assert _elb(ec2).describe_load_balancers()["LoadBalancerDescriptions"] == []
    assert [v["VpcId"] for v in ec2.client.describe_vpcs(VpcIds=[theirs])["Vpcs"]] == [theirs]
    assert (await plan_destroy("prod", provider)).actions == ()
