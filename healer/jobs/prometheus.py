"""The periodic poll of Prometheus for blocking alerts (``reboots.prometheus``), one job per
cluster that configures it (``prometheus:<cluster>`` on the daemon's scheduler).

Each run asks Prometheus once (:func:`healer.sources.prometheus.fetch_alerts`, bounded by
``timeout``), keeps the matching alerts in :class:`healer.planner.pulled_alerts.PulledAlerts`
(which the reboot arbiter reads), counts the outcome in ``healer_reboot_prometheus_polls`` and
logs a change: ``reboot.prometheus_blocking`` when the set of blocking alerts changes,
``reboot.prometheus_unreachable`` on a failure (once per run of failures) and
``reboot.prometheus_reachable`` when it answers again.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import structlog

from healer.clock import Clock
from healer.config import HealerConfig
from healer.jobs.scheduler import JobScheduler
from healer.planner.pulled_alerts import PulledAlerts
from healer.sources.prometheus import OK, Alert, PrometheusError, blocking, fetch_alerts
from healer.telemetry import metrics

log = structlog.get_logger("healer.jobs.prometheus")

Fetch = Callable[..., Awaitable[tuple[Alert, ...]]]  # (url, *, timeout)


class PrometheusPoll:
    def __init__(
        self,
        *,
        config: HealerConfig,
        clock: Clock,
        pulled: PulledAlerts,
        fetch: Fetch = fetch_alerts,
    ) -> None:
        self._config = config
        self._clock = clock
        self._pulled = pulled
        self._fetch = fetch
        self._failing: dict[str, bool] = {}
        self._names: dict[str, tuple[str, ...]] = {}
        self._registered: set[str] = set()

    def reconfigure(self, config: HealerConfig, scheduler: JobScheduler | None = None) -> None:
        self._config = config
        if scheduler is not None:
            self.register(scheduler)

    def register(self, scheduler: JobScheduler) -> None:
        """One ``prometheus:<cluster>`` job per cluster that configures it; jobs of clusters
        that no longer do are removed."""
        intervals = self.intervals()
        for job_id in sorted(self._registered - intervals.keys()):
            scheduler.remove(job_id)
        for job_id, every in intervals.items():
            cluster = job_id.partition(":")[2]
            prom = self._config.cluster(cluster)
            timeout = prom.reboots.prometheus.timeout if prom and prom.reboots.prometheus else 10.0
            body = functools.partial(self.poll, cluster)
            scheduler.every(job_id, every, body, timeout=timeout + 5.0)
        self._registered = set(intervals)

    def intervals(self) -> dict[str, float]:
        """Job id -> interval for the clusters that configure ``reboots.prometheus``."""
        return {
            f"prometheus:{c.name}": c.reboots.prometheus.interval
            for c in self._config.clusters
            if c.reboots.prometheus is not None
        }

    async def poll(self, cluster: str) -> None:
        c = self._config.cluster(cluster)
        prom = c.reboots.prometheus if c is not None else None
        if prom is None:
            return
        try:
            alerts = await self._fetch(prom.url, timeout=prom.timeout)
        except PrometheusError as exc:
            metrics.PROMETHEUS_POLLS.labels(cluster, exc.outcome).inc()
            self._pulled.failed(cluster, str(exc))
            if not self._failing.get(cluster):
                log.warning(
                    "reboot.prometheus_unreachable",
                    cluster=cluster,
                    outcome=exc.outcome,
                    error=str(exc),
                )
            self._failing[cluster] = True
            return
        names = blocking(alerts, prom.alert_filter_regexp, firing_only=prom.firing_only)
        metrics.PROMETHEUS_POLLS.labels(cluster, OK).inc()
        self._pulled.answered(cluster, names, self._clock.now())
        if self._failing.pop(cluster, False):
            log.info("reboot.prometheus_reachable", cluster=cluster)
        if self._names.get(cluster) != names:
            log.info("reboot.prometheus_blocking", cluster=cluster, alerts=list(names))
            self._names[cluster] = names
