"""One cluster's API, all of :mod:`healer.kube` together (see the package docstring)."""

from __future__ import annotations

from pathlib import Path

from healer.clock import Clock
from healer.kube.access import AccessApi
from healer.kube.connection import api_client, load_configuration
from healer.kube.kubelet import KubeletApi
from healer.kube.pods import PodApi
from healer.kube.portforward import PortForwardApi
from healer.kube.watch import ListWatch


class KubeClient(ListWatch, KubeletApi, PodApi, AccessApi, PortForwardApi):
    """A thin async adapter over one cluster's API server. Use as ``async with`` or call
    :meth:`close`."""

    @classmethod
    async def from_kubeconfig(
        cls,
        path: Path | None,
        context: str | None = None,
        *,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
    ) -> KubeClient:
        """Build a client from a kubeconfig. ``path=None`` follows the default loading rules:
        ``$KUBECONFIG``, else ``~/.kube/config``, else the in-cluster service account."""
        config = await load_configuration(path, context)
        return cls(api_client(config), clock=clock, request_timeout=request_timeout)
