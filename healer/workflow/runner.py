"""The remediation workflow runner: durable, idempotent, resumable, and it fences before it
deletes.

The order of the steps is decided once per workflow (:mod:`healer.workflow.order`, journalled as
a ``plan`` line): ``replace`` (cordon -> drain -> fence -> release -> delete the Node -> destroy
the machine -> create the replacement -> wait until it joins) or ``surge`` (the replacement is
created and Ready before the old node is drained and fenced). Either way the old machine is
powered off (or destroyed) *before* its Node object is deleted, and ``release`` marks the Node
``node.kubernetes.io/out-of-service`` so its pods are force-deleted only once the machine is off.

Every step is journalled before it runs and after it ends, and the workflow's position is saved
in the same transaction as the "done" line, so a crash anywhere resumes at the step that was
running. Each step is safe to repeat: cordon, taint and delete tolerate a missing Node; the old
machine is identified (id + tags) and saved *before* it is fenced, and the provider re-reads it
by id, so a retried power-off or destroy never hits another machine and never destroys twice; the
replacement's name is fixed when the workflow is created, and create is idempotent by name +
tags, so a retried create never makes two machines.

While the pool is a machine short (fenced, no replacement yet) a step is retried until it
succeeds, with backoff capped at ``retry.maxDelay``: the pool is whole again soon after the cloud
recovers, with no human action. Each failed attempt is journalled, which is what ``healer
status`` shows.

A journal write the state database does not take (a full disk, a read-only database:
:class:`~healer.errors.StateUnwritable`) suspends the workflow where its journal says it is, as a
crash would: a step whose "done" line was not written is not done, and runs again (it is safe to
repeat) once the database takes writes (:mod:`healer.store.writable`). Nothing is failed for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import structlog

from healer import failpoints
from healer.backoff import call, retrying
from healer.clock import Clock
from healer.cloud.machines import (
    CapacityPreflight,
    Machine,
    MachineRequest,
    MachineState,
    PowerControl,
    Provider,
    can_check_capacity,
)
from healer.config import ClusterConfig, HealerConfig
from healer.config.rollout import spec_tags
from healer.errors import (
    HealerError,
    KubeUnavailable,
    PermanentError,
    StateUnwritable,
    TemporaryError,
)
from healer.kube.records import OUT_OF_SERVICE_VALUE, TAINT_OUT_OF_SERVICE, Taint
from healer.naming import owned_by, ownership_tags
from healer.planner.planner import MANUAL
from healer.store.leases import Fence, Fenced, OwnEverything
from healer.store.recorder import Level, Recorder
from healer.store.sqlite import FAILED, POOL_SHORT, RUNNING, SUCCEEDED, Store, WorkflowRecord
from healer.store.writable import STATE_UNWRITABLE
from healer.telemetry import metrics
from healer.workflow import order
from healer.workflow.drain import after_timeout, drain
from healer.workflow.etcd_steps import EtcdOps, RemoveMember, VerifyMembership
from healer.workflow.order import ALL_STEPS, DONE, REPLACE_STEPS, SURGE_STEPS, Plan
from healer.workflow.ports import NodeOps
from healer.workflow.retry import with_retries

log = structlog.get_logger("healer.workflow")
T = TypeVar("T")

_CONTEXT_KEYS = frozenset({"cluster", "pool", "node", "workflow"})
STEPS = REPLACE_STEPS  # the default order
# The reason of a rolling replacement (`healer apply`, healer.jobs.rollout): like a manual one,
# its node was not unhealthy, so its drain never overrides a PodDisruptionBudget.
ROLLOUT = "Rollout"
__all__ = ["DONE", "STEPS", "SURGE_STEPS", "StaleWorkflow", "Step", "StepResult", "WorkflowRunner"]

# What a step hands back: the detail for its journal line, and the (possibly updated) workflow.
StepResult = tuple[dict[str, Any], WorkflowRecord]


class Step(Protocol):
    """One step of the workflow (cordon, drain, fence, ...): an object with one method. Each is
    safe to repeat (it is retried, and re-run after a crash); its order is
    :mod:`healer.workflow.order`'s business, not its own."""

    async def __call__(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult: ...


UserDataFor = Callable[[ClusterConfig, str, str], str]  # (cluster, pool, machine name) -> user data
# (cluster, pool, new machine, its provider) -> whether keys were pushed: a control-plane
# machine's CA keys and encryption key, never in its user data (healer.provisioning.keydelivery).
DeliverKeys = Callable[[ClusterConfig, str, Machine, Provider], Awaitable[bool]]
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
        kube: Mapping[str, NodeOps],
        providers: Mapping[str, Provider],
        user_data: UserDataFor,
        on_finished: Finished | None = None,
        join_poll_interval: float = 2.0,
        etcd: Mapping[str, EtcdOps] | None = None,
        rng: random.Random | None = None,
        deliver_keys: DeliverKeys | None = None,
        fence: Fence | None = None,
    ) -> None:
        # Which clusters this daemon owns, and the guard of each destructive provider call
        # (healer run --replicas, healer.store.leases); one daemon owns them all.
        self._fence: Fence = fence or OwnEverything()
        self._config = config
        self._deliver_keys = deliver_keys
        self._rng = rng  # the retries' jitter (healer.workflow.retry); None: unseeded
        self._store = store
        self._recorder = Recorder(store, clock=clock, log=log)
        self._clock = clock
        self._kube = kube
        self._providers = providers
        self._user_data = user_data
        self._on_finished = on_finished
        self._join_poll = join_poll_interval
        self._etcd: Mapping[str, EtcdOps] = etcd or {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        # Workflows whose step waits for the Kubernetes API to answer again: since when.
        self._waiting_for_api: dict[str, float] = {}
        # Seconds of drainTimeout each workflow's drain step has spent in its tries so far.
        self._drain_spent: dict[str, float] = {}
        # One object per step, each with one job; the order comes from the workflow's plan.
        self._step_fns: dict[str, Step] = {
            "cordon": self._step_cordon,
            "drain": self._step_drain,
            "preflight": self._step_preflight,
            "fence": self._step_fence,
            "release": self._step_release,
            "delete_node": self._step_delete_node,
            "destroy_machine": self._step_destroy_machine,
            "create_machine": self._step_create_machine,
            "wait_for_join": self._step_wait_for_join,
            # Control-plane machines of clusters whose etcd healer reads (etcd_steps.py).
            "etcd_remove_member": RemoveMember(etcd=self._etcd, store=store, clock=clock),
            "etcd_verify": VerifyMembership(
                etcd=self._etcd, store=store, clock=clock, poll_interval=join_poll_interval
            ),
        }
        missing = set(ALL_STEPS) - self._step_fns.keys()
        assert not missing, f"steps in healer.workflow.order without a Step: {sorted(missing)}"

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config

    @property
    def in_flight(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())

    async def start(self, wf: WorkflowRecord) -> None:
        if wf.id in self._tasks and not self._tasks[wf.id].done():
            return
        self._tasks[wf.id] = asyncio.create_task(self._run(wf), name=f"workflow-{wf.id}")

    async def resume_all(self, cluster: str | None = None) -> int:
        """Pick up every workflow a previous process (or, for a cluster this replica just
        took over, another replica) left running, of the clusters this daemon owns."""
        pending = [
            wf
            for wf in self._store.workflows(state=RUNNING)
            if (cluster is None or wf.cluster == cluster) and self._fence.owns(wf.cluster)
        ]
        for wf in pending:
            self._audit(
                wf,
                event="remediation.resumed",
                reason=wf.step,
                message=f"resuming the replacement of {wf.node} at step {wf.step}",
                step=wf.step,
            )
            await self.start(wf)
        return len(pending)

    async def abandon(self, cluster: str) -> int:
        """Stop working ``cluster`` (another replica owns it now): cancel its workflows without
        a write; their journal says where the new owner resumes them."""
        tasks = [
            task
            for wf_id, task in self._tasks.items()
            if not task.done() and (wf := self._store.workflow(wf_id)) and wf.cluster == cluster
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def wait_idle(self) -> None:
        while tasks := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.wait(tasks)

    async def stop(self) -> None:
        """Cancel running workflows; their state on disk says where each will resume."""
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def waiting_for_api(self, wf_id: str) -> bool:
        """Whether ``wf_id``'s step is waiting for the Kubernetes API to answer again: paused,
        not stuck (the stale-workflow job leaves it alone)."""
        return wf_id in self._waiting_for_api

    def untracked(self) -> list[str]:
        """Ids of workflows the store says are running but no task of this runner is running:
        a workflow healer lost track of (the watchdog reports it)."""
        return [
            wf.id
            for wf in self._store.workflows(state=RUNNING)
            if self._fence.owns(wf.cluster)
            and ((task := self._tasks.get(wf.id)) is None or task.done())
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

    def _audit(
        self,
        wf: WorkflowRecord,
        *,
        event: str,
        reason: str,
        message: str,
        evidence: dict[str, Any] | None = None,
        at: float | None = None,
        level: Level = "info",
        **fields: Any,
    ) -> None:
        """The audit row and the log line of ``event`` about ``wf``'s node, tagged with the
        workflow (:class:`healer.store.recorder.Recorder`); ``fields`` go on the line only."""
        self._recorder.record(
            event,
            at=at,
            cluster=wf.cluster,
            node=wf.node,
            pool=wf.pool,
            workflow_id=wf.id,
            reason=reason,
            message=message,
            evidence=evidence,
            level=level,
            **fields,
        )

    # -- running ----------------------------------------------------------------------------
    async def _run(self, wf: WorkflowRecord) -> None:
        with structlog.contextvars.bound_contextvars(
            cluster=wf.cluster, node=wf.node, pool=wf.pool, workflow=wf.id
        ):
            while True:
                try:
                    wf = await self._attempt(wf)
                    break
                except StateUnwritable as exc:
                    wf = await self._suspend_until_writable(wf, exc)
            if self._on_finished is not None and wf.state != RUNNING:
                await self._on_finished(wf)

    async def _attempt(self, wf: WorkflowRecord) -> WorkflowRecord:
        """Run the steps from where the journal says; a failure is recorded as the workflow's.
        Raises :class:`StateUnwritable` when a write of the journal (or of the failure) fails."""
        try:
            return await self._steps(wf)
        except asyncio.CancelledError:
            # The record on disk is the current one (its step, machine and replacement);
            # the local ``wf`` is what this task started with.
            wf = self._store.workflow(wf.id) or wf
            if self._stopping:
                # A checkpoint line: the journal shows where the daemon stopped and where
                # the next one resumes. A synchronous write, so it is whole or absent.
                with contextlib.suppress(StateUnwritable, Fenced):
                    self._store.journal(
                        wf.id, wf.step, "suspended", self._clock.now(), {"why": "daemon stopping"}
                    )
            log.info("remediation.suspended", step=wf.step)
            raise
        except StateUnwritable:
            raise
        except Fenced as exc:
            return self._abandoned(wf, exc)
        except (HealerError, Exception) as exc:
            try:
                return self._fail(wf, exc)  # _fail re-reads the saved record
            except Fenced as fenced:  # the failure is no longer ours to record either
                return self._abandoned(wf, fenced)

    def _abandoned(self, wf: WorkflowRecord, exc: Fenced) -> WorkflowRecord:
        """Another replica owns the cluster now: nothing more is written or done here (the
        fence logged ``ownership.fenced``); the new owner resumes from the journal."""
        log.warning("remediation.abandoned", step=wf.step, reason="Fenced", error=str(exc))
        return wf

    async def _suspend_until_writable(
        self, wf: WorkflowRecord, exc: StateUnwritable
    ) -> WorkflowRecord:
        """The journal did not take a write: wait (no new step) until the state database takes
        writes, then go on from the saved record, as after a crash. The "resumed" journal line
        is the workflow's progress (the stale-workflow job counts from it)."""
        saved = self._store.workflow(wf.id) or wf
        log.warning(
            "remediation.suspended",
            step=saved.step,
            reason=STATE_UNWRITABLE,
            kind=exc.kind,
            detail="the state database takes no writes; resuming at this step when it does",
        )
        while True:
            await self._store.writes.wait_writable()
            saved = self._store.workflow(wf.id) or saved
            try:
                self._store.journal(
                    wf.id, saved.step, "resumed", self._clock.now(), {"why": "StateWritable"}
                )
            except StateUnwritable:
                continue  # unwritable again already: wait for the next recovery
            break
        log.info("remediation.resumed", step=saved.step, reason="StateWritable")
        return saved

    async def _steps(self, wf: WorkflowRecord) -> WorkflowRecord:
        cluster = self._config.cluster(wf.cluster)
        if cluster is None:
            raise PermanentError(f"cluster {wf.cluster!r} is no longer in the configuration")
        plan = await self._plan(wf, cluster)
        wf_id = wf.id
        while True:
            lines = self._store.steps(wf.id)
            plan = order.plan_from_journal(lines) or plan
            done = order.done_steps(lines)
            step = order.next_step(plan, done)
            if step == DONE:
                break
            short = order.pool_short(plan, done)
            started = self._clock.now()
            self._store.journal(wf.id, step, "started", started, {"pool_short": short})
            log.info(f"remediation.{step}_started", pool_short=short)
            failpoints.hit(f"workflow.{step}.before")
            try:
                detail, wf = await with_retries(
                    _bind(self._step_fns[step], wf, cluster),
                    policy=cluster.remediation.retry,
                    clock=self._clock,
                    what=step,
                    # A pool short of a machine is never left so: retried until the step succeeds.
                    forever=short,
                    on_retry=self._journal_retry(wf_id, step, short=short),
                    on_outage=self._journal_outage(wf_id, step),
                    rng=self._rng,
                )
            finally:
                self._waiting_for_api.pop(wf_id, None)
                self._drain_spent.pop(wf_id, None)
            failpoints.hit(f"workflow.{step}.after")
            now = self._clock.now()
            lines_after = [*lines, {"step": step, "status": DONE, "detail": detail}]
            plan = order.plan_from_journal(lines_after) or plan
            nxt = order.next_step(plan, done | {step})
            detail["seconds"] = round(now - started, 3)
            wf = wf.with_(step=nxt, updated_at=now)
            if nxt == DONE:
                wf = wf.with_(state=SUCCEEDED, finished_at=now)
            self._store.update_workflow(wf, journal=(step, DONE, detail))
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
        wf = self._store.workflow(wf.id) or wf
        self._audit(
            wf,
            event="remediation.succeeded",
            reason=wf.reason,
            message=f"{wf.node} replaced by {wf.replacement_name} in "
            f"{(wf.finished_at or 0) - wf.started_at:.1f}s",
            evidence={"steps": self._store.steps(wf.id)},
            replacement=wf.replacement_name,
        )
        return wf

    def _journal_retry(
        self, wf_id: str, step: str, *, short: bool
    ) -> Callable[[int, float, BaseException | None], None]:
        """The journal line of each retry of ``step`` (what ``healer status`` shows)."""

        def journal(attempt: int, wait: float, exc: BaseException | None) -> None:
            self._store.journal(
                wf_id,
                step,
                order.RETRYING,
                self._clock.now(),
                {"attempt": attempt, "wait": round(wait, 2), "error": str(exc), POOL_SHORT: short},
            )

        return journal

    def _journal_outage(self, wf_id: str, step: str) -> Callable[[KubeUnavailable | None], None]:
        """One journal line when ``step`` starts waiting for the Kubernetes API, one when a try
        ends without it away again (the second is progress for the stale-workflow job)."""

        def journal(exc: KubeUnavailable | None) -> None:
            now = self._clock.now()
            if exc is not None:
                self._waiting_for_api[wf_id] = now
                self._store.journal(
                    wf_id, step, order.RETRYING, now, {"waiting_for": "KubeAPI", "error": str(exc)}
                )
            else:
                since = self._waiting_for_api.pop(wf_id, now)
                detail = {"why": "KubeReachable", "waited": round(now - since, 2)}
                self._store.journal(wf_id, step, "resumed", now, detail)

        return journal

    async def _plan(self, wf: WorkflowRecord, cluster: ClusterConfig) -> Plan:
        """The workflow's order of steps: read back from the journal, or decided now (once) and
        journalled before the first step runs."""
        lines = self._store.steps(wf.id)
        found = order.plan_from_journal(lines)
        if found is not None:
            return found
        if order.done_steps(lines) - {"created"}:
            # Started by a healer from before plans: it was in the replace order. Steps it has
            # not done (fence, release) run next, so its machine is still fenced first.
            plan = Plan(order.REPLACE, STEPS, "Resumed", "resumed from before step plans")
        else:
            # A rolling replacement (healer apply) says which order its budget allows.
            strategy = wf.evidence.get("strategy") or cluster.remediation_for(wf.pool).strategy
            node_ready = False
            if strategy == order.SURGE:
                info = await with_retries(
                    lambda: self._kube_for(wf).get_node(wf.node),
                    policy=cluster.remediation.retry,
                    clock=self._clock,
                    what="plan",
                )
                node_ready = info is not None and info.ready == "True"
            provider = self._provider_for(wf)
            plan = order.choose_plan(
                strategy=strategy,
                role=str(wf.role),
                node_ready=node_ready,
                can_preflight=can_check_capacity(provider),
                provider=provider.name,
                etcd=cluster.etcd.enabled and wf.cluster in self._etcd,
            )
        self._store.journal(
            wf.id, order.PLAN_STEP, order.PLAN_DECIDED, self._clock.now(), plan.to_json()
        )
        log.info("remediation.planned", strategy=plan.strategy, reason=plan.reason)
        return plan

    def _fail(self, wf: WorkflowRecord, exc: BaseException) -> WorkflowRecord:
        # The step that failed is the one last saved, not the one this task started from.
        wf = self._store.workflow(wf.id) or wf
        now = self._clock.now()
        kind = "temporary error, retries exhausted" if isinstance(exc, TemporaryError) else "error"
        message = f"step {wf.step} failed ({kind}): {exc}"
        lines = self._store.steps(wf.id)
        plan = order.plan_from_journal(lines) or Plan(order.REPLACE, STEPS, "", "")
        short = order.pool_short(plan, order.done_steps(lines))
        if short:
            # Marked so that neither the planner's cooldown nor drift repair's skip holds back
            # the machine this pool is missing.
            message += (
                f"; pool {wf.pool} is a machine short (the old machine is fenced): drift repair "
                "restores it"
            )
        wf = wf.with_(state=FAILED, error=message, updated_at=now, finished_at=now)
        self._store.update_workflow(
            wf, journal=(wf.step, "failed", {"error": str(exc), POOL_SHORT: short})
        )
        began = [s["at"] for s in self._store.steps(wf.id) if s["step"] == wf.step]
        metrics.STEP_SECONDS.labels(wf.step, "failed").observe(
            max(0.0, now - (began[0] if began else wf.started_at))
        )
        self._audit(
            wf,
            at=now,
            event="remediation.failed",
            reason=type(exc).__name__,
            message=message,
            level="error",
            step=wf.step,
            error=str(exc),
            exc_type=type(exc).__name__,
        )
        return wf

    # -- steps: each returns (detail for the journal, the possibly updated workflow) ---------
    def _kube_for(self, wf: WorkflowRecord) -> NodeOps:
        return self._kube[wf.cluster]

    def _provider_for(self, wf: WorkflowRecord) -> Provider:
        return self._providers[wf.cluster]

    async def _step_cordon(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        present = await self._kube_for(wf).cordon(wf.node)
        return {"node_present": present}, wf

    async def _step_drain(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        policy = cluster.remediation_for(wf.pool)
        # drainTimeout counts the time spent draining, not the waits between tries of the step:
        # an API outage pauses it (no pod can leave meanwhile), and the time before and after
        # it still counts, so a flapping API cannot stretch a drain without end.
        spent = self._drain_spent.get(wf.id, 0.0)
        began = self._clock.now()
        try:
            report = await drain(
                self._kube_for(wf),
                wf.node,
                clock=self._clock,
                timeout=max(0.0, policy.drain_timeout - spent),
            )
        finally:
            self._drain_spent[wf.id] = spent + self._clock.now() - began
        if report.timed_out:
            # Whether the pods left may go with the node (healer.workflow.drain.after_timeout):
            # a workflow started for a node that was not UNHEALTHY carries the reason MANUAL.
            decision = after_timeout(
                report,
                node=wf.node,
                timeout=policy.drain_timeout,
                unhealthy_at_start=None if wf.reason in (MANUAL, ROLLOUT) else wf.reason,
                forced=wf.forced,
            )
            self._audit(
                wf,
                event="remediation.drain_timed_out",
                reason=decision.reason,
                message=decision.message,
                evidence=report.to_json(),
                level="warning",
            )
            if decision.error is not None:
                self._store.journal(wf.id, "drain", "stopped", self._clock.now(), report.to_json())
                raise decision.error
        return report.to_json(), wf

    async def _step_preflight(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        """Surge only: ask the provider whether one more machine fits. A "no" is not an error:
        the workflow goes on in the replace order (its journal line says why)."""
        provider = self._provider_for(wf)
        if not isinstance(provider, CapacityPreflight):
            check_ok, reason, message, available = (
                False,
                order.NO_CAPACITY_PREFLIGHT,
                f"provider {provider.name} cannot check capacity",
                None,
            )
        else:
            check = await provider.check_capacity(self._request(wf, cluster), 1)
            check_ok, reason, message, available = (
                check.ok,
                check.reason,
                check.message,
                check.available,
            )
        if not check_ok:
            self._audit(
                wf,
                event="remediation.surge_refused",
                reason=reason or order.PREFLIGHT_REFUSED,
                message=f"no room to create {wf.replacement_name} before replacing {wf.node} "
                f"({message}); continuing in the replace order",
                level="warning",
            )
        return {"ok": check_ok, "reason": reason, "message": message, "available": available}, wf

    async def _identify(self, wf: WorkflowRecord) -> WorkflowRecord:
        """Find the old machine by name, prove it is healer's, and save it (id + tags) before
        anything is done to it: a retry after a crash targets this exact machine."""
        if wf.machine is not None:
            return wf
        found = await self._provider_for(wf).get_machine(wf.node)
        if found is None:
            return wf
        if not owned_by(found.tags, wf.cluster):
            raise PermanentError(
                f"machine {found.name} ({found.id}) is not tagged as healer's for cluster "
                f"{wf.cluster}; refusing to fence or destroy it"
            )
        machine = _machine_json(found)
        wf = wf.with_(machine=machine, updated_at=self._clock.now())
        self._store.update_workflow(wf, journal=("fence", "identified", machine))
        return wf

    async def _step_fence(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        """Make sure the old machine runs nothing any more: powered off where the provider can,
        destroyed where it cannot. Only then may its Node and pods go."""
        wf = await self._identify(wf)
        if wf.machine is None:
            return {"machine": None, "note": f"no machine named {wf.node}; nothing to fence"}, wf
        provider = self._provider_for(wf)
        machine = _machine_from_json(wf.machine)
        if isinstance(provider, PowerControl):
            how = "powered_off"
            with self._fence.guard(wf.cluster, what="power_off_machine"):
                changed = await provider.power_off_machine(machine)
        else:
            how = "destroyed"
            with self._fence.guard(wf.cluster, what="destroy_machine"):
                changed = await provider.destroy_machine(machine)
        wf = wf.with_(machine={**wf.machine, "fenced": how})
        return {"machine": machine.id, "fenced": how, "changed": changed}, wf

    async def _step_release(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        """The machine is off: mark the Node out-of-service so Kubernetes force-deletes its
        pods and detaches their volumes now, and wait (up to drainTimeout) until they are gone.
        Whatever is left goes with the Node in the next step."""
        kube = self._kube_for(wf)
        taint = Taint(key=TAINT_OUT_OF_SERVICE, effect="NoExecute", value=OUT_OF_SERVICE_VALUE)
        if not await kube.add_taint(wf.node, taint):
            return {"node_present": False}, wf
        timeout = cluster.remediation_for(wf.pool).drain_timeout

        async def pods_left() -> list[str]:
            pods = await kube.pods_on_node(wf.node)
            return [f"{p.namespace}/{p.name}" for p in pods if not p.is_mirror]

        deadline = self._clock.now() + timeout
        left = await self._poll(pods_left, until=lambda left: not left, deadline=deadline)
        return {
            "node_present": True,
            "taint": f"{TAINT_OUT_OF_SERVICE}={OUT_OF_SERVICE_VALUE}:NoExecute",
            "pods_left": left,
            "timed_out": bool(left),
        }, wf

    async def _step_delete_node(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        with self._fence.guard(wf.cluster, what="delete_node"):
            existed = await self._kube_for(wf).delete_node(wf.node)
        return {"existed": existed}, wf

    async def _step_destroy_machine(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        wf = await self._identify(wf)  # already done by fence, except in workflows from before it
        if wf.machine is None:
            return {"machine": None, "note": f"no machine named {wf.node}; nothing to destroy"}, wf
        if wf.machine.get("fenced") == "destroyed":
            return {
                "machine": wf.machine["id"],
                "destroyed": False,
                "note": "destroyed by fence",
            }, wf
        with self._fence.guard(wf.cluster, what="destroy_machine"):
            destroyed = await self._provider_for(wf).destroy_machine(_machine_from_json(wf.machine))
        return {"machine": wf.machine["id"], "destroyed": destroyed}, wf

    def _request(self, wf: WorkflowRecord, cluster: ClusterConfig) -> MachineRequest:
        pool = cluster.pool(wf.pool)
        if pool is None:
            raise PermanentError(f"pool {wf.pool!r} is no longer in the configuration")
        return MachineRequest(
            name=wf.replacement_name,
            size=pool.machine.size,
            image=pool.machine.image,
            location=pool.zone_for(wf.replacement_name),
            tags={**ownership_tags(wf.cluster, pool.name, wf.id), **spec_tags(pool)},
            user_data=self._user_data(cluster, pool.name, wf.replacement_name),
            extra=pool.machine.extra,
        )

    async def _step_create_machine(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        with self._fence.guard(wf.cluster, what="create_machine"):
            machine = await self._provider_for(wf).create_machine(self._request(wf, cluster))
        replacement = _machine_json(machine) | {"requested_at": self._clock.now()}
        if wf.replacement is not None:  # resumed: keep the first request time for the timeout
            replacement["requested_at"] = wf.replacement.get(
                "requested_at", replacement["requested_at"]
            )
        wf = wf.with_(replacement=replacement)
        return {"machine": machine.id, "name": machine.name}, wf

    async def _step_wait_for_join(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        timeout = cluster.health_for(wf.pool).node_startup_timeout
        since = (wf.replacement or {}).get("requested_at") or wf.updated_at
        kube = self._kube_for(wf)
        keys_pushed = False
        if self._deliver_keys is not None and wf.replacement is not None and wf.pool:
            # A control-plane replacement waits for its keys before kubeadm joins.
            keys_pushed = await self._deliver_keys(
                cluster, wf.pool, _machine_from_json(wf.replacement), self._provider_for(wf)
            )

        async def joined() -> bool:
            info = await kube.get_node(wf.replacement_name)
            return info is not None and info.ready == "True"

        # The deadline counts from the request, so a resumed workflow does not start it again.
        if not await self._poll(joined, until=bool, deadline=since + timeout):
            raise PermanentError(
                f"replacement {wf.replacement_name} did not become a Ready node within "
                f"{timeout:.0f}s (nodeStartupTimeout)"
            )
        detail: dict[str, Any] = {
            "node": wf.replacement_name,
            "joined_after": round(self._clock.now() - since, 3),
        }
        if keys_pushed:
            detail["keys_pushed"] = True
        return detail, wf

    async def _poll(
        self, check: Callable[[], Awaitable[T]], *, until: Callable[[T], bool], deadline: float
    ) -> T:
        """``check()`` every ``join_poll_interval`` until ``until`` holds for what it returns or
        the clock reaches ``deadline`` (the last wait cut to end there); its last answer either
        way, so a check past the deadline still runs once.
        Errors propagate: they are the step's to retry."""
        every = self._join_poll
        polls = retrying(
            self._clock,
            first=every,
            cap=every,
            multiplier=1.0,
            deadline=deadline,
            retry_on=(),
            retry_result=lambda answer: not until(answer),
        )
        return await call(polls, check)


def _bind(
    step: Step, wf: WorkflowRecord, cluster: ClusterConfig
) -> Callable[[], Awaitable[StepResult]]:
    """``step`` on ``wf``, as one attempt for :func:`~healer.workflow.retry.with_retries`."""

    async def attempt() -> StepResult:
        return await step(wf, cluster)

    return attempt
