"""The health tracker: folds events into per-node observations, keeps verdicts current, and
re-evaluates each node exactly when its verdict could change (``next_check_at``), not by polling.

It owns node records in the store and tells the planner, through ``on_change``, whenever a
node's health changes.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable

import structlog

from healer.clock import Clock
from healer.config import HealerConfig
from healer.health.observe import apply_event
from healer.health.verdict import evaluate
from healer.model import EventKind, Health, NodeEvent, NodeKey, NodeObservation, Verdict
from healer.store.sqlite import Store

log = structlog.get_logger("healer.health")

OnChange = Callable[[NodeObservation, Verdict, Verdict | None], Awaitable[None]]

# Transitions worth a line in the audit log (the rest are in the node's evidence).
_AUDITED = {
    Health.PENDING: "node.degraded",
    Health.UNHEALTHY: "node.unhealthy",
    Health.REBOOTING: "node.rebooting",
    Health.GONE: "node.deleted",
}


class HealthTracker:
    def __init__(
        self,
        *,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        on_change: OnChange | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._on_change = on_change
        self._obs: dict[NodeKey, NodeObservation] = {}
        self._verdicts: dict[NodeKey, Verdict] = {}
        self._timers: list[tuple[float, NodeKey]] = []
        self._scheduled: dict[NodeKey, float] = {}
        self._wake = asyncio.Event()
        for row in store.nodes():
            obs = row.observation
            if config.cluster(obs.cluster) is None:
                continue
            self._obs[obs.key] = obs
            self._verdicts[obs.key] = Verdict(
                row.health, row.reason, row.message, row.next_check_at
            )
            if row.next_check_at is not None:
                self._wake_at(row.next_check_at, obs.key)

    # -- reading ----------------------------------------------------------------------------
    def observation(self, key: NodeKey) -> NodeObservation | None:
        return self._obs.get(key)

    def verdict(self, key: NodeKey) -> Verdict | None:
        return self._verdicts.get(key)

    def nodes(self, cluster: str) -> list[tuple[NodeObservation, Verdict]]:
        return [
            (obs, self._verdicts[key])
            for key, obs in sorted(self._obs.items())
            if key.cluster == cluster and key in self._verdicts
        ]

    def knows(self, cluster: str, node: str) -> bool:
        return NodeKey(cluster, node) in self._obs

    def overdue(self, now: float) -> float:
        """How many seconds the most overdue scheduled re-evaluation is late (0.0 if none is).

        A healthy tracker keeps this near zero; the watchdog treats a large value as stuck.
        """
        if not self._scheduled:
            return 0.0
        return max(0.0, now - min(self._scheduled.values()))

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config
        for key in list(self._obs):
            self._wake_at(self._clock.now(), key)

    # -- writing ----------------------------------------------------------------------------
    async def handle(self, event: NodeEvent) -> None:
        cluster = self._config.cluster(event.cluster)
        if cluster is None:
            log.warning(
                "health.event_ignored",
                cluster=event.cluster,
                node=event.node,
                reason="unknown cluster",
            )
            return
        key = event.key
        previous = self._obs.get(key)
        if previous is None and event.kind is not EventKind.NODE_ADDED:
            # A node exists for healer once the Kubernetes API has shown it. A late heartbeat or
            # agent message for a node that is gone (or not yet listed) must not resurrect it.
            log.debug(
                "health.event_for_unknown_node",
                cluster=event.cluster,
                node=event.node,
                kind=str(event.kind),
                source=event.source,
            )
            return
        obs = apply_event(
            previous,
            event,
            exclude_label=cluster.remediation.exclude_label,
            pool_roles={p.name: p.role for p in cluster.pools},
        )
        self._obs[key] = obs
        await self._evaluate(key, trigger=event)

    def forget(self, key: NodeKey) -> None:
        """Drop a node that is gone for good (its workflow finished)."""
        self._obs.pop(key, None)
        self._verdicts.pop(key, None)
        self._scheduled.pop(key, None)
        self._store.forget_node(key.cluster, key.node)

    async def _evaluate(self, key: NodeKey, *, trigger: NodeEvent | None = None) -> None:
        obs = self._obs[key]
        cluster = self._config.cluster(key.cluster)
        if cluster is None:
            return
        now = self._clock.now()
        verdict = evaluate(obs, cluster.health_for(obs.pool), now)
        previous = self._verdicts.get(key)
        self._verdicts[key] = verdict
        self._store.save_node(obs, verdict, now)
        if verdict.next_check_at is not None:
            self._wake_at(verdict.next_check_at, key)
        if previous is not None and previous.health == verdict.health:
            return
        log.info(
            f"health.{verdict.health}",
            cluster=key.cluster,
            node=key.node,
            pool=obs.pool,
            reason=verdict.reason,
            detail=verdict.message,
            was=str(previous.health) if previous else None,
        )
        event = _AUDITED.get(verdict.health)
        if event is None and previous is not None and previous.health in _AUDITED:
            event = "node.recovered"
        if event is not None:
            self._store.audit(
                at=now,
                cluster=key.cluster,
                node=key.node,
                pool=obs.pool,
                event=event,
                reason=verdict.reason,
                message=verdict.message,
                evidence={
                    "trigger": trigger.evidence() if trigger else "timer",
                    "recent": list(obs.recent[-8:]),
                },
            )
        if self._on_change is not None:
            await self._on_change(obs, verdict, previous)

    def _wake_at(self, when: float, key: NodeKey) -> None:
        if self._scheduled.get(key) == when:
            return
        self._scheduled[key] = when
        heapq.heappush(self._timers, (when, key))
        self._wake.set()

    async def run(self) -> None:
        """Re-evaluate nodes at their ``next_check_at``; runs until cancelled."""
        while True:
            now = self._clock.now()
            due: set[NodeKey] = set()
            while self._timers and self._timers[0][0] <= now:
                when, key = heapq.heappop(self._timers)
                if self._scheduled.get(key) == when:
                    del self._scheduled[key]
                    due.add(key)
            for key in sorted(due):
                if key in self._obs:
                    await self._evaluate(key)
            if due:
                continue
            self._wake.clear()
            sleeper = asyncio.ensure_future(
                self._clock.sleep_until(self._timers[0][0]) if self._timers else asyncio.Future()
            )
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
