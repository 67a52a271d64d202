"""Per-cluster ownership of the MQTT stream against real mosquitto: a replica subscribes to the
heartbeats of the clusters it owns (``MqttSource(owned=...)``, ``set_clusters``), live and across
reconnects, drops (counted) what still arrives for a cluster it does not own, and hears every
cluster's observation channels (health, reboot, upgrade) for a warm view."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from healer.app.daemon import Daemon
from healer.app.replicas import Replicas
from healer.app.tuning import Tuning
from healer.clock import RealClock, VirtualClock
from healer.config import MqttConfig, parse_config
from healer.jobs.ownership import Ownership
from healer.lab.apiserver.server import FakeApiServer
from healer.model import LABEL_POOL, EventKind, NodeEvent, NodeKey, RebootRequest
from healer.sources.heartbeat import HeartbeatPolicy, HeartbeatWatcher
from healer.sources.mqtt import MqttSource
from healer.store.leases import LeaseFence, LeaseTable, StoreLeaseDB
from healer.store.sqlite import Store
from healer.telemetry.metrics import REGISTRY
from tests.plugins.mqtt import MosquittoBroker
from tests.postgres import skip_reason
from tests.test_mqtt_source import (
    PREFIX,
    WAIT,
    Harness,
    config_for,
    fast_reconnect,
    heartbeat,
    publish_raw,
)

CLUSTERS = ("a", "b")


def not_owned() -> float:
    value = REGISTRY.get_sample_value(
        "healer_events_dropped_total", {"source": "mqtt", "reason": "not_owned"}
    )
    return value or 0.0


def owner(config: MqttConfig, owned: tuple[str, ...], **kw: Any) -> Harness:
    harness = Harness(config, known_clusters=CLUSTERS)
    harness.source = MqttSource(
        config=config,
        known_clusters=CLUSTERS,
        clock=RealClock(),
        emit=harness._emit,
        on_state=harness._on_state,
        reconnect=fast_reconnect(),
        owned=owned,
        **kw,
    )
    return harness


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (a log line, a counter: nothing to wait on) for up to WAIT seconds."""
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not met in time")


def logged(
    logs: list[MutableMapping[str, Any]], match: Callable[[MutableMapping[str, Any]], bool]
) -> Callable[[], bool]:
    return lambda: any(match(e) for e in logs)


def clusters_of(harness: Harness) -> list[str]:
    return [e.cluster for e in harness.events]


def health(node: str, cluster: str) -> tuple[str, bytes]:
    return (
        f"{PREFIX}/{cluster}/{node}/health",
        b'{"v": 1, "condition": "RebootRequired", "status": "False"}',
    )


def seen(harness: Harness) -> list[tuple[str, EventKind]]:
    return [(e.cluster, e.kind) for e in harness.events]


HB, COND = EventKind.HEARTBEAT, EventKind.CONDITION


@pytest.mark.mosquitto
async def test_gaining_and_losing_a_cluster_moves_its_heartbeats(
    mosquitto: MosquittoBroker,
) -> None:
    harness = owner(config_for(mosquitto, "own-live"), owned=("b",))
    with capture_logs() as logs:
        async with harness.running():
            # Published in order: had a's heartbeat been delivered it would come first. a's
            # health (a node's observation) reaches every replica: a warm view for a takeover.
            await publish_raw(
                mosquitto.port,
                [heartbeat("n-1", "a"), health("n-1", "a"), heartbeat("n-1", "b")],
            )
            await harness.wait_events(2)
            assert seen(harness) == [("a", COND), ("b", HB)]

            harness.source.set_clusters({"a", "b"})  # gains a
            await until(logged(logs, lambda e: e.get("topic") == f"{PREFIX}/a/+/heartbeat"))
            await publish_raw(mosquitto.port, [heartbeat("n-2", "a")])
            await harness.wait_events(3)
            assert seen(harness)[2:] == [("a", HB)]

            harness.source.set_clusters({"b"})  # loses a
            await until(logged(logs, lambda e: e["event"] == "mqtt.unsubscribed"))
            await publish_raw(mosquitto.port, [heartbeat("n-3", "a"), heartbeat("n-3", "b")])
            await harness.wait_events(4)
            assert seen(harness)[3:] == [("b", HB)]
    gone = [e["topics"] for e in logs if e["event"] == "mqtt.unsubscribed"]
    assert [f"{PREFIX}/a/+/heartbeat"] in gone


@pytest.mark.mosquitto
async def test_reconnect_keeps_the_owned_set_and_drops_leftovers(
    mosquitto_restartable: MosquittoBroker,
) -> None:
    broker = mosquitto_restartable
    config = config_for(broker, "own-reconnect")
    # A previous run of this client id subscribed to the whole stream (one daemon, before
    # --replicas); its persistent session keeps that subscription and queues for it.
    async with Harness(config, known_clusters=CLUSTERS).running():
        pass
    await publish_raw(broker.port, [heartbeat("queued", "b")])
    dropped = not_owned()
    harness = owner(config, owned=("a",))
    async with harness.running():
        # The queued heartbeat for b arrives and is dropped, counted; the leftover whole-stream
        # subscription is gone, so a new one for b does not arrive at all.
        await until(lambda: not_owned() >= dropped + 1)
        await asyncio.to_thread(broker.restart)
        await harness.wait(lambda: any(s.reason == "connection_lost" for s in harness.states))
        await harness.wait_subscribed()
        await publish_raw(broker.port, [heartbeat("fresh", "b"), heartbeat("fresh", "a")])
        await harness.wait_events(1)
        await asyncio.sleep(0.2)  # time for a stray "b" to show up, were it subscribed
    assert [(e.cluster, e.node) for e in harness.events] == [("a", "fresh")]
    assert not_owned() == dropped + 1
    assert harness.source.subscriptions()[-1] == f"{PREFIX}/a/+/heartbeat"


@pytest.mark.mosquitto
async def test_the_arbiter_hears_reboots_of_every_cluster(mosquitto: MosquittoBroker) -> None:
    requests: list[RebootRequest] = []

    async def on_request(request: RebootRequest) -> None:
        requests.append(request)

    harness = owner(
        config_for(mosquitto, "own-arbiter"), owned=("a",), on_reboot_request=on_request
    )
    assert harness.source.subscriptions() == [
        f"{PREFIX}/+/+/health",
        f"{PREFIX}/+/+/reboot",
        f"{PREFIX}/+/+/upgrade",
        f"{PREFIX}/+/+/reboot-request",
        f"{PREFIX}/a/+/heartbeat",
    ]
    async with harness.running():
        await publish_raw(
            mosquitto.port,
            [
                heartbeat("n-1", "b"),  # not owned: never subscribed
                (f"{PREFIX}/b/n-1/reboot-request", b'{"v": 1, "id": "r1", "reason": "kernel"}'),
                (f"{PREFIX}/b/n-1/reboot", b'{"v": 1, "event": "booted"}'),
                heartbeat("n-1", "a"),
            ],
        )
        await harness.wait_events(2)
        await until(lambda: bool(requests))
    assert seen(harness) == [("b", EventKind.BOOTED), ("a", HB)]
    assert [(r.cluster, r.node) for r in requests] == [("b", "n-1")]


def test_without_ownership_nothing_changes() -> None:
    async def emit(event: object) -> None:
        pass

    source = MqttSource(
        config=MqttConfig(topicPrefix="p/", sharedGroup="g"),
        known_clusters=CLUSTERS,
        clock=RealClock(),
        emit=emit,
    )
    assert source.owned is None
    assert source.subscriptions() == ["$share/g/p/+/+/+"]
    with pytest.raises(ValueError, match="owned"):
        source.set_clusters({"a"})
    owned = MqttSource(
        config=MqttConfig(topicPrefix="p/", sharedGroup="g"),
        known_clusters=CLUSTERS,
        clock=RealClock(),
        emit=emit,
        owned=(),
    )
    view = ["p/+/+/health", "p/+/+/reboot", "p/+/+/upgrade"]
    assert owned.subscriptions() == view  # a shared group is not used under ownership
    owned.set_clusters(["b", "a"])
    assert owned.subscriptions() == [*view, "p/a/+/heartbeat", "p/b/+/heartbeat"]


# -- the heartbeat watcher follows the owned set (virtual time) -----------------------------


async def test_heartbeat_watcher_watches_only_owned_clusters() -> None:
    clock = VirtualClock(start=1000.0)
    events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    policy = HeartbeatPolicy(interval=10.0, miss_after=3)
    a1, b1 = NodeKey("a", "n-1"), NodeKey("b", "n-1")
    watcher = HeartbeatWatcher(
        clock=clock, emit=emit, policy=policy, seed=[(a1, False), (b1, False)], owned=("a",)
    )
    assert watcher.watching() == {a1: False}  # b is another replica's: its silence says nothing
    task = asyncio.create_task(watcher.run())
    try:
        await clock.advance(20.0)
        # Now b is gained and a lost: a is forgotten unreported, b gets a full window from now.
        watcher.set_clusters({"b"}, [(b1, False)])
        assert watcher.watching() == {b1: False}
        await clock.advance(29.0)
        assert events == []
        await clock.advance(1.0)
        assert [(e.cluster, e.status, e.at) for e in events] == [("b", "True", 1050.0)]
    finally:
        task.cancel()


# -- the ownership job tells the MQTT side what it owns -------------------------------------


class _Runner:
    async def abandon(self, cluster: str) -> None:
        pass

    async def resume_all(self, cluster: str | None = None) -> int:
        return 0


class _Planner:
    def watch_ownership(self, owns: Callable[[str], bool]) -> None:
        pass

    async def consider(self, cluster: str) -> None:
        pass


class _Scheduler:
    def every(self, name: str, seconds: float, job: Any, **kw: Any) -> None:
        pass


async def test_replicas_report_the_owned_set_on_every_change(tmp_path: Path) -> None:
    clock = VirtualClock(start=0.0)
    stores = [Store(tmp_path / "healer.sqlite") for _ in range(2)]
    seen: dict[str, list[frozenset[str]]] = {"r1": [], "r2": []}

    def replica(me: str, store: Store) -> Ownership:
        table = LeaseTable(StoreLeaseDB(store))
        fence = LeaseFence(table, me=me, now=clock.wall, timeline=clock.now, margin=5.0)
        replicas = Replicas(fence=fence, table=table, lease_seconds=15.0, now=clock.wall)
        return replicas.start(
            clusters=lambda: ["a", "b"],
            runner=_Runner(),  # type: ignore[arg-type]
            planner=_Planner(),  # type: ignore[arg-type]
            scheduler=_Scheduler(),  # type: ignore[arg-type]
            on_owned=seen[me].append,
        )

    try:
        r1, r2 = replica("r1", stores[0]), replica("r2", stores[1])
        await r1.run_once()
        assert seen["r1"][-1] == {"a", "b"}
        clock.step(5)
        await r2.run_once()
        await r1.run_once()  # share 1: r1 lets one go
        await r2.run_once()  # and r2 takes it
        assert len(seen["r1"][-1]) == 1 and len(seen["r2"][-1]) == 1
        assert seen["r1"][-1] | seen["r2"][-1] == {"a", "b"}
    finally:
        for store in stores:
            store.close()


# -- the daemon on PostgreSQL: its MQTT subscriptions follow its leases ---------------------


@pytest.mark.mosquitto
@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
async def test_daemon_subscribes_to_the_clusters_it_owns(
    fake_api: FakeApiServer,
    kubeconfig: Path,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    db = request.getfixturevalue("pg_database")
    secret = tmp_path / "pg-password"
    secret.write_text(db.password)
    secret.chmod(0o600)
    fake_api.add_node("w-1", {LABEL_POOL: "workers"})
    config = parse_config(
        {
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "clientId": "replica-a"},
            "state": {"url": db.url, "password": {"file": str(secret)}, "leaseSeconds": "3s"},
            "clusters": [
                {
                    "name": "lab",
                    "kubeconfig": str(kubeconfig),
                    "provider": {"plugin": "lab"},
                    "pools": [{"name": "workers", "size": 1}],
                }
            ],
        }
    )
    tuning = Tuning(recheck_interval=0.2, startup_timeout=10.0)
    daemon = Daemon(config, state_dir=tmp_path / "state", tuning=tuning, replica="replica-a")
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.ready)
        source = daemon.mqtt_source
        assert source is not None and source.owned == {"lab"}
        # Its own cluster's heartbeats; every cluster's other channels (rebootArbiter is on by
        # default, so reboot requests too).
        assert source.subscriptions()[3:] == [
            f"{PREFIX}/+/+/reboot-request",
            f"{PREFIX}/lab/+/heartbeat",
        ]
        assert daemon.heartbeats is not None  # an owner hears all of its clusters' heartbeats
        await until(lambda: daemon.tracker is not None and daemon.tracker.knows("lab", "w-1"))
        await publish_raw(mosquitto.port, [heartbeat("w-1", "lab")])
        await until(lambda: NodeKey("lab", "w-1") in daemon.heartbeats.watching())  # type: ignore[union-attr]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):
                await task
