"""One infrastructure contract, run against every backend: the lab cloud, EC2 (libcloud's EC2 and
ELB drivers against moto) and GCE (libcloud's GCE driver against recorded-shape answers through
requests-mock).

Above all: what ``healer plan`` shows is what the provider does. Both use the rules of
healer/cloud/diff.py, so after the providers' ``ensure_*`` the plan has nothing left to do, a
conflict the plan shows is refused by ``ensure`` in the same words, and an update the plan shows
is the one ``ensure`` makes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from healer.cloud.machines import Provider
from healer.cloud.registry import load_provider
from healer.cloud.resources import InfraProvider, egress_of, infra_of
from healer.config import ClusterConfig, parse_config
from healer.errors import PermanentError
from healer.provisioning.apply import capabilities_of, observe
from healer.provisioning.desired import Desired, desired_state
from healer.provisioning.plan import Action, Change, plan
from tests.gce_fake import ZONE as GCE_ZONE
from tests.gce_fake import GceFake, gce_provider, service_account_key
from tests.moto_ec2 import Ec2Emulator, ec2_provider

CLUSTER = "prod"


@dataclass
class Cloud:
    provider: Provider
    infra: InfraProvider
    desired: Desired


def _config(plugin: str, options: dict[str, Any], **overrides: Any) -> ClusterConfig:
    doc: dict[str, Any] = {
        "name": CLUSTER,
        "provider": {"plugin": plugin, "options": options},
        "network": {"cidr": "10.40.0.0/16", "subnetCidr": "10.40.1.0/24"},
        "adminCidrs": ["203.0.113.0/24"],
        "pools": [{"name": "cp", "role": "control-plane", "size": 1}],
        **overrides,
    }
    return parse_config({"clusters": [doc]}).clusters[0]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def gce_key() -> str:
    return service_account_key()


@pytest.fixture(params=["lab", "ec2", "gce"])
async def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cloud]:
    kind: str = request.param
    provider: Provider
    if kind == "lab":
        provider = load_provider(
            "lab", cluster=CLUSTER, options={}, credentials={}, state_dir=tmp_path
        )
        config = _config("lab", {})
    elif kind == "ec2":
        emulator: Ec2Emulator = request.getfixturevalue("ec2")
        provider = ec2_provider(emulator, cluster=CLUSTER, state_dir=tmp_path)
        network = {"cidr": "10.40.0.0/16", "subnetCidr": "10.40.1.0/24", "location": "us-east-1a"}
        config = _config("libcloud", {"driver": "ec2"}, network=network)
    else:
        GceFake().install(request.getfixturevalue("requests_mock"))
        key = request.getfixturevalue("gce_key")
        provider = gce_provider(cluster=CLUSTER, state_dir=tmp_path, private_key=key)
        network = {"cidr": "10.40.0.0/16", "subnetCidr": "10.40.1.0/24", "location": GCE_ZONE}
        config = _config("libcloud", {"driver": "gce"}, network=network)
    infra = infra_of(provider)
    assert infra is not None
    desired = desired_state(config, capabilities_of(provider))
    assert desired.problems == ()
    try:
        yield Cloud(provider, infra, desired)
    finally:
        await provider.close()


async def _ensure_all(cloud: Cloud, desired: Desired | None = None) -> list[str]:
    d = desired or cloud.desired
    assert d.network and d.subnet and d.firewall and d.load_balancer
    net = await cloud.infra.ensure_network(d.network)
    subs = {s.name: await cloud.infra.ensure_subnet(s, net) for s in d.subnets}
    egress = egress_of(cloud.provider)
    made = [net.id, *(s.id for s in subs.values())]
    if egress is not None:
        made += [(await egress.ensure_nat_gateway(n, net)).id for n in d.nat_gateways]
        made += [(await egress.ensure_route_table(t, net)).id for t in d.route_tables]
    fw = await cloud.infra.ensure_firewall(d.firewall, net)
    lb = await cloud.infra.ensure_load_balancer(d.load_balancer, net, subs[d.load_balancer.subnet])
    return [*made, fw.id, lb.id]


async def _infra_plan(cloud: Cloud, desired: Desired) -> list[Action]:
    actual = await observe(CLUSTER, cloud.provider, pools=["cp"])
    return [a for a in plan(desired, actual).actions if a.kind != "machine"]


async def test_after_ensure_the_plan_has_nothing_to_do(cloud: Cloud) -> None:
    before = await _infra_plan(cloud, cloud.desired)
    egress = {
        "libcloud/ec2": ("nat-gateway", "route-table"),  # a NAT per zone, explicit routes
        "libcloud/gce": ("nat-gateway",),  # Cloud NAT; GCE has no route tables to manage
    }.get(cloud.infra.capabilities().provider, ())
    assert {(a.change, a.kind) for a in before} == {
        (Change.CREATE, kind)
        for kind in ("network", "subnet", *egress, "firewall", "load-balancer")
    }

    made = await _ensure_all(cloud)

    assert await _infra_plan(cloud, cloud.desired) == []
    assert await _ensure_all(cloud) == made  # idempotent: found again, nothing new


async def test_a_conflict_is_refused_in_the_words_of_the_plan(cloud: Cloud) -> None:
    await _ensure_all(cloud)
    assert cloud.desired.network is not None
    moved = dataclasses.replace(cloud.desired.network, cidr="10.41.0.0/16")
    wanted = dataclasses.replace(cloud.desired, network=moved)

    [conflict] = await _infra_plan(cloud, wanted)
    assert (conflict.change, conflict.kind) == (Change.CONFLICT, "network")
    with pytest.raises(PermanentError) as refused:
        await cloud.infra.ensure_network(moved)
    assert conflict.detail in str(refused.value)
    [net] = await cloud.infra.list_networks({})
    assert net.cidr == "10.40.0.0/16"  # nothing changed


async def test_an_update_is_made_as_the_plan_shows_it(cloud: Cloud) -> None:
    await _ensure_all(cloud)
    fw = cloud.desired.firewall
    assert fw is not None
    ssh = next(r for r in fw.rules if r.name == "ssh-admin")
    wider = dataclasses.replace(ssh, sources=(*ssh.sources, "198.51.100.0/24"))
    rules = tuple(wider if r is ssh else r for r in fw.rules)
    wanted = dataclasses.replace(cloud.desired, firewall=dataclasses.replace(fw, rules=rules))

    [update] = await _infra_plan(cloud, wanted)
    assert (update.change, update.kind) == (Change.UPDATE, "firewall")
    assert update.detail == "+ tcp/22 from 198.51.100.0/24"

    assert wanted.firewall is not None
    [net] = await cloud.infra.list_networks({})
    changed = await cloud.infra.ensure_firewall(wanted.firewall, net)

    assert changed.permissions == wanted.firewall.permissions()
    assert await _infra_plan(cloud, wanted) == []
