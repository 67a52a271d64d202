"""Bring each pool up to its configured size through the cluster's provider.

Used to build the lab cluster and, by the daemon, to repair a pool that lost machines. Machines
are found by healer's ownership tags, so running it twice creates nothing the second time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import structlog

from healer.cloud.machines import Machine, MachineRequest, Provider
from healer.config import ClusterConfig, PoolConfig
from healer.config.rollout import spec_tags
from healer.naming import machine_name, ownership_tags

log = structlog.get_logger("healer.provisioning")

_NAME_TRIES = 256
UserData = Callable[[ClusterConfig, str, str], str]


async def pool_machines(cluster: ClusterConfig, provider: Provider, pool: str) -> list[Machine]:
    return await provider.list_machines(ownership_tags(cluster.name, pool))


def next_name(cluster: str, pool: PoolConfig, names: Sequence[str]) -> str:
    """A new machine name for ``pool`` whose zone (:meth:`PoolConfig.zone_for`) is the one its
    machines ``names`` use least, the first listed on a tie: round-robin over the pool's zones
    that also fills a zone that lost machines first."""
    zones = pool.zones
    if len(zones) <= 1:
        return machine_name(cluster, pool.name)
    used = Counter(pool.zone_for(n) for n in names)
    wanted = min(zones, key=lambda z: used[z])
    for _ in range(_NAME_TRIES):
        name = machine_name(cluster, pool.name)
        if pool.zone_for(name) == wanted:
            return name
    return name  # 1 in len(zones) draws fits; running out is as likely as never


async def ensure_pools(
    cluster: ClusterConfig, provider: Provider, *, user_data: UserData
) -> list[Machine]:
    """Create the machines each pool is missing; returns the ones created."""
    created: list[Machine] = []
    for pool in cluster.pools:
        existing = await pool_machines(cluster, provider, pool.name)
        names = [m.name for m in existing]
        for _ in range(pool.size - len(existing)):
            name = next_name(cluster.name, pool, names)
            names.append(name)
            machine = await provider.create_machine(
                MachineRequest(
                    name=name,
                    size=pool.machine.size,
                    image=pool.machine.image,
                    location=pool.zone_for(name),
                    tags={**ownership_tags(cluster.name, pool.name), **spec_tags(pool)},
                    user_data=user_data(cluster, pool.name, name),
                    extra=pool.machine.extra,
                )
            )
            log.info(
                "provisioning.machine_created",
                cluster=cluster.name,
                pool=pool.name,
                machine=machine.name,
            )
            created.append(machine)
    return created
