"""Bring each pool up to its configured size through the cluster's provider.

Used to build the lab cluster and, by the daemon, to repair a pool that lost machines. Machines
are found by healer's ownership tags, so running it twice creates nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from healer.cloud.machines import Machine, MachineRequest, Provider
from healer.config import ClusterConfig
from healer.naming import machine_name, ownership_tags

log = structlog.get_logger("healer.provisioning")

UserData = Callable[[ClusterConfig, str, str], str]


async def pool_machines(cluster: ClusterConfig, provider: Provider, pool: str) -> list[Machine]:
    return await provider.list_machines(ownership_tags(cluster.name, pool))


async def ensure_pools(
    cluster: ClusterConfig, provider: Provider, *, user_data: UserData
) -> list[Machine]:
    """Create the machines each pool is missing; returns the ones created."""
    created: list[Machine] = []
    for pool in cluster.pools:
        existing = await pool_machines(cluster, provider, pool.name)
        for _ in range(pool.size - len(existing)):
            name = machine_name(cluster.name, pool.name)
            machine = await provider.create_machine(
                MachineRequest(
                    name=name,
                    size=pool.machine.size,
                    image=pool.machine.image,
                    location=pool.machine.location,
                    tags=ownership_tags(cluster.name, pool.name),
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
