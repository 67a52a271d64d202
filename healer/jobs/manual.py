"""Operator requests: how `healer remediate NODE` reaches the planner of a running daemon.

The daemon owns the planner, so the CLI cannot decide anything itself. It writes a request row
to the state database the two share (no socket to secure, and the row is audit evidence); the
daemon's :class:`RequestDesk` looks for pending rows (the periodic job ``operator-requests``,
every ``request_poll``), claims one with a compare-and-set, asks the planner (:meth:`healer.planner.planner.Planner.remediate_now`: the same guards unless
``force``; a node that is not UNHEALTHY only when ``confirmed``) and writes the answer back,
which the CLI is waiting for. A started answer carries how long the workflow may take to get
through its drain (``drain_within``: ``drainTimeout``, plus ``nodeStartupTimeout`` in the surge
order): the CLI then follows the workflow in the same database until its drain is done or it
stopped (a PodDisruptionBudget healer may not override stops it before anything destructive), so
the operator learns the outcome that matters, not only that something started.

A request the daemon has not taken when the CLI gives up is cancelled by the CLI (again a
compare-and-set), so an operator who saw "no answer" is never surprised by a remediation hours
later when the daemon comes back. A pending request older than :data:`MAX_AGE` is expired, not
acted on, for the same reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from healer.clock import Clock
from healer.planner.guards import Refusal
from healer.planner.planner import Planner
from healer.store.recorder import Recorder
from healer.store.sqlite import (
    BREAKER_BAD_UPGRADE,
    REQUEST_ANSWERED,
    REQUEST_CANCELLED,
    REQUEST_EXPIRED,
    REQUEST_PENDING,
    REQUEST_TAKEN,
    RequestRow,
    Store,
    WorkflowRecord,
)

log = structlog.get_logger("healer.jobs.manual")

REMEDIATE = "remediate"
MAX_AGE = 300.0
API_UNREACHABLE = "ApiUnreachable"

# Answers: {"result": "started" | "refused" | "error" | "expired" | "timeout", ...}
Answer = dict[str, Any]


class RequestDesk:
    """The daemon side: answers pending operator requests, one at a time, in arrival order."""

    def __init__(self, *, store: Store, planner: Planner, clock: Clock) -> None:
        self._store = store
        self._planner = planner
        self._clock = clock

    async def serve_pending(self) -> int:
        """Answer every pending request; returns how many were taken."""
        taken = 0
        if self._store.writes.problem is not None:
            # No request can be claimed or answered while the state database takes no writes
            # (healer.store.writable); they wait, pending, and are served once it does.
            return taken
        for request in self._store.pending_requests():
            if not self._planner.owns(request.cluster):
                continue  # the replica that owns its cluster answers it (--replicas)
            now = self._clock.now()
            if now - request.at > MAX_AGE:
                answer: Answer = {
                    "result": "expired",
                    "message": f"request {request.id} waited {now - request.at:.0f}s "
                    f"(limit {MAX_AGE:.0f}s) for a daemon; not acted on",
                }
                self._store.move_request(
                    request.id,
                    to=REQUEST_EXPIRED,
                    at=now,
                    answer=answer,
                    only_from=REQUEST_PENDING,
                )
                log.warning("operator.request_expired", request=request.id, node=request.node)
                continue
            if not self._store.move_request(
                request.id, to=REQUEST_TAKEN, at=now, only_from=REQUEST_PENDING
            ):
                continue  # the CLI cancelled it in the meantime
            taken += 1
            answer = await self._answer(request)
            self._store.move_request(
                request.id, to=REQUEST_ANSWERED, at=self._clock.now(), answer=answer
            )
        return taken

    async def _answer(self, request: RequestRow) -> Answer:
        if request.kind != REMEDIATE or request.node is None:
            return {"result": "error", "message": f"unknown request kind {request.kind!r}"}
        force = bool(request.args.get("force", False))
        confirmed = bool(request.args.get("confirmed", False))
        with structlog.contextvars.bound_contextvars(
            cluster=request.cluster, node=request.node, request=request.id
        ):
            answer = await self._remediate(
                request.cluster, request.node, force=force, confirmed=confirmed
            )
            Recorder(self._store, clock=self._clock, log=log).record(
                "operator.remediate",
                cluster=request.cluster,
                node=request.node,
                workflow_id=answer.get("workflow"),
                reason="OperatorForced" if force else "Operator",
                message=f"`healer remediate{' --force' if force else ''}` for "
                f"{request.cluster}/{request.node}: {describe(answer)}",
                evidence={"request": request.id, "answer": answer},
                force=force,
                confirmed=confirmed,
                result=answer.get("result"),
            )
        return answer

    async def _remediate(self, cluster: str, node: str, *, force: bool, confirmed: bool) -> Answer:
        frozen = self._planner.frozen_reason(cluster)
        if frozen is not None and not force:
            return {
                "result": "refused",
                "reason": API_UNREACHABLE,
                "message": f"the API of cluster {cluster} is unreachable ({frozen}); healer "
                "decides nothing on stale data (use --force to override)",
            }
        try:
            outcome = await self._planner.remediate_now(
                cluster, node, force=force, confirmed=confirmed
            )
        except KeyError as exc:
            return {"result": "error", "message": str(exc.args[0]) if exc.args else str(exc)}
        if isinstance(outcome, Refusal):
            return {"result": "refused", "reason": outcome.reason, "message": outcome.message}
        assert isinstance(outcome, WorkflowRecord)
        return {
            "result": "started",
            "workflow": outcome.id,
            "replacement": outcome.replacement_name,
            "forced": force,
            "drain_within": self._planner.drain_within(cluster, outcome.pool),
        }


def describe(answer: Answer) -> str:
    """One line for the terminal and the audit log."""
    result = answer.get("result")
    if result == "started":
        forced = " (forced past the guards)" if answer.get("forced") else ""
        return (
            f"remediation started{forced}: workflow {answer['workflow']}, "
            f"replacement {answer['replacement']}"
        )
    if result == "refused":
        return f"refused ({answer['reason']}): {answer['message']}"
    return f"{result}: {answer.get('message', '')}"


def request_remediation(
    store: Store,
    *,
    cluster: str,
    node: str,
    force: bool,
    timeout: float,
    confirmed: bool = False,
    poll: float = 0.2,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Answer:
    """The CLI side: file a request and wait for the daemon's answer (blocking).

    On timeout the request is cancelled if the daemon has not taken it yet; if it has, the
    answer is waited for a little longer, since the decision is then already being made.
    """
    request_id = uuid.uuid4().hex[:12]
    store.add_request(
        request_id=request_id,
        kind=REMEDIATE,
        cluster=cluster,
        node=node,
        args={"force": force, "confirmed": confirmed},
        at=now(),
    )
    deadline = now() + timeout
    extended = False
    while True:
        row = store.request(request_id)
        if row is not None and row.state in (REQUEST_ANSWERED, REQUEST_EXPIRED) and row.answer:
            return row.answer
        if now() >= deadline:
            if store.move_request(
                request_id, to=REQUEST_CANCELLED, at=now(), only_from=REQUEST_PENDING
            ):
                return {
                    "result": "timeout",
                    "message": f"no daemon took request {request_id} within {timeout:.0f}s; "
                    "it is cancelled. Is healer running on this state directory "
                    "(systemctl status healer)?",
                }
            if extended:
                return {
                    "result": "timeout",
                    "message": f"the daemon took request {request_id} but has not answered; "
                    "see `healer history` and the daemon's log for what it did",
                }
            extended = True  # taken: the decision is being made, give it a little longer
            deadline = now() + max(timeout, 10.0)
        sleep(poll)


def follow_workflow(
    store: Store,
    workflow_id: str,
    *,
    timeout: float,
    poll: float = 0.5,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Answer:
    """The CLI side, after a started answer: wait until the workflow's drain is done (from then
    on the node's pods are out and the replacement goes on) or the workflow ended.

    ``{"result": "drained" | "succeeded" | "failed" | "following", ...}``; "following" when
    ``timeout`` passed first (the workflow goes on; `healer history` shows it). A failed one
    carries its ``reason`` (``DrainBlockedByPdb`` when a budget stopped it before anything
    destructive).
    """
    deadline = now() + timeout
    while True:
        wf = store.workflow(workflow_id)
        if wf is None:
            return {"result": "error", "message": f"workflow {workflow_id} is not in the database"}
        if wf.state == "failed":
            reasons = [
                e.reason
                for e in store.audit_log(node=wf.node, event="remediation.failed")
                if e.workflow_id == wf.id
            ]
            return {
                "result": "failed",
                "reason": reasons[-1] if reasons else "",
                "step": wf.step,
                "message": wf.error or "",
            }
        if wf.state == "succeeded":
            return {
                "result": "succeeded",
                "message": f"{wf.node} replaced by {wf.replacement_name}",
            }
        if any(s["step"] == "drain" and s["status"] == "done" for s in store.steps(wf.id)):
            return {
                "result": "drained",
                "step": wf.step,
                "message": f"{wf.node} is drained; its replacement goes on (step {wf.step})",
            }
        if now() >= deadline:
            return {
                "result": "following",
                "step": wf.step,
                "message": f"workflow {wf.id} is still at step {wf.step} after {timeout:.0f}s",
            }
        sleep(poll)


def reset_breakers(
    store: Store, *, cluster: str | None, kinds: tuple[str, ...], at: float
) -> list[tuple[str, str]]:
    """`healer breaker reset`: close the ``kinds`` breakers of ``cluster`` (all when None),
    record the reset time (the next trip counts only what follows it: a fresh window) and audit
    each reset. Returns the (cluster, kind) pairs that were open."""
    reset: list[tuple[str, str]] = []
    for kind in kinds:
        what = "bad-upgrade breaker" if kind == BREAKER_BAD_UPGRADE else "circuit breaker"
        for name in store.reset_breaker(cluster, at=at, kind=kind):
            # Run by the CLI, whose output is the answer: the row only, no log line.
            Recorder(store, log=log).record(
                "breaker.reset",
                at=at,
                cluster=name,
                reason="Operator",
                message=f"{what} reset by an operator; a fresh window starts now",
                evidence={"breaker": kind},
                log_line=False,
            )
            reset.append((name, kind))
    return reset
