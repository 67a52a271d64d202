"""Provisioning on GCE: libcloud's real GCE driver against recorded-shape API answers.

tests/gce_fake.py answers through requests-mock, seeded with libcloud's own recorded GCE
responses, and records every request. The service account's key is generated for the test and the
token endpoint is mocked, so libcloud's real OAuth (JWT signing) code runs too. The assertions are
on the bodies GCE received: firewall rules, the forwarding rule and its health check, instances
without external addresses in the subnetwork, with the user data in their metadata.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
import structlog

from healer.config import ClusterConfig, parse_config
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_POOL
from healer.provisioning.apply import Inventory, apply, destroy, make_plan, plan_destroy
from healer.provisioning.userdata import render_user_data
from providers.gce import HEALTH_CHECK_SOURCES as GCE_HEALTH_CHECK_SOURCES
from providers.gce.dialect import gce_decode, gce_encode
from providers.gce.infra_backend import meta_of
from providers.libcloud_generic import LibcloudProvider
from tests.gce_fake import (
    ACCESS_TOKEN,
    BASE,
    REGION,
    ZONE,
    GceFake,
    gce_provider,
    service_account_key,
)

ADMIN = "203.0.113.0/24"
SUBNET = "10.40.1.0/24"


def _config(**overrides: Any) -> ClusterConfig:
    doc: dict[str, Any] = {
        "name": "prod",
        "provider": {"plugin": "libcloud", "options": {"driver": "gce"}},
        "network": {"cidr": "10.40.0.0/16", "subnetCidr": SUBNET, "location": ZONE},
        "adminCidrs": [ADMIN],
        "loadBalancer": {"healthCheck": {"protocol": "http", "port": 80, "path": "/healthz"}},
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

    rules = {r["name"]: r for r in gce.posted("/global/firewalls")}
    assert set(rules) == {
        "prod-nodes-all",
        "prod-nodes-tcp-22",
        "prod-nodes-tcp-6443",
        "prod-nodes-tcp-80",
    }
    for rule in rules.values():
        assert rule["direction"] == "INGRESS"
        assert rule["targetTags"] == ["prod-nodes"]
        assert rule["network"] == f"{BASE}global/networks/prod-net"
    assert (rules["prod-nodes-tcp-22"]["allowed"], rules["prod-nodes-tcp-22"]["sourceRanges"]) == (
        [{"IPProtocol": "tcp", "ports": ["22"]}],
        [ADMIN],
    )
    # Pass-through LB: the API port admits the API clients, the check port Google's checkers.
    assert rules["prod-nodes-tcp-6443"]["sourceRanges"] == [ADMIN]
    assert sorted(rules["prod-nodes-tcp-80"]["sourceRanges"]) == sorted(GCE_HEALTH_CHECK_SOURCES)
    assert (rules["prod-nodes-all"]["allowed"], rules["prod-nodes-all"]["sourceRanges"]) == (
        [{"IPProtocol": "all"}],
        [SUBNET],
    )
    assert not any("0.0.0.0/0" in json.dumps(r) for r in rules.values())

    (check,) = gce.posted("/global/httpHealthChecks")
    assert (check["name"], check["port"], check["requestPath"]) == ("prod-api-hc", 80, "/healthz")
    assert (check["checkIntervalSec"], check["timeoutSec"]) == (10, 5)
    (pool,) = gce.posted(f"/regions/{REGION}/targetPools")
    assert pool["healthChecks"] == [f"{BASE}global/httpHealthChecks/prod-api-hc"]
    (rule,) = gce.posted(f"/regions/{REGION}/forwardingRules")
    assert (rule["name"], rule["IPProtocol"], rule["portRange"]) == ("prod-api", "TCP", "6443-6443")
    assert rule["target"] == f"{BASE}regions/{REGION}/targetPools/prod-api"
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

    # The members of the target pool are exactly the control-plane instances.
    stored = gce.store[f"regions/{REGION}/targetPools/prod-api"]
    cp_names = sorted(m.name for m in result.created if m.tags[TAG_POOL] == "cp")
    assert sorted(i.rsplit("/", 1)[1] for i in stored["instances"]) == cp_names

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
    assert [c.method for c in gce.calls[before:] if c.method != "GET"] == []


def gce_label(body: dict[str, Any], tag: str) -> str:
    return gce_decode(body["labels"][gce_encode(tag)])


async def test_a_rule_widened_by_hand_is_narrowed_again(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    cluster = _config(
        pools=[
            {
                "name": "cp",
                "role": "control-plane",
                "size": 1,
                "machine": {"size": "n1-standard-1", "location": ZONE},
            }
        ]
    )
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
        pools=[
            {
                "name": "cp",
                "role": "control-plane",
                "size": 1,
                "machine": {"size": "n1-standard-1", "location": ZONE},
            }
        ],
    )
    await apply(cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod"))
    (body,) = gce.posted(f"/zones/{ZONE}/instances")
    assert body["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"


async def test_an_https_health_check_is_refused_before_anything_is_built(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    cluster = _config(loadBalancer={})  # the default: https:6443/readyz
    with pytest.raises(PermanentError, match=r"healthCheck\.protocol https is not available"):
        await apply(cluster, provider, user_data=_user_data, inventory=Inventory(tmp_path, "p"))
    assert [c for c in gce.calls if c.method != "GET"] == []


async def test_destroy_removes_the_lb_instances_rules_subnet_and_network(
    provider: LibcloudProvider, gce: GceFake, tmp_path: Path
) -> None:
    await apply(_config(), provider, user_data=_user_data, inventory=Inventory(tmp_path, "prod"))
    the_plan = await plan_destroy("prod", provider)
    assert [a.kind for a in the_plan.actions] == [
        "load-balancer",
        *["machine"] * 5,
        "firewall",
        "subnet",
        "network",
    ]
    await destroy("prod", provider, the_plan=the_plan)
    left = sorted(k for k in gce.store if "/operations/" not in k and "/disks/" not in k)
    assert left == sorted(
        [
            f"regions/{REGION}",
            "global/images/debian-12",
            "global/networks/default",
            f"zones/{ZONE}",
            f"zones/{ZONE}/diskTypes/pd-standard",
            f"zones/{ZONE}/machineTypes/n1-standard-1",
        ]
    )
