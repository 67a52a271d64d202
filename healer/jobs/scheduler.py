"""The daemon's one APScheduler: periodic work runs as APScheduler 3.x jobs
(``AsyncIOScheduler``, UTC, ``coalesce=True``, ``max_instances=1``).

It owns *when* periodic work runs, never what it does: the housekeeping jobs
(:mod:`healer.jobs.periodic`), the planner's re-check and the operator-request desk register a
coroutine and an interval here. Each run is logged with the job's context, counted in
``healer_scheduler_job_runs_total`` by outcome, and a failure is reported and left to the next run
instead of taking the daemon down.

APScheduler plans on the wall clock, healer on its timeline (healer/clock.py): when the daemon
sees a step of the wall clock it calls :meth:`JobScheduler.reschedule`, since a step back would
otherwise hold every job off for as long as the step. For the same reason the supervisor's status
rounds and the systemd watchdog (:mod:`healer.jobs.systemd`) do not run here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import structlog
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from healer.telemetry import metrics

log = structlog.get_logger("healer.jobs.scheduler")

JOB_DEFAULTS: dict[str, Any] = {
    "coalesce": True,  # runs missed while the loop was busy collapse into one
    "max_instances": 1,  # a slow run is never overlapped by the next
    "misfire_grace_time": None,  # late is better than never for housekeeping
}

Body = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class _Spec:
    every: float  # seconds between runs
    body: Body
    timeout: float | None  # a run taking longer is cancelled and reported


class JobScheduler:
    """Periodic jobs by id (``kind`` or ``kind:cluster``); APScheduler exists while started."""

    def __init__(self) -> None:
        self._specs: dict[str, _Spec] = {}
        self._scheduler: AsyncIOScheduler | None = None

    def every(
        self, job_id: str, seconds: float, body: Body, *, timeout: float | None = None
    ) -> None:
        """Run ``body()`` every ``seconds`` from now on, replacing a job with the same id.

        ``timeout`` bounds one run: a job that takes longer than that is stuck, not slow, and
        must not keep its next runs out for ever (``max_instances=1``)."""
        self._specs[job_id] = _Spec(every=seconds, body=body, timeout=timeout)
        if self._scheduler is not None:
            self._add(job_id)

    def remove(self, job_id: str) -> None:
        if self._specs.pop(job_id, None) is not None and self._scheduler is not None:
            self._scheduler.remove_job(job_id)

    def ids(self) -> list[str]:
        """The registered job ids, sorted."""
        return sorted(self._specs)

    def jobs(self) -> list[Job]:
        """The scheduled APScheduler jobs (for tests and status); none before :meth:`start`."""
        return self._scheduler.get_jobs() if self._scheduler is not None else []

    def start(self) -> None:
        """Start APScheduler on the running event loop with every job registered so far."""
        self._scheduler = AsyncIOScheduler(
            event_loop=asyncio.get_running_loop(), timezone=UTC, job_defaults=JOB_DEFAULTS
        )
        for job_id in self._specs:
            self._add(job_id)
        self._scheduler.start()
        log.info("scheduler.started", jobs=self.ids())

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None

    def reschedule(self) -> None:
        """Plan every job again from now (after a step of the wall clock); a run in progress
        finishes."""
        if self._scheduler is not None:
            for job_id in self._specs:
                self._add(job_id)

    def _add(self, job_id: str) -> None:
        assert self._scheduler is not None
        spec = self._specs[job_id]
        self._scheduler.add_job(
            self.run_job,
            IntervalTrigger(seconds=spec.every, timezone=UTC),
            args=(job_id, spec.body, spec.timeout),
            id=job_id,
            name=job_id,
            replace_existing=True,
        )

    @staticmethod
    async def run_job(job_id: str, body: Body, timeout: float | None = None) -> None:
        """One run of a job: context bound, bounded by ``timeout``, failures logged and counted."""
        kind, _, cluster = job_id.partition(":")
        context = {"job": kind} | ({"cluster": cluster} if cluster else {})
        with structlog.contextvars.bound_contextvars(**context):
            try:
                async with asyncio.timeout(timeout):
                    await body()
            except Exception as exc:
                metrics.JOB_RUNS.labels(kind, "error").inc()
                log.error("scheduler.job_failed", error=str(exc), exc_type=type(exc).__name__)
            else:
                metrics.JOB_RUNS.labels(kind, "ok").inc()
