"""The composition root: builds every part from the configuration and runs them in one TaskGroup.

Events flow one way: sources -> queue -> health tracker -> planner (guards) -> workflow runner ->
provider plugins. Nothing here decides anything; it only wires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from healer.clock import Clock, RealClock
from healer.config import ClusterConfig, HealerConfig
from healer.health.tracker import HealthTracker
from healer.kube import KubeClient
from healer.model import Health, NodeEvent, NodeKey
from healer.planner.planner import Planner
from healer.provisioning.userdata import render_user_data
from healer.sources.kube_watch import KubeWatchSource
from healer.store.sqlite import SUCCEEDED, Store, WorkflowRecord
from healer.workflow.runner import WorkflowRunner
from providers import load_provider
from providers.base import Provider

log = structlog.get_logger("healer.app")

EVENT_QUEUE_SIZE = 10_000


@dataclass
class Tuning:
    """Intervals the lab shortens; production keeps the defaults."""

    recheck_interval: float = 15.0
    join_poll_interval: float = 2.0
    watch_timeout: float = 60.0
    renew_check: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


class Daemon:
    def __init__(
        self,
        config: HealerConfig,
        *,
        state_dir: Path,
        clock: Clock | None = None,
        dry_run: bool = False,
        tuning: Tuning | None = None,
        on_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.clock = clock or RealClock()
        self.dry_run = dry_run or config.dry_run
        self.tuning = tuning or Tuning()
        self._on_ready = on_ready
        self.store: Store | None = None
        self.tracker: HealthTracker | None = None
        self.planner: Planner | None = None
        self.runner: WorkflowRunner | None = None
        self.kube: dict[str, KubeClient] = {}
        self.providers: dict[str, Provider] = {}
        self._events: asyncio.Queue[NodeEvent] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self.mqtt_source: Any = None

    async def emit(self, event: NodeEvent) -> None:
        await self._events.put(event)

    async def _consume(self) -> None:
        assert self.tracker is not None
        while True:
            event = await self._events.get()
            try:
                await self.tracker.handle(event)
            except Exception:
                log.exception("health.event_failed", cluster=event.cluster, node=event.node)

    async def _workflow_finished(self, wf: WorkflowRecord) -> None:
        assert self.tracker is not None and self.planner is not None
        key = NodeKey(wf.cluster, wf.node)
        # A replaced node is gone for good (healer deleted it), whether or not its deletion
        # event was seen before a restart.
        if wf.state == SUCCEEDED and self.tracker.observation(key) is not None:
            self.tracker.forget(key)
        await self.planner.on_workflow_finished(wf)

    def _open_provider(self, cluster: ClusterConfig) -> Provider:
        return load_provider(
            cluster.provider.plugin,
            cluster=cluster.name,
            options=cluster.provider.options,
            credentials=cluster.provider.credentials,
            state_dir=self.state_dir,
        )

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = store = Store.open(self.state_dir)
        try:
            for cluster in self.config.clusters:
                self.providers[cluster.name] = self._open_provider(cluster)
                self.kube[cluster.name] = await KubeClient.from_kubeconfig(
                    cluster.kubeconfig, cluster.context
                )
            await self._run_parts(store)
        finally:
            for client in self.kube.values():
                with contextlib.suppress(Exception):
                    await client.close()
            for provider in self.providers.values():
                with contextlib.suppress(Exception):
                    await provider.close()
            store.close()

    async def _run_parts(self, store: Store) -> None:
        planner_box: list[Planner] = []

        async def on_change(obs, verdict, previous):  # type: ignore[no-untyped-def]
            await planner_box[0].on_health_change(obs, verdict, previous)

        self.tracker = tracker = HealthTracker(
            config=self.config, store=store, clock=self.clock, on_change=on_change
        )
        self.runner = runner = WorkflowRunner(
            config=self.config,
            store=store,
            clock=self.clock,
            kube=self.kube,
            providers=self.providers,
            user_data=render_user_data,
            on_finished=self._workflow_finished,
            join_poll_interval=self.tuning.join_poll_interval,
        )
        self.planner = planner = Planner(
            config=self.config,
            store=store,
            clock=self.clock,
            tracker=tracker,
            start=runner.start,
            dry_run=self.dry_run,
            recheck_interval=self.tuning.recheck_interval,
        )
        planner_box.append(planner)
        log.info(
            "daemon.starting",
            clusters=[c.name for c in self.config.clusters],
            state_dir=str(self.state_dir),
            dry_run=self.dry_run,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._consume(), name="events")
                tg.create_task(tracker.run(), name="tracker")
                for cluster in self.config.clusters:
                    source = KubeWatchSource(
                        cluster=cluster.name,
                        client=self.kube[cluster.name],
                        clock=self.clock,
                        emit=self.emit,
                        on_availability=self._availability_hook(cluster.name),
                        watch_timeout=int(self.tuning.watch_timeout),
                        remembered=self._remembered_nodes(cluster.name),
                    )
                    tg.create_task(source.run(), name=f"kube-watch-{cluster.name}")
                if self.config.mqtt is not None:
                    from healer.sources.mqtt import MqttSource

                    self.mqtt_source = MqttSource(
                        config=self.config.mqtt,
                        known_clusters=[c.name for c in self.config.clusters],
                        clock=self.clock,
                        emit=self.emit,
                        is_known_node=tracker.knows,
                    )
                    tg.create_task(self.mqtt_source.run(), name="mqtt")
                resumed = await runner.resume_all()
                tg.create_task(planner.run(), name="planner")
                log.info("daemon.ready", resumed_workflows=resumed)
                if self._on_ready is not None:
                    await self._on_ready()
        finally:
            await runner.stop()

    def _remembered_nodes(self, cluster: str) -> Callable[[], list[str]]:
        def names() -> list[str]:
            assert self.tracker is not None
            return [obs.node for obs, _ in self.tracker.nodes(cluster) if obs.exists]

        return names

    def _availability_hook(self, cluster: str) -> Callable[[bool, str], Awaitable[None]]:
        async def hook(available: bool, reason: str) -> None:
            assert self.planner is not None
            await self.planner.on_api_availability(cluster, available, reason)

        return hook

    # -- views for the lab and tests --------------------------------------------------------
    def unhealthy(self, cluster: str) -> list[str]:
        assert self.tracker is not None
        return [o.node for o, v in self.tracker.nodes(cluster) if v.health is Health.UNHEALTHY]
