"""The built-in histories of ``healer simulate --scenario``, made for the configuration's first
cluster: its pools at their configured sizes (nodes ``<cluster>-<pool>-<n>``, spread over three
zones), all Ready at the start, then the trouble. Durations are in proportion to the cluster's
own thresholds (``U`` below is its ``Ready=Unknown`` timeout), so each scenario means the same
under a lab configuration (seconds) and a production one (minutes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from healer.config import ClusterConfig, HealerConfig
from healer.model import LABEL_CLUSTER, LABEL_POOL, LABEL_ZONE, EventKind, NodeEvent, Role
from healer.simulate.history import Happening, History, HistoryError, RebootWish, Timings

# 2026-01-01T00:00:00Z: the simulated histories start here (the output gives offsets from it).
EPOCH = 1_767_225_600.0
ZONES = ("zone-a", "zone-b", "zone-c")
TROUBLE_AT = 60.0  # seconds after the start: the first trouble
DEFAULT_UNKNOWN_TIMEOUT = 300.0  # U when the cluster judges no Ready=Unknown


@dataclass(frozen=True)
class FleetNode:
    name: str
    pool: str
    zone: str
    role: Role


@dataclass(frozen=True)
class Fleet:
    cluster: ClusterConfig
    nodes: tuple[FleetNode, ...]
    unknown_timeout: float  # U

    def workers(self) -> list[FleetNode]:
        found = [n for n in self.nodes if n.role is Role.WORKER]
        return found or list(self.nodes)

    def ready(self, node: FleetNode, status: str, at: float) -> NodeEvent:
        return NodeEvent(
            self.cluster.name,
            node.name,
            EventKind.CONDITION,
            at=at,
            source="kube",
            condition="Ready",
            status=status,
            since=at,
        )


def fleet(config: HealerConfig) -> Fleet:
    cluster = config.clusters[0]
    nodes = tuple(
        FleetNode(f"{cluster.name}-{pool.name}-{i}", pool.name, ZONES[(i - 1) % len(ZONES)], role)
        for pool in cluster.pools
        for role in [Role(pool.role)]
        for i in range(1, pool.size + 1)
    )
    rules = cluster.health_for(None).unhealthy_conditions
    unknown = [r.timeout for r in rules if (r.type, r.status) == ("Ready", "Unknown")]
    return Fleet(cluster, nodes, unknown[0] if unknown else DEFAULT_UNKNOWN_TIMEOUT)


def _listed(f: Fleet) -> list[Happening]:
    """The first list of the cluster: every node, Ready for a day."""
    name = f.cluster.name
    out: list[Happening] = [NodeEvent(name, "", EventKind.LIST_STARTED, at=EPOCH, source="kube")]
    for n in f.nodes:
        out.append(
            NodeEvent(
                name,
                n.name,
                EventKind.NODE_ADDED,
                at=EPOCH,
                source="kube",
                labels={LABEL_POOL: n.pool, LABEL_CLUSTER: name, LABEL_ZONE: n.zone},
                conditions={"Ready": ("True", EPOCH - 86_400.0)},
            )
        )
    out.append(NodeEvent(name, "", EventKind.SYNCED, at=EPOCH, source="kube"))
    return out


def _cut_off(f: Fleet, name: str, cut: list[FleetNode], lasting: float, what: str) -> History:
    """``cut`` lose the control plane (``Ready=Unknown``) at the trouble, for ``lasting``."""
    start = EPOCH + TROUBLE_AT
    lost = [f.ready(n, "Unknown", start) for n in cut]
    back = [f.ready(n, "True", start + lasting) for n in cut]
    return History(name, (*_listed(f), *lost, *back), description=what)


def zone_outage(f: Fleet) -> History:
    cut = [n for n in f.nodes if n.zone == ZONES[0]]
    lasting = 10 * f.unknown_timeout + 120.0
    return _cut_off(
        f,
        "zone-outage",
        cut,
        lasting,
        f"zone {ZONES[0]} loses its network ({len(cut)} nodes Ready=Unknown) for "
        f"{_dur(lasting)}, then comes back",
    )


def partition(f: Fleet) -> History:
    workers = f.workers()
    cut = [workers[i] for i in range(0, len(workers), 2)][: max(1, len(workers) // 2)]
    lasting = 3 * f.unknown_timeout + 60.0
    return _cut_off(
        f,
        "partition",
        cut,
        lasting,
        f"{', '.join(n.name for n in cut)} lose the control plane (the machines run on) for "
        f"{_dur(lasting)}, then the network heals",
    )


def flapping_nic(f: Fleet) -> History:
    node = f.workers()[0]
    u = f.unknown_timeout
    t = EPOCH + TROUBLE_AT
    trouble: list[Happening] = []
    for _ in range(6):
        trouble += [f.ready(node, "Unknown", t), f.ready(node, "True", t + 0.6 * u)]
        t += 1.2 * u
    trouble += [f.ready(node, "Unknown", t), f.ready(node, "True", t + 3 * u)]
    return History(
        "flapping-nic",
        (*_listed(f), *trouble),
        description=f"{node.name}'s NIC flaps: six drops of {_dur(0.6 * u)} (shorter than the "
        f"{_dur(u)} Ready=Unknown timeout), then one of {_dur(3 * u)}",
    )


def rolling_kernel_upgrade(f: Fleet) -> History:
    reboot = min(f.cluster.health_for(n.pool).reboot_timeout for n in f.nodes)
    downtime = min(90.0, reboot / 2)
    bad = f.workers()[min(2, len(f.workers()) - 1)]
    wishes = [
        RebootWish(
            f.cluster.name,
            n.name,
            at=EPOCH + TROUBLE_AT + 5.0 * i,
            downtime=downtime,
            comes_back=n != bad,
        )
        for i, n in enumerate(f.nodes)
    ]
    return History(
        "rolling-kernel-upgrade",
        (*_listed(f), *wishes),
        description=f"a new kernel: every node's agent asks to reboot (5s apart), each is down "
        f"{_dur(downtime)}; {bad.name} never comes back",
    )


def slow_provider(f: Fleet) -> History:
    u = f.unknown_timeout
    workers = f.workers()
    crashed = workers[:2]
    trouble = [f.ready(n, "Unknown", EPOCH + TROUBLE_AT + i * u) for i, n in enumerate(crashed)]
    startup = min(f.cluster.health_for(n.pool).node_startup_timeout for n in f.nodes)
    timings = Timings(create=20 * u, destroy=4 * u, join=min(45.0, startup / 2), create_failures=2)
    return History(
        "slow-provider",
        (*_listed(f), *trouble),
        timings=timings,
        description=f"{' and '.join(n.name for n in crashed)} crash {_dur(u)} apart while the "
        f"cloud is slow: a create takes {_dur(timings.create)}, a destroy "
        f"{_dur(timings.destroy)}, and the first two creates fail",
    )


SCENARIOS: dict[str, Callable[[Fleet], History]] = {
    "rolling-kernel-upgrade": rolling_kernel_upgrade,
    "zone-outage": zone_outage,
    "flapping-nic": flapping_nic,
    "partition": partition,
    "slow-provider": slow_provider,
}


def scenario(name: str, config: HealerConfig) -> History:
    """The built-in history ``name`` for ``config`` (``KeyError`` for an unknown name)."""
    f = fleet(config)
    if not f.nodes:
        raise HistoryError(
            f"cluster {f.cluster.name} has no nodes to simulate (every pool has size 0)"
        )
    history = SCENARIOS[name](f)
    return replace(history, name=f"{name} (built-in)")


def _dur(seconds: float) -> str:
    seconds = math.floor(seconds + 0.5)
    if seconds < 600:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m" if seconds % 60 == 0 else f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
