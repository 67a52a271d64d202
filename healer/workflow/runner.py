"""The remediation workflow: cordon -> drain -> delete the Node -> destroy the machine -> create
the replacement -> wait until it joins. Durable, idempotent, resumable.

Every step is journalled before it runs and after it ends, and the workflow's position is saved
in the same transaction as the "done" line, so a crash anywhere resumes at the step that was
running. Each step is safe to repeat: cordon and delete tolerate a missing Node; the old machine
is identified (id + tags) and saved *before* it is destroyed, and the provider re-reads it by id,
so a retried destroy never hits another machine and never destroys twice; the replacement's
name is fixed when the workflow is created, and create is idempotent by name + tags, so a retried
create never makes two machines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from healer import failpoints, metrics
from healer.clock import Clock
from healer.config import ClusterConfig, HealerConfig
from healer.errors import HealerError, PermanentError, TemporaryError
from healer.provisioning.naming import owned_by, ownership_tags
from healer.store.sqlite import FAILED, RUNNING, SUCCEEDED, Store, WorkflowRecord
from healer.workflow.drain import drain
from healer.workflow.retry import with_retries
from providers.base import Machine, MachineRequest, MachineState, Provider

log = structlog.get_logger("healer.workflow")

_CONTEXT_KEYS = frozenset({"cluster", "pool", "node", "workflow"})
STEPS = ("cordon", "drain", "delete_node", "destroy_machine", "create_machine", "wait_for_join")
DONE = "done"

UserDataFor = Callable[[ClusterConfig, str, str], str]  # (cluster, pool, machine name) -> user data
Finished = Callable[[WorkflowRecord], Awaitable[None]]


class StaleWorkflow(PermanentError):
    """A running workflow made no progress for longer than ``schedule.staleAfter``."""


def _machine_json(m: Machine) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "tags": dict(m.tags),
        "state": str(m.state),
        "private_ips": list(m.private_ips),
        "created_at": m.created_at,
    }


def _machine_from_json(d: dict[str, Any]) -> Machine:
    return Machine(
        id=d["id"],
        name=d["name"],
        state=MachineState(d.get("state", "unknown")),
        tags=d.get("tags", {}),
        private_ips=tuple(d.get("private_ips", ())),
        created_at=d.get("created_at"),
        extra={},
    )


class WorkflowRunner:
    def __init__(
        self,
        *,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        kube: Mapping[str, Any],
        providers: Mapping[str, Provider],
        user_data: UserDataFor,
        on_finished: Finished | None = None,
        join_poll_interval: float = 2.0,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._kube = kube
        self._providers = providers
        self._user_data = user_data
        self._on_finished = on_finished
        self._join_poll = join_poll_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config

    @property
    def in_flight(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())

    async def start(self, wf: WorkflowRecord) -> None:
        if wf.id in self._tasks and not self._tasks[wf.id].done():
            return
        self._tasks[wf.id] = asyncio.create_task(self._run(wf), name=f"workflow-{wf.id}")

    async def resume_all(self) -> int:
        """Pick up every workflow a previous process left running."""
        pending = self._store.workflows(state=RUNNING)
        for wf in pending:
            log.info("remediation.resumed", workflow=wf.id, node=wf.node, step=wf.step)
            self._store.audit(
                at=self._clock.now(),
                cluster=wf.cluster,
                node=wf.node,
                pool=wf.pool,
                workflow_id=wf.id,
                event="remediation.resumed",
                reason=wf.step,
                message=f"resuming the replacement of {wf.node} at step {wf.step}",
            )
            await self.start(wf)
        return len(pending)

    async def wait_idle(self) -> None:
        while tasks := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.wait(tasks)

    async def stop(self) -> None:
        """Cancel running workflows; their state on disk says where each will resume."""
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def untracked(self) -> list[str]:
        """Ids of workflows the store says are running but no task of this runner is running:
        a workflow healer lost track of (the watchdog reports it)."""
        return [
            wf.id
            for wf in self._store.workflows(state=RUNNING)
            if (task := self._tasks.get(wf.id)) is None or task.done()
        ]

    async def expire(self, wf_id: str, reason: str) -> WorkflowRecord | None:
        """Fail a running workflow that stopped making progress (the scheduler's stale-workflow
        job): cancel its task, then record the failure with ``reason``. Returns the failed
        record, or None when it was no longer running."""
        task = self._tasks.get(wf_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        wf = self._store.workflow(wf_id)
        if wf is None or wf.state != RUNNING:
            return None
        with structlog.contextvars.bound_contextvars(
            cluster=wf.cluster, node=wf.node, pool=wf.pool, workflow=wf.id
        ):
            wf = self._fail(wf, StaleWorkflow(reason))
        if self._on_finished is not None:
            await self._on_finished(wf)
        return wf

    # -- running ----------------------------------------------------------------------------
    async def _run(self, wf: WorkflowRecord) -> None:
        with structlog.contextvars.bound_contextvars(
            cluster=wf.cluster, node=wf.node, pool=wf.pool, workflow=wf.id
        ):
            try:
                wf = await self._steps(wf)
            except asyncio.CancelledError:
                # The record on disk is the current one (its step, machine and replacement);
                # the local ``wf`` is what this task started with.
                wf = self._store.workflow(wf.id) or wf
                if self._stopping:
                    # A checkpoint line: the journal shows where the daemon stopped and where
                    # the next one resumes. A synchronous write, so it is whole or absent.
                    self._store.journal(
                        wf.id, wf.step, "suspended", self._clock.now(), {"why": "daemon stopping"}
                    )
                log.info("remediation.suspended", step=wf.step)
                raise
            except (HealerError, Exception) as exc:
                wf = self._fail(wf, exc)  # _fail re-reads the saved record
            if self._on_finished is not None and wf.state != RUNNING:
                await self._on_finished(wf)

    async def _steps(self, wf: WorkflowRecord) -> WorkflowRecord:
        cluster = self._config.cluster(wf.cluster)
        if cluster is None:
            raise PermanentError(f"cluster {wf.cluster!r} is no longer in the configuration")
        while wf.step != DONE:
            step = wf.step
            started = self._clock.now()
            self._store.journal(wf.id, step, "started", started, {})
            log.info(f"remediation.{step}_started")
            failpoints.hit(f"workflow.{step}.before")
            detail, wf = await with_retries(
                lambda step=step, wf=wf: getattr(self, f"_step_{step}")(wf, cluster),
                policy=cluster.remediation.retry,
                clock=self._clock,
                what=step,
            )
            failpoints.hit(f"workflow.{step}.after")
            now = self._clock.now()
            nxt = STEPS[STEPS.index(step) + 1] if step != STEPS[-1] else DONE
            detail["seconds"] = round(now - started, 3)
            wf = wf.with_(step=nxt, updated_at=now)
            if nxt == DONE:
                wf = wf.with_(state=SUCCEEDED, finished_at=now)
            self._store.update_workflow(wf, journal=(step, "done", detail))
            metrics.STEP_SECONDS.labels(step, "done").observe(now - started)
            # Detail keys must not overwrite the bound context (wait_for_join's "node" is the
            # replacement's name, not the node this workflow replaces).
            log.info(
                f"remediation.{step}_done",
                **{
                    (f"{step}_{k}" if k in _CONTEXT_KEYS else k): v
                    for k, v in detail.items()
                    if k != "step"
                },
            )
        self._store.audit(
            at=self._clock.now(),
            cluster=wf.cluster,
            node=wf.node,
            pool=wf.pool,
            workflow_id=wf.id,
            event="remediation.succeeded",
            reason=wf.reason,
            message=f"{wf.node} replaced by {wf.replacement_name} in "
            f"{(wf.finished_at or 0) - wf.started_at:.1f}s",
            evidence={"steps": self._store.steps(wf.id)},
        )
        log.info("remediation.succeeded", replacement=wf.replacement_name)
        return wf

    def _fail(self, wf: WorkflowRecord, exc: BaseException) -> WorkflowRecord:
        # The step that failed is the one last saved, not the one this task started from.
        wf = self._store.workflow(wf.id) or wf
        now = self._clock.now()
        kind = "temporary error, retries exhausted" if isinstance(exc, TemporaryError) else "error"
        message = f"step {wf.step} failed ({kind}): {exc}"
        wf = wf.with_(state=FAILED, error=message, updated_at=now, finished_at=now)
        self._store.update_workflow(wf, journal=(wf.step, "failed", {"error": str(exc)}))
        began = [s["at"] for s in self._store.steps(wf.id) if s["step"] == wf.step]
        metrics.STEP_SECONDS.labels(wf.step, "failed").observe(
            max(0.0, now - (began[0] if began else wf.started_at))
        )
        self._store.audit(
            at=now,
            cluster=wf.cluster,
            node=wf.node,
            pool=wf.pool,
            workflow_id=wf.id,
            event="remediation.failed",
            reason=type(exc).__name__,
            message=message,
        )
        log.error("remediation.failed", step=wf.step, error=str(exc), exc_type=type(exc).__name__)
        return wf

    # -- steps: each returns (detail for the journal, the possibly updated workflow) ---------
    def _kube_for(self, wf: WorkflowRecord) -> Any:
        return self._kube[wf.cluster]

    def _provider_for(self, wf: WorkflowRecord) -> Provider:
        return self._providers[wf.cluster]

    async def _step_cordon(self, wf: WorkflowRecord, cluster: ClusterConfig):  # type: ignore[no-untyped-def]
        present = await self._kube_for(wf).cordon(wf.node)
        return {"node_present": present}, wf

    async def _step_drain(self, wf: WorkflowRecord, cluster: ClusterConfig):  # type: ignore[no-untyped-def]
        policy = cluster.remediation_for(wf.pool)
        report = await drain(
            self._kube_for(wf), wf.node, clock=self._clock, timeout=policy.drain_timeout
        )
        if report.timed_out:
            self._store.audit(
                at=self._clock.now(),
                cluster=wf.cluster,
                node=wf.node,
                pool=wf.pool,
                workflow_id=wf.id,
                event="remediation.drain_timed_out",
                reason="DrainTimeout",
                message=f"drain of {wf.node} did not finish in {policy.drain_timeout:.0f}s; "
                "continuing: the node is already unhealthy",
                evidence=report.to_json(),
            )
        return report.to_json(), wf

    async def _step_delete_node(self, wf: WorkflowRecord, cluster: ClusterConfig):  # type: ignore[no-untyped-def]
        existed = await self._kube_for(wf).delete_node(wf.node)
        return {"existed": existed}, wf

    async def _step_destroy_machine(self, wf: WorkflowRecord, cluster: ClusterConfig):  # type: ignore[no-untyped-def]
        provider = self._provider_for(wf)
        if wf.machine is None:
            found = await provider.get_machine(wf.node)
            if found is None:
                return {
                    "machine": None,
                    "note": f"no machine named {wf.node}; nothing to destroy",
                }, wf
            if not owned_by(found.tags, wf.cluster):
                raise PermanentError(
                    f"machine {found.name} ({found.id}) is not tagged as healer's for cluster "
                    f"{wf.cluster}; refusing to destroy it"
                )
            # Saved before the destroy: a retry after a crash targets this exact machine.
            wf = wf.with_(machine=_machine_json(found), updated_at=self._clock.now())
            self._store.update_workflow(wf, journal=("destroy_machine", "identified", wf.machine))
        assert wf.machine is not None
        destroyed = await provider.destroy_machine(_machine_from_json(wf.machine))
        return {"machine": wf.machine["id"], "destroyed": destroyed}, wf

    async def _step_create_machine(self, wf: WorkflowRecord, cluster: ClusterConfig):  # type: ignore[no-untyped-def]
        pool = cluster.pool(wf.pool)
        if pool is None:
            raise PermanentError(f"pool {wf.pool!r} is no longer in the configuration")
        request = MachineRequest(
            name=wf.replacement_name,
            size=pool.machine.size,
            image=pool.machine.image,
            location=pool.machine.location,
            tags=ownership_tags(wf.cluster, pool.name, wf.id),
            user_data=self._user_data(cluster, pool.name, wf.replacement_name),
            extra=pool.machine.extra,
        )
        machine = await self._provider_for(wf).create_machine(request)
        replacement = _machine_json(machine) | {"requested_at": self._clock.now()}
        if wf.replacement is not None:  # resumed: keep the first request time for the timeout
            replacement["requested_at"] = wf.replacement.get(
                "requested_at", replacement["requested_at"]
            )
        wf = wf.with_(replacement=replacement)
        return {"machine": machine.id, "name": machine.name}, wf

    async def _step_wait_for_join(self, wf: WorkflowRecord, cluster: ClusterConfig):  # type: ignore[no-untyped-def]
        timeout = cluster.health_for(wf.pool).node_startup_timeout
        since = (wf.replacement or {}).get("requested_at") or wf.updated_at
        deadline = since + timeout
        kube = self._kube_for(wf)
        while True:
            info = await kube.get_node(wf.replacement_name)
            if info is not None and info.conditions.get("Ready", ("Unknown", 0.0))[0] == "True":
                return {
                    "node": wf.replacement_name,
                    "joined_after": round(self._clock.now() - since, 3),
                }, wf
            if self._clock.now() >= deadline:
                raise PermanentError(
                    f"replacement {wf.replacement_name} did not become a Ready node within "
                    f"{timeout:.0f}s (nodeStartupTimeout)"
                )
            await self._clock.sleep(min(self._join_poll, max(0.0, deadline - self._clock.now())))
