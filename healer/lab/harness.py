"""The lab's world: a Kubernetes API (the HTTP fake), an MQTT broker, a cloud (the lab libcloud
driver) and simulated kubelets for every running lab machine, plus the failures you can inject.

The daemon is not part of it: `healer lab` runs a :class:`~healer.app.daemon.Daemon` beside it in the
same process, and the crash tests run the daemon as a separate process against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from healer.clock import Clock, RealClock
from healer.config import EtcdConfig, HealerConfig
from healer.kube.client import KubeClient
from healer.lab.apiserver.encryption import key_names
from healer.lab.apiserver.server import FakeApiServer
from healer.lab.broker import EmbeddedBroker
from healer.lab.etcd import FakeLabEtcd, LabEtcd, etcd_binary
from healer.lab.kubelet import SimulatedKubelet
from healer.lab.node_monitor import NodeMonitor
from healer.lab.node_monitor import discover as discover_node_monitor
from healer.model import (
    LABEL_CLUSTER,
    LABEL_CONTROL_PLANE,
    LABEL_POOL,
    LABEL_ZONE,
    TAG_CLUSTER,
    TAG_POOL,
    Role,
)
from healer.provisioning.keydelivery import LAB_MACHINES
from healer.provisioning.kubeadm.documents import ENCRYPTION_CONFIG
from healer.sources.mqtt_publish import MqttPublisher
from providers.lab.driver import LabNodeDriver

log = structlog.get_logger("healer.lab")

LAB_USER = "healer"
# The lab's failure domains. Each pool's machines are spread over them as a multi-zone node
# group would: a new machine goes to the zone holding the fewest running machines of its pool.
LAB_ZONES = ("lab-a", "lab-b", "lab-c")
# The Nodes the lab's cluster had when it last stopped (its API server keeps them in memory).
NODES_FILE = "lab-nodes.json"


@dataclass(frozen=True)
class LabTimings:
    """Seconds. Kept short so scenarios settle fast, and in proportion to production values."""

    lease_grace: float = 3.0  # node-monitor-grace-period (production: 40s)
    monitor_period: float = 0.25  # node lifecycle controller period (production: 5s)
    renew_interval: float = 0.5  # kubelet lease renewal (production: 10s)
    boot_delay: float = 1.0  # machine created -> kubelet registers
    reboot_downtime: float = 5.0  # a reboot that comes back
    fleet_poll: float = 0.2
    podgc_quarantine: float = 3.0  # a deleted node's pods -> force-deleted (production: 40s)
    # An unchanged Ready is posted again after this long (production nodeStatusReportFrequency:
    # 5 min); the lease renewals say the kubelet is alive, and a change is posted at once.
    status_report: float = 15.0


class LabCloud:
    """The lab cloud as the harness sees it: the raw machine table, not the libcloud API, so it
    still works during an injected provider outage."""

    def __init__(self, state_dir: Path) -> None:
        self.driver = LabNodeDriver(str(state_dir / "lab-cloud.sqlite"))

    def machines(self, *, include_terminated: bool = False) -> list[dict[str, Any]]:
        return [
            m
            for m in self.driver.ex_list_machines()
            if include_terminated or m["state"] != "terminated"  # libcloud NodeState values
        ]

    def power_off(self, machine_id: str) -> None:
        self.driver.ex_set_state(machine_id, "stopped")

    def set_outage(self, until: float | None) -> None:
        self.driver.ex_set_outage(until)

    def destroy_log(self) -> list[dict[str, Any]]:
        return self.driver.ex_destroy_log()


class LabHarness:
    def __init__(
        self,
        *,
        state_dir: Path,
        cluster: str = "lab",
        pool_roles: dict[str, Role] | None = None,
        timings: LabTimings | None = None,
        kubeconfig: Path | None = None,
        with_broker: bool = True,
        clock: Clock | None = None,
        node_monitor: NodeMonitor | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.cluster = cluster
        self.pool_roles = pool_roles or {}
        self.timings = timings or LabTimings()
        self.clock = clock or RealClock()
        self._external_kubeconfig = kubeconfig
        self._with_broker = with_broker
        self.api: FakeApiServer | None = None
        self.broker: EmbeddedBroker | None = None
        self.publisher: MqttPublisher | None = None
        self.kube: KubeClient | None = None
        self.cloud = LabCloud(state_dir)
        self.kubelets: dict[str, SimulatedKubelet] = {}
        self._kubelet_tasks: dict[str, asyncio.Task[None]] = {}
        self._seen_machines: set[str] = set()
        self.zones: dict[str, str] = {}  # node -> its topology.kubernetes.io/zone
        self._fleet_task: asyncio.Task[None] | None = None
        self.kubeconfig: Path = kubeconfig or state_dir / "lab-kubeconfig.yaml"
        # The cluster's node lifecycle timing, which scenarios judge detection by: the lab's
        # own, or (--kubeconfig) the real cluster's, read or given (healer.lab.node_monitor).
        self._given_node_monitor = node_monitor
        self.node_monitor = NodeMonitor(
            self.timings.lease_grace,
            self.timings.monitor_period,
            "lab",
            late_by=self.timings.monitor_period,
        )
        # The control plane's etcd: real members (etcd-server) or, without it, a fake.
        self.etcd: LabEtcd | FakeLabEtcd | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._external_kubeconfig is None:
            self.api = FakeApiServer(
                lease_grace=self.timings.lease_grace,
                monitor_period=self.timings.monitor_period,
                podgc_quarantine=self.timings.podgc_quarantine,
            )
            await self.api.start()
            self.api.write_kubeconfig(self.kubeconfig)
        self.kube = await KubeClient.from_kubeconfig(self.kubeconfig)
        if self._external_kubeconfig is not None:
            self.node_monitor = await discover_node_monitor(self.kube, self._given_node_monitor)
        await self._restore_nodes()
        if Role.CONTROL_PLANE in self.pool_roles.values():
            binary = etcd_binary()
            self.etcd = (
                LabEtcd(binary=binary, state_dir=self.state_dir, cluster=self.cluster, pool_size=3)
                if binary is not None
                else FakeLabEtcd(cluster=self.cluster)
            )
        if self._with_broker:
            self.broker = EmbeddedBroker()
            await self.broker.start()
            self.publisher = MqttPublisher(
                host="127.0.0.1",
                port=self.broker.port,
                prefix="healer/v1",
                cluster=self.cluster,
                client_id="lab-node-agents",
                username=LAB_USER,
            )
            await self.publisher.start()
        self._fleet_task = asyncio.create_task(self._fleet(), name="lab-fleet")

    async def stop(self) -> None:
        if self._fleet_task is not None:
            self._fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fleet_task
        for kubelet in self.kubelets.values():
            kubelet.stop()
        for task in self._kubelet_tasks.values():
            task.cancel()
        await asyncio.gather(*self._kubelet_tasks.values(), return_exceptions=True)
        if self.publisher is not None:
            await self.publisher.stop()
        if self.broker is not None:
            await self.broker.stop()
        if self.kube is not None:
            await self.kube.close()
        if self.etcd is not None:
            await self.etcd.stop()
        if self.api is not None:
            self._save_nodes(self.api)
            await self.api.stop()

    def daemon_config(self, config: HealerConfig) -> HealerConfig:
        """The lab config with this harness's kubeconfig and broker port filled in."""
        clusters = tuple(
            c.model_copy(update={"kubeconfig": self.kubeconfig}) for c in config.clusters
        )
        if self.etcd is not None:
            # The daemon reaches the members directly (loopback) with a client certificate it
            # mints from the lab cluster's etcd CA, as it would from the one `healer apply` made.
            # (The fake is handed to it instead: etcd_for_daemon.)
            seeds = self.etcd.seeds() if isinstance(self.etcd, LabEtcd) else ["https://fake:2379"]
            etcd = {"etcd": EtcdConfig(mode="direct", endpoints=tuple(seeds))}
            clusters = tuple(c.model_copy(update=etcd) for c in clusters)
        update: dict[str, Any] = {"clusters": clusters}
        if config.mqtt is not None:
            if self.broker is None:
                update["mqtt"] = None
            else:
                update["mqtt"] = config.mqtt.model_copy(update={"port": self.broker.port})
        return config.model_copy(update=update)

    def etcd_for_daemon(self) -> dict[str, FakeLabEtcd] | None:
        """The fake etcd, handed to the daemon as its cluster's etcd (no binary: nothing to
        connect to); None when the daemon connects to the real members itself."""
        if isinstance(self.etcd, FakeLabEtcd):
            return {self.cluster: self.etcd}
        return None

    async def _restore_nodes(self) -> None:
        """Give every machine of a saved lab state that is not running its Node back.

        The lab's API server keeps its objects in memory, but the cluster it plays keeps them in
        etcd: a machine that crashed before the lab quit still has its Node (if the Node was
        there when the lab stopped: ``lab-nodes.json``), which nobody renews any more. Registered here without a kubelet, it turns ``Ready=Unknown`` after the lease
        grace period, so the daemon sees the crash and heals it as it would have without the
        restart. Running machines get their kubelets from the fleet, which register themselves.
        A real API server (``--kubeconfig``) has kept its Nodes: nothing to restore there.
        """
        assert self.kube is not None
        if self.api is None:
            return
        try:
            kept: set[str] | None = set(json.loads(self._nodes_file.read_text()))
        except FileNotFoundError:
            kept = None  # the last lab did not stop cleanly: every machine's Node was there
        for m in self.cloud.machines():
            if m["tags"].get(TAG_CLUSTER) != self.cluster or m["state"] == "running":
                continue
            if kept is not None and m["name"] not in kept:
                continue  # its Node was deleted before the lab quit (a remediation under way)
            await self.kube.register_node(m["name"], self._labels(m))
            log.info("lab.node_restored", node=m["name"], machine_state=m["state"])

    @property
    def _nodes_file(self) -> Path:
        return self.state_dir / NODES_FILE

    def _save_nodes(self, api: FakeApiServer) -> None:
        """Remember which Nodes the cluster had when the lab stopped, for the next start."""
        names = sorted(n["metadata"]["name"] for n in api.nodes())
        tmp = self._nodes_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(names) + "\n")
            tmp.replace(self._nodes_file)
        except OSError as exc:  # the next start then restores every stopped machine's Node
            log.warning("lab.nodes_not_saved", path=str(self._nodes_file), error=str(exc))

    def running_machines(self) -> list[str]:
        """This cluster's running machines: the nodes a started lab waits to see Ready."""
        return [
            m["name"]
            for m in self.cloud.machines()
            if m["state"] == "running" and m["tags"].get(TAG_CLUSTER) == self.cluster
        ]

    # -- the fleet: a kubelet for every running lab machine ---------------------------------
    async def _fleet(self) -> None:
        while True:
            try:
                self._sync_fleet()
            except Exception:
                log.exception("lab.fleet_error")
            await self.clock.sleep(self.timings.fleet_poll)

    def _sync_fleet(self) -> None:
        machines = [
            m
            for m in self.cloud.machines(include_terminated=True)
            if m["tags"].get(TAG_CLUSTER) == self.cluster
        ]
        states = {m["name"]: (m["id"], m["state"]) for m in machines}
        self._sync_encryption(machines)
        if self.etcd is not None:
            self.etcd.sync(
                [
                    (m["name"], m["state"])
                    for m in machines
                    if self.pool_roles.get(m["tags"].get(TAG_POOL, "")) is Role.CONTROL_PLANE
                ]
            )
        for name in list(self.kubelets):
            # A machine powered off or destroyed runs no kubelet: its processes die with it,
            # even when it was only cut off from the network before. Should the machine run
            # again, it boots a new one.
            machine_id, state = states.get(name, ("", "terminated"))
            if state != "running":
                self._kubelet_gone(name, state)
                self._seen_machines.discard(machine_id)
        for m in machines:
            if m["id"] in self._seen_machines or m["state"] != "running":
                continue
            self._seen_machines.add(m["id"])
            assert self.kube is not None
            kubelet = SimulatedKubelet(
                client=self.kube,
                node=m["name"],
                labels=self._labels(m),
                clock=self.clock,
                renew_interval=self.timings.renew_interval,
                status_report_interval=self.timings.status_report,
                publish=self._publisher_for(m["name"]),
            )
            self.kubelets[m["name"]] = kubelet
            self._kubelet_tasks[m["name"]] = asyncio.create_task(
                self._boot(kubelet), name=f"kubelet-{m['name']}"
            )

    def _sync_encryption(self, machines: list[dict[str, Any]]) -> None:
        """Each running control-plane machine's API server reads the EncryptionConfiguration
        healer put on it (as with --encryption-provider-config-automatic-reload)."""
        if self.api is None:
            return
        for m in machines:
            if self.pool_roles.get(m["tags"].get(TAG_POOL, "")) is not Role.CONTROL_PLANE:
                continue
            path = self.state_dir / LAB_MACHINES / m["name"] / ENCRYPTION_CONFIG.lstrip("/")
            if m["state"] != "running":
                self.api.encryption.forget(m["name"])
                continue
            try:
                keys = key_names(yaml.safe_load(path.read_text()))
            except (OSError, yaml.YAMLError):
                continue  # not there (yet): the machine's API server has not started
            if keys:
                self.api.encryption.configure(m["name"], keys)

    def _kubelet_gone(self, node: str, machine_state: str) -> None:
        """Its machine is off or destroyed: the kubelet says nothing more, and its task ends."""
        kubelet = self.kubelets.pop(node)
        kubelet.crash()
        task = self._kubelet_tasks.pop(node, None)
        if task is not None:
            task.cancel()
        log.info("lab.kubelet_gone", node=node, machine_state=machine_state)

    def _labels(self, machine: dict[str, Any]) -> dict[str, str]:
        """The labels its kubelet registers the machine's Node with; the zone is chosen once."""
        pool = machine["tags"].get(TAG_POOL, "")
        zone = self.zones.get(machine["name"]) or self._zone_for(pool)
        self.zones[machine["name"]] = zone
        labels = {LABEL_POOL: pool, LABEL_CLUSTER: self.cluster, LABEL_ZONE: zone}
        if self.pool_roles.get(pool) is Role.CONTROL_PLANE:
            labels[LABEL_CONTROL_PLANE] = ""
        return labels

    def _zone_for(self, pool: str) -> str:
        running = {
            m["name"]
            for m in self.cloud.machines()
            if m["state"] == "running" and m["tags"].get(TAG_POOL) == pool
        }
        load = {z: 0 for z in LAB_ZONES}
        for node, zone in self.zones.items():
            if node in running:
                load[zone] += 1
        return min(LAB_ZONES, key=lambda z: (load[z], LAB_ZONES.index(z)))

    async def _boot(self, kubelet: SimulatedKubelet) -> None:
        await self.clock.sleep(self.timings.boot_delay)
        await kubelet.run()

    def _publisher_for(self, node: str):  # type: ignore[no-untyped-def]
        if self.publisher is None:
            return None
        publisher = self.publisher

        async def publish(channel: str, payload: dict[str, Any]) -> None:
            await publisher.publish(node, channel, payload)

        return publish

    # -- views ------------------------------------------------------------------------------
    def machine(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.cloud.machines() if m["name"] == name), None)

    def zone_nodes(self, zone: str) -> list[str]:
        """The running lab machines in ``zone``, every pool."""
        running = {m["name"] for m in self.cloud.machines() if m["state"] == "running"}
        return sorted(n for n, z in self.zones.items() if z == zone and n in running)

    def pool_nodes(self, pool: str) -> list[str]:
        return sorted(
            m["name"]
            for m in self.cloud.machines()
            if m["tags"].get(TAG_POOL) == pool and m["tags"].get(TAG_CLUSTER) == self.cluster
        )

    async def ready_nodes(self) -> set[str]:
        assert self.kube is not None
        nodes, _ = await self.kube.list_nodes()
        return {n.name for n in nodes if n.conditions.get("Ready", ("", 0.0))[0] == "True"}

    async def node_created(self) -> dict[str, float]:
        """Every Node's creationTimestamp (epoch seconds), as the API shows it."""
        assert self.kube is not None
        nodes, _ = await self.kube.list_nodes()
        return {n.name: n.created_at for n in nodes}

    async def wait_older_than(self, seconds: float) -> float:
        """Wait until the youngest Node was created more than ``seconds`` ago; its age then."""
        created = await self.node_created()
        youngest = max(created.values(), default=time.time())
        await asyncio.sleep(max(0.0, youngest + seconds - time.time()))
        return time.time() - youngest

    async def wait_ready(self, count: int, *, timeout: float = 30.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while True:
            ready = await self.ready_nodes()
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(ready)} of {count} lab nodes became Ready")
            await asyncio.sleep(0.2)

    # -- failures ---------------------------------------------------------------------------
    def crash(self, node: str) -> None:
        """The machine dies: powered off in the cloud, its kubelet gone."""
        m = self.machine(node)
        if m is not None:
            self.cloud.power_off(m["id"])
        if node in self.kubelets:  # none when the machine is off already
            self.kubelets[node].crash()

    def hang(self, node: str) -> None:
        """The machine hangs: the cloud says running, but nothing answers."""
        self.kubelets[node].crash()

    async def reboot(
        self, node: str, *, downtime: float | None = None, upgrade: bool = False
    ) -> None:
        await self.kubelets[node].reboot(downtime, upgrade=upgrade)

    async def bad_upgrade(self, node: str) -> None:
        """An upgrade whose reboot never comes back."""
        await self.kubelets[node].reboot(None, upgrade=True)

    def partition(self, nodes: list[str]) -> None:
        """Cut these machines off; one that is off already has no kubelet to cut off."""
        for node in nodes:
            if node in self.kubelets:
                self.kubelets[node].partition()

    def heal(self, nodes: list[str]) -> None:
        for node in nodes:
            if node in self.kubelets:
                self.kubelets[node].heal()

    async def publish_as_agent(self, node: str, channel: str, payload: dict[str, Any]) -> None:
        """Publish ``payload`` on ``node``'s ``channel`` through the lab broker, with the agents'
        credentials: what a compromised or buggy agent (or anyone on the broker) could send."""
        if self.publisher is None:
            raise RuntimeError("the lab runs without a broker; there is no MQTT to publish to")
        await self.publisher.publish(node, channel, payload)

    def provider_outage(self, seconds: float) -> None:
        self.cloud.set_outage(time.time() + seconds)

    def refuse_creates(self, seconds: float | None) -> None:
        """The cloud refuses to create machines (503, no capacity) for ``seconds``; every
        other call works. ``None`` ends it."""
        until = None if seconds is None else time.time() + seconds
        self.cloud.driver.ex_set_create_refusal(until)

    def machine_state(self, name: str) -> str | None:
        """The power state the cloud reports for the newest machine named ``name``
        (``running``, ``stopped``, ``terminated``...), or None if there never was one."""
        rows = [m for m in self.cloud.machines(include_terminated=True) if m["name"] == name]
        return rows[-1]["state"] if rows else None

    async def ask_reboot_permit(
        self, node: str, request_id: str, *, timeout: float = 10.0
    ) -> dict[str, Any] | None:
        """Ask healer for a reboot permit as the node agent does: subscribe to the node's
        ``reboot-permit`` topic, publish a ``reboot-request``, and return the answer with the
        same id (the JSON document), or None when none came within ``timeout``.

        The simulated kubelets reboot without asking; a scenario that models agents that do
        asks here first and reboots only on a grant.
        """
        import aiomqtt

        from healer.sources.mqtt_reboot import REBOOT_PERMIT, REBOOT_REQUEST, control_topic

        assert self.broker is not None, "the lab broker is off (with_broker=False)"
        prefix = "healer/v1"
        client = aiomqtt.Client(
            "127.0.0.1",
            self.broker.port,
            identifier=f"lab-agent-{node}-{request_id}"[:64],
            username=LAB_USER,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
        )
        async with client:
            await client.subscribe(control_topic(prefix, self.cluster, node, REBOOT_PERMIT), qos=1)
            payload = {"v": 1, "id": request_id, "reason": "lab: upgrade installed"}
            await client.publish(
                control_topic(prefix, self.cluster, node, REBOOT_REQUEST),
                json.dumps(payload).encode(),
                qos=1,
            )
            try:
                async with asyncio.timeout(timeout):
                    async for message in client.messages:
                        doc = json.loads(bytes(message.payload))
                        if isinstance(doc, dict) and doc.get("id") == request_id:
                            return doc
            except TimeoutError:
                return None
        return None
