"""One simulation: a history replayed against a configuration on a
:class:`~healer.clock.VirtualClock`, through healer's real decision code.

The parts are the daemon's own (:class:`~healer.health.tracker.HealthTracker`,
:class:`~healer.planner.planner.Planner` with its guards and breakers,
:class:`~healer.planner.reboots.RebootArbiter`, :class:`~healer.workflow.runner.WorkflowRunner`),
wired as :mod:`healer.app.daemon` wires them, on a throw-away state database; only the world
around them is simulated (:mod:`healer.simulate.world`). What they decide is read back from that
database's audit log: the same rows ``healer history`` shows for a real daemon.

Not simulated: the sources' own timing (the history is what the sources handed the tracker,
heartbeat-absence conditions included), the periodic jobs other than the planner's recheck
(drift repair, orphans, stale workflows), pods (a drain ends at once) and blocking alerts.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from healer.app.tuning import Tuning
from healer.clock import VirtualClock
from healer.config import HealerConfig
from healer.health.tracker import HealthTracker
from healer.model import Health, NodeEvent, NodeKey, NodeObservation, Permit, Verdict
from healer.planner.alert_blocks import AlertBlocks
from healer.planner.planner import Planner
from healer.planner.reboots import RebootArbiter
from healer.simulate.history import History, RebootWish, Timings, sorted_happenings
from healer.simulate.world import SimAgents, SimWorld
from healer.store.sqlite import SUCCEEDED, AuditEntry, Store, WorkflowRecord
from healer.workflow.runner import WorkflowRunner

# How far past the history's last event the simulation may go to let decisions play out.
DEFAULT_TAIL = 3600.0
# How often, after the last event, the run looks whether everything has settled.
SETTLE_STEP = 5.0
# Audit events that are bookkeeping, not decisions (one row per node at the first list).
NOT_SHOWN = frozenset({"node.adopted"})


@dataclass(frozen=True)
class Decision:
    """One audit row of the simulated daemon."""

    at: float
    event: str
    cluster: str
    node: str | None
    pool: str | None
    reason: str
    message: str

    @classmethod
    def of(cls, row: AuditEntry) -> Decision:
        return cls(row.at, row.event, row.cluster, row.node, row.pool, row.reason, row.message)


@dataclass(frozen=True)
class Outcome:
    history: History
    timings: Timings
    start: float
    end: float  # where the virtual clock stopped
    settled: bool  # everything came to rest before the tail ran out
    decisions: tuple[Decision, ...]


def default_timings(config: HealerConfig) -> Timings:
    """A cloud that is quick enough for every configured ``nodeStartupTimeout``: a machine
    joins within half of the shortest one."""
    startup = min(
        c.health_for(p.name).node_startup_timeout for c in config.clusters for p in c.pools
    )
    base = Timings()
    return Timings(
        create=min(base.create, startup / 4),
        destroy=min(base.destroy, startup / 4),
        join=min(base.join, startup / 2),
    )


def workflow_ids() -> Callable[[], str]:
    """Workflow ids that are the same on every run (the replacement names come from them)."""
    counter = itertools.count(1)
    return lambda: f"s{next(counter):07d}sim0"


async def simulate(
    config: HealerConfig, history: History, *, tail: float = DEFAULT_TAIL
) -> Outcome:
    """Replay ``history`` against ``config``; what healer decided, in order."""
    timings = history.timings or default_timings(config)
    with tempfile.TemporaryDirectory(prefix="healer-simulate-") as tmp:
        store = Store.open(Path(tmp))
        try:
            return await _Run(config, history, timings, store).play(tail)
        finally:
            store.close()


class _Run:
    def __init__(
        self, config: HealerConfig, history: History, timings: Timings, store: Store
    ) -> None:
        self.config = config
        self.history = history
        self.timings = timings
        self.store = store
        self.clock = VirtualClock(start=history.start)
        self.tuning = Tuning()
        self.queue: asyncio.Queue[NodeEvent] = asyncio.Queue()
        self.world = SimWorld(clock=self.clock, timings=timings, emit=self.emit)
        self.tracker = HealthTracker(
            config=config,
            store=store,
            clock=self.clock,
            on_change=self._on_change,
            on_synced=self._on_synced,
        )
        self.runner = WorkflowRunner(
            config=config,
            store=store,
            clock=self.clock,
            kube={c.name: self.world.kube(c.name) for c in config.clusters},
            providers={c.name: self.world.provider(c.name) for c in config.clusters},
            user_data=lambda cluster, pool, name: "",
            on_finished=self._workflow_finished,
            join_poll_interval=self.tuning.join_poll_interval,
            rng=random.Random(0),  # the same retry waits on every run
        )
        self.blocks = AlertBlocks()
        self.planner = Planner(
            config=config,
            store=store,
            clock=self.clock,
            tracker=self.tracker,
            start=self.runner.start,
            blocks=self.blocks,
            workflow_ids=workflow_ids(),
        )
        self.arbiter: RebootArbiter | None = None
        if config.mqtt is not None and config.mqtt.reboot_arbiter:
            self.arbiter = RebootArbiter(
                config=config,
                store=store,
                clock=self.clock,
                tracker=self.tracker,
                publish=self._publish,
                blocks=self.blocks,
                frozen=self.planner.frozen_reason,
            )
            self.planner.watch_reboot_grants(self.arbiter.granted_nodes)
        self.agents = SimAgents(self.world, self.arbiter.on_request if self.arbiter else None)

    # -- the daemon's wiring (healer.app.daemon, healer.app.wiring) --------------------------
    async def _on_change(
        self, obs: NodeObservation, verdict: Verdict, previous: Verdict | None
    ) -> None:
        await self.planner.on_health_change(obs, verdict, previous)

    async def _on_synced(self, cluster: str) -> None:
        await self.planner.consider(cluster)

    async def _workflow_finished(self, wf: WorkflowRecord) -> None:
        key = NodeKey(wf.cluster, wf.node)
        if wf.state == SUCCEEDED and self.tracker.observation(key) is not None:
            self.tracker.forget(key)
        await self.planner.on_workflow_finished(wf)

    async def _publish(self, cluster: str, node: str, permit: Permit) -> None:
        await self.agents.answer(cluster, node, permit)

    async def emit(self, event: NodeEvent) -> None:
        await self.queue.put(event)

    async def _consume(self) -> None:
        while True:
            event = await self.queue.get()
            self.world.observe(event)
            await self.tracker.handle(event)
            if self.arbiter is not None:
                await self.arbiter.observe(event)
            self.queue.task_done()

    async def _recheck(self) -> None:
        while True:
            await self.clock.sleep(self.tuning.recheck_interval)
            await self.planner.recheck()

    # -- the run -----------------------------------------------------------------------------
    async def play(self, tail: float) -> Outcome:
        tasks = [
            asyncio.create_task(self._consume(), name="events"),
            asyncio.create_task(self.tracker.run(), name="tracker"),
            asyncio.create_task(self._recheck(), name="recheck"),
        ]
        try:
            for item in sorted_happenings(self.history.happenings):
                await self.clock.advance(max(0.0, item.at - self.clock.now()))
                if isinstance(item, RebootWish):
                    await self.agents.wish(item)
                else:
                    await self.emit(item)
                await self.queue.join()
            settled = await self._settle(self.history.end + tail)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.runner.stop()
            await self.world.stop()
        decisions = tuple(
            Decision.of(row) for row in self.store.audit_log() if row.event not in NOT_SHOWN
        )
        return Outcome(
            history=self.history,
            timings=self.timings,
            start=self.history.start,
            end=self.clock.now(),
            settled=settled,
            decisions=decisions,
        )

    async def _settle(self, until: float) -> bool:
        """Let time run until nothing is under way and no node is on its way to a decision,
        or until ``until``; whether it came to rest."""
        while self.clock.now() < until:
            await self.clock.advance(min(SETTLE_STEP, until - self.clock.now()))
            await self.queue.join()
            if self._at_rest():
                return True
        return self._at_rest()

    def _at_rest(self) -> bool:
        if self.runner.in_flight or self.world.busy or not self.queue.empty():
            return False
        if self.arbiter is not None and self.arbiter.grants():
            return False
        moving = (Health.PENDING, Health.STARTING, Health.REBOOTING)
        return not any(
            verdict.health in moving
            for cluster in self.config.clusters
            for _, verdict in self.tracker.nodes(cluster.name)
        )
