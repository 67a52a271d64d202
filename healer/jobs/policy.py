"""The ``policy`` job: put back drift in a cluster's Pod Security labels and RBAC objects (and
the join token), for clusters that configure them (:mod:`healer.provisioning.cluster_policy`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog

from healer.config import ClusterConfig
from healer.jobs.context import JobContext
from healer.kube.client import KubeClient
from healer.provisioning.cluster_policy import reconcile_cluster_policy

log = structlog.get_logger("healer.jobs.policy")


def has_policy(cluster: ClusterConfig) -> bool:
    """Whether the cluster configures anything this job reconciles."""
    return any(
        getattr(cluster, name, None) is not None for name in ("pod_security", "rbac", "kubernetes")
    )


class ClusterPolicyJob:
    def __init__(
        self, ctx: JobContext, *, kube: Mapping[str, KubeClient], state_dir: Path | None = None
    ) -> None:
        self._ctx = ctx
        self.kube = kube
        self._state_dir = state_dir

    async def reconcile(self, cluster_name: str) -> list[str]:
        """Put back drift in the cluster's Pod Security labels and RBAC objects."""
        ctx = self._ctx
        cluster = ctx.config.cluster(cluster_name)
        kube = self.kube.get(cluster_name)
        if cluster is None or kube is None:
            return []
        changes = await reconcile_cluster_policy(
            cluster, kube, dry_run=ctx.dry_run, state_dir=self._state_dir, clock=ctx.clock
        )
        for change in changes:
            log.info("policy.reconciled", change=change)
        return changes
