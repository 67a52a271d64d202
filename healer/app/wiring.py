"""The daemon's optional sources, put together: MQTT (with the heartbeat watcher and the reboot
arbiter behind it) and the alert webhook. Each is built only when the configuration has it, so
a daemon without MQTT never imports the MQTT client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from healer.clock import Clock
from healer.config import HealerConfig
from healer.health.tracker import HealthTracker
from healer.model import NodeEvent, NodeKey, Permit, RebootRequest
from healer.planner.alert_blocks import AlertBlocks, block_handler
from healer.planner.planner import Planner
from healer.planner.pulled_alerts import PulledAlerts
from healer.planner.reboot_notices import RebootNotices
from healer.store.sqlite import Store
from healer.telemetry.notify import Notifier
from healer.telemetry.server import MetricsServer

if TYPE_CHECKING:
    from healer.planner.reboots import RebootArbiter
    from healer.sources.heartbeat import HeartbeatWatcher
    from healer.sources.mqtt import MqttSource
    from healer.sources.webhook import WebhookServer
    from healer.workflow.reboot import RebootWorkflows

Emit = Callable[[NodeEvent], Awaitable[None]]


@dataclass(frozen=True)
class Core:
    """What every source is wired to: the configuration, the clock, the event queue's ``emit``
    and the parts that decide."""

    config: HealerConfig
    clock: Clock
    emit: Emit
    tracker: HealthTracker
    store: Store
    planner: Planner
    blocks: AlertBlocks
    # Each cluster's API client (healer.kube.client.KubeClient): the reboot workflow's port.
    kube: Mapping[str, Any] = field(default_factory=dict)
    # reboots.prometheus: the alerts the daemon's poll pulled (healer.jobs.prometheus)
    pulled: PulledAlerts | None = None


@dataclass(frozen=True)
class MqttParts:
    source: MqttSource
    heartbeats: HeartbeatWatcher | None  # None in a shared subscription group
    arbiter: RebootArbiter | None  # None unless mqtt.rebootArbiter
    reboots: RebootWorkflows | None = None  # cordon and drain before each granted reboot
    # Per-cluster ownership: the clusters this replica owns now (source and heartbeat watcher).
    set_clusters: Callable[[Collection[str]], None] | None = None


def start_mqtt(
    tg: asyncio.TaskGroup, core: Core, *, owned: Collection[str] | None = None
) -> MqttParts:
    """The MQTT source, the heartbeat-absence watcher and the reboot arbiter behind it.

    ``owned`` (per-cluster ownership, docs/state-backends.md "The event stream"): hear and watch
    the heartbeats of these clusters only, and follow :attr:`MqttParts.set_clusters` from then on.
    """
    from healer.planner.reboots import RebootArbiter
    from healer.sources.heartbeat import HeartbeatPolicy, HeartbeatWatcher, seed_from
    from healer.sources.mqtt import MqttSource
    from healer.sources.mqtt_reboot import REBOOT_PERMIT, control_topic, permit_payload
    from healer.workflow.reboot import RebootWorkflows

    mqtt = core.config.mqtt
    assert mqtt is not None
    clock, tracker = core.clock, core.tracker
    observers: list[Emit] = []
    heartbeats: HeartbeatWatcher | None = None

    def seed(clusters: Collection[str]) -> list[tuple[NodeKey, bool]]:
        return seed_from(
            (obs.key, {k: v.status for k, v in obs.conditions.items()})
            for c in clusters
            for obs, _ in tracker.nodes(c)
        )

    # In a shared group this daemon sees only some of each node's heartbeats, so silence
    # would be misread as absence (docs/mqtt.md); an owner hears all of its clusters'.
    if mqtt.shared_group is None or owned is not None:
        heartbeats = HeartbeatWatcher(
            clock=clock,
            emit=core.emit,
            policy=HeartbeatPolicy(mqtt.heartbeat_interval, mqtt.heartbeat_miss_after),
            is_known_node=tracker.knows,
            seed=seed([c.name for c in core.config.clusters]),
            owned=owned,
        )
        observers.append(heartbeats.observe)
        tg.create_task(heartbeats.run(), name="heartbeats")

    async def publish_permit(cluster: str, node: str, permit: Permit) -> None:
        topic = control_topic(mqtt.topic_prefix, cluster, node, REBOOT_PERMIT)
        # On the wire times are wall-clock times: the agent compares them with its own.
        wall = clock.wall()
        if permit.expires_at is not None:
            expires = permit.expires_at + wall - clock.now()
            permit = replace(permit, expires_at=expires)
        await source.publish(topic, permit_payload(permit, now=wall))

    arbiter: RebootArbiter | None = None
    reboots: RebootWorkflows | None = None
    on_request: Callable[[RebootRequest], Awaitable[None]] | None = None
    if mqtt.reboot_arbiter:
        # Every granted reboot is a workflow: cordon, drain, hand over, wait, uncordon.
        reboots = RebootWorkflows(
            config=core.config,
            store=core.store,
            clock=clock,
            kube=core.kube,
            arbiter=lambda: arbiter,
        )

        async def find_pods(cluster: str, node: str, selectors: tuple[str, ...]) -> list[str]:
            pods: list[str] = await core.kube[cluster].pods_matching(node, selectors)
            return pods

        arbiter = RebootArbiter(
            config=core.config,
            store=core.store,
            clock=clock,
            tracker=tracker,
            publish=publish_permit,
            blocks=core.blocks,
            frozen=core.planner.frozen_reason,
            start_reboot=reboots.start if core.kube else None,
            pulled=core.pulled,
            find_pods=find_pods if core.kube else None,
            notices=RebootNotices(config=core.config, poster=Notifier(clock=clock)),
        )
        tg.create_task(reboots.resume_all(), name="reboots-resume")
        # One arbiter: the guards count the nodes holding a grant as out of service.
        core.planner.watch_reboot_grants(arbiter.granted_nodes)
        observers.append(arbiter.observe)

        async def on_request(request: RebootRequest) -> None:
            await arbiter.on_request(request)

    async def emit(event: NodeEvent) -> None:
        await core.emit(event)
        for observe in observers:
            await observe(event)

    source = MqttSource(
        config=mqtt,
        known_clusters=[c.name for c in core.config.clusters],
        clock=clock,
        emit=emit,
        is_known_node=tracker.knows,
        on_reboot_request=on_request,
        owned=owned,
    )
    tg.create_task(source.run(), name="mqtt")

    def set_clusters(clusters: Collection[str]) -> None:
        source.set_clusters(clusters)
        if heartbeats is not None:
            heartbeats.set_clusters(clusters, seed(clusters))

    return MqttParts(
        source=source,
        heartbeats=heartbeats,
        arbiter=arbiter,
        reboots=reboots,
        set_clusters=set_clusters if owned is not None else None,
    )


def start_webhook(
    tg: asyncio.TaskGroup, core: Core, *, health: Callable[[], tuple[bool, str]]
) -> WebhookServer:
    """The alert webhook; the planner side applies the block changes it passes on. Its replay
    cache is kept in the state database. ``/healthz`` and ``/metrics`` get their own listener
    (``webhook.metricsListen``) unless the daemon's ``metrics`` listener already serves them."""
    from healer.sources.webhook import WebhookServer

    webhook = core.config.webhook
    assert webhook is not None
    server = WebhookServer(
        config=webhook,
        known_clusters=[c.name for c in core.config.clusters],
        clock=core.clock,
        emit=core.emit,
        is_known_node=core.tracker.knows,
        on_block=block_handler(
            core.blocks,
            store=core.store,
            clock=core.clock,
            ttl=webhook.block_ttl,
            consider=core.planner.consider,
        ),
        replay_store=core.store,
    )
    tg.create_task(server.run(), name="webhook")
    if webhook.metrics_listen is not None and core.config.metrics is None:
        host, port = webhook.metrics_listen
        ops = MetricsServer(host=host, port=port, health=health, name="webhook.metricsListen")
        tg.create_task(ops.run(), name="webhook-ops")
    return server
