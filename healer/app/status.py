"""What the daemon says about itself: liveness (which gates the systemd watchdog), /healthz, the
status line `healer status` and systemd show, the gauges read from state each status round, and
the timeline checkpoint that notices a step of the wall clock."""

from __future__ import annotations

import os
import time
from typing import Any

import structlog

from healer.app.tuning import Tuning
from healer.clock import Clock, RealClock
from healer.config import HealerConfig
from healer.health.tracker import HealthTracker
from healer.jobs.scheduler import JobScheduler
from healer.model import Health
from healer.sources.events import EventQueue
from healer.sources.kube_watch import KubeWatchSource
from healer.store.sqlite import BREAKER_BAD_UPGRADE, RUNNING, Store
from healer.store.writable import STATE_UNWRITABLE
from healer.telemetry import metrics
from healer.telemetry.server import set_node_gauges
from healer.workflow.runner import WorkflowRunner

log = structlog.get_logger("healer.app")

CLOCK_STEP_TOLERANCE = 1.0  # seconds the wall clock may move against the timeline unreported


class DaemonStatus:
    """The daemon's report on itself, a part of :class:`~healer.app.daemon.Daemon`: the
    attributes below are the daemon's, read here, never changed (but the clock offset)."""

    config: HealerConfig
    tuning: Tuning
    clock: Clock
    store: Store | None
    tracker: HealthTracker | None
    runner: WorkflowRunner | None
    scheduler: JobScheduler | None
    kube_sources: dict[str, KubeWatchSource]
    mqtt_source: Any
    reboot_arbiter: Any  # healer.planner.reboots.RebootArbiter, with MQTT's reboot arbiter
    ready: bool
    _events: EventQueue
    _busy_since: float | None  # monotonic: the consumer took a batch of events then
    _untracked: dict[str, float]  # workflow id -> monotonic time first seen lost
    _api_down: dict[str, str]  # cluster -> why its API is unreachable
    _started_at: float
    _clock_offset: float  # wall minus timeline at the last look, to notice steps

    def _unconnected(self) -> list[str]:
        waiting = [
            f"the API of cluster {name}"
            for name, source in self.kube_sources.items()
            if not source.synced.is_set()
        ]
        if self.mqtt_source is not None and not getattr(self.mqtt_source, "connected", True):
            waiting.append("the MQTT broker")
        return waiting

    def liveness(self) -> list[str]:
        """What is stuck right now (empty when healthy); gates the systemd watchdog."""
        problems = []
        stall = self.tuning.stall_after
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > stall:
            problems.append(
                f"the event consumer has been handling one batch of events for "
                f"{time.monotonic() - busy:.0f}s ({self._events.qsize()} queued)"
            )
        if self.tracker is not None:
            late = self.tracker.overdue(self.clock.now())
            if late > stall:
                problems.append(f"the health tracker is {late:.0f}s behind its re-evaluations")
        if self.runner is not None:
            # Lost for longer than the stall bound: a workflow can be between its record and
            # its task for a moment (while it is being expired, say), however often we look.
            now = time.monotonic()
            untracked = self.runner.untracked()
            self._untracked = {i: self._untracked.get(i, now) for i in untracked}
            lost = sorted(i for i, since in self._untracked.items() if now - since > stall)
            if lost:
                problems.append(f"running workflow(s) with no task: {', '.join(lost)}")
        return problems

    def healthz(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "starting: " + self.status_line()
        problems = self.liveness()
        # Not a liveness problem: the watchdog must not restart a daemon that is waiting for
        # disk space (a restart cannot write either); a load balancer or a human sees it here.
        if self.store is not None and (unwritable := self.store.writes.problem) is not None:
            problems.append(f"{STATE_UNWRITABLE} ({unwritable.kind}): {unwritable}")
        if problems:
            return False, "unhealthy: " + "; ".join(problems)
        return True, "ok: " + self.status_line()

    def status_line(self) -> str:
        if self.tracker is None or self.store is None:
            return "starting"
        clusters = self.config.clusters
        # The tracker's counts, kept as verdicts change: O(clusters), not O(nodes).
        counts = [self.tracker.counts(c.name) for c in clusters]
        nodes = sum(sum(found.values()) for found in counts)
        unhealthy = sum(found[Health.UNHEALTHY] for found in counts)
        in_flight = self.runner.in_flight if self.runner is not None else 0
        parts = [
            f"watching {len(clusters)} cluster(s), {nodes} nodes"
            + (f" ({unhealthy} unhealthy)" if unhealthy else "")
            + f", {in_flight} workflows in flight"
        ]
        if self.store.writes.problem is not None:
            parts.append(f"state unwritable ({self.store.writes.problem.kind}): decisions frozen")
        if self._api_down:
            parts.append("API unreachable: " + ", ".join(sorted(self._api_down)))
        pauses = self.store.pauses()
        if pauses or self.config.paused:
            parts.append("paused: " + ", ".join(sorted(pauses) or ["* (config)"]))
        breakers = self.store.breakers()
        if breakers:
            parts.append("breaker open: " + ", ".join(sorted(breakers)))
        bad_upgrade = self.store.breakers(kind=BREAKER_BAD_UPGRADE)
        if bad_upgrade:
            parts.append("bad-upgrade breaker open: " + ", ".join(sorted(bad_upgrade)))
        grants = self.reboot_arbiter.grants() if self.reboot_arbiter is not None else []
        if grants:
            # `healer status` lists them, and why the others wait
            parts.append(f"{len(grants)} reboot(s) granted or in progress")
        if not self.ready:
            waiting = self._unconnected()
            if waiting:
                parts.append("waiting for " + ", ".join(waiting))
        return "; ".join(parts)

    def _checkpoint_clock(self, *, started: bool = False) -> None:
        """Save the timeline for the next process (healer/clock.py) and say when the wall
        clock stepped: durations do not follow it, only the periodic jobs are rescheduled
        (APScheduler plans on the wall clock; a step back would stall them)."""
        if isinstance(self.clock, RealClock):
            self.clock.checkpoint()
        offset = self.clock.wall() - self.clock.now()
        if started:
            log.info(
                "clock.resumed",
                how=getattr(self.clock, "resumed", "injected"),
                wall_minus_timeline=round(offset, 3),
            )
        elif abs(offset - self._clock_offset) > CLOCK_STEP_TOLERANCE:
            log.warning(
                "clock.stepped",
                seconds=round(offset - self._clock_offset, 3),
                wall_minus_timeline=round(offset, 3),
                effect="none on thresholds, cooldowns, budgets or windows (monotonic timeline)",
            )
            if self.scheduler is not None:
                self.scheduler.reschedule()
        self._clock_offset = offset

    def _publish_status(self, line: str) -> None:
        """Each status round: the line for `healer status`, and the gauges read from state."""
        self._checkpoint_clock()
        if self.store is None:
            return
        breakers = self.store.breakers()
        bad_upgrade = self.store.breakers(kind=BREAKER_BAD_UPGRADE)
        pauses = self.store.pauses()
        running = self.store.workflows(state=RUNNING)
        for c in self.config.clusters:
            metrics.BREAKER_OPEN.labels(c.name).set(1 if c.name in breakers else 0)
            metrics.BAD_UPGRADE_BREAKER_OPEN.labels(c.name).set(1 if c.name in bad_upgrade else 0)
            paused = (
                self.config.paused
                or c.paused
                or "*" in pauses
                or any(s == f"cluster:{c.name}" or s.startswith(f"pool:{c.name}/") for s in pauses)
            )
            metrics.PAUSED.labels(c.name).set(1 if paused else 0)
            metrics.WORKFLOWS_IN_FLIGHT.labels(c.name).set(
                sum(1 for wf in running if wf.cluster == c.name)
            )
        if self.store.writes.problem is not None:
            return  # the status row waits for the database (healer.store.writable)
        self.store.set_meta(
            "daemon",
            {
                "pid": os.getpid(),
                "started_at": self._started_at,
                "updated_at": self.clock.now(),
                "ready": self.ready,
                "status": line,
                "status_interval": self.tuning.status_interval,
            },
        )

    def _refresh_nodes(self, cluster: str) -> None:
        if self.tracker is not None:
            set_node_gauges(cluster, self.tracker.counts(cluster))
