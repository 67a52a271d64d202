"""PodDisruptionBudgets over pods a ReplicaSet owns, as the disruption controller counts them:
with ``maxUnavailable`` or a percentage ``minAvailable`` a budget's expected pods are the owner's
``spec.replicas`` (not the pods that exist), with an integer ``minAvailable`` they are the
matching pods; ``disruptionsAllowed`` is the Ready pods less the healthy ones the budget needs.
So an evicted pod does not lower the bar for the next: pods evicted one after the other stop
where the budget says."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from healer.kube.records import EvictResult
from tests.conformance.conftest import Target

KEYS = ("expectedPods", "currentHealthy", "desiredHealthy", "disruptionsAllowed")


async def _replicaset(target: Target, ns: str, app: str, replicas: int) -> dict[str, Any]:
    """A ReplicaSet (its controller does not run on either target) and the controller
    reference its pods carry."""
    template = {
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }
    body = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": template,
        },
    }
    obj = await target.ok("POST", f"/apis/apps/v1/namespaces/{ns}/replicasets", body)
    assert obj["spec"]["replicas"] == replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": app,
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


async def _budget(target: Target, ns: str, app: str, spec: dict[str, Any]) -> str:
    name = f"b-{uuid.uuid4().hex[:8]}"
    body = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {**spec, "selector": {"matchLabels": {"app": app}}},
    }
    await target.ok("POST", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", body)
    return name


async def _status_becomes(target: Target, ns: str, name: str, want: dict[str, int]) -> None:
    """The budget's status reaches ``want`` (the real controller writes it asynchronously)."""
    last: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal last
        st = await target.pdb_settled(ns, name)
        last = {k: st.get(k) for k in KEYS}
        return last == want

    try:
        await target.eventually(reached, timeout=20, what=f"budget {name} status {want}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status {last}") from None


async def _workload(target: Target, replicas: int, pods: int) -> tuple[str, list[str]]:
    ns = await target.namespace()
    node = await target.node()
    owner = await _replicaset(target, ns, "web", replicas)
    names = [await target.pod(ns, node, labels={"app": "web"}, owner=owner) for _ in range(pods)]
    return ns, names


def _status(expected: int, healthy: int, desired: int, allowed: int) -> dict[str, int]:
    return dict(zip(KEYS, (expected, healthy, desired, allowed), strict=True))


@pytest.mark.parametrize(
    ("replicas", "spec", "before", "evictions", "after"),
    [
        # maxUnavailable: 3 expected (the ReplicaSet's scale), 2 needed: one pod may go, and the
        # gone pod does not make the next one free.
        (3, {"maxUnavailable": 1}, _status(3, 3, 2, 1), [True, False], _status(3, 2, 2, 0)),
        # A percentage of the scale, rounded up: 50% of 3 unavailable is 2.
        (
            3,
            {"maxUnavailable": "50%"},
            _status(3, 3, 1, 2),
            [True, True, False],
            _status(3, 1, 1, 0),
        ),
        # minAvailable 50% of 4 is 2 needed: two go, the third stays.
        (4, {"minAvailable": "50%"}, _status(4, 4, 2, 2), [True, True, False], _status(4, 2, 2, 0)),
    ],
    ids=["maxUnavailable-1", "maxUnavailable-50pct", "minAvailable-50pct"],
)
async def test_pods_evicted_one_after_the_other_stop_at_the_budget(
    target: Target,
    replicas: int,
    spec: dict[str, Any],
    before: dict[str, int],
    evictions: list[bool],
    after: dict[str, int],
) -> None:
    ns, pods = await _workload(target, replicas, replicas)
    name = await _budget(target, ns, "web", spec)
    await _status_becomes(target, ns, name, before)
    got = [(await target.kube.evict(ns, pod))[0] is EvictResult.EVICTED for pod in pods]
    assert got == [*evictions, *[False] * (len(pods) - len(evictions))]
    await _status_becomes(target, ns, name, after)


async def test_max_unavailable_expects_the_scale_not_the_pods_that_exist(target: Target) -> None:
    """Five replicas wanted, three pods there: with one unavailable allowed, four must be
    healthy and the budget allows nothing."""
    ns, pods = await _workload(target, replicas=5, pods=3)
    name = await _budget(target, ns, "web", {"maxUnavailable": 1})
    await _status_becomes(target, ns, name, _status(5, 3, 4, 0))
    result, message = await target.kube.evict(ns, pods[0])
    assert result is EvictResult.BLOCKED
    assert "needs 4 healthy pods and has 3 currently" in message


async def test_integer_min_available_expects_the_pods_that_exist(target: Target) -> None:
    ns, pods = await _workload(target, replicas=5, pods=3)
    name = await _budget(target, ns, "web", {"minAvailable": 2})
    await _status_becomes(target, ns, name, _status(3, 3, 2, 1))
    assert (await target.kube.evict(ns, pods[0]))[0] is EvictResult.EVICTED
    assert (await target.kube.evict(ns, pods[1]))[0] is EvictResult.BLOCKED


async def test_budget_whose_pods_controller_has_no_scale_is_never_observed(
    target: Target,
) -> None:
    """A DaemonSet has no scale: the disruption controller's sync of a scaled budget fails, the
    budget is never observed, and every eviction answers 429 "still being processed"."""
    ns = await target.namespace()
    node = await target.node()
    template = {
        "metadata": {"labels": {"app": "agent"}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }
    spec = {"selector": {"matchLabels": {"app": "agent"}}, "template": template}
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"}, "spec": spec}
    path = f"/apis/apps/v1/namespaces/{ns}/daemonsets"
    uid = (await target.ok("POST", path, ds))["metadata"]["uid"]
    owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": uid}
    pod = await target.pod(ns, node, labels={"app": "agent"}, owner={**owner, "controller": True})
    name = await _budget(target, ns, "agent", {"maxUnavailable": 1})
    status, body = await target.call(
        "POST",
        f"/api/v1/namespaces/{ns}/pods/{pod}/eviction",
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": ns},
        },
    )
    assert status == 429
    assert body["details"]["causes"] == [
        {
            "reason": "DisruptionBudget",
            "message": f"The disruption budget {name} is still being processed by the server.",
        }
    ]
    pdb = await target.ok("GET", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}")
    assert not (pdb.get("status") or {}).get("observedGeneration")
