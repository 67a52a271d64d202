"""The ``stale-workflows`` job: a running remediation with no progress (no journal line, no
saved step) for longer than ``schedule.staleAfter`` is cancelled and failed with that reason."""

from __future__ import annotations

import structlog

from healer.jobs.context import JobContext
from healer.store.sqlite import RUNNING
from healer.workflow.runner import WorkflowRunner

log = structlog.get_logger("healer.jobs.stale")


class StaleWorkflows:
    def __init__(self, ctx: JobContext, *, runner: WorkflowRunner) -> None:
        self._ctx = ctx
        self._runner = runner
        # The daemon's own start counts as progress: a workflow resumed after a long downtime
        # gets the full bound again.
        self._started_at = ctx.clock.now()

    async def expire(self) -> list[str]:
        """Fail running workflows with no progress for longer than ``schedule.staleAfter``."""
        ctx = self._ctx
        if ctx.store.writes.problem is not None:
            # Suspended, not stuck: each resumes (and journals it) once the state database
            # takes writes again (healer.store.writable), and failing one could not be saved.
            return []
        bound = ctx.config.schedule.stale_after
        now = ctx.clock.now()
        expired = []
        for wf in ctx.store.workflows(state=RUNNING):
            if not ctx.planner.owns(wf.cluster):
                continue  # another replica's to judge (healer run --replicas)
            if self._runner.waiting_for_api(wf.id):
                # Paused, not stuck: its step goes on (and journals it) once the Kubernetes
                # API answers again (healer.workflow.retry).
                continue
            journal = ctx.store.steps(wf.id)
            last = max(
                [wf.started_at, wf.updated_at, self._started_at, *(s["at"] for s in journal)]
            )
            idle = now - last
            if idle <= bound:
                continue
            reason = (
                f"no progress for {idle:.0f}s at step {wf.step} (schedule.staleAfter "
                f"{bound:.0f}s); the last journal line was "
                f"{journal[-1]['step']}/{journal[-1]['status']}"
                if journal
                else f"no progress for {idle:.0f}s (schedule.staleAfter {bound:.0f}s)"
            )
            with structlog.contextvars.bound_contextvars(
                cluster=wf.cluster, pool=wf.pool, node=wf.node, workflow=wf.id
            ):
                log.error("remediation.stale", step=wf.step, idle=round(idle))
            if await self._runner.expire(wf.id, reason) is not None:
                expired.append(wf.id)
        return expired
