"""The eviction subresource and PodDisruptionBudgets, through healer's adapter (evict): a budget
blocks a Running pod (429, cause DisruptionBudget) but never a Pending one; two budgets on one
pod answer 500 (BLOCKED for healer) unless the pod is Pending; an evicted pod is deleted
gracefully; a budget's status counts Ready pods."""

from __future__ import annotations

from healer.kube.records import EvictResult
from tests.conformance.conftest import Target


def _pods(ns: str) -> str:
    return f"/api/v1/namespaces/{ns}/pods"


async def _evicted(target: Target, ns: str, pod: str) -> bool:
    """Gone, or Terminating: the fake's Ready node has a kubelet that confirms at once; the real
    server's test nodes have none, so the pod stays Terminating."""
    obj = await target.get(f"{_pods(ns)}/{pod}")
    return obj is None or bool(obj["metadata"].get("deletionTimestamp"))


async def test_budget_blocks_a_running_pod(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    pod = await target.pod(ns, node, labels={"app": "db"})
    await target.pdb(ns, {"app": "db"}, min_available=1)
    result, message = await target.kube.evict(ns, pod)
    assert result is EvictResult.BLOCKED
    assert "disruption budget" in message
    assert not await _evicted(target, ns, pod)
    status, body = await target.call("POST", f"{_pods(ns)}/{pod}/eviction", _eviction(ns, pod))
    assert status == 429
    assert [c["reason"] for c in body["details"]["causes"]] == ["DisruptionBudget"]


async def test_budget_does_not_block_a_pending_pod(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    pod = await target.pod(ns, node, labels={"app": "db"}, phase="Pending")
    await target.pdb(ns, {"app": "db"}, min_available=1)
    result, _ = await target.kube.evict(ns, pod)
    assert result is EvictResult.EVICTED
    assert await _evicted(target, ns, pod)


async def test_budget_with_room_lets_one_pod_go(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    pods = [await target.pod(ns, node, labels={"app": "web"}) for _ in range(3)]
    await target.pdb(ns, {"app": "web"}, min_available=2)
    result, _ = await target.kube.evict(ns, pods[0])
    assert result is EvictResult.EVICTED
    assert await _evicted(target, ns, pods[0])


async def test_two_budgets_answer_500_for_a_running_pod(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    pod = await target.pod(ns, node, labels={"app": "db", "tier": "data"})
    others = [await target.pod(ns, node, labels={"app": "db", "tier": "data"}) for _ in range(2)]
    await target.pdb(ns, {"app": "db"}, min_available=1)
    await target.pdb(ns, {"tier": "data"}, min_available=1)
    status, body = await target.call("POST", f"{_pods(ns)}/{pod}/eviction", _eviction(ns, pod))
    assert status == 500
    assert "more than one PodDisruptionBudget" in body["message"]
    result, _ = await target.kube.evict(ns, pod)
    assert result is EvictResult.BLOCKED
    assert not await _evicted(target, ns, others[0])


async def test_two_budgets_do_not_block_a_pending_pod(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    pod = await target.pod(ns, node, labels={"app": "db", "tier": "data"}, phase="Pending")
    await target.pdb(ns, {"app": "db"}, min_available=1)
    await target.pdb(ns, {"tier": "data"}, min_available=1)
    result, _ = await target.kube.evict(ns, pod)
    assert result is EvictResult.EVICTED


async def test_budget_status_counts_ready_pods(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    await target.pod(ns, node, labels={"app": "q"})
    await target.pod(ns, node, labels={"app": "q"})
    not_ready = await target.pod(ns, node, labels={"app": "q"})
    # Running, but not Ready: not healthy for the disruption controller.
    await target.set_pod_phase(ns, not_ready, "Running")
    await target.ok(
        "PATCH",
        f"{_pods(ns)}/{not_ready}/status",
        {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    await target.pod(ns, node, labels={"app": "q"}, phase="Pending")
    name = await target.pdb(ns, {"app": "q"}, min_available=1)

    async def settled() -> dict[str, int] | None:
        st = await target.pdb_settled(ns, name)
        got = {k: st.get(k) for k in ("expectedPods", "currentHealthy", "desiredHealthy")}
        return got if got["currentHealthy"] == 2 else None

    status = await target.eventually(settled, timeout=15, what="budget counts Ready pods")
    assert status == {"expectedPods": 4, "currentHealthy": 2, "desiredHealthy": 1}


async def test_unhealthy_pod_goes_while_the_budget_is_met(target: Target) -> None:
    ns = await target.namespace()
    node = await target.node()
    await target.pod(ns, node, labels={"app": "u"})
    sick = await target.pod(ns, node, labels={"app": "u"})
    await target.ok(
        "PATCH",
        f"{_pods(ns)}/{sick}/status",
        {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    name = await target.pdb(ns, {"app": "u"}, min_available=1)
    await target.eventually(
        lambda: _healthy_is(target, ns, name, 1), timeout=15, what="one healthy pod counted"
    )
    result, _ = await target.kube.evict(ns, sick)
    assert result is EvictResult.EVICTED


async def _healthy_is(target: Target, ns: str, name: str, n: int) -> bool:
    return (await target.pdb_settled(ns, name)).get("currentHealthy") == n


def _eviction(ns: str, pod: str) -> dict[str, object]:
    return {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": ns},
    }
