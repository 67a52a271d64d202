"""An unreachable Kubernetes API freezes that cluster's decisions, and they resume when it is back.

The real pieces: the fake API server, the watch source over HTTP, the health tracker and the
planner; only the workflow start is a recorder. Everything runs on one virtual clock, so the
node's threshold expires while the API is unreachable without any real waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from healer.clock import VirtualClock
from healer.health.tracker import HealthTracker
from healer.kube.client import KubeClient
from healer.lab.apiserver.server import FakeApiServer
from healer.model import LABEL_POOL, Health, NodeKey
from healer.planner.planner import Planner
from healer.sources.kube_watch import KubeWatchSource
from healer.store.sqlite import Store, WorkflowRecord
from tests.helpers import lab_like_config

Eventually = Callable[..., Awaitable[None]]
W1 = NodeKey("lab", "w-1")


async def test_unreachable_api_freezes_decisions_until_it_is_back(
    fake_api_virtual: FakeApiServer,
    kube_virtual: KubeClient,
    virtual_clock: VirtualClock,
    tmp_path: Path,
    eventually: Eventually,
) -> None:
    clock, api = virtual_clock, fake_api_virtual
    config = lab_like_config()  # Ready=False for 5 s is unhealthy
    store = Store.open(tmp_path)
    started: list[WorkflowRecord] = []

    async def start(wf: WorkflowRecord) -> None:
        started.append(wf)

    async def on_change(obs, verdict, previous):  # type: ignore[no-untyped-def]
        await planner.on_health_change(obs, verdict, previous)

    tracker = HealthTracker(config=config, store=store, clock=clock, on_change=on_change)
    planner = Planner(config=config, store=store, clock=clock, tracker=tracker, start=start)
    source = KubeWatchSource(
        cluster="lab",
        client=kube_virtual,
        clock=clock,
        emit=tracker.handle,
        on_availability=lambda up, why: planner.on_api_availability("lab", up, why),
        backoff_max=2.0,
        rng=random.Random(3),
    )
    for i in range(1, 6):
        api.add_node(f"w-{i}", {LABEL_POOL: "workers"})
    tasks = [asyncio.create_task(tracker.run()), asyncio.create_task(source.run())]
    try:
        await eventually(lambda: len(tracker.nodes("lab")) == 5)
        await eventually(lambda: api.request_count("WATCH", "nodes") >= 1)
        assert await kube_virtual.set_node_ready(
            "w-1", "False", "KubeletNotReady", "PLEG is not healthy"
        )
        await eventually(lambda: tracker.verdict(W1).health is Health.PENDING)  # type: ignore[union-attr]

        api.set_unreachable(True)
        await eventually(lambda: planner.frozen_reason("lab") is not None)
        frozen = store.audit_log(event="planner.frozen")
        assert [(e.cluster, e.reason) for e in frozen] == [("lab", "ApiUnreachable")]
        assert "503" in frozen[0].message

        # Past the threshold while frozen: the node is judged unhealthy, yet nothing is done.
        await clock.advance(6.0)
        assert tracker.verdict(W1).health is Health.UNHEALTHY  # type: ignore[union-attr]
        await clock.advance(10.0)
        assert started == []
        assert store.audit_log(event="remediation.started") == []

        api.set_unreachable(False)
        for _ in range(20):  # the source retries on its (virtual) backoff
            if planner.frozen_reason("lab") is None:
                break
            await clock.advance(1.0)
            await asyncio.sleep(0.02)
        await eventually(lambda: planner.frozen_reason("lab") is None)
        await eventually(lambda: len(started) == 1)
        assert started[0].node == "w-1"
        events = [
            e.event
            for e in store.audit_log(cluster="lab")
            if e.event.startswith(("planner.", "remediation."))
        ]
        assert events == ["planner.frozen", "planner.unfrozen", "remediation.started"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()
