"""A replacement keeps its predecessor's zone: the name a repair (planner) or a rolling
replacement picks for the new machine lands, by :meth:`PoolConfig.zone_for`, in the zone of the
machine it replaces; single-zone pools keep the plain ``machine_name(cluster, pool, id)``."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from healer.config import PoolConfig
from healer.naming import machine_name
from tests.test_planner import Rig

ZONES = ["eu-a", "eu-b", "eu-c"]


def _pool(machine: dict[str, object]) -> PoolConfig:
    return PoolConfig.model_validate({"name": "workers", "size": 6, "machine": machine})


def test_a_replacement_lands_in_the_zone_of_the_machine_it_replaces() -> None:
    pool = _pool({"zones": ZONES})
    # Fixed inputs, so the test is deterministic (workflow ids are random hex in the daemon).
    olds = [machine_name("demo", "workers", f"{i:08x}") for i in range(30)]
    tokens = [hashlib.sha256(b"%d" % i).hexdigest()[:12] for i in range(len(olds))]
    names = [
        pool.replacement_name("demo", old, token) for old, token in zip(olds, tokens, strict=True)
    ]
    for old, token, name in zip(olds, tokens, names, strict=True):
        assert pool.zone_for(name) == pool.zone_for(old), (old, token, name)
        assert re.fullmatch(r"demo-workers-[0-9a-f]{8}", name)
        assert pool.replacement_name("demo", old, token) == name  # deterministic
    assert len(set(names)) == len(names)
    # Both branches taken: some first names fit, the others needed a derived token.
    first_fits = Counter(
        name == machine_name("demo", "workers", t) for t, name in zip(tokens, names, strict=True)
    )
    assert first_fits[True] and first_fits[False]


@pytest.mark.parametrize(
    "machine", [{}, {"location": "eu-a"}, {"zones": ["eu-a"]}], ids=["none", "location", "one"]
)
def test_single_zone_pools_keep_the_plain_name(machine: dict[str, object]) -> None:
    pool = _pool(machine)
    for token in ("0123456789ab", "fedcba987654"):
        assert pool.replacement_name("demo", "demo-workers-11111111", token) == machine_name(
            "demo", "workers", token
        )


async def test_the_planner_replaces_a_node_within_its_zone(tmp_path: Path) -> None:
    pools = [
        {"name": "control-plane", "role": "control-plane", "size": 3},
        {"name": "workers", "size": 5, "machine": {"zones": ZONES}},
    ]
    rig = Rig(tmp_path, pools=pools)
    task = asyncio.create_task(rig.tracker.run())
    try:
        await rig.cluster()
        await rig.fail("w-2")
        await rig.clock.advance(5.1)
        [wf] = rig.started
        pool = rig.config.clusters[0].pool("workers")
        assert pool is not None and wf.node == "w-2"
        assert pool.zone_for(wf.replacement_name) == pool.zone_for("w-2")
        assert wf.replacement_name == pool.replacement_name("lab", "w-2", wf.id)
        assert rig.store.workflow(wf.id) is not None
    finally:
        task.cancel()
        rig.store.close()
