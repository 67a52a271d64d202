"""Watches through healer's adapter (healer/kube/watch.py): a watch from a resourceVersion sees
what changed after it, and one from a version older than the server's history ends in 410 Gone
(WatchExpired), on the fake and on the real server alike."""

from __future__ import annotations

import contextlib

import pytest

from healer.kube.watch import WatchExpired
from tests.conformance.conftest import Target


async def test_watch_from_resource_version_sees_later_changes(target: Target) -> None:
    _, rv = await target.kube.list_nodes()
    node = await target.node(kubelet=False)
    seen: list[tuple[str, str]] = []
    async with contextlib.aclosing(target.kube.watch_nodes(rv, timeout_seconds=5)) as events:
        async for event in events:
            if event.obj is not None:
                seen.append((event.type, event.obj.name))
            if ("ADDED", node) in seen:
                break
    assert seen[0] == ("ADDED", node)
    # Resuming from the ADDED event's version replays nothing before it.
    nodes, _ = await target.kube.list_nodes()
    assert node in {n.name for n in nodes}


async def test_watch_from_a_version_older_than_history_is_410(target: Target) -> None:
    await target.node(kubelet=False)
    # Without compaction the real server replays etcd's history from version 1.
    await target.compact()
    with pytest.raises(WatchExpired, match="resourceVersion 1"):
        async with contextlib.aclosing(target.kube.watch_nodes("1", timeout_seconds=5)) as events:
            async for _ in events:
                pass


async def test_lease_watch_sees_renewals(target: Target) -> None:
    node = await target.node(kubelet=False)
    _, rv = await target.kube.list_leases()
    await target.kube.renew_lease(node, node, 40)
    async with contextlib.aclosing(target.kube.watch_leases(rv, timeout_seconds=5)) as events:
        async for event in events:
            if event.obj is not None and event.obj.name == node:
                assert event.type == "MODIFIED"
                break
        else:
            pytest.fail(f"[{target.name}] no lease event for {node}")
