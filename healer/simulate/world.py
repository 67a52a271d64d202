"""The simulated world the real workflow and reboot arbiter act on: each cluster's Nodes (the
workflow's :class:`~healer.workflow.ports.NodeOps` port), a cloud whose create and destroy take
the history's :class:`~healer.simulate.history.Timings` (a
:class:`~healer.cloud.machines.Provider`), and the nodes' agents asking for reboots.

What healer does here comes back as the events a real cluster would send: a deleted Node is a
``node_deleted`` event, a created machine joins ``join`` seconds later as a new Ready Node, a
granted reboot is ``reboot_started`` and, ``downtime`` later, ``booted``. Times are on the
:class:`~healer.clock.VirtualClock`; nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from healer.clock import Clock
from healer.cloud.machines import Machine, MachineRequest, MachineState, tags_match
from healer.errors import ProviderError
from healer.kube.records import EvictResult, NodeInfo, PodInfo, Taint
from healer.model import (
    LABEL_CLUSTER,
    LABEL_POOL,
    LABEL_ZONE,
    TAG_POOL,
    EventKind,
    NodeEvent,
    NodeKey,
    Permit,
    RebootRequest,
)
from healer.naming import ownership_tags
from healer.planner.reboots import MAX_RETRY_AFTER
from healer.simulate.history import RebootWish, Timings

Emit = Callable[[NodeEvent], Awaitable[None]]
# The sources of the events the world makes, as the real ones would send them (the conditions'
# owners: healer.config.provenance).
SOURCE = "kube"
AGENT = "mqtt"


@dataclass
class SimNode:
    labels: dict[str, str]
    ready: str = "True"
    ready_since: float = 0.0
    exists: bool = True
    unschedulable: bool = False
    taints: list[Taint] = field(default_factory=list)


class SimWorld:
    """Every cluster's Nodes and machines, kept from the events delivered to healer."""

    def __init__(self, *, clock: Clock, timings: Timings, emit: Emit) -> None:
        self.clock = clock
        self.timings = timings
        self._emit = emit
        self.nodes: dict[NodeKey, SimNode] = {}
        self.machines: dict[tuple[str, str], Machine] = {}  # (cluster, name) -> live machine
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._create_failures_left = timings.create_failures

    @property
    def busy(self) -> bool:
        """Something is under way (a machine joining, a reboot)."""
        return any(not t.done() for t in self._tasks)

    def observe(self, event: NodeEvent) -> None:
        """Keep the Node table current with ``event`` (every event healer is given)."""
        if not event.node:
            return
        key = event.key
        node = self.nodes.get(key)
        if event.kind is EventKind.NODE_ADDED:
            ready = (event.conditions or {}).get("Ready", ("Unknown", event.at))
            if node is None or not node.exists:
                node = self.nodes[key] = SimNode(labels=dict(event.labels or {}))
            node.labels.update(event.labels or {})
            node.ready, node.ready_since = ready
            pool = node.labels.get(LABEL_POOL, "")
            if (event.cluster, event.node) not in self.machines:
                self.machines[(event.cluster, event.node)] = self.new_machine(
                    event.node, ownership_tags(event.cluster, pool)
                )
        elif node is None:
            return
        elif event.kind is EventKind.NODE_DELETED:
            node.exists = False
        elif event.kind is EventKind.CONDITION and event.condition == "Ready" and event.status:
            if event.status != node.ready:
                node.ready, node.ready_since = event.status, event.since or event.at
        elif event.kind is EventKind.LABELS and event.labels is not None:
            node.labels = dict(event.labels)

    def new_machine(self, name: str, tags: Mapping[str, str]) -> Machine:
        return Machine(
            id=f"sim-{next(self._ids)}",
            name=name,
            state=MachineState.RUNNING,
            tags=dict(tags),
            created_at=self.clock.now(),
        )

    def spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def emit(self, event: NodeEvent) -> None:
        await self._emit(event)

    def kube(self, cluster: str) -> SimKube:
        return SimKube(self, cluster)

    def provider(self, cluster: str) -> SimProvider:
        return SimProvider(self, cluster)

    def zone_for(self, cluster: str, pool: str) -> str | None:
        """The zone holding the fewest live Nodes of ``pool`` (as a multi-zone group places a
        new machine); None when the pool's nodes carry no zone."""
        zones = Counter(
            n.labels[LABEL_ZONE]
            for k, n in self.nodes.items()
            if k.cluster == cluster and LABEL_ZONE in n.labels and n.labels.get(LABEL_POOL) == pool
        )
        live = Counter(
            n.labels[LABEL_ZONE]
            for k, n in self.nodes.items()
            if k.cluster == cluster
            and n.exists
            and LABEL_ZONE in n.labels
            and n.labels.get(LABEL_POOL) == pool
        )
        if not zones:
            return None
        return min(sorted(zones), key=lambda z: live[z])

    def create_fails(self) -> bool:
        if self._create_failures_left <= 0:
            return False
        self._create_failures_left -= 1
        return True


class SimKube:
    """One cluster's Nodes as the workflow acts on them (:class:`~healer.workflow.ports.NodeOps`).
    Nodes hold no pods: a drain ends at once."""

    def __init__(self, world: SimWorld, cluster: str) -> None:
        self._world = world
        self._cluster = cluster

    def _node(self, name: str) -> SimNode | None:
        node = self._world.nodes.get(NodeKey(self._cluster, name))
        return node if node is not None and node.exists else None

    async def get_node(self, name: str) -> NodeInfo | None:
        node = self._node(name)
        if node is None:
            return None
        return NodeInfo(
            name=name,
            labels=dict(node.labels),
            unschedulable=node.unschedulable,
            conditions={"Ready": (node.ready, node.ready_since)},
            taints=tuple(node.taints),
            created_at=0.0,
            resource_version="1",
        )

    async def cordon(self, name: str) -> bool:
        node = self._node(name)
        if node is not None:
            node.unschedulable = True
        return node is not None

    async def add_taint(self, name: str, taint: Taint) -> bool:
        node = self._node(name)
        if node is not None and taint not in node.taints:
            node.taints.append(taint)
        return node is not None

    async def pods_on_node(self, name: str) -> list[PodInfo]:
        return []

    async def evict(self, namespace: str, name: str) -> tuple[EvictResult, str]:
        return EvictResult.GONE, ""

    async def delete_node(self, name: str) -> bool:
        if self._node(name) is None:
            return False
        now = self._world.clock.now()
        await self._world.emit(
            NodeEvent(self._cluster, name, EventKind.NODE_DELETED, at=now, source=SOURCE)
        )
        return True


class SimProvider:
    """A cloud whose calls take the history's timings (:class:`~healer.cloud.machines.Provider`).
    A created machine joins as a Ready Node ``join`` seconds later."""

    name = "simulated"

    def __init__(self, world: SimWorld, cluster: str) -> None:
        self._world = world
        self._cluster = cluster

    async def create_machine(self, request: MachineRequest) -> Machine:
        world = self._world
        found = world.machines.get((self._cluster, request.name))
        if found is not None:
            return found
        await world.clock.sleep(world.timings.create)
        if world.create_fails():
            raise ProviderError("simulated cloud: the create request failed (scenario)")
        machine = world.new_machine(request.name, request.tags)
        world.machines[(self._cluster, request.name)] = machine
        pool = request.tags.get(TAG_POOL, "")
        world.spawn(self._join(request.name, pool), f"join-{request.name}")
        return machine

    async def _join(self, name: str, pool: str) -> None:
        world = self._world
        zone = world.zone_for(self._cluster, pool)
        await world.clock.sleep(world.timings.join)
        if (self._cluster, name) not in world.machines:
            return  # destroyed before it joined
        now = world.clock.now()
        labels = {LABEL_POOL: pool, LABEL_CLUSTER: self._cluster}
        if zone is not None:
            labels[LABEL_ZONE] = zone
        await world.emit(
            NodeEvent(
                self._cluster,
                name,
                EventKind.NODE_ADDED,
                at=now,
                source=SOURCE,
                labels=labels,
                conditions={"Ready": ("True", now)},
            )
        )

    async def destroy_machine(self, machine: Machine) -> bool:
        world = self._world
        found = world.machines.get((self._cluster, machine.name))
        if found is None or found.id != machine.id:
            return False
        await world.clock.sleep(world.timings.destroy)
        world.machines.pop((self._cluster, machine.name), None)
        return True

    async def get_machine(self, name: str) -> Machine | None:
        return self._world.machines.get((self._cluster, name))

    async def list_machines(self, tags: Mapping[str, str]) -> list[Machine]:
        return [
            m
            for (cluster, _), m in sorted(self._world.machines.items())
            if cluster == self._cluster and tags_match(m.tags, tags)
        ]

    async def close(self) -> None:
        return None


Ask = Callable[[RebootRequest], Awaitable[object]]


class SimAgents:
    """The nodes' agents: each wants a reboot at its :class:`RebootWish`'s time, asks the reboot
    arbiter (``ask``; None: no arbiter, it reboots at once), asks again after the answer's
    ``retryAfter`` when refused, and reboots when granted."""

    def __init__(self, world: SimWorld, ask: Ask | None) -> None:
        self._world = world
        self._ask = ask
        self._wishes: dict[NodeKey, RebootWish] = {}
        self._ids = itertools.count(1)

    async def wish(self, wish: RebootWish) -> None:
        key = NodeKey(wish.cluster, wish.node)
        self._wishes[key] = wish
        await self._request(key)

    async def _request(self, key: NodeKey) -> None:
        if key not in self._wishes:
            return
        if self._ask is None:
            self._start(key)
            return
        request = RebootRequest(
            cluster=key.cluster,
            node=key.node,
            id=f"reboot-{next(self._ids)}",
            at=self._world.clock.now(),
            reason="kernel upgrade",
        )
        await self._ask(request)

    async def answer(self, cluster: str, node: str, permit: Permit) -> None:
        """The arbiter's answer (its ``publish``)."""
        key = NodeKey(cluster, node)
        if key not in self._wishes:
            return
        if permit.granted:
            self._start(key)
        else:
            wait = min(permit.retry_after or 60.0, MAX_RETRY_AFTER)
            self._world.spawn(self._again(key, wait), f"ask-again-{node}")

    async def _again(self, key: NodeKey, wait: float) -> None:
        await self._world.clock.sleep(wait)
        await self._request(key)

    def _start(self, key: NodeKey) -> None:
        wish = self._wishes.pop(key)
        self._world.spawn(self._reboot(wish), f"reboot-{wish.node}")

    async def _reboot(self, wish: RebootWish) -> None:
        world, clock = self._world, self._world.clock
        now = clock.now()
        node = world.nodes.get(NodeKey(wish.cluster, wish.node))
        if node is None or not node.exists:
            return
        await world.emit(
            NodeEvent(wish.cluster, wish.node, EventKind.REBOOT_STARTED, at=now, source=AGENT)
        )
        await world.emit(_ready(wish, "Unknown", now))
        await clock.sleep(wish.downtime)
        if not wish.comes_back or not node.exists:
            return  # a bad upgrade; or healer replaced it meanwhile
        # The kubelet reports Ready as the machine comes up; the agent says so just after.
        now = clock.now()
        await world.emit(_ready(wish, "True", now))
        await world.emit(NodeEvent(wish.cluster, wish.node, EventKind.BOOTED, at=now, source=AGENT))


def _ready(wish: RebootWish, status: str, at: float) -> NodeEvent:
    return NodeEvent(
        wish.cluster,
        wish.node,
        EventKind.CONDITION,
        at=at,
        source=SOURCE,
        condition="Ready",
        status=status,
        since=at,
    )
