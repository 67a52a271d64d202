"""healer.kube.client.KubeClient through the real kubernetes_asyncio client, over HTTP to the fake."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from healer.clock import VirtualClock
from healer.errors import ConfigError, KubeUnavailable, PermanentError
from healer.kube.client import KubeClient
from healer.kube.records import (
    EvictResult,
    LeaseInfo,
    NodeInfo,
    Taint,
    WatchEvent,
    format_micro_time,
    format_time,
    parse_time,
)
from healer.kube.watch import WatchExpired
from healer.lab.apiserver.resources import ANNOTATION_MIRROR, TAINT_UNREACHABLE
from healer.lab.apiserver.server import FakeApiServer


async def collect(
    stream: AsyncGenerator[WatchEvent, None], count: int, *, timeout: float = 5.0
) -> list[WatchEvent]:
    """The first ``count`` events of a watch, then close it."""
    out: list[WatchEvent] = []
    async with asyncio.timeout(timeout), contextlib.aclosing(stream) as events:
        async for event in events:
            out.append(event)
            if len(out) == count:
                break
    return out


# ---------------------------------------------------------------- nodes


async def test_list_and_get_nodes(fake_api: FakeApiServer, kube: KubeClient) -> None:
    fake_api.add_node("n1", {"healer.io/pool": "a"})
    fake_api.add_node("n2", ready=False)
    nodes, rv = await kube.list_nodes()
    assert rv == fake_api.resource_version
    by_name = {n.name: n for n in nodes}
    n1 = by_name["n1"]
    assert n1.labels == {"healer.io/pool": "a"}
    assert n1.ready == "True" and not n1.unschedulable
    assert n1.conditions["Ready"][1] == parse_time(
        fake_api.node("n1")["status"]["conditions"][-1]["lastTransitionTime"]  # type: ignore[index]
    )
    assert by_name["n2"].ready == "False"
    assert by_name["n2"].taints == (Taint("node.kubernetes.io/not-ready", "NoExecute"),)
    assert await kube.get_node("n1") == n1
    assert await kube.get_node("ghost") is None


async def test_cordon_and_labels(fake_api: FakeApiServer, kube: KubeClient) -> None:
    fake_api.add_node("n1", {"a": "1", "b": "2"})
    assert await kube.cordon("n1") is True
    assert await kube.set_node_labels("n1", {"a": None, "c": "3"}) is True
    node = await kube.get_node("n1")
    assert node is not None
    assert node.unschedulable and node.labels == {"b": "2", "c": "3"}
    assert await kube.cordon("ghost") is False
    assert await kube.set_node_labels("ghost", {"x": "y"}) is False


async def test_delete_node_missing_is_false(fake_api: FakeApiServer, kube: KubeClient) -> None:
    fake_api.add_node("n1")
    assert await kube.delete_node("n1") is True
    assert await kube.delete_node("n1") is False  # 404 NotFound
    assert fake_api.request_count("DELETE", "nodes") == 2


async def test_register_twice_adopts(fake_api: FakeApiServer, kube: KubeClient) -> None:
    assert await kube.register_node("n1", {"healer.io/pool": "a"}) is True
    # The second registration hits 409 AlreadyExists: adopt the node, keeping its labels.
    await kube.set_node_labels("n1", {"healer.io/exclude": "true"})
    assert await kube.register_node("n1", {"healer.io/pool": "a", "new": "x"}) is False
    node = await kube.get_node("n1")
    assert node is not None
    assert node.labels == {"healer.io/pool": "a", "healer.io/exclude": "true", "new": "x"}
    assert fake_api.request_count("POST", "nodes") == 2


# ---------------------------------------------------------------- watches


async def test_watch_resumes_from_resource_version(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1")
    nodes, rv = await kube.list_nodes()
    assert [n.name for n in nodes] == ["n1"]
    # Changes made while nobody watches are delivered from the history after rv.
    fake_api.add_node("n2")
    await kube.cordon("n1")
    # (The cordon is two writes, as in a real cluster: spec.unschedulable, then the
    # controller's node.kubernetes.io/unschedulable taint.)
    first = await collect(kube.watch_nodes(rv), 3)
    assert [(e.type, e.obj.name) for e in first if isinstance(e.obj, NodeInfo)] == [
        ("ADDED", "n2"),
        ("MODIFIED", "n1"),
        ("MODIFIED", "n1"),
    ]
    modified = first[2].obj
    assert isinstance(modified, NodeInfo) and modified.unschedulable
    assert modified.taints == (Taint("node.kubernetes.io/unschedulable", "NoSchedule"),)
    # Resuming from the last event's version sees only what came after it.
    fake_api.delete_node("n2")
    again = await collect(kube.watch_nodes(first[-1].resource_version), 1)
    assert again[0].type == "DELETED"
    assert isinstance(again[0].obj, NodeInfo) and again[0].obj.name == "n2"
    assert fake_api.request_count("WATCH", "nodes") == 2


async def test_watch_ends_at_server_timeout_with_bookmark(
    fake_api_virtual: FakeApiServer, kube_virtual: KubeClient, virtual_clock: VirtualClock
) -> None:
    _, rv = await kube_virtual.list_nodes()

    async def drain() -> list[WatchEvent]:
        return [e async for e in kube_virtual.watch_nodes(rv, timeout_seconds=30)]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.05)
    fake_api_virtual.add_node("n1")
    await virtual_clock.advance(30)
    async with asyncio.timeout(5):
        events = await task
    assert [e.type for e in events] == ["ADDED", "BOOKMARK"]
    assert events[-1].obj is None
    assert events[-1].resource_version == fake_api_virtual.resource_version


async def test_watch_from_compacted_version_raises_watch_expired(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    _, rv = await kube.list_nodes()
    fake_api.add_node("n1")
    fake_api.compact()
    with pytest.raises(WatchExpired, match="too old resource version"):
        await collect(kube.watch_nodes(rv), 1)
    # A version at or after the compaction is still fine.
    current = fake_api.resource_version
    fake_api.add_node("n2")
    (event,) = await collect(kube.watch_nodes(current), 1)
    assert isinstance(event.obj, NodeInfo) and (event.type, event.obj.name) == ("ADDED", "n2")


async def test_watch_http_410_also_raises_watch_expired(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.fail_next("WATCH", "/leases$", 410)
    with pytest.raises(WatchExpired):
        await collect(kube.watch_leases("1"), 1)


async def test_lease_list_and_watch(fake_api: FakeApiServer, kube: KubeClient) -> None:
    await kube.renew_lease("n1", "n1", 40)
    leases, rv = await kube.list_leases()
    assert [(lease.name, lease.holder, lease.duration) for lease in leases] == [("n1", "n1", 40)]
    first = leases[0].renew_time
    assert first is not None
    await asyncio.sleep(0.002)  # renewTime has microseconds; make sure it moves
    await kube.renew_lease("n1", "n1", 40)
    (event,) = await collect(kube.watch_leases(rv), 1)
    assert event.type == "MODIFIED"
    assert isinstance(event.obj, LeaseInfo)
    assert event.obj.renew_time is not None and event.obj.renew_time > first


async def test_renew_lease_retries_a_conflict(fake_api: FakeApiServer, kube: KubeClient) -> None:
    await kube.renew_lease("n1", "n1", 40)
    fake_api.fail_next("PUT", "/leases/n1$", 409)
    await kube.renew_lease("n1", "n1", 40)
    assert fake_api.request_count("PUT", "leases") == 2
    lease = fake_api.lease("n1")
    assert lease is not None and lease["spec"]["renewTime"].endswith("Z")
    assert len(lease["spec"]["renewTime"]) == len("2024-01-01T00:00:00.000000Z")


# ---------------------------------------------------------------- kubelet-side status


async def test_set_node_ready_moves_transition_only_on_change(
    fake_api_virtual: FakeApiServer, kube_virtual: KubeClient, virtual_clock: VirtualClock
) -> None:
    assert await kube_virtual.register_node("n1", {})
    start = virtual_clock.now()
    assert await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok")
    await virtual_clock.advance(10)
    assert await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok")
    node = fake_api_virtual.node("n1")
    assert node is not None
    (ready,) = node["status"]["conditions"]
    assert ready["lastTransitionTime"] == format_time(start)
    assert ready["lastHeartbeatTime"] == format_time(start + 10)

    await virtual_clock.advance(5)
    assert await kube_virtual.set_node_ready("n1", "False", "KubeletNotReady", "PLEG unhealthy")
    info = await kube_virtual.get_node("n1")
    assert info is not None
    assert info.conditions["Ready"] == ("False", start + 15)
    assert await kube_virtual.set_node_ready("ghost", "True", "KubeletReady", "ok") is False


async def test_an_unchanged_ready_is_reported_only_every_report_period(
    fake_api_virtual: FakeApiServer, kube_virtual: KubeClient, virtual_clock: VirtualClock
) -> None:
    assert await kube_virtual.register_node("n1", {})
    start = virtual_clock.now()
    assert await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok", report_every=15)

    def heartbeat() -> str:
        node = fake_api_virtual.node("n1")
        assert node is not None
        (ready,) = node["status"]["conditions"]
        return str(ready["lastHeartbeatTime"])

    await virtual_clock.advance(10)
    assert await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok", report_every=15)
    assert heartbeat() == format_time(start)  # unchanged and fresh: not posted again
    await virtual_clock.advance(6)
    assert await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok", report_every=15)
    assert heartbeat() == format_time(start + 16)  # the report period passed
    # Another writer's change (the node controller's Unknown) is answered at once.
    await virtual_clock.advance(1)
    assert await kube_virtual.set_node_ready("n1", "Unknown", "NodeStatusUnknown", "gone")
    assert await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok", report_every=15)
    info = await kube_virtual.get_node("n1")
    assert info is not None and info.conditions["Ready"] == ("True", start + 17)


async def test_a_lease_renewed_from_the_last_one_written_rereads_after_a_conflict(
    fake_api_virtual: FakeApiServer, kube_virtual: KubeClient, virtual_clock: VirtualClock
) -> None:
    assert await kube_virtual.register_node("n1", {})
    first = await kube_virtual.renew_lease("n1", "n1", 40)
    await virtual_clock.advance(1)
    second = await kube_virtual.renew_lease("n1", "n1", 40, last=first)
    assert second["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    # Renewing from a stale copy conflicts; the renewal reads the lease and goes through.
    await virtual_clock.advance(1)
    third = await kube_virtual.renew_lease("n1", "n1", 40, last=first)
    lease = fake_api_virtual.lease("n1")
    assert lease is not None
    assert lease["metadata"]["resourceVersion"] == third["metadata"]["resourceVersion"]
    assert lease["spec"]["renewTime"] == third["spec"]["renewTime"]
    assert third["metadata"]["ownerReferences"][0]["name"] == "n1"


async def test_unrenewed_lease_turns_node_unknown(
    fake_api_virtual: FakeApiServer, kube_virtual: KubeClient, virtual_clock: VirtualClock
) -> None:
    await kube_virtual.register_node("n1", {})
    await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok")
    await kube_virtual.renew_lease("n1", "n1", 40)
    fake_api_virtual.add_node("n2")  # healthy: with every node down nothing is tainted
    await virtual_clock.advance(30)
    await kube_virtual.renew_lease("n1", "n1", 40)
    fake_api_virtual.set_lease("n2")
    await virtual_clock.advance(30)
    node = await kube_virtual.get_node("n1")
    assert node is not None and node.ready == "True"
    fake_api_virtual.set_lease("n2")
    await virtual_clock.advance(15)  # 45 s since the last renewal > 40 s grace
    node = await kube_virtual.get_node("n1")
    assert node is not None
    assert node.ready == "Unknown"
    assert Taint(TAINT_UNREACHABLE, "NoExecute") in node.taints
    # The kubelet comes back: Ready=True, a new transition time, and the taint goes.
    await kube_virtual.renew_lease("n1", "n1", 40)
    await kube_virtual.set_node_ready("n1", "True", "KubeletReady", "ok")
    node = await kube_virtual.get_node("n1")
    assert node is not None
    assert node.conditions["Ready"] == ("True", float(int(virtual_clock.now())))
    assert node.taints == ()


# ---------------------------------------------------------------- pods


async def test_pods_on_node_identifies_daemonset_and_mirror_pods(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1")
    fake_api.add_pod("kube-system", "proxy-x1", "n1", owner_kind="DaemonSet")
    fake_api.add_pod("kube-system", "etcd-n1", "n1", annotations={ANNOTATION_MIRROR: "h"})
    fake_api.add_pod("default", "web-1", "n1", owner_kind="ReplicaSet")
    fake_api.add_pod("default", "elsewhere", "n2")
    pods = {p.name: p for p in await kube.pods_on_node("n1")}
    assert set(pods) == {"proxy-x1", "etcd-n1", "web-1"}
    assert pods["proxy-x1"].is_daemonset and not pods["proxy-x1"].is_mirror
    assert pods["etcd-n1"].is_mirror and pods["etcd-n1"].owner_kinds == ("Node",)
    assert pods["web-1"].owner_kinds == ("ReplicaSet",) and not pods["web-1"].is_daemonset
    assert all(p.phase == "Running" and not p.deleting and p.node == "n1" for p in pods.values())


async def test_eviction_blocked_by_pdb(fake_api: FakeApiServer, kube: KubeClient) -> None:
    for node in ("n1", "n2"):
        fake_api.add_node(node)
    fake_api.add_replicaset("a", "web", replicas=2)  # maxUnavailable counts its replicas
    fake_api.add_pod("a", "web-1", "n1", labels={"app": "web"}, owner_kind="ReplicaSet")
    fake_api.add_pod("a", "web-2", "n2", labels={"app": "web"}, owner_kind="ReplicaSet")
    fake_api.add_pdb("a", "web-pdb", {"app": "web"}, max_unavailable=0)
    result, message = await kube.evict("a", "web-1")
    assert result is EvictResult.BLOCKED
    assert message == "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
    assert fake_api.pod("a", "web-1") is not None


async def test_eviction_allowed_and_gone(fake_api: FakeApiServer, kube: KubeClient) -> None:
    fake_api.add_node("n1")
    fake_api.add_pod("a", "web-1", "n1", labels={"app": "web"})
    fake_api.add_pod("a", "web-2", "n1", labels={"app": "web"})
    fake_api.add_pdb("a", "web-pdb", {"app": "web"}, min_available=1)
    assert (await kube.evict("a", "web-1"))[0] is EvictResult.EVICTED
    assert fake_api.pod("a", "web-1") is None
    assert (await kube.evict("a", "web-1"))[0] is EvictResult.GONE


async def test_throttling_429_on_eviction_is_unavailable_not_blocked(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1")
    fake_api.add_pod("a", "p", "n1")
    fake_api.fail_next("POST", "/eviction$", 429)
    with pytest.raises(KubeUnavailable):
        await kube.evict("a", "p")


async def test_evicted_pod_on_dead_node_stays_terminating(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("dead", ready=False)
    fake_api.add_pod("a", "p", "dead")
    assert (await kube.evict("a", "p"))[0] is EvictResult.EVICTED
    (pod,) = await kube.pods_on_node("dead")
    assert pod.deleting  # Terminating, and it stays so: no kubelet will confirm
    assert await kube.delete_pod("a", "p", grace_seconds=30) is True
    assert [p.deleting for p in await kube.pods_on_node("dead")] == [True]
    assert await kube.delete_pod("a", "p") is True  # grace 0: force delete
    assert await kube.pods_on_node("dead") == []
    assert await kube.delete_pod("a", "p") is False


# ---------------------------------------------------------------- namespaces


async def test_namespaces(fake_api: FakeApiServer, kube: KubeClient) -> None:
    fake_api.add_namespace("apps", {"team": "x"})
    names = {ns.name: ns for ns in await kube.list_namespaces()}
    assert {"default", "kube-system", "kube-node-lease", "apps"} <= set(names)
    key = "pod-security.kubernetes.io/enforce"
    assert await kube.patch_namespace_labels("apps", {key: "restricted", "team": None})
    (apps,) = [ns for ns in await kube.list_namespaces() if ns.name == "apps"]
    assert apps.labels == {"kubernetes.io/metadata.name": "apps", key: "restricted"}
    assert await kube.patch_namespace_labels("ghost", {key: "baseline"}) is False


# ---------------------------------------------------------------- errors


async def test_503_is_kube_unavailable(fake_api: FakeApiServer, kube: KubeClient) -> None:
    fake_api.set_unreachable(True)
    with pytest.raises(KubeUnavailable, match="answered 503"):
        await kube.list_nodes()
    with pytest.raises(KubeUnavailable):
        await collect(kube.watch_nodes("1"), 1)


async def test_closed_connection_is_kube_unavailable(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.set_unreachable(True, mode="close")
    with pytest.raises(KubeUnavailable, match="cannot reach"):
        await kube.get_node("n1")
    fake_api.set_unreachable(False)
    assert await kube.get_node("n1") is None


async def test_connection_refused_is_kube_unavailable(tmp_path: Path) -> None:
    fake = FakeApiServer()
    await fake.start()
    path = fake.write_kubeconfig(tmp_path / "kubeconfig")
    await fake.stop()  # the port is now closed: connections are refused
    async with await KubeClient.from_kubeconfig(path, request_timeout=2) as kube:
        with pytest.raises(KubeUnavailable, match="cannot reach the Kubernetes API"):
            await kube.list_nodes()
        with pytest.raises(KubeUnavailable):
            await collect(kube.watch_nodes("1"), 1)


async def test_server_errors_and_throttling_are_unavailable(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.fail_next("*", "/nodes", 500)
    with pytest.raises(KubeUnavailable, match="answered 500"):
        await kube.list_nodes()
    fake_api.fail_next("*", "/nodes", 429)
    with pytest.raises(KubeUnavailable, match="answered 429"):
        await kube.cordon("n1")


async def test_unexpected_4xx_is_permanent_and_names_the_object(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1")
    fake_api.fail_next("PATCH", "/nodes/n1$", 403)
    with pytest.raises(PermanentError, match=r'cordon node "n1".*403'):
        await kube.cordon("n1")


async def test_wrong_token_is_permanent(fake_api: FakeApiServer, tmp_path: Path) -> None:
    path = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(fake_api.token, "wrong"))
    async with await KubeClient.from_kubeconfig(path) as kube:
        with pytest.raises(PermanentError, match="401"):
            await kube.list_nodes()


async def test_bad_kubeconfig_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        await KubeClient.from_kubeconfig(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nope\n")
    with pytest.raises(ConfigError, match=str(bad)):
        await KubeClient.from_kubeconfig(bad)


async def test_context_is_selected(fake_api: FakeApiServer, tmp_path: Path) -> None:
    path = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    async with await KubeClient.from_kubeconfig(path, context="fake") as kube:
        assert kube.host == fake_api.url
    with pytest.raises(ConfigError):
        await KubeClient.from_kubeconfig(path, context="other")


async def test_default_loading_rules_use_kubeconfig_env(
    fake_api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    async with await KubeClient.from_kubeconfig(None) as kube:
        assert kube.host == fake_api.url


def test_time_helpers() -> None:
    assert format_time(1.9) == "1970-01-01T00:00:01Z"
    assert format_micro_time(1.25) == "1970-01-01T00:00:01.250000Z"
    assert parse_time("1970-01-01T00:00:01.250000Z") == 1.25
    assert parse_time("1970-01-01T00:00:01+00:00") == 1.0
    assert parse_time(None) is None and parse_time("garbage") is None


async def test_client_keeps_the_library_attributes_without_its_tls_setup(
    fake_api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connection.api_client replaces the library's constructors: the same attributes, and no
    TLS context at all for a plain-HTTP server (it cost ~20 ms per cluster)."""
    from kubernetes_asyncio.client import ApiClient, Configuration

    from healer.kube import connection

    theirs = ApiClient(Configuration())
    made: list[object] = []
    real = connection.ssl.create_default_context
    monkeypatch.setattr(
        connection.ssl, "create_default_context", lambda **kw: made.append(kw) or real(**kw)
    )
    path = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    async with await KubeClient.from_kubeconfig(path) as kube:
        ours = kube._api
        assert set(vars(ours)) == set(vars(theirs))
        assert set(vars(ours.rest_client)) == set(vars(theirs.rest_client))
        nodes, _ = await kube.list_nodes()  # and it works
        assert len(nodes) == len(list(fake_api.nodes()))
    await theirs.close()
    assert made == []


def test_tls_context_shared_per_ca_and_flags(tmp_path: Path) -> None:
    from kubernetes_asyncio.client import Configuration

    from healer.kube.connection import _tls_for
    from tests.plugins.mqtt import _write_certs

    ca = _write_certs(tmp_path)

    def config(verify: bool = True, cafile: Path = ca) -> Configuration:
        c = Configuration(host="https://127.0.0.1:6443")
        c.ssl_ca_cert, c.verify_ssl = str(cafile), verify
        return c

    copy = tmp_path / "copy.pem"  # the same CA under another name: the loader's temp files
    copy.write_bytes(ca.read_bytes())
    first = _tls_for(config())
    assert _tls_for(config()) is first and _tls_for(config(cafile=copy)) is first
    insecure = _tls_for(config(verify=False))
    assert insecure is not first and isinstance(insecure, ssl.SSLContext)
    assert insecure.verify_mode == ssl.CERT_NONE and first.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="TLS files"):
        _tls_for(config(cafile=tmp_path / "missing.pem"))
