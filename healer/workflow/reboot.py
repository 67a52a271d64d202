"""The planned reboot as a durable workflow: cordon, drain, hand the grant to the agent, wait for
the reboot and the node Ready again, uncordon, release the grant.

The reboot arbiter (:mod:`healer.planner.reboots`) decides *whether* a node may reboot; this
module owns *how*: the pods leave through the Eviction API first (the repairs' drain,
:mod:`healer.workflow.drain`, PodDisruptionBudgets honoured, never overridden), and the agent is
told it may reboot only once the node is empty. A drain that does not finish within
``reboots.drainTimeout`` does not reboot the node: it is uncordoned again, the grant released,
and the node's next asks are refused with ``DrainTimeout`` (naming the pods and the budget that
held them) for ``reboots.drainRetryAfter``.

Durable like a repair: every step is journalled before it runs and when it ends, in the same
journal as the repairs (the store's workflow steps, under the grant's workflow id), and the grant
itself, with that id, is in the audit log. A restarted daemon finds the outstanding grants there
and resumes each workflow at the step its journal says; every step is safe to repeat (cordon and
uncordon are idempotent, the hand-over of a grant already handed is a no-op, the release of a
grant already released too), so a crash anywhere ends with the node rebooted once and
uncordoned. A node someone else had cordoned before the reboot stays cordoned after it: whether
it was is read, and journalled, before healer cordons it. The node's reboot labels and
annotations (``reboots.preRebootNodeLabels`` ..., :mod:`healer.kube.reboot_marks`) are written at
the cordon step and taken off (the post set written) at the uncordon step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import structlog

from healer import failpoints
from healer.clock import Clock
from healer.config import ClusterConfig, HealerConfig
from healer.errors import HealerError
from healer.kube.reboot_marks import NodeMetadata, Stage, mark_reboot
from healer.model import NodeKey
from healer.planner.reboots import Grant, RebootArbiter
from healer.store.sqlite import Store
from healer.workflow.drain import DrainReport, drain
from healer.workflow.ports import NodeOps
from healer.workflow.retry import with_retries

log = structlog.get_logger("healer.workflow.reboot")

STEPS: Final = ("cordon", "drain", "hand_over", "wait_reboot", "uncordon", "release")
DONE: Final = "done"
# How a reboot workflow ended (the release's reason, in the audit log).
REBOOTED: Final = "Rebooted"
DRAIN_TIMEOUT: Final = "DrainTimeout"
DRAIN_FAILED: Final = "DrainFailed"
EXPIRED: Final = "Expired"
REBOOT_TIMEOUT: Final = "RebootTimeout"
NODE_GONE: Final = "NodeGone"


class RebootNodeOps(NodeOps, NodeMetadata, Protocol):
    """The workflow's port, uncordon and the reboot marks (:class:`healer.kube.client.KubeClient`
    has them)."""

    async def uncordon(self, name: str) -> bool:
        """Mark the Node schedulable again. False if it no longer exists."""
        ...


class RebootWorkflows:
    """Runs one reboot workflow per grant the arbiter gives (its ``start_reboot``)."""

    def __init__(
        self,
        *,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        kube: Mapping[str, RebootNodeOps],
        arbiter: Callable[[], RebootArbiter | None],
        poll_interval: float = 2.0,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._kube = kube
        self._arbiter = arbiter
        self._poll = poll_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config

    @property
    def in_flight(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())

    async def start(self, grant: Grant) -> None:
        """Run ``grant``'s workflow (from where its journal says), unless it runs already."""
        wf = grant.workflow
        if wf is None or (wf in self._tasks and not self._tasks[wf].done()):
            return
        self._tasks[wf] = asyncio.create_task(self._run(grant), name=f"reboot-{wf}")

    async def resume_all(self) -> int:
        """Pick up every reboot workflow a previous process left (its grant is outstanding)."""
        arbiter = self._arbiter()
        if arbiter is None:
            return 0
        resumed = [g for g in arbiter.grants() if g.workflow is not None]
        for grant in resumed:
            log.info(
                "reboot.workflow_resumed",
                cluster=grant.cluster,
                node=grant.node,
                workflow=grant.workflow,
                step=next_step(self._store.steps(grant.workflow or "")),
            )
            await self.start(grant)
        return len(resumed)

    async def wait_idle(self) -> None:
        while tasks := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.wait(tasks)

    async def stop(self) -> None:
        """Cancel the workflows; their journal says where each resumes."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- running ----------------------------------------------------------------------------

    async def _run(self, grant: Grant) -> None:
        assert grant.workflow is not None
        with structlog.contextvars.bound_contextvars(
            cluster=grant.cluster, node=grant.node, pool=grant.pool, workflow=grant.workflow
        ):
            try:
                await self._steps(grant, grant.workflow)
            except asyncio.CancelledError:
                log.info("reboot.workflow_suspended")
                raise
            except Exception as exc:  # a bug: logged, resumed by the next daemon
                log.exception("reboot.workflow_crashed", error=str(exc))

    async def _steps(self, grant: Grant, wf: str) -> None:
        cluster = self._config.cluster(grant.cluster)
        key = NodeKey(grant.cluster, grant.node)
        kube = self._kube.get(grant.cluster)
        arbiter = self._arbiter()
        if cluster is None or kube is None or arbiter is None:
            log.warning("reboot.workflow_orphaned", why="cluster, its API or the arbiter is gone")
            return
        run = _StepRun(self, cluster, key, kube, arbiter, wf)
        fns: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "cordon": run.cordon,
            "drain": run.drain,
            "hand_over": run.hand_over,
            "wait_reboot": run.wait_reboot,
            "uncordon": run.uncordon,
            "release": run.release,
        }
        while (step := next_step(self._store.steps(wf))) != DONE:
            started = self._clock.now()
            self._store.journal(wf, step, "started", started, {})
            log.info(f"reboot.{step}_started")
            failpoints.hit(f"reboot.{step}.before")
            detail = await fns[step]()
            failpoints.hit(f"reboot.{step}.after")
            detail["seconds"] = round(self._clock.now() - started, 3)
            self._store.journal(wf, step, DONE, self._clock.now(), detail)
            log.info(f"reboot.{step}_done", **detail)
        log.info("reboot.workflow_finished", outcome=outcome(self._store.steps(wf)))


def next_step(lines: list[dict[str, Any]]) -> str:
    """Pure: the next step of a reboot workflow from its journal. After a drain that did not
    finish (or a node that is gone) the hand-over and the wait are skipped: uncordon, release."""
    done = {line["step"] for line in lines if line["status"] == DONE}
    ended = outcome(lines)
    for step in STEPS:
        if step in done:
            continue
        if ended is not None and step in ("drain", "hand_over", "wait_reboot"):
            continue
        return step
    return DONE


def outcome(lines: list[dict[str, Any]]) -> str | None:
    """How the workflow ended so far (a step's ``outcome``), or None while it is on course."""
    found: str | None = None
    for line in lines:
        if line["status"] == DONE and (value := line["detail"].get("outcome")) is not None:
            found = str(value)
    return found


def already_cordoned(lines: list[dict[str, Any]]) -> bool:
    """Whether the node was unschedulable before healer cordoned it (the first reading)."""
    for line in lines:
        if line["step"] == "cordon" and "already_cordoned" in line["detail"]:
            return bool(line["detail"]["already_cordoned"])
    return False


def drain_message(report: DrainReport, *, node: str, timeout: float, retry: float) -> str:
    """Why a reboot's drain stopped, naming what held it (pods and their budgets' messages)."""
    left = [f"{pod} (blocked: {why})" for pod, why in sorted(report.blocked.items())]
    left += [f"{pod} (still terminating)" for pod in report.waiting]
    return (
        f"not rebooting {node}: its drain did not finish in {timeout:.0f}s: "
        f"{'; '.join(left) or 'pods left'}; it was uncordoned again and its reboot waits "
        f"{retry:.0f}s (reboots.drainRetryAfter)"
    )


class _StepRun:
    """The steps of one reboot workflow; each safe to repeat."""

    def __init__(
        self,
        owner: RebootWorkflows,
        cluster: ClusterConfig,
        key: NodeKey,
        kube: RebootNodeOps,
        arbiter: RebootArbiter,
        wf: str,
    ) -> None:
        self._o = owner
        self._cluster = cluster
        self._key = key
        self._kube = kube
        self._arbiter = arbiter
        self._wf = wf

    async def _retry(self, fn: Callable[[], Awaitable[Any]], what: str, *, forever: bool) -> Any:
        return await with_retries(
            fn,
            policy=self._cluster.remediation.retry,
            clock=self._o._clock,
            what=what,
            forever=forever,
        )

    async def cordon(self) -> dict[str, Any]:
        lines = self._o._store.steps(self._wf)
        if not any(
            line["step"] == "cordon" and "already_cordoned" in line["detail"] for line in lines
        ):
            # First time here: read (and journal) whether someone else had cordoned it.
            info = await self._retry(
                lambda: self._kube.get_node(self._key.node), "cordon", forever=False
            )
            if info is None:
                return {"outcome": NODE_GONE}
            self._o._store.journal(
                self._wf,
                "cordon",
                "read",
                self._o._clock.now(),
                {"already_cordoned": info.unschedulable},
            )
        if not await self._retry(
            lambda: self._kube.cordon(self._key.node), "cordon", forever=False
        ):
            return {"outcome": NODE_GONE}
        # reboots.preRebootNodeLabels / preRebootNodeAnnotations (healer.kube.reboot_marks)
        await self._retry(self._marks("pre"), "cordon", forever=False)
        return {"already_cordoned": already_cordoned(self._o._store.steps(self._wf))}

    async def drain(self) -> dict[str, Any]:
        policy = self._cluster.reboots
        lines = self._o._store.steps(self._wf)
        first = next((ln["at"] for ln in lines if ln["step"] == "drain"), self._o._clock.now())
        # A resumed drain keeps the deadline of the first try.
        left = max(1.0, policy.drain_timeout - (self._o._clock.now() - float(first)))
        try:
            report = await self._retry(
                lambda: drain(self._kube, self._key.node, clock=self._o._clock, timeout=left),
                "drain",
                forever=False,
            )
        except (HealerError, Exception) as exc:
            message = f"not rebooting {self._key.node}: its drain failed ({exc}); it was uncordoned"
            self._arbiter.hold_back(self._key, message, policy.drain_retry_after)
            log.warning("reboot.drain_failed", error=str(exc))
            return {"outcome": DRAIN_FAILED, "message": message}
        if report.timed_out:
            message = drain_message(
                report,
                node=self._key.node,
                timeout=policy.drain_timeout,
                retry=policy.drain_retry_after,
            )
            self._arbiter.hold_back(self._key, message, policy.drain_retry_after)
            log.warning("reboot.drain_timed_out", blocked=report.blocked, waiting=report.waiting)
            return {"outcome": DRAIN_TIMEOUT, "message": message, "drain": report.to_json()}
        return {"drain": report.to_json()}

    async def hand_over(self) -> dict[str, Any]:
        grant = await self._arbiter.hand_over(self._key)
        if grant is None:
            return {"outcome": NODE_GONE}
        return {"expires_at": grant.expires_at}

    async def wait_reboot(self) -> dict[str, Any]:
        """Until the agent rebooted the node and it is Ready again, or the grant lapsed unused
        (``permitTtl``), or the node did not come back (``rebootTimeout`` after the start: the
        health verdict takes over)."""
        clock = self._o._clock
        while True:
            grant = self._arbiter.grant(self._key)
            now = clock.now()
            if grant is None:
                return {"outcome": NODE_GONE}
            info = await self._retry(
                lambda: self._kube.get_node(self._key.node), "wait_reboot", forever=True
            )
            if info is None:
                return {"outcome": NODE_GONE}
            # Back: the agent said so, or (its message lost while healer was down) the node's
            # Ready condition changed since the reboot started (or was handed over).
            since = info.conditions.get("Ready", ("", 0.0))[1]
            back = grant.booted_at is not None or since > (grant.started_at or grant.granted_at)
            if back and info.ready == "True":
                return {"outcome": REBOOTED}
            if now >= grant.expires_at:
                return {"outcome": EXPIRED if grant.started_at is None else REBOOT_TIMEOUT}
            await clock.sleep(self._o._poll)

    async def uncordon(self) -> dict[str, Any]:
        # The post marks also take the pre ones off, whether the node rebooted or not.
        await self._retry(self._marks("post"), "uncordon", forever=True)
        if already_cordoned(self._o._store.steps(self._wf)):
            return {"uncordoned": False, "why": "it was cordoned before the reboot"}
        found = await self._retry(
            lambda: self._kube.uncordon(self._key.node), "uncordon", forever=True
        )
        return {"uncordoned": bool(found)}

    def _marks(self, stage: Stage) -> Callable[[], Awaitable[bool]]:
        return lambda: mark_reboot(self._kube, self._key.node, self._cluster.reboots, stage)

    async def release(self) -> dict[str, Any]:
        lines = self._o._store.steps(self._wf)
        reason = outcome(lines) or REBOOTED
        message = next(
            (str(ln["detail"]["message"]) for ln in lines if "message" in ln["detail"]), None
        )
        self._arbiter.release(self._key, reason, message)
        return {"reason": reason}


__all__ = ["STEPS", "RebootNodeOps", "RebootWorkflows", "next_step", "outcome"]
