"""The order of a replacement's steps, and what a half-done replacement means for its pool.

Pure functions on journal lines, shared by the runner (which steps to run next, when a step must
be retried until it succeeds) and by ``healer status`` (which pools are short of a machine).

Two orders, both fencing the old machine before its Node is deleted:

``replace``
    cordon -> drain -> fence -> release -> delete_node -> destroy_machine -> create_machine ->
    wait_for_join. Needs no spare quota. From the fence until ``create_machine`` is done the
    pool is a machine short, so those steps are retried until they succeed (:func:`pool_short`).
``surge``
    cordon -> preflight -> create_machine -> wait_for_join -> drain -> fence -> release ->
    delete_node -> destroy_machine. The replacement is Ready before the old node is drained, so
    the pool never drops below its size; it needs room for one more machine, which the provider's
    capacity preflight checks first (a "no" falls back to the replace order).

``fence`` powers the old machine off (or destroys it, when the provider cannot power off) and
``release`` puts ``node.kubernetes.io/out-of-service`` on the Node, so that Kubernetes
force-deletes its pods and detaches their volumes only once the machine is known to be off: no
pod can then run twice, even when the node was only cut off from the API.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REPLACE = "replace"
SURGE = "surge"

REPLACE_STEPS = (
    "cordon",
    "drain",
    "fence",
    "release",
    "delete_node",
    "destroy_machine",
    "create_machine",
    "wait_for_join",
)
SURGE_STEPS = (
    "cordon",
    "preflight",
    "create_machine",
    "wait_for_join",
    "drain",
    "fence",
    "release",
    "delete_node",
    "destroy_machine",
)
# A control-plane machine of a cluster whose etcd healer reads (``etcd.mode``): its member is
# removed before the machine is fenced, and the membership checked whole after the join
# (healer.workflow.etcd_steps).
CONTROL_PLANE_STEPS = (
    "cordon",
    "drain",
    "etcd_remove_member",
    "fence",
    "release",
    "delete_node",
    "destroy_machine",
    "create_machine",
    "wait_for_join",
    "etcd_verify",
)
ALL_STEPS = tuple(dict.fromkeys((*REPLACE_STEPS, *SURGE_STEPS, *CONTROL_PLANE_STEPS)))
DONE = "done"

# Journal vocabulary (workflow_steps.status) this module reads.
PLAN_STEP = "plan"
PLAN_DECIDED = "decided"
RETRYING = "retrying"

# Why a plan was chosen: stable CamelCase words, as refusals have.
STRATEGY_REPLACE = "StrategyReplace"
STRATEGY_SURGE = "StrategySurge"
CONTROL_PLANE_REPLACES = "ControlPlaneReplaces"
NODE_NOT_READY = "NodeNotReady"
NO_CAPACITY_PREFLIGHT = "NoCapacityPreflight"
PREFLIGHT_REFUSED = "PreflightRefused"


@dataclass(frozen=True)
class Plan:
    strategy: str  # replace | surge
    steps: tuple[str, ...]
    reason: str  # one of the CamelCase words above
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "steps": list(self.steps),
            "reason": self.reason,
            "message": self.message,
        }


def choose_plan(
    *,
    strategy: str,
    role: str,
    node_ready: bool,
    can_preflight: bool,
    provider: str = "",
    etcd: bool = False,
) -> Plan:
    """The order for one replacement, decided once when it starts.

    Surge only where it keeps capacity without costing safety: a worker whose node is still
    Ready (its pods serve, and a drain can move them onto the replacement). A node that is not
    Ready serves nothing and its pods cannot be drained: fencing it first frees them soonest.
    Control-plane nodes keep the replace order: adding an etcd member before removing the failed
    one raises the quorum while a member is already lost (3 of 4 instead of 2 of 3). With
    ``etcd`` (the cluster's etcd is read) they also remove and re-check the etcd member.
    """
    if etcd and role == "control-plane":
        return Plan(
            REPLACE,
            CONTROL_PLANE_STEPS,
            CONTROL_PLANE_REPLACES,
            "control-plane nodes are replaced in the replace order, their etcd member removed "
            "first and the membership checked whole after the join",
        )
    if strategy != SURGE:
        return Plan(REPLACE, REPLACE_STEPS, STRATEGY_REPLACE, "remediation.strategy is replace")
    if role == "control-plane":
        return Plan(
            REPLACE,
            REPLACE_STEPS,
            CONTROL_PLANE_REPLACES,
            "control-plane nodes are replaced in the replace order (etcd quorum)",
        )
    if not can_preflight:
        return Plan(
            REPLACE,
            REPLACE_STEPS,
            NO_CAPACITY_PREFLIGHT,
            f"provider {provider or '?'} cannot check capacity before a create; surge needs it",
        )
    if not node_ready:
        return Plan(
            REPLACE,
            REPLACE_STEPS,
            NODE_NOT_READY,
            "the node is not Ready: it serves nothing and its pods cannot be drained, so it is "
            "fenced first",
        )
    return Plan(SURGE, SURGE_STEPS, STRATEGY_SURGE, "the replacement is created first (surge)")


def fallback_plan(reason: str, message: str) -> Plan:
    """Surge refused by the capacity preflight: continue in the replace order."""
    return Plan(REPLACE, REPLACE_STEPS, PREFLIGHT_REFUSED, f"surge preflight: {reason}: {message}")


def plan_from_journal(lines: Sequence[Mapping[str, Any]]) -> Plan | None:
    """The plan a workflow is following: the last one decided, switched to the replace order
    when a preflight said no. ``None`` before one was decided."""
    plan: Plan | None = None
    for line in lines:
        detail = line.get("detail") or {}
        if line.get("step") == PLAN_STEP and line.get("status") == PLAN_DECIDED:
            plan = Plan(
                strategy=str(detail.get("strategy", REPLACE)),
                steps=tuple(detail.get("steps") or REPLACE_STEPS),
                reason=str(detail.get("reason", "")),
                message=str(detail.get("message", "")),
            )
        elif (
            line.get("step") == "preflight" and line.get("status") == DONE and not detail.get("ok")
        ):
            plan = fallback_plan(str(detail.get("reason", "")), str(detail.get("message", "")))
    return plan


def done_steps(lines: Iterable[Mapping[str, Any]]) -> set[str]:
    return {str(line["step"]) for line in lines if line.get("status") == DONE}


def next_step(plan: Plan, done: set[str]) -> str:
    """The first step of ``plan`` not done yet, or :data:`DONE`."""
    return next((s for s in plan.steps if s not in done), DONE)


def pool_short(plan: Plan, done: set[str]) -> bool:
    """True while the old machine is fenced and no replacement exists: the pool is a machine
    short. Steps run in this state are retried until they succeed."""
    fenced = "fence" in done or (plan.strategy == REPLACE and "destroy_machine" in done)
    return fenced and "create_machine" not in done


@dataclass(frozen=True)
class Shortfall:
    """A pool short of a machine because a replacement is not created yet (``healer status``)."""

    cluster: str
    pool: str | None
    node: str
    replacement: str
    workflow: str
    step: str
    short_since: float  # when the old machine was fenced
    retrying_since: float | None  # first failed attempt of the current step
    attempts: int  # failed attempts of the current step
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        what = f"replacement {self.replacement} for {self.node}"
        if self.retrying_since is None:
            return f"{what}: at step {self.step} since the old machine was fenced"
        return (
            f"{what} being retried (step {self.step}, {self.attempts} failed attempts) since "
            f"{_ts(self.retrying_since)}; last error: {self.last_error}"
        )


def shortfall(
    *,
    cluster: str,
    pool: str | None,
    node: str,
    replacement: str,
    workflow: str,
    lines: Sequence[Mapping[str, Any]],
) -> Shortfall | None:
    """The shortfall a workflow's journal shows, or None when its pool is whole."""
    plan = plan_from_journal(lines)
    if plan is None:
        plan = Plan(REPLACE, REPLACE_STEPS, "", "")
    done = done_steps(lines)
    if not pool_short(plan, done):
        return None
    step = next_step(plan, done)
    fenced_at = [
        float(line["at"])
        for line in lines
        if line.get("status") == DONE and line.get("step") in ("fence", "destroy_machine")
    ]
    retries = [
        line for line in lines if line.get("step") == step and line.get("status") == RETRYING
    ]
    last = retries[-1] if retries else None
    return Shortfall(
        cluster=cluster,
        pool=pool,
        node=node,
        replacement=replacement,
        workflow=workflow,
        step=step,
        short_since=min(fenced_at) if fenced_at else 0.0,
        retrying_since=float(retries[0]["at"]) if retries else None,
        attempts=len(retries),
        last_error=str((last.get("detail") or {}).get("error")) if last else None,
    )


def _ts(at: float) -> str:
    return _dt.datetime.fromtimestamp(at, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
