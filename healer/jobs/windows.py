"""The ``maintenance`` job: re-evaluates the reboot maintenance windows
(:mod:`healer.planner.maintenance`) of every cluster, records when one opens or closes and sets
``healer_maintenance_window_open``."""

from __future__ import annotations

from healer.jobs.context import JobContext
from healer.planner.maintenance import next_change, reboots_allowed
from healer.telemetry import metrics


class MaintenanceWindows:
    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._windows: dict[str, bool] = {}

    def reboots_allowed(self, cluster_name: str) -> bool:
        """May a planned reboot start in ``cluster_name`` now (its windows; none = any time)?"""
        cluster = self._ctx.config.cluster(cluster_name)
        if cluster is None:
            return False
        return reboots_allowed(self._ctx.clock.now(), cluster.reboots.windows)

    async def check(self) -> dict[str, bool]:
        """Cluster -> whether its window is open now; an opening or closing is recorded."""
        ctx = self._ctx
        now = ctx.clock.now()
        states = {}
        for cluster in ctx.config.clusters:
            windows = cluster.reboots.windows
            is_open = reboots_allowed(now, windows)
            states[cluster.name] = is_open
            metrics.MAINTENANCE_OPEN.labels(cluster.name).set(1 if is_open else 0)
            previous = self._windows.get(cluster.name)
            self._windows[cluster.name] = is_open
            if previous is None or previous == is_open or not windows:
                continue
            change = next_change(now, windows)
            event = "maintenance.window_opened" if is_open else "maintenance.window_closed"
            message = (
                f"reboot maintenance window of {cluster.name} is {'open' if is_open else 'closed'}"
                + (f" until {change.isoformat()}" if change is not None else "")
            )
            ctx.recorder.record(
                event, at=now, cluster=cluster.name, reason="MaintenanceWindow", message=message
            )
        return states
