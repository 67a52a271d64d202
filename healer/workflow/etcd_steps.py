"""The control-plane steps of a replacement: etcd membership, one change at a time.

A kubeadm control-plane machine runs a stacked etcd member named after its node. Replacing the
machine without removing the member leaves etcd with one member too many (quorum 3 of 4 instead
of 2 of 3), and the next failure loses quorum. So, as Cluster API's KubeadmControlPlane does:

``etcd_remove_member`` (after ``drain``, before ``fence``)
    Removes the node's member through a healthy member, only when the members left stay a
    quorum on their own and no other membership change is under way
    (:func:`healer.planner.etcd_quorum.removal`); otherwise it waits (a temporary error: retried
    with backoff, the machine is not fenced meanwhile). The member's id is journalled before the
    removal (``identified``), so a repeat after a crash finds it gone and is done.
``etcd_verify`` (after ``wait_for_join``)
    The replacement joined etcd as ``kubeadm join --control-plane`` does (member add through a
    healthy member, then started with ``--initial-cluster-state existing``); this waits until
    the membership is the pool's size again, every member healthy and the removed id gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from healer.clock import Clock
from healer.config import ClusterConfig
from healer.errors import PermanentError, TemporaryError
from healer.planner.etcd_quorum import EtcdView, removal, settled
from healer.store.sqlite import Store, WorkflowRecord

log = structlog.get_logger("healer.workflow")

REMOVE_STEP = "etcd_remove_member"
VERIFY_STEP = "etcd_verify"
IDENTIFIED = "identified"


class EtcdOps(Protocol):
    """One cluster's etcd as the workflow changes it (:class:`healer.etcd.EtcdClient`)."""

    async def view(self) -> EtcdView:
        """Members with their health; ``error`` set when no member answers."""
        ...

    async def remove_member(self, view: EtcdView, member_id: int) -> bool:
        """Remove through a healthy member; False when already gone."""
        ...


StepResult = tuple[dict[str, Any], WorkflowRecord]


def _pool_size(cluster: ClusterConfig, wf: WorkflowRecord) -> int:
    pool = cluster.pool(wf.pool)
    if pool is None:
        raise PermanentError(f"pool {wf.pool!r} is no longer in the configuration")
    return pool.size


class _EtcdStep:
    def __init__(self, *, etcd: Mapping[str, EtcdOps], store: Store, clock: Clock) -> None:
        self._etcd = etcd
        self._store = store
        self._clock = clock

    def _ops(self, wf: WorkflowRecord) -> EtcdOps:
        ops = self._etcd.get(wf.cluster)
        if ops is None:
            raise PermanentError(f"cluster {wf.cluster} has no etcd access (etcd.mode)")
        return ops

    def _identified(self, wf: WorkflowRecord) -> int | None:
        for line in self._store.steps(wf.id):
            if line["step"] == REMOVE_STEP and line["status"] == IDENTIFIED:
                return int(str((line.get("detail") or {})["member"]), 16)
        return None


class RemoveMember(_EtcdStep):
    async def __call__(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        ops = self._ops(wf)
        view = await ops.view()
        if not view.reachable:
            raise TemporaryError(f"etcd unreachable: {view.error}")
        decision = removal(view, wf.node)
        before = {"members_before": len(view.members), "healthy_before": view.healthy}
        if not decision.ok:
            # The machine is not fenced yet: waiting costs nothing but time.
            raise TemporaryError(f"{decision.reason}: {decision.message}")
        member = view.member(wf.node)
        if member is None:
            known = self._identified(wf)
            return {
                **before,
                "member": f"{known:x}" if known is not None else None,
                "removed": False,
                "reason": decision.reason,
                "note": decision.message,
            }, wf
        self._store.journal(
            wf.id, REMOVE_STEP, IDENTIFIED, self._clock.now(), {"member": f"{member.id:x}"}
        )
        removed = await ops.remove_member(view, member.id)
        return {
            **before,
            "member": f"{member.id:x}",
            "removed": removed,
            "reason": decision.reason,
            "note": decision.message,
        }, wf


class VerifyMembership(_EtcdStep):
    def __init__(
        self,
        *,
        etcd: Mapping[str, EtcdOps],
        store: Store,
        clock: Clock,
        poll_interval: float = 2.0,
    ) -> None:
        super().__init__(etcd=etcd, store=store, clock=clock)
        self._poll = poll_interval

    async def __call__(self, wf: WorkflowRecord, cluster: ClusterConfig) -> StepResult:
        ops = self._ops(wf)
        size = _pool_size(cluster, wf)
        gone = self._identified(wf)
        timeout = cluster.health_for(wf.pool).node_startup_timeout
        since = (wf.replacement or {}).get("requested_at") or wf.updated_at
        deadline = float(since) + timeout
        while True:
            view = await ops.view()
            decision = settled(view, pool_size=size, gone=gone)
            if decision.ok:
                return {
                    "members": len(view.members),
                    "healthy": view.healthy,
                    "leader": view.leader_name(),
                    "removed_member": f"{gone:x}" if gone is not None else None,
                    "member_names": sorted(m.name for m in view.members),
                }, wf
            if self._clock.now() >= deadline:
                raise PermanentError(
                    f"etcd membership not whole within {timeout:.0f}s (nodeStartupTimeout) "
                    f"after {wf.replacement_name} was requested: {decision.message}"
                )
            log.debug("remediation.etcd_waiting", why=decision.message)
            await self._clock.sleep(min(self._poll, max(0.0, deadline - self._clock.now())))
