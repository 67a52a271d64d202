"""Pods on a node, their eviction (respecting PodDisruptionBudgets) and deletion."""

from __future__ import annotations

from healer.kube.connection import Answer, Connection
from healer.kube.records import EvictResult, PodInfo, pod_from_json


class PodApi(Connection):
    """The pods of a node, as a drain sees them."""

    async def pods_on_node(self, name: str) -> list[PodInfo]:
        what = f'list pods on node "{name}"'
        answer = await self._call(
            what, self._core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={name}"
        )
        body = self._expect(what, answer)
        return [pod_from_json(item) for item in body.get("items") or []]

    async def pods_matching(self, node: str, selectors: tuple[str, ...]) -> list[str]:
        """``namespace/name`` of the pods on ``node`` that match any of the label ``selectors``
        (``reboots.blockingPodSelectors``), finished pods (Succeeded, Failed) left out."""
        found: set[str] = set()
        for selector in selectors:
            what = f'list pods on node "{node}" matching "{selector}"'
            answer = await self._call(
                what,
                self._core.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={node}",
                label_selector=selector,
            )
            for item in self._expect(what, answer).get("items") or []:
                pod = pod_from_json(item)
                if pod.phase not in ("Succeeded", "Failed"):
                    found.add(f"{pod.namespace}/{pod.name}")
        return sorted(found)

    async def container_commands(self, namespace: str, label_selector: str) -> list[list[str]]:
        """The command line (command + args) of every container of the pods in ``namespace``
        matching ``label_selector``: how a kubeadm control plane's static pods were started."""
        what = f'list pods "{label_selector}" in {namespace}'
        answer = await self._call(
            what, self._core.list_namespaced_pod, namespace, label_selector=label_selector
        )
        body = self._expect(what, answer)
        return [
            [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            for item in body.get("items") or []
            for c in (item.get("spec") or {}).get("containers") or []
        ]

    async def evict(self, namespace: str, name: str) -> tuple[EvictResult, str]:
        """Ask the API to evict a pod, respecting PodDisruptionBudgets.

        A refusal by a budget (429 with a DisruptionBudget cause, or the 500 the API sends when
        several budgets select the pod) is :attr:`EvictResult.BLOCKED` with the API's message;
        a 429 without that cause is API throttling and raises :class:`KubeUnavailable`."""
        what = f'evict pod "{namespace}/{name}"'
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        answer = await self._call(
            what, self._core.create_namespaced_pod_eviction, name, namespace, body
        )
        if answer.ok:
            return EvictResult.EVICTED, f"pod {namespace}/{name} evicted"
        if answer.status == 404:
            return EvictResult.GONE, f"pod {namespace}/{name} not found"
        budget = _disruption_budget_message(answer)
        if budget is not None:
            return EvictResult.BLOCKED, budget
        self._fail(what, answer)
        raise AssertionError("unreachable")  # pragma: no cover - _fail always raises

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int = 0) -> bool:
        """Delete a pod; ``grace_seconds=0`` force-deletes (needed on a dead node). False if the
        pod was already gone."""
        what = f'delete pod "{namespace}/{name}"'
        answer = await self._call(
            what,
            self._core.delete_namespaced_pod,
            name,
            namespace,
            grace_period_seconds=grace_seconds,
            body={"gracePeriodSeconds": grace_seconds},
        )
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True


def _disruption_budget_message(answer: Answer) -> str | None:
    """The budget's own words when an eviction was refused because of a PodDisruptionBudget."""
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status == 429:
        for cause in (body.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "DisruptionBudget":
                return str(cause.get("message") or answer.message)
        if "disruption budget" in answer.message:
            return answer.message
    if answer.status == 500 and "more than one PodDisruptionBudget" in answer.message:
        return answer.message
    return None
