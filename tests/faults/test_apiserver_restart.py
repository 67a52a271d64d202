"""The Kubernetes API server restarts in the middle of a drain: the workflow completes, nothing
else is evicted, the daemon does not crash.

A worker running pods held by a PodDisruptionBudget that allows no disruption crashes; the
daemon's drain asks for their eviction, gets 429, and retries until ``drainTimeout`` (then goes
on: the node is unhealthy and not Ready). While it retries, the lab's API server is stopped
(watches end, connections refused) and started again on the same port with its objects kept, as
an apiserver restart over etcd keeps them: once in `make test`, three times in `make faults`.
The API's downtime stays under the lab's lease grace so the restart alone does not make
healthy nodes look dead (that is a partition, tested elsewhere).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from healer.lab.harness import LabHarness, LabTimings
from healer.store.sqlite import SUCCEEDED
from tests.faults.world import fault_config, lab_world, restart_apiserver, scale, until

RESTARTS = scale(1, 3)
DOWN = scale(1.5, 3.0)  # seconds the API server is away each time
DRAIN_TIMEOUT = scale(5.0, 20.0)
# A lease grace longer than the API's downtime: the kubelets renew as soon as it is back.
TIMINGS = LabTimings(
    lease_grace=DOWN + 2.5, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3
)
BOUND = 60.0


def config(kubeconfig: Path) -> dict[str, Any]:
    return fault_config(kubeconfig, remediation={"drainTimeout": f"{DRAIN_TIMEOUT}s"})


async def test_apiserver_restart_mid_drain(tmp_path: Path) -> None:
    async with lab_world(tmp_path, timings=TIMINGS, config=config) as world:
        api = world.harness.api
        assert api is not None
        target, *others = world.harness.pool_nodes("workers")
        for i in range(3):
            api.add_pod("shop", f"web-{i}", target, labels={"app": "web"}, owner_kind="ReplicaSet")
        for i, node in enumerate(others):
            api.add_pod("shop", f"web-x{i}", node, labels={"app": "web"}, owner_kind="ReplicaSet")
            api.add_pod(
                "shop", f"other-{i}", node, labels={"app": "other"}, owner_kind="ReplicaSet"
            )
        api.add_pdb("shop", "web", {"app": "web"}, max_unavailable=0)
        elsewhere = {
            p["metadata"]["name"]: p["metadata"]["uid"] for n in others for p in api.pods_on(n)
        }

        daemon = await world.daemon()
        await daemon.ready()
        store = world.store()
        try:
            world.harness.crash(target)

            def draining() -> bool:
                wfs = store.workflows(node=target)
                return bool(wfs) and wfs[0].step == "drain"

            await until(draining, BOUND, "the drain to start", tail=daemon.tail)
            await until(
                lambda: daemon.logged("remediation.drain_blocked"),
                BOUND,
                "an eviction refused by the budget",
                tail=daemon.tail,
            )
            restarts = []
            for _ in range(RESTARTS):
                assert draining(), "the drain ended before the API server restarted"
                await restart_apiserver(world.harness, DOWN)
                restarts.append(store.workflows(node=target)[0].step)
                await asyncio.sleep(1.0)

            [wf] = store.workflows(node=target)
            await until(
                lambda: (w := store.workflow(wf.id)) is not None and w.state != "running",
                BOUND + DRAIN_TIMEOUT,
                "the workflow to finish",
                tail=daemon.tail,
            )
            done = store.workflow(wf.id)
            assert done is not None
            summary = {
                "api_restarts": len(restarts),
                "down_s": DOWN,
                "steps_at_restart": restarts,
                "workflow": done.state,
                "error": done.error,
                "evictions_asked": api.request_count("POST", "pods/eviction"),
            }
            print(json.dumps(summary, indent=2))
            assert done.state == SUCCEEDED, (summary, daemon.tail())
            assert daemon.running, daemon.tail()

            # Nothing but the target's pods was touched: every pod elsewhere is the same pod,
            # still there and not being deleted.
            now = {p["metadata"]["name"]: p for n in others for p in api.pods_on(n)}
            for name, uid in elsewhere.items():
                assert name in now, f"{name} was deleted"
                assert now[name]["metadata"]["uid"] == uid, f"{name} was replaced"
                assert not now[name]["metadata"].get("deletionTimestamp"), f"{name} is terminating"
            await until(
                lambda: _replacement_ready(world.harness, done.replacement_name),
                BOUND,
                "the replacement Ready",
            )
            inv = await world.invariants(store)
            assert inv["ok"], inv
        finally:
            store.close()
        rc, _ = await daemon.stop()
        assert rc == 0, daemon.tail()


async def _replacement_ready(harness: LabHarness, name: str) -> bool:
    return name in await harness.ready_nodes()
