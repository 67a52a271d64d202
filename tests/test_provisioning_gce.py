"""Provisioning on GCE: libcloud's real GCE driver against recorded-shape API answers.

tests/gce_fake.py answers through requests-mock, seeded with libcloud's own recorded GCE
responses, and records every request. The service account's key is generated for the test and the
token endpoint is mocked, so libcloud's real OAuth (JWT signing) code runs too. The assertions are
on the bodies GCE received: firewall rules, the forwarding rule and its health check, instances
without external addresses in the subnetwork, with the user data in their metadata.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
import structlog

from healer.cli.main import main
from healer.config import ClusterConfig, parse_config
from healer.model import TAG_CLUSTER, TAG_POOL
from healer.provisioning.apply import Inventory, apply, destroy, make_plan, plan_destroy
from healer.provisioning.userdata import render_user_data
from providers.gce import HEALTH_CHECK_SOURCES as GCE_HEALTH_CHECK_SOURCES
from providers.gce.dialect import gce_decode, gce_encode
from providers.gce.infra_backend import meta_of
from providers.libcloud_generic import LibcloudProvider
from tests.example_configs import example, pointed_at
from tests.gce_fake import (
    ACCESS_TOKEN,
    BASE,
    PROJECT,
    REGION,
    SA_EMAIL,
    ZONE,
    ZONES,
    GceFake,
    gce_provider,
    service_account_key,
)

ADMIN = "203.0.113.0/24"
SUBNET = "10.40.1.0/24"
ONE_CP = [
    {
        "name": "cp",
        "role": "control-plane",
        "size": 1,
        "machine": {"size": "n1-standard-1", "location": ZONE},
    }
]


def _config(**overrides: Any) -> ClusterConfig:
    doc: dict[str, Any] = {
        "name": "prod",
        "provider": {"plugin": "libcloud", "options": {"driver": "gce"}},
        "network": {"cidr": "10.40.0.0/16", "subnetCidr": SUBNET, "location": ZONE},
        "adminCidrs": [ADMIN],
        "pools": [
            {
                "name": "cp",
                "role": "control-plane",
                "size": 3,
                "machine": {"size": "n1-standard-1", "location": ZONE},
            },
            {"name": "workers", "size": 2, "machine": {"size": "n1-standard-1", "location": ZONE}},
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
def gce(requests_mock: rm.Mocker) -> GceFake:
    fake = GceFake()
    fake.install(requests_mock)
    return fake


@pytest.fixture
def key() -> str:
    return service_account_key()


@pytest.fixture
async def provider(gce: GceFake, tmp_path: Path, key: str) -> AsyncIterator[LibcloudProvider]:
    p = gce_provider(cluster="prod", state_dir=tmp_path, private_key=key)
    try:
        yield p
    finally:
        await p.close()


async def test_apply_sends_tight_firewall_rules_an_lb_and_private_instances(
    provider: LibcloudProvider,
    gce: GceFake,
    tmp_path: Path,
    key: str,
    requests_mock: rm.Mocker,
) -> None:
    cluster = _config()
    with structlog.testing.capture_logs() as logs:
        result = await apply(
            cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod")
        )
    assert len(result.created) == 5
    # Neither the service account's key nor the access token is ever logged.
    assert logs and not any(secret in repr(logs) for secret in (key.splitlines()[1], ACCESS_TOKEN))

    (network,) = gce.posted("/global/networks")
    assert (network["name"], network["autoCreateSubnetworks"]) == ("prod-net", False)
    assert meta_of(network["description"]) == {
        "tags": {
            "healer.io/managed": "true",
            TAG_CLUSTER: "prod",
            "healer.io/resource": "network",
        },
        "cidr": "10.40.0.0/16",
    }
    (subnet,) = gce.posted(f"/regions/{REGION}/subnetworks")
    assert (subnet["ipCidrRange"], subnet["privateIpGoogleAccess"]) == (SUBNET, True)
    assert subnet["network"] == f"{BASE}global/networks/prod-net"

    (router,) = gce.posted(f"/regions/{REGION}/routers")
    (nat,) = router["nats"]
    assert (router["name"], router["network"]) == ("prod-nat", f"{BASE}global/networks/prod-net")
    assert (nat["natIpAllocateOption"], nat["sourceSubnetworkIpRangesToNat"]) == (
        "AUTO_ONLY",
        "LIST_OF_SUBNETWORKS",
    )
    assert nat["subnetworks"] == [
        {
            "name": f"{BASE}regions/{REGION}/subnetworks/prod-subnet",
            "sourceIpRangesToNat": ["ALL_IP_RANGES"],
        }
    ]

    rules = {r["name"]: r for r in gce.posted("/global/firewalls")}
    assert set(rules) == {"prod-nodes-all", "prod-nodes-tcp-22", "prod-nodes-tcp-6443"}
    for rule in rules.values():
        assert rule["direction"] == "INGRESS"
        assert rule["targetTags"] == ["prod-nodes"]
        assert rule["network"] == f"{BASE}global/networks/prod-net"
    assert (rules["prod-nodes-tcp-22"]["allowed"], rules["prod-nodes-tcp-22"]["sourceRanges"]) == (
        [{"IPProtocol": "tcp", "ports": ["22"]}],
        [ADMIN],
    )
    # Pass-through LB: the API port admits the API clients and Google's health checkers.
    assert sorted(rules["prod-nodes-tcp-6443"]["sourceRanges"]) == sorted(
        [ADMIN, *GCE_HEALTH_CHECK_SOURCES]
    )
    assert (rules["prod-nodes-all"]["allowed"], rules["prod-nodes-all"]["sourceRanges"]) == (
        [{"IPProtocol": "all"}],
        [SUBNET],
    )
    assert not any("0.0.0.0/0" in json.dumps(r) for r in rules.values())

    # The API server's own health endpoint, over HTTPS: nothing else has to serve one.
    (check,) = gce.posted(f"/regions/{REGION}/healthChecks")
    assert (check["name"], check["type"], check["httpsHealthCheck"]) == (
        "prod-api-hc",
        "HTTPS",
        {"port": 6443, "requestPath": "/readyz"},
    )
    assert (check["checkIntervalSec"], check["timeoutSec"]) == (10, 5)
    assert gce.posted("/global/httpHealthChecks") == []
    (service,) = gce.posted(f"/regions/{REGION}/backendServices")
    assert (service["loadBalancingScheme"], service["protocol"]) == ("EXTERNAL", "TCP")
    assert service["healthChecks"] == [f"{BASE}regions/{REGION}/healthChecks/prod-api-hc"]
    (rule,) = gce.posted(f"/regions/{REGION}/forwardingRules")
    assert (rule["name"], rule["IPProtocol"], rule["ports"]) == ("prod-api", "TCP", ["6443"])
    assert rule["backendService"] == f"{BASE}regions/{REGION}/backendServices/prod-api"
    assert meta_of(rule["description"])["tags"][TAG_POOL] == "cp"  # type: ignore[index]

    instances = gce.posted(f"/zones/{ZONE}/instances")
    assert len(instances) == 5
    for body in instances:
        (nic,) = body["networkInterfaces"]
        assert nic["subnetwork"] == f"{BASE}regions/{REGION}/subnetworks/prod-subnet"
        assert "accessConfigs" not in nic or nic["accessConfigs"] == []  # no external address
        assert body["tags"]["items"] == ["prod-nodes"]
        metadata = {i["key"]: i["value"] for i in body["metadata"]["items"]}
        assert metadata["user-data"] == _user_data(cluster, gce_label(body, TAG_POOL), body["name"])

    # The members are exactly the control-plane instances, in the zone's instance group, which
    # is the backend service's one backend.
    group = f"zones/{ZONE}/instanceGroups/prod-api-{ZONE}"
    stored = gce.store[group]
    cp_names = sorted(m.name for m in result.created if m.tags[TAG_POOL] == "cp")
    assert sorted(i.rsplit("/", 1)[1] for i in stored["instances"]) == cp_names
    backends = gce.store[f"regions/{REGION}/backendServices/prod-api"]["backends"]
    assert [b["group"] for b in backends] == [f"{BASE}{group}"]

    # Real OAuth: a signed JWT to the token endpoint; the key itself never goes anywhere.
    token_calls = [r for r in requests_mock.request_history if "oauth2" in r.url]
    assert token_calls and "assertion=" in (token_calls[0].text or "")
    api_calls = [r for r in requests_mock.request_history if "compute/v1" in r.url]
    assert all(r.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}" for r in api_calls)
    body_of_key = key.splitlines()[1]
    assert not any(body_of_key in (r.text or "") for r in requests_mock.request_history)

    # A second apply only reads.
    before = len(gce.calls)
    again = await apply(
        cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod")
    )
    assert again.plan.actions == ()
    # Listing an instance group's members is a POST that changes nothing.
    assert [
        c.method
        for c in gce.calls[before:]
        if c.method != "GET" and not c.path.endswith("/listInstances")
    ] == []


def gce_label(body: dict[str, Any], tag: str) -> str:
    return gce_decode(body["labels"][gce_encode(tag)])


async def test_a_rule_widened_by_hand_is_narrowed_again(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    cluster = _config(pools=ONE_CP)
    inventory = Inventory(tmp_path, "prod")
    await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    gce.store["global/firewalls/prod-nodes-tcp-22"]["sourceRanges"] = [ADMIN, "0.0.0.0/0"]

    _, _, drift = await make_plan(cluster, provider, inventory=inventory)
    assert [str(a) for a in drift.actions] == ["~ firewall prod-nodes: - tcp/22 from 0.0.0.0/0"]
    await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    (put,) = [c for c in gce.calls if c.method == "PUT"]
    assert put.path == "global/firewalls/prod-nodes-tcp-22"
    assert put.body["sourceRanges"] == [ADMIN]
    assert put.body["targetTags"] == ["prod-nodes"]


async def test_public_addresses_only_when_asked_for(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    cluster = _config(
        network={"cidr": "10.40.0.0/16", "subnetCidr": SUBNET, "location": ZONE, "publicIps": True},
        pools=ONE_CP,
    )
    await apply(cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod"))
    (body,) = gce.posted(f"/zones/{ZONE}/instances")
    assert body["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"


async def test_an_internal_lb_with_a_tcp_check_takes_a_private_address(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    cluster = _config(
        loadBalancer={"internal": True, "healthCheck": {"protocol": "tcp", "port": 6443}},
        pools=ONE_CP,
    )
    result = await apply(
        cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod")
    )
    (check,) = gce.posted(f"/regions/{REGION}/healthChecks")
    assert (check["type"], check["tcpHealthCheck"]) == ("TCP", {"port": 6443})
    (service,) = gce.posted(f"/regions/{REGION}/backendServices")
    assert service["loadBalancingScheme"] == "INTERNAL"
    assert service["network"] == f"{BASE}global/networks/prod-net"
    (rule,) = gce.posted(f"/regions/{REGION}/forwardingRules")
    assert rule["loadBalancingScheme"] == "INTERNAL"
    assert rule["subnetwork"] == f"{BASE}regions/{REGION}/subnetworks/prod-subnet"
    assert result.load_balancer is not None and result.load_balancer.internal
    address = result.load_balancer.address
    assert address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(SUBNET)
    _, _, again = await make_plan(cluster, provider, inventory=Inventory(tmp_path, "prod"))
    assert again.actions == ()


async def test_destroy_removes_the_lb_instances_rules_subnet_and_network(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    before = {k for k in gce.store if "/operations/" not in k}
    await apply(_config(), provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod"))
    the_plan = await plan_destroy("prod", provider)
    assert [a.kind for a in the_plan.actions] == [
        "load-balancer",
        *["machine"] * 5,
        "firewall",
        "nat-gateway",
        "subnet",
        "network",
    ]
    await destroy("prod", provider, the_plan=the_plan)
    left = {k for k in gce.store if "/operations/" not in k and "/disks/" not in k}
    assert left == before


def _three_zones() -> ClusterConfig:
    return _config(
        network={"cidr": "10.40.0.0/16", "subnetCidr": SUBNET},
        pools=[
            {
                "name": "cp",
                "role": "control-plane",
                "size": 3,
                "machine": {"size": "n1-standard-1", "zones": list(ZONES)},
            },
            {
                "name": "workers",
                "size": 2,
                "machine": {"size": "n1-standard-1", "zones": ZONES[:2]},
            },
        ],
    )


async def test_plan_and_apply_spread_private_machines_over_zones_behind_cloud_nat(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    cluster = _three_zones()
    inventory = Inventory(tmp_path, "prod")
    _, _, the_plan = await make_plan(cluster, provider, inventory=inventory)
    made = [(a.kind, a.name) for a in the_plan.actions if a.change == "+" and a.name]
    assert made == [
        ("network", "prod-net"),
        ("subnet", "prod-subnet"),  # regional: one private subnetwork serves every zone
        ("nat-gateway", "prod-nat"),
        ("firewall", "prod-nodes"),
        ("load-balancer", "prod-api"),
    ]
    text = "\n".join(the_plan.lines())
    assert f"subnet prod-subnet: {SUBNET} in {REGION}" in text
    assert "health check https:6443/readyz" in text

    result = await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    assert len(result.created) == 5
    instances = gce.items("instances")
    assert len(instances) == 5
    subnet_url = f"{BASE}regions/{REGION}/subnetworks/prod-subnet"
    for instance in instances:
        (nic,) = instance["networkInterfaces"]
        assert nic["accessConfigs"] == [] and nic["subnetwork"] == subnet_url  # private only
        pool = cluster.pool(gce_label(instance, TAG_POOL))
        assert pool is not None
        assert instance["zone"] == f"{BASE}zones/{pool.zone_for(instance['name'])}"
    zones = sorted(i["zone"].rsplit("/", 1)[1] for i in instances if "-cp-" in i["name"])
    assert zones == list(ZONES)  # the control plane over three zones
    # The private subnetwork's way out is the Cloud NAT, nothing else.
    (router,) = gce.items("routers")
    assert [s["name"] for n in router["nats"] for s in n["subnetworks"]] == [subnet_url]
    # One instance group per zone behind the backend service, each with its zone's member.
    groups = {g["name"]: g for g in gce.items("instanceGroups")}
    assert sorted(groups) == [f"prod-api-{z}" for z in ZONES]
    assert all(len(g["instances"]) == 1 for g in groups.values())
    backends = gce.store[f"regions/{REGION}/backendServices/prod-api"]["backends"]
    assert sorted(b["group"] for b in backends) == sorted(
        f"{BASE}zones/{z}/instanceGroups/prod-api-{z}" for z in ZONES
    )
    _, _, again = await make_plan(cluster, provider, inventory=inventory)
    assert again.actions == ()


def test_the_gce_example_plans_and_applies_behind_cloud_nat_and_an_internal_lb(
    requests_mock: rm.Mocker, tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`healer plan` and `healer apply` on config/provision-gce.yaml, its provider pointed at the
    fake (the same region and zones)."""
    cluster = example("provision-gce.yaml")
    zones = tuple(cluster["pools"][0]["machine"]["zones"])
    sizes = tuple(p["machine"]["size"] for p in cluster["pools"])
    fake = GceFake(region="europe-west1", zones=zones, machine_types=sizes)
    fake.install(requests_mock)
    options = {
        "driver": "gce",
        "args": {
            "project": PROJECT,
            "datacenter": zones[0],
            "auth_type": "SA",
            "credential_file": str(tmp_path / "token-cache"),
        },
    }
    secrets = {"key": SA_EMAIL + "\n", "secret": key}
    args = pointed_at("provision-gce.yaml", tmp_path, options=options, secrets=secrets)

    assert main(["plan", *args]) == 0
    out = capsys.readouterr().out
    for line in (
        "+ subnet prod-subnet: 10.30.1.0/24 in europe-west1 in network prod-net, private "
        "addresses only",
        "+ nat-gateway prod-nat: egress to the internet in europe-west1 through subnet prod-subnet",
        "+ load-balancer prod-api: internal tcp/6443 -> 6443 on the members of pool "
        "control-plane, in prod-subnet; health check https:6443/readyz",
    ):
        assert line in out, out

    assert main(["apply", *args, "--yes"]) == 0
    instances = fake.items("instances")
    assert len(instances) == 6
    assert all(i["networkInterfaces"][0]["accessConfigs"] == [] for i in instances)
    assert sorted({i["zone"].rsplit("/", 1)[1] for i in instances}) == sorted(zones)
    (router,) = fake.items("routers")
    assert router["nats"][0]["subnetworks"][0]["name"].endswith("/subnetworks/prod-subnet")
    (rule,) = fake.items("forwardingRules")
    assert rule["loadBalancingScheme"] == "INTERNAL"
    (check,) = fake.items("healthChecks")
    assert check["httpsHealthCheck"] == {"port": 6443, "requestPath": "/readyz"}
    assert main(["plan", *args, "--detailed-exitcode"]) == 0  # nothing left to do


async def test_a_changed_health_check_is_patched_in_place(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    inventory = Inventory(tmp_path, "prod")
    await apply(_config(pools=ONE_CP), provider, user_data=_user_data, inventory=inventory)
    slower = _config(pools=ONE_CP, loadBalancer={"healthCheck": {"interval": "30s"}})

    _, _, the_plan = await make_plan(slower, provider, inventory=inventory)
    assert [str(a) for a in the_plan.actions] == [
        "~ load-balancer prod-api: health check https:6443/readyz every 10s (timeout 5s, 2 up/3 "
        "down) -> https:6443/readyz every 30s (timeout 5s, 2 up/3 down)"
    ]
    await apply(slower, provider, user_data=_user_data, inventory=inventory)
    (patch,) = [c for c in gce.calls if c.method == "PATCH" and "healthChecks" in c.path]
    assert patch.path == f"regions/{REGION}/healthChecks/prod-api-hc"
    assert gce.store[patch.path]["checkIntervalSec"] == 30
    _, _, again = await make_plan(slower, provider, inventory=inventory)
    assert again.actions == ()
