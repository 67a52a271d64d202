"""The workflow's port to the cluster: what remediation needs from the Kubernetes API, and
nothing else.

:class:`healer.kube.client.KubeClient` implements :class:`NodeOps` (structurally: it does not
import this module); tests may pass any object with these methods. The records it speaks in
(:class:`~healer.kube.records.NodeInfo`, :class:`~healer.kube.records.PodInfo`,
:class:`~healer.kube.records.Taint`, :class:`~healer.kube.records.EvictResult`) are the kube
package's pure records, which import no client.
"""

from __future__ import annotations

from typing import Protocol

from healer.kube.records import EvictResult, NodeInfo, PodInfo, Taint


class NodeOps(Protocol):
    """One cluster's nodes and pods, as the remediation workflow acts on them.

    Every method is safe to repeat. A Node that no longer exists is an answer (``None`` or
    ``False``), not an error; the API being unreachable raises
    :class:`~healer.errors.KubeUnavailable` (the step is retried), an unexpected refusal
    :class:`~healer.errors.PermanentError`.
    """

    async def get_node(self, name: str) -> NodeInfo | None:
        """The Node, or None when it does not exist."""
        ...

    async def cordon(self, name: str) -> bool:
        """Mark the Node unschedulable. False if it no longer exists."""
        ...

    async def add_taint(self, name: str, taint: Taint) -> bool:
        """Add ``taint`` (kept as is when one with its key and effect is there). False if the
        Node no longer exists."""
        ...

    async def pods_on_node(self, name: str) -> list[PodInfo]:
        """Every pod bound to the Node, in all namespaces."""
        ...

    async def evict(self, namespace: str, name: str) -> tuple[EvictResult, str]:
        """Ask the Eviction API to evict a pod: :attr:`EvictResult.BLOCKED` (with the budget's
        message) when a PodDisruptionBudget refuses it."""
        ...

    async def delete_node(self, name: str) -> bool:
        """Delete the Node object. False if it was already gone."""
        ...
