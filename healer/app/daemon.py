"""The daemon: builds every part from the configuration and runs them in one TaskGroup.

Events flow one way: sources -> queue -> health tracker -> planner (guards) -> workflow runner ->
provider plugins. Nothing here decides anything; it only wires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from healer.app.limits import raise_nofile_limit
from healer.app.replicas import Replicas
from healer.app.status import DaemonStatus
from healer.app.tuning import Tuning
from healer.app.wiring import Core, start_mqtt, start_webhook
from healer.clock import Clock, RealClock
from healer.cloud.machines import Provider
from healer.cloud.metered import MeteredProvider
from healer.cloud.registry import load_provider
from healer.config import ClusterConfig, HealerConfig, load_config
from healer.config.reload import field_paths, restart_required
from healer.errors import ConfigError, StateUnwritable
from healer.etcd import EtcdClient
from healer.health.tracker import Change, HealthTracker
from healer.jobs.manual import RequestDesk
from healer.jobs.ownership import Ownership
from healer.jobs.periodic import PeriodicJobs
from healer.jobs.prometheus import PrometheusPoll
from healer.jobs.scheduler import JobScheduler
from healer.jobs.systemd import Notifier, Supervisor
from healer.kube.client import KubeClient
from healer.model import Health, NodeEvent, NodeKey
from healer.planner.alert_blocks import AlertBlocks
from healer.planner.planner import Planner
from healer.planner.pulled_alerts import PulledAlerts
from healer.provisioning.etcd_access import etcd_client
from healer.provisioning.keydelivery import KeyDelivery
from healer.provisioning.userdata import UserDataBuilder
from healer.sources.events import EventQueue
from healer.sources.kube_watch import KubeWatchSource
from healer.sources.reconnect import first_failure
from healer.store.backends import open_store
from healer.store.recorder import Recorder
from healer.store.sqlite import (
    FAILED,
    SUCCEEDED,
    Store,
    WorkflowRecord,
)
from healer.store.writable import keep_trying
from healer.telemetry import metrics
from healer.telemetry.server import MetricsServer
from healer.workflow.etcd_steps import EtcdOps
from healer.workflow.runner import WorkflowRunner

log = structlog.get_logger("healer.app")

# State changes waiting for the tracker before the sources are held back; heartbeats are
# coalesced per node on top of these (healer/sources/events.py).
EVENT_QUEUE_SIZE = 10_000


class Daemon(DaemonStatus):
    """The daemon: opens the state, builds every part, runs them until stopped."""

    def __init__(
        self,
        config: HealerConfig,
        *,
        state_dir: Path,
        clock: Clock | None = None,
        dry_run: bool = False,
        tuning: Tuning | None = None,
        on_ready: Callable[[], Awaitable[None]] | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
        etcd: Mapping[str, EtcdOps] | None = None,
        replica: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier(None)
        self.state_dir = state_dir
        # The timeline continues from the state directory's checkpoint (healer/clock.py).
        self.clock = clock or RealClock.resume(state_dir)
        self.dry_run = dry_run or config.dry_run
        self.tuning = tuning or Tuning()
        self._on_ready = on_ready
        self.store: Store | None = None
        self.tracker: HealthTracker | None = None
        self.planner: Planner | None = None
        self.runner: WorkflowRunner | None = None
        self.kube: dict[str, KubeClient] = {}
        # etcd per cluster whose etcd.mode is not off (healer.provisioning.etcd_access), or
        # as given (the lab's fake etcd, when it has no etcd binary).
        self.etcd: dict[str, EtcdOps] = dict(etcd or {})
        self._etcd_clients: list[EtcdClient] = []
        # healer run --replicas (healer.app.replicas): this replica's name (None: host-pid) and,
        # on PostgreSQL, its fence and ownership job.
        self.replica = replica
        self.replicas: Replicas | None = None
        self.ownership: Ownership | None = None
        self.providers: dict[str, Provider] = {}
        self._events = EventQueue(limit=EVENT_QUEUE_SIZE)
        self.mqtt_source: Any = None
        # Blocking alerts (webhook.blockingAlerts): rows of the state store, loaded by run().
        self.blocks = AlertBlocks()
        self.pulled = PulledAlerts()
        self.prometheus: PrometheusPoll | None = None
        self.webhook: Any = None
        self.heartbeats: Any = None
        self.reboot_arbiter: Any = None
        self.reboots: Any = None  # healer.workflow.reboot.RebootWorkflows
        self.scheduler: JobScheduler | None = None
        self.jobs: PeriodicJobs | None = None
        self.requests: RequestDesk | None = None
        self.metrics_server: MetricsServer | None = None
        self.supervisor: Supervisor | None = None
        self.ready = False
        self.kube_sources: dict[str, KubeWatchSource] = {}
        self._api_down: dict[str, str] = {}
        self._busy_since: float | None = None  # monotonic: the consumer took a batch then
        self._untracked: dict[str, float] = {}  # workflow id -> monotonic time first seen lost
        self._reload_lock = asyncio.Lock()
        self._started_at = self.clock.now()
        self._clock_offset = self.clock.wall() - self.clock.now()  # to notice steps

    async def emit(self, event: NodeEvent) -> None:
        await self._events.put(event)

    async def _consume(self) -> None:
        while True:
            await self._consume_batch()

    async def _consume_batch(self) -> None:
        """Take everything waiting (up to ``Tuning.event_batch``) and fold it as one batch:
        one store transaction, then one plan per cluster whose health changed
        (:meth:`HealthTracker.handle_batch`); then, if more is waiting, a turn of the event
        loop, so /healthz, the MQTT acknowledgements and the timers keep running through a
        flood (with nothing waiting, the wait for the next batch is that turn)."""
        assert self.tracker is not None
        events = await self._events.get_batch(self.tuning.event_batch)
        self._busy_since = time.monotonic()
        try:
            await self.tracker.handle_batch(events)
        except StateUnwritable as exc:
            # Logged and counted once per episode by the store; decisions are frozen.
            log.debug("health.event_unsaved", events=len(events), error=exc)
        except Exception:
            log.exception("health.event_failed", events=len(events))
        finally:
            self._busy_since = None
        if not self._events.empty():
            await asyncio.sleep(0)

    async def _health_changed(self, changes: list[Change]) -> None:
        """Once per batch of changes (HealthTracker ``on_changes``): the gauges and the plan
        of each cluster concerned, once each."""
        assert self.planner is not None
        for cluster in dict.fromkeys(obs.cluster for obs, _, _ in changes):
            self._refresh_nodes(cluster)
        await self.planner.on_health_changes(changes)

    async def _synced(self, cluster: str) -> None:
        """A cluster's list is in whole (HealthTracker ``on_synced``): decide there now."""
        assert self.planner is not None
        self._refresh_nodes(cluster)
        await self.planner.consider(cluster)

    def flush_heartbeats(self) -> int:
        """Write the heartbeats that changed no verdict, held back since the last flush."""
        return self.tracker.flush_heartbeats() if self.tracker is not None else 0

    async def _flush_heartbeats(self) -> None:
        self.flush_heartbeats()

    async def _workflow_finished(self, wf: WorkflowRecord) -> None:
        assert self.tracker is not None and self.planner is not None
        key = NodeKey(wf.cluster, wf.node)
        if wf.state in (SUCCEEDED, FAILED):
            metrics.REMEDIATIONS.labels(wf.cluster, wf.state).inc()
        # A replaced node is gone for good (healer deleted it), whether or not its deletion
        # event was seen before a restart.
        if wf.state == SUCCEEDED and self.tracker.observation(key) is not None:
            self.tracker.forget(key)
            self._refresh_nodes(wf.cluster)
        await self.planner.on_workflow_finished(wf)

    async def _state_writability(self, problem: StateUnwritable | None) -> None:
        """The state database stopped taking writes, or takes them again (healer.store.writable):
        decisions freeze, or the records it missed are written and the planner looks again."""
        assert self.tracker is not None and self.planner is not None
        if problem is None:
            self.tracker.save_unsaved()
            self.blocks.save_unsaved()
        await self.planner.on_state_writability(problem)

    def _open_provider(self, cluster: ClusterConfig) -> Provider:
        provider = load_provider(
            cluster.provider.plugin,
            cluster=cluster.name,
            options=cluster.provider.options,
            credentials=cluster.provider.credentials,
            state_dir=self.state_dir,
        )
        return MeteredProvider(provider)

    async def _open_cluster(self, cluster: ClusterConfig) -> None:
        self.providers[cluster.name] = self._open_provider(cluster)
        self.kube[cluster.name] = await KubeClient.from_kubeconfig(
            cluster.kubeconfig, cluster.context, clock=self.clock
        )
        if cluster.name not in self.etcd:
            etcd = etcd_client(self.state_dir, cluster, kube=self.kube[cluster.name])
            if etcd is not None:
                self.etcd[cluster.name] = etcd
                self._etcd_clients.append(etcd)

    async def run(self) -> None:
        raise_nofile_limit()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._checkpoint_clock(started=True)
        self.store = store = open_store(self.state_dir, self.config.state)
        # Its retry loop (keep_trying, below) ends any episode of a state database that takes no
        # writes: from here on, audit rows wait for it rather than fail (healer.store.writable).
        store.writes.retrying = True
        self.blocks = AlertBlocks(store=store)
        self._say_first_start(store)
        try:
            # Concurrently (a kubeconfig's exec credential plugin waits on a process); the
            # first failure, a ConfigError say, stops the rest and is raised as it is.
            if self.config.clusters:
                await first_failure(*(self._open_cluster(c) for c in self.config.clusters))
            await self._run_parts(store)
        finally:
            for etcd in self._etcd_clients:
                with contextlib.suppress(Exception):
                    await etcd.close()
            for client in self.kube.values():
                with contextlib.suppress(Exception):
                    await client.close()
            for provider in self.providers.values():
                with contextlib.suppress(Exception):
                    await provider.close()
            store.close()
            self._checkpoint_clock()

    async def _run_parts(self, store: Store) -> None:
        # One renderer for first machines and replacements: hardening, agent, kubeadm join.
        user_data = UserDataBuilder(self.state_dir)
        self.tracker = tracker = HealthTracker(
            config=self.config,
            store=store,
            clock=self.clock,
            on_changes=self._health_changed,
            on_synced=self._synced,
            lazy_heartbeats=True,
        )
        self.replicas = replicas = Replicas.build(
            store, self.config, self.clock, replica=self.replica
        )
        self.runner = runner = WorkflowRunner(
            config=self.config,
            store=store,
            clock=self.clock,
            kube=self.kube,
            providers=self.providers,
            user_data=user_data,
            on_finished=self._workflow_finished,
            join_poll_interval=self.tuning.join_poll_interval,
            etcd=self.etcd,
            deliver_keys=KeyDelivery(self.state_dir, clock=self.clock).deliver_to,
            fence=replicas.fence if replicas is not None else None,
        )
        self.planner = planner = Planner(
            config=self.config,
            store=store,
            clock=self.clock,
            tracker=tracker,
            start=runner.start,
            dry_run=self.dry_run,
            blocks=self.blocks,
        )
        planner.watch_etcd(self.etcd)
        self.scheduler = scheduler = JobScheduler()
        self.jobs = PeriodicJobs(
            scheduler=scheduler,
            state_dir=self.state_dir,
            config=self.config,
            store=store,
            clock=self.clock,
            tracker=tracker,
            planner=planner,
            runner=runner,
            providers=self.providers,
            kube=self.kube,
            user_data=user_data,
            dry_run=self.dry_run,
        )
        self.requests = RequestDesk(store=store, planner=planner, clock=self.clock)
        # What no event announces: the CLI's pauses, resets and requests in the shared database.
        scheduler.every("recheck", self.tuning.recheck_interval, planner.recheck)
        scheduler.every("operator-requests", self.tuning.request_poll, self.requests.serve_pending)
        # Heartbeats that changed no verdict, written together (a crash loses at most this
        # interval of them: docs/operations.md).
        scheduler.every("heartbeats", self.tuning.heartbeat_flush_interval, self._flush_heartbeats)
        # reboots.prometheus: blocking alerts pulled for the reboot arbiter
        self.prometheus = PrometheusPoll(config=self.config, clock=self.clock, pulled=self.pulled)
        self.prometheus.register(scheduler)
        self.supervisor = Supervisor(
            self,
            self.notifier,
            clock=self.clock,
            status_interval=self.tuning.status_interval,
            on_tick=self._publish_status,
            on_liveness=lambda problems: metrics.LIVENESS_PROBLEMS.set(len(problems)),
        )
        metrics.RELOAD_OK.set(1)
        metrics.RELOAD_TIME.set(self.clock.wall())
        for cluster in self.config.clusters:
            self._refresh_nodes(cluster.name)
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
                probes = keep_trying(
                    store,
                    self.clock,
                    on_change=self._state_writability,
                    first=self.tuning.state_probe_first,
                    cap=self.tuning.state_probe_cap,
                )
                tg.create_task(probes, name="state-writes")
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
                    self.kube_sources[cluster.name] = source
                    tg.create_task(source.run(), name=f"kube-watch-{cluster.name}")
                core = Core(
                    self.config,
                    self.clock,
                    self.emit,
                    tracker,
                    store,
                    planner,
                    self.blocks,
                    # dryRun touches no node: no cordon or drain before a reboot either.
                    kube={} if self.dry_run else self.kube,
                    pulled=self.pulled,
                )
                mqtt = None
                if self.config.mqtt is not None:
                    # With ownership, subscribe to the clusters owned (none until the first
                    # round below), not to the whole stream (docs/state-backends.md).
                    mqtt = start_mqtt(tg, core, owned=() if replicas is not None else None)
                    self.mqtt_source = mqtt.source
                    self.heartbeats = mqtt.heartbeats
                    self.reboot_arbiter = mqtt.arbiter
                    self.reboots = mqtt.reboots
                if self.config.webhook is not None:
                    self.webhook = start_webhook(tg, core, health=self.healthz)
                if replicas is not None:
                    self.ownership = replicas.start(
                        clusters=lambda: [c.name for c in self.config.clusters],
                        runner=runner,
                        planner=planner,
                        scheduler=scheduler,
                        on_owned=mqtt.set_clusters if mqtt is not None else None,
                    )
                    await self.ownership.run_once()  # the first leases, before resuming
                resumed = await runner.resume_all()
                scheduler.start()
                if self.config.metrics is not None:
                    host, port = self.config.metrics.listen
                    self.metrics_server = MetricsServer(host=host, port=port, health=self.healthz)
                    await self.metrics_server.start()
                tg.create_task(self.supervisor.run(), name="supervisor")
                waiting = await self._wait_for_sources()
                self.ready = True
                metrics.READY.set(1)
                log.info("daemon.ready", resumed_workflows=resumed, not_connected=waiting)
                self.notifier.ready(self.status_line())
                self.supervisor.publish_status()
                if self._on_ready is not None:
                    await self._on_ready()
        finally:
            self.ready = False
            metrics.READY.set(0)
            scheduler.shutdown()
            self.flush_heartbeats()
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            if self.reboots is not None:
                await self.reboots.stop()
            await runner.stop()
            if self.ownership is not None:
                await self.ownership.release_all()

    def _say_first_start(self, store: Store) -> None:
        """No state, an empty or a foreign database: say so (log and audit), decide nothing."""
        first = store.first_start
        if first is None:
            return
        moved_aside = str(first.moved_to) if first.moved_to else None
        Recorder(store, clock=self.clock, log=log).record(
            "state.first_start",
            cluster="*",
            reason=first.reason,
            message=first.message,
            evidence={"moved_aside": moved_aside},
            level="warning",
            state_dir=str(self.state_dir),
            moved_aside=moved_aside,
        )

    def _remembered_nodes(self, cluster: str) -> Callable[[], list[str]]:
        def names() -> list[str]:
            assert self.tracker is not None
            return [obs.node for obs, _ in self.tracker.nodes(cluster) if obs.exists]

        return names

    def _availability_hook(self, cluster: str) -> Callable[[bool, str], Awaitable[None]]:
        async def hook(available: bool, reason: str) -> None:
            assert self.planner is not None
            if available:
                self._api_down.pop(cluster, None)
            else:
                self._api_down[cluster] = reason
                # Stale until the next list is folded in whole (the planner waits for it).
                if self.tracker is not None:
                    self.tracker.unsync(cluster, reason)
            await self.planner.on_api_availability(cluster, available, reason)

        return hook

    async def _wait_for_sources(self) -> list[str]:
        """Wait until every source has connected (the first list of each cluster's API is in,
        the MQTT subscription is up), at most ``startup_timeout``. Returns those still not
        connected: the daemon then reports READY anyway, saying so in its status, because a
        service that never starts while one of several clusters is down helps nobody; the
        planner decides nothing for a cluster whose API it cannot see."""
        deadline = time.monotonic() + self.tuning.startup_timeout
        said: list[str] = []
        while True:
            waiting = self._unconnected()
            if not waiting or time.monotonic() >= deadline:
                if waiting:
                    log.warning("daemon.sources_not_connected", sources=waiting)
                return waiting
            if waiting != said:
                self.notifier.status("starting: waiting for " + ", ".join(waiting))
                said = waiting
            await asyncio.sleep(0.1)

    def reconfigure(self, config: HealerConfig) -> None:
        """Swap in a validated configuration (see :mod:`healer.config.reload` for what may change).

        In-flight workflows keep the cluster settings they started with; new decisions, new
        thresholds and new pools use ``config`` from here on.
        """
        self.config = config
        parts = (self.tracker, self.planner, self.runner, self.jobs)
        for part in (*parts, self.reboot_arbiter, self.reboots):
            if part is not None:
                part.reconfigure(config)
        if self.prometheus is not None:
            self.prometheus.reconfigure(config, self.scheduler)
        if self.webhook is not None:
            self.webhook.reload_secrets()  # read once per start and reload, never per request
        for cluster in config.clusters:
            self._refresh_nodes(cluster.name)

    async def reload(self) -> bool:
        """SIGHUP: re-read the configuration file; apply it whole or not at all."""
        async with self._reload_lock:
            self.notifier.reloading()
            path = self.config_path
            try:
                if path is None:
                    raise ConfigError("no configuration file to reload from")
                new = load_config(path)
                fields = restart_required(self.config, new)
                if fields:
                    raise ConfigError(
                        f"{path}: only a restart changes these fields (systemctl restart "
                        "healer):\n" + "\n".join(f"  {f}: changed" for f in fields)
                    )
            except ConfigError as exc:
                message = str(exc)
                # Before the store is open (a SIGHUP early in the start): the log line only.
                Recorder(self.store, clock=self.clock, log=log).record(
                    "config.reload_rejected",
                    cluster="*",
                    reason="InvalidConfig",
                    message=f"configuration reload rejected; the running configuration "
                    f"stays: {message}",
                    evidence={"fields": field_paths(message)},
                    level="error",
                    path=str(path),
                    fields=field_paths(message),
                )
                metrics.RELOAD_OK.set(0)
                self.notifier.ready(f"{self.status_line()}; last reload rejected (see log)")
                return False
            self.reconfigure(new)
            metrics.RELOAD_OK.set(1)
            metrics.RELOAD_TIME.set(self.clock.wall())
            Recorder(self.store, clock=self.clock, log=log).record(
                "config.reloaded",
                cluster="*",
                reason="Reload",
                message=f"configuration reloaded from {path}",
                path=str(path),
                clusters=[c.name for c in new.clusters],
            )
            self.notifier.ready(self.status_line())
            return True

    # -- views for the lab and tests --------------------------------------------------------
    def unhealthy(self, cluster: str) -> list[str]:
        assert self.tracker is not None
        return [o.node for o, v in self.tracker.nodes(cluster) if v.health is Health.UNHEALTHY]
