"""Pools over several zones in the lab cloud: each machine in the private subnet of its zone,
the zones filled in turn, the load balancer spanning every zone's subnet (the lab refuses a
member outside the subnets its LB spans, as an ELB serves only the zones it is enabled in)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from healer.cloud.machines import Provider
from healer.cloud.registry import load_provider
from healer.cloud.resources import infra_of
from healer.config import ClusterConfig, parse_config
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL
from healer.provisioning.apply import Inventory, apply, make_plan


def _cluster() -> ClusterConfig:
    doc = {
        "name": "demo",
        "provider": {"plugin": "lab"},
        "network": {"cidr": "10.20.0.0/16", "subnetCidr": "10.20.1.0/24"},
        "adminCidrs": ["203.0.113.0/24"],
        "pools": [
            {
                "name": "cp",
                "role": "control-plane",
                "size": 3,
                "machine": {"zones": ["lab-a", "lab-b"]},
            },
            {"name": "workers", "size": 4, "machine": {"zones": ["lab-b", "lab-a"]}},
        ],
    }
    return parse_config({"clusters": [doc]}).clusters[0]


def _user_data(cluster: ClusterConfig, pool: str, name: str) -> str:
    return ""


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[Provider]:
    p = load_provider("lab", cluster="demo", options={}, credentials={}, state_dir=tmp_path)
    try:
        yield p
    finally:
        await p.close()


async def test_machines_go_to_the_subnet_of_their_zone_and_all_join_the_lb(
    provider: Provider, tmp_path: Path
) -> None:
    cluster = _cluster()
    inventory = Inventory(tmp_path, "demo")
    result = await apply(cluster, provider, user_data=_user_data, inventory=inventory)
    assert len(result.created) == 7
    infra = infra_of(provider)
    assert infra is not None
    owned = {TAG_MANAGED: "true", TAG_CLUSTER: "demo"}
    subnets = {s.id: s for s in await infra.list_subnets(owned)}
    assert sorted((s.name, s.location) for s in subnets.values()) == [
        ("demo-subnet", "lab-a"),
        ("demo-subnet-lab-b", "lab-b"),
    ]
    machines = await provider.list_machines(owned)
    per_zone: Counter[tuple[str, str]] = Counter()
    for m in machines:
        pool = cluster.pool(m.tags[TAG_POOL])
        assert pool is not None
        subnet = subnets[str(m.extra["subnet_id"])]
        assert subnet.location == pool.zone_for(m.name)
        per_zone[pool.name, str(subnet.location)] += 1
    # Round robin: the first zone listed gets the odd one.
    assert per_zone == {
        ("cp", "lab-a"): 2,
        ("cp", "lab-b"): 1,
        ("workers", "lab-a"): 2,
        ("workers", "lab-b"): 2,
    }
    assert result.load_balancer is not None and len(result.load_balancer.members) == 3
    _, _, again = await make_plan(cluster, provider, inventory=inventory)
    assert again.actions == ()
