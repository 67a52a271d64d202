"""An HTTP fake of the Kubernetes API server that answers like the real one.

It owns a small in-memory cluster (nodes, pods, PodDisruptionBudgets, node leases, namespaces,
Secrets, RBAC roles and bindings), serves it over real HTTP with the real JSON shapes (objects,
lists, ``Status`` errors, newline-delimited watch streams with resourceVersions and ``410
Expired``), and plays the two controllers healer depends on:

* the node lifecycle controller: a node whose lease (or status heartbeat) is older than
  ``lease_grace`` turns ``Ready=Unknown`` and gets the ``node.kubernetes.io/unreachable:NoExecute``
  taint;
* the kubelet's part of pod deletion: a pod being deleted on a Ready node goes away, while one on
  a node that is not Ready stays ``Terminating`` until it is force-deleted, as on a real dead node;
* kube-controller-manager's non-graceful node shutdown handling: on a node that is not Ready and
  carries ``node.kubernetes.io/out-of-service:NoExecute``, the taint manager deletes every pod
  that does not tolerate the taint and the pod garbage collector force-deletes the pods left
  ``Terminating`` there (volumes are not modelled); pods bound to a deleted node are collected.

Taints are plain ``spec.taints`` and validated as the real API server does (key, effect, unique
by key and effect: a 422 ``Invalid`` otherwise).

Tests and the lab use it over HTTP through the real client, and drive it directly through the
state methods (``add_node``, ``add_pod``, ``fail_next``, ``set_unreachable``, ...). It never
imports the Kubernetes client, so the adapter in :mod:`healer.kube` is tested against bytes on a
socket, not against itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import json
import math
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web

from healer.clock import Clock, RealClock

log = structlog.get_logger(__name__)

Obj = dict[str, Any]

NODE_LEASE_NAMESPACE = "kube-node-lease"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
_TAINT_EFFECTS = ("NoExecute", "NoSchedule", "PreferNoSchedule")
_QUALIFIED_NAME = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
ANNOTATION_MIRROR = "kubernetes.io/config.mirror"
# RBAC objects and Secrets have no spec or status: their payload (rules, roleRef, subjects,
# data) sits at the top level, and a PUT replaces all of it.
RBAC_GROUP = "rbac.authorization.k8s.io"
_NO_SPEC = frozenset({"secrets", "roles", "clusterroles", "rolebindings", "clusterrolebindings"})

# The apiserver closes watches without timeoutSeconds after a randomised ~30-60 min; one fixed
# value is enough here.
_DEFAULT_WATCH_TIMEOUT = 1800.0
_DEFAULT_POD_GRACE = 30

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

_PATH = re.compile(
    r"(?P<prefix>/api/v1|/apis/policy/v1|/apis/coordination\.k8s\.io/v1"
    r"|/apis/rbac\.authorization\.k8s\.io/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?/?"
)


@dataclass(frozen=True)
class _Resource:
    prefix: str
    plural: str
    kind: str
    api_version: str
    group: str
    namespaced: bool

    @property
    def qualified(self) -> str:
        """How the apiserver names the resource in messages: ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


_RESOURCES = {
    (r.prefix, r.plural): r
    for r in (
        _Resource("/api/v1", "nodes", "Node", "v1", "", namespaced=False),
        _Resource("/api/v1", "namespaces", "Namespace", "v1", "", namespaced=False),
        _Resource("/api/v1", "pods", "Pod", "v1", "", namespaced=True),
        _Resource("/api/v1", "secrets", "Secret", "v1", "", namespaced=True),
        _Resource(
            "/apis/policy/v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            "policy/v1",
            "policy",
            namespaced=True,
        ),
        _Resource(
            "/apis/coordination.k8s.io/v1",
            "leases",
            "Lease",
            "coordination.k8s.io/v1",
            "coordination.k8s.io",
            namespaced=True,
        ),
        *(
            _Resource(
                "/apis/rbac.authorization.k8s.io/v1",
                plural,
                kind,
                "rbac.authorization.k8s.io/v1",
                RBAC_GROUP,
                namespaced=namespaced,
            )
            for plural, kind, namespaced in (
                ("roles", "Role", True),
                ("clusterroles", "ClusterRole", False),
                ("rolebindings", "RoleBinding", True),
                ("clusterrolebindings", "ClusterRoleBinding", False),
            )
        ),
    )
}
_BY_PLURAL = {r.plural: r for r in _RESOURCES.values()}


class _ApiError(Exception):
    """An error answer: carries the ``Status`` object the apiserver would send."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Obj | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status_object(code, message, reason=reason, details=details)


def status_object(
    code: int, message: str, *, reason: str | None = None, details: Obj | None = None
) -> Obj:
    """A ``Status`` as the apiserver sends it with every error."""
    out: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason if reason is not None else _REASONS.get(code, ""),
        "code": code,
    }
    if details is not None:
        out["details"] = details
    return out


def rfc3339(ts: float) -> str:
    """``metav1.Time``: seconds precision, UTC, ``Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(ts: float) -> str:
    """``metav1.MicroTime`` (lease renewTime): microsecond precision."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value).timestamp()


@dataclass(eq=False)  # identity semantics: watchers live in a set
class _Watcher:
    resource: _Resource
    predicate: Callable[[Obj], bool]
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    remaining: int


class FakeApiServer:
    """The fake apiserver. All state lives in this object; every mutation goes through
    :meth:`_store_put` / :meth:`_store_remove` so that resourceVersions, history and watchers
    stay consistent whether the change came over HTTP or from a state method."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        lease_grace: float = 40.0,
        monitor_period: float = 1.0,
        history_limit: int = 1000,
        token: str | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.lease_grace = lease_grace
        self.monitor_period = monitor_period
        self.token = token if token is not None else secrets.token_urlsafe(16)
        # (verb, path kind) -> count, e.g. ("POST", "pods/eviction"), ("WATCH", "nodes").
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._rv = 1
        self._store: dict[str, dict[tuple[str, str], Obj]] = {p: {} for p in _BY_PLURAL}
        self._history: collections.deque[tuple[int, str, str, Obj]] = collections.deque(
            maxlen=history_limit
        )
        # Watches may resume from any resourceVersion >= this; older ones get 410 Expired.
        self._compacted_rv = 0
        self._watchers: set[_Watcher] = set()
        self._faults: list[_Fault] = []
        self._unreachable: Literal["503", "close"] | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._url: str | None = None
        self._monitor: asyncio.Task[None] | None = None
        for ns in ("default", "kube-system", "kube-public", NODE_LEASE_NAMESPACE):
            self._ensure_namespace(ns)

    # ---------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a client that hangs up ends its watch handler at once.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        bound = self._runner.addresses[0]  # the real port when port=0
        self._url = f"http://{bound[0]}:{bound[1]}"
        self._monitor = asyncio.create_task(self._monitor_loop(), name="fake-apiserver-monitor")
        log.debug("fake_apiserver.started", url=self._url)

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        self.end_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.debug("fake_apiserver.stopped", url=self._url)

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FakeApiServer is not started")
        return self._url

    def write_kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig pointing at this server (plain HTTP, bearer token)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    # ---------------------------------------------------------------- state methods

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def add_node(self, name: str, labels: dict[str, str] | None = None, ready: bool = True) -> Obj:
        now = self.clock.now()
        ready_cond = (
            _condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", now)
            if ready
            else _condition(
                "Ready",
                "False",
                "KubeletNotReady",
                "container runtime network not ready: NetworkReady=false",
                now,
            )
        )
        node: Obj = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {},
            "status": {
                "conditions": [
                    _condition(
                        "MemoryPressure",
                        "False",
                        "KubeletHasSufficientMemory",
                        "kubelet has sufficient memory available",
                        now,
                    ),
                    _condition(
                        "DiskPressure",
                        "False",
                        "KubeletHasNoDiskPressure",
                        "kubelet has no disk pressure",
                        now,
                    ),
                    _condition(
                        "PIDPressure",
                        "False",
                        "KubeletHasSufficientPID",
                        "kubelet has sufficient PID available",
                        now,
                    ),
                    ready_cond,
                ],
                "addresses": [{"type": "Hostname", "address": name}],
            },
        }
        return self._create(_BY_PLURAL["nodes"], "", node)

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str | None,
        *,
        labels: dict[str, str] | None = None,
        owner_kind: str | None = None,
        annotations: dict[str, str] | None = None,
        tolerations: list[Obj] | None = None,
    ) -> Obj:
        self._ensure_namespace(namespace)
        meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        if annotations:
            meta["annotations"] = dict(annotations)
        if owner_kind is not None:
            api = "v1" if owner_kind in ("Node", "ReplicationController") else "apps/v1"
            meta["ownerReferences"] = [
                {
                    "apiVersion": api,
                    "kind": owner_kind,
                    "name": name.rsplit("-", 1)[0],
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        elif annotations and ANNOTATION_MIRROR in annotations and node:
            # Mirror pods of static pods are owned by their Node (since 1.17).
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": node, "controller": True}
            ]
            existing = self.node(node)
            if existing is not None:
                meta["ownerReferences"][0]["uid"] = existing["metadata"]["uid"]
        pod: Obj = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": meta,
            "spec": {
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.9"}],
                "terminationGracePeriodSeconds": _DEFAULT_POD_GRACE,
            },
            "status": {"phase": "Pending"},
        }
        if tolerations:
            pod["spec"]["tolerations"] = copy.deepcopy(tolerations)
        if node:
            pod["spec"]["nodeName"] = node
            pod["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        return self._create(_BY_PLURAL["pods"], namespace, pod)

    def add_pdb(
        self,
        namespace: str,
        name: str,
        selector: dict[str, Any],
        *,
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
    ) -> Obj:
        """``selector`` is either plain matchLabels or a full LabelSelector."""
        self._ensure_namespace(namespace)
        if "matchLabels" in selector or "matchExpressions" in selector:
            label_selector = copy.deepcopy(selector)
        else:
            label_selector = {"matchLabels": dict(selector)}
        spec: Obj = {"selector": label_selector}
        if min_available is not None:
            spec["minAvailable"] = min_available
        if max_unavailable is not None:
            spec["maxUnavailable"] = max_unavailable
        pdb: Obj = {
            "kind": "PodDisruptionBudget",
            "apiVersion": "policy/v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        return self._create(_BY_PLURAL["poddisruptionbudgets"], namespace, pdb)

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        ns = self._ensure_namespace(name)
        if labels:
            ns = copy.deepcopy(ns)
            ns["metadata"].setdefault("labels", {}).update(labels)
            ns = self._store_put(_BY_PLURAL["namespaces"], "", ns, "MODIFIED")
        return copy.deepcopy(ns)

    def set_lease(
        self, node: str, renew_time: float | None = None, holder: str | None = None
    ) -> Obj:
        """Create or renew ``kube-node-lease/<node>`` as the kubelet would."""
        res = _BY_PLURAL["leases"]
        renew = self.clock.now() if renew_time is None else renew_time
        existing = self._store["leases"].get((NODE_LEASE_NAMESPACE, node))
        if existing is None:
            lease: Obj = {
                "kind": "Lease",
                "apiVersion": "coordination.k8s.io/v1",
                "metadata": {"name": node, "namespace": NODE_LEASE_NAMESPACE},
                "spec": {
                    "holderIdentity": holder or node,
                    "leaseDurationSeconds": 40,
                    "renewTime": rfc3339_micro(renew),
                },
            }
            return self._create(res, NODE_LEASE_NAMESPACE, lease)
        lease = copy.deepcopy(existing)
        lease["spec"]["renewTime"] = rfc3339_micro(renew)
        if holder is not None:
            lease["spec"]["holderIdentity"] = holder
        return copy.deepcopy(self._store_put(res, NODE_LEASE_NAMESPACE, lease, "MODIFIED"))

    def node(self, name: str) -> Obj | None:
        obj = self._store["nodes"].get(("", name))
        return copy.deepcopy(obj) if obj is not None else None

    def nodes(self) -> list[Obj]:
        return [copy.deepcopy(o) for o in self._store["nodes"].values()]

    def pod(self, namespace: str, name: str) -> Obj | None:
        obj = self._store["pods"].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def pods_on(self, node: str) -> list[Obj]:
        return [
            copy.deepcopy(p)
            for p in self._store["pods"].values()
            if p.get("spec", {}).get("nodeName") == node
        ]

    def lease(self, node: str) -> Obj | None:
        obj = self._store["leases"].get((NODE_LEASE_NAMESPACE, node))
        return copy.deepcopy(obj) if obj is not None else None

    def namespace(self, name: str) -> Obj | None:
        obj = self._store["namespaces"].get(("", name))
        return copy.deepcopy(obj) if obj is not None else None

    def delete_node(self, name: str) -> bool:
        """Delete a node directly (as an operator with kubectl would)."""
        if ("", name) not in self._store["nodes"]:
            return False
        self._remove_node(name)
        return True

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older resourceVersions now get 410."""
        self._history.clear()
        self._compacted_rv = self._rv

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests matching ``method`` (HTTP method, or the verbs
        ``LIST``/``WATCH``; ``*`` for any) and ``path_regex`` (searched in the URL path) with an
        error ``Status`` of code ``status``."""
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, times))

    def set_unreachable(self, unreachable: bool, *, mode: Literal["503", "close"] = "503") -> None:
        """While unreachable every request answers 503 (``mode="503"``) or has its connection
        closed without an answer (``mode="close"``). Open watches are ended either way, as a
        partition or apiserver restart would."""
        self._unreachable = mode if unreachable else None
        if unreachable:
            self.end_watches()

    def end_watches(self, resource: str | None = None) -> None:
        """End the open watch streams (all, or one resource's, e.g. ``"nodes"``) cleanly, as a
        restarting apiserver does. Changes made after this call are not sent on those streams:
        clients see them only by resuming from their last resourceVersion."""
        for watcher in list(self._watchers):
            if resource is None or watcher.resource.plural == resource:
                watcher.queue.put_nowait(None)

    def request_count(self, verb: str, kind: str) -> int:
        return self.requests[(verb.upper(), kind)]

    def check_nodes(self) -> None:
        """One pass of the node lifecycle controller and pod garbage collector."""
        now = self.clock.now()
        for (_, name), node in list(self._store["nodes"].items()):
            ready = _find_condition(node, "Ready")
            if ready is not None and ready.get("status") == "Unknown":
                continue
            if now - self._last_probe(name, node) <= self.lease_grace:
                continue
            self._mark_unknown(node, now)
        for (_, name), node in list(self._store["nodes"].items()):
            if _has_taint(node, TAINT_OUT_OF_SERVICE, "NoExecute") and not self._node_ready(name):
                self._release_out_of_service(name)
        live = {name for (_, name) in self._store["nodes"]}
        for (ns, pname), pod in list(self._store["pods"].items()):
            bound = pod.get("spec", {}).get("nodeName")
            if bound and bound not in live:
                self._store_remove(_BY_PLURAL["pods"], ns, pname)

    def _release_out_of_service(self, node: str) -> None:
        """kube-controller-manager on an out-of-service node that is not Ready: the taint
        manager evicts what does not tolerate the taint (an ordinary graceful delete, which on
        a node that is not Ready leaves the pod Terminating), then the pod GC's
        ``gcTerminating`` force-deletes the Terminating pods."""
        pods = _BY_PLURAL["pods"]
        for pod in self.pods_on(node):
            meta = pod["metadata"]
            if not meta.get("deletionTimestamp") and not _tolerates(
                pod, TAINT_OUT_OF_SERVICE, "NoExecute"
            ):
                self._delete_pod(meta["namespace"], meta["name"], None)
        for pod in self.pods_on(node):
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                self._store_remove(pods, meta["namespace"], meta["name"])
                log.info(
                    "fake_apiserver.pod_force_deleted",
                    pod=f"{meta['namespace']}/{meta['name']}",
                    node=node,
                    why="out-of-service",
                )

    # ---------------------------------------------------------------- store

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _ensure_namespace(self, name: str) -> Obj:
        existing = self._store["namespaces"].get(("", name))
        if existing is not None:
            return existing
        ns: Obj = {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        return self._create(_BY_PLURAL["namespaces"], "", ns)

    def _create(self, res: _Resource, ns: str, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise _ApiError(422, f'{res.kind} "" is invalid: metadata.name: Required value')
        if (ns, name) in self._store[res.plural]:
            raise _ApiError(
                409,
                f'{res.qualified} "{name}" already exists',
                reason="AlreadyExists",
                details={"name": name, "group": res.group, "kind": res.plural},
            )
        if res.plural == "nodes":
            _validate_taints(name, obj)
        obj["kind"] = res.kind
        obj["apiVersion"] = res.api_version
        if res.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(self.clock.now())
        meta.pop("deletionTimestamp", None)
        if res.plural != "namespaces" and res.plural not in _NO_SPEC:
            obj.setdefault("spec", {})
        if res.plural in ("nodes", "pods", "namespaces"):
            # Go serialises these (non-pointer) status structs even when empty.
            obj.setdefault("status", {})
        self._store_put(res, ns, obj, "ADDED")
        if res.plural == "nodes":
            self._sync_node_taints(name)
        return copy.deepcopy(self._store[res.plural][(ns, name)])

    def _store_put(self, res: _Resource, ns: str, obj: Obj, event: str) -> Obj:
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        key = (ns, obj["metadata"]["name"])
        self._store[res.plural][key] = obj
        self._record(rv, res, event, obj)
        return obj

    def _store_remove(self, res: _Resource, ns: str, name: str) -> Obj | None:
        obj = self._store[res.plural].pop((ns, name), None)
        if obj is None:
            return None
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._record(rv, res, "DELETED", obj)
        return obj

    def _record(self, rv: int, res: _Resource, event: str, obj: Obj) -> None:
        snapshot = copy.deepcopy(obj)
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0][0]
        self._history.append((rv, res.plural, event, snapshot))
        for watcher in list(self._watchers):
            if watcher.resource is res and watcher.predicate(snapshot):
                watcher.queue.put_nowait((event, snapshot))

    # ---------------------------------------------------------------- node controller

    def _last_probe(self, name: str, node: Obj) -> float:
        """When the kubelet was last heard from: lease renewal, status heartbeat or creation."""
        times = [parse_time(node["metadata"].get("creationTimestamp")) or 0.0]
        ready = _find_condition(node, "Ready")
        if ready is not None:
            times.append(parse_time(ready.get("lastHeartbeatTime")) or 0.0)
        lease = self._store["leases"].get((NODE_LEASE_NAMESPACE, name))
        if lease is not None:
            times.append(parse_time(lease.get("spec", {}).get("renewTime")) or 0.0)
        return max(times)

    def _mark_unknown(self, node: Obj, now: float) -> None:
        node = copy.deepcopy(node)
        conditions = node.setdefault("status", {}).setdefault("conditions", [])
        never_posted = _find_condition(node, "Ready") is None
        if never_posted:
            conditions.append({"type": "Ready"})
        # The real controller turns every kubelet-owned condition Unknown, not only Ready.
        for cond in conditions:
            if cond.get("status") != "Unknown":
                cond["lastTransitionTime"] = rfc3339(now)
            cond["status"] = "Unknown"
            cond["reason"] = "NodeStatusUnknown"
            cond["message"] = (
                "Kubelet never posted node status."
                if never_posted
                else "Kubelet stopped posting node status."
            )
        _set_taint(node, TAINT_UNREACHABLE, "NoExecute", now)
        _drop_taint(node, TAINT_NOT_READY)
        self._store_put(_BY_PLURAL["nodes"], "", node, "MODIFIED")
        log.info("fake_apiserver.node_unknown", node=node["metadata"]["name"])

    def _sync_node_taints(self, name: str) -> None:
        """Keep the controller-owned taints in line with Ready and spec.unschedulable, and let
        a Ready kubelet finish pods that were being deleted while it was away."""
        node = self._store["nodes"].get(("", name))
        if node is None:
            return
        updated = copy.deepcopy(node)
        now = self.clock.now()
        ready = _find_condition(updated, "Ready")
        status = ready.get("status") if ready else None
        if status == "True":
            _drop_taint(updated, TAINT_UNREACHABLE)
            _drop_taint(updated, TAINT_NOT_READY)
        elif status == "False":
            _drop_taint(updated, TAINT_UNREACHABLE)
            _set_taint(updated, TAINT_NOT_READY, "NoExecute", now)
        if updated.get("spec", {}).get("unschedulable"):
            _set_taint(updated, TAINT_UNSCHEDULABLE, "NoSchedule", now)
        else:
            _drop_taint(updated, TAINT_UNSCHEDULABLE)
        if updated.get("spec", {}).get("taints") == []:
            del updated["spec"]["taints"]
        if updated.get("spec") != node.get("spec"):
            self._store_put(_BY_PLURAL["nodes"], "", updated, "MODIFIED")
        if status == "True":
            for pod in self.pods_on(name):
                if pod["metadata"].get("deletionTimestamp"):
                    self._store_remove(
                        _BY_PLURAL["pods"], pod["metadata"]["namespace"], pod["metadata"]["name"]
                    )

    def _node_ready(self, name: str | None) -> bool:
        if not name:
            return False
        node = self._store["nodes"].get(("", name))
        cond = _find_condition(node, "Ready") if node else None
        return cond is not None and cond.get("status") == "True"

    def _remove_node(self, name: str) -> Obj | None:
        removed = self._store_remove(_BY_PLURAL["nodes"], "", name)
        # The garbage collector deletes the kubelet's lease (it is owned by the Node), and the
        # pod GC removes pods bound to a node that no longer exists.
        self._store_remove(_BY_PLURAL["leases"], NODE_LEASE_NAMESPACE, name)
        for pod in self.pods_on(name):
            self._store_remove(
                _BY_PLURAL["pods"], pod["metadata"]["namespace"], pod["metadata"]["name"]
            )
        return removed

    async def _monitor_loop(self) -> None:
        while True:
            await self.clock.sleep(self.monitor_period)
            try:
                self.check_nodes()
            except Exception:  # the controller must outlive one bad pass, and say so
                log.exception("fake_apiserver.monitor_failed")

    # ---------------------------------------------------------------- pods, PDBs

    def _delete_pod(self, ns: str, name: str, grace: int | None) -> Obj:
        res = _BY_PLURAL["pods"]
        pod = self._store["pods"].get((ns, name))
        if pod is None:
            raise _not_found(res, name)
        node = pod.get("spec", {}).get("nodeName")
        if grace == 0 or not node or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            removed = self._store_remove(res, ns, name)
            assert removed is not None
            return copy.deepcopy(removed)
        if grace is None:
            grace = int(
                pod.get("spec", {}).get("terminationGracePeriodSeconds", _DEFAULT_POD_GRACE)
            )
        if not pod["metadata"].get("deletionTimestamp"):
            pod = copy.deepcopy(pod)
            pod["metadata"]["deletionTimestamp"] = rfc3339(self.clock.now() + grace)
            pod["metadata"]["deletionGracePeriodSeconds"] = grace
            pod = self._store_put(res, ns, pod, "MODIFIED")
        answer = copy.deepcopy(pod)
        # A live kubelet stops the containers and the pod goes; a dead one never confirms, so
        # the pod stays Terminating until someone force-deletes it.
        if self._node_ready(node):
            self._store_remove(res, ns, name)
        return answer

    def _pod_healthy(self, pod: Obj) -> bool:
        if pod["metadata"].get("deletionTimestamp"):
            return False
        if pod.get("status", {}).get("phase") != "Running":
            return False
        # Pods on a node that is not Ready get Ready=False from the node controller.
        return self._node_ready(pod.get("spec", {}).get("nodeName"))

    def _pdb_status(self, pdb: Obj) -> Obj:
        ns = pdb["metadata"]["namespace"]
        selector = pdb.get("spec", {}).get("selector") or {}
        matching = [
            p
            for (pns, _), p in self._store["pods"].items()
            if pns == ns and _selector_matches(selector, p["metadata"].get("labels") or {})
        ]
        expected = len(matching)
        healthy = sum(1 for p in matching if self._pod_healthy(p))
        spec = pdb.get("spec", {})
        if spec.get("minAvailable") is not None:
            desired = _scaled(spec["minAvailable"], expected)
        elif spec.get("maxUnavailable") is not None:
            desired = max(0, expected - _scaled(spec["maxUnavailable"], expected))
        else:
            desired = 0
        return {
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": max(0, healthy - desired),
            "observedGeneration": 1,
        }

    def _evict(self, ns: str, name: str) -> Obj:
        res = _BY_PLURAL["pods"]
        pod = self._store["pods"].get((ns, name))
        if pod is None:
            raise _not_found(res, name)
        # A pod already terminating or not running does not count against any budget.
        ignore_budgets = bool(pod["metadata"].get("deletionTimestamp")) or pod.get(
            "status", {}
        ).get("phase") in ("Pending", "Succeeded", "Failed")
        if not ignore_budgets:
            labels = pod["metadata"].get("labels") or {}
            pdbs = [
                p
                for (pns, _), p in self._store["poddisruptionbudgets"].items()
                if pns == ns and _selector_matches(p.get("spec", {}).get("selector") or {}, labels)
            ]
            if len(pdbs) > 1:
                raise _ApiError(
                    500,
                    "This pod has more than one PodDisruptionBudget, which the eviction "
                    "subresource does not support.",
                )
            for pdb in pdbs:
                status = self._pdb_status(pdb)
                # An unhealthy pod may go while the budget is met (unhealthyPodEvictionPolicy
                # IfHealthyBudget, the default); a healthy one needs a disruption to spare.
                if self._pod_healthy(pod):
                    allowed = status["disruptionsAllowed"] > 0
                else:
                    allowed = status["currentHealthy"] >= status["desiredHealthy"]
                if not allowed:
                    raise _ApiError(
                        429,
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        details={
                            "causes": [
                                {
                                    "reason": "DisruptionBudget",
                                    "message": (
                                        f"The disruption budget {pdb['metadata']['name']} needs "
                                        f"{status['desiredHealthy']} healthy pods and has "
                                        f"{status['currentHealthy']} currently"
                                    ),
                                }
                            ]
                        },
                    )
        self._delete_pod(ns, name, None)
        return status_object(201, "", reason="")

    # ---------------------------------------------------------------- HTTP

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        verb, kind = _classify(request)
        self.requests[(verb, kind)] += 1
        if self._unreachable == "close":
            # Drop the connection without an answer; what we return is never written.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if self._unreachable == "503":
            return _error_response(
                _ApiError(503, "the server is currently unable to handle the request")
            )
        for fault in self._faults:
            if (
                fault.remaining > 0
                and fault.method in ("*", request.method, verb)
                and fault.path.search(request.path)
            ):
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                return _error_response(_ApiError(fault.status, f"injected fault {fault.status}"))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error_response(_ApiError(401, "Unauthorized"))
        try:
            response: web.StreamResponse = await handler(request)
        except _ApiError as exc:
            return _error_response(exc)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"})
        m = _PATH.fullmatch(path)
        res = _RESOURCES.get((m["prefix"], m["plural"])) if m else None
        if m is None or res is None:
            raise _ApiError(404, "the server could not find the requested resource")
        ns, name, sub = m["ns"], m["name"], m["sub"]
        if ns is not None and not res.namespaced:
            raise _ApiError(404, "the server could not find the requested resource")
        method = request.method
        if name is None:
            if method == "GET":
                if _truthy(request.query.get("watch")):
                    return await self._watch(request, res, ns)
                return web.json_response(self._list(res, ns, request.query))
            if method == "POST":
                if res.namespaced and ns is None:
                    raise _ApiError(405, "the server does not allow this method")
                body = await _json_body(request)
                obj = self._create_from_request(res, ns or "", body)
                return web.json_response(obj, status=201)
            raise _ApiError(405, "the server does not allow this method on the requested resource")
        if res.namespaced and ns is None:
            raise _ApiError(404, "the server could not find the requested resource")
        key_ns = ns or ""
        if sub not in (None, "status", "eviction"):
            raise _ApiError(404, "the server could not find the requested resource")
        if sub == "eviction":
            if res.plural != "pods" or method != "POST":
                raise _ApiError(405, "the server does not allow this method")
            await _json_body(request)
            return web.json_response(self._evict(key_ns, name), status=201)
        if method == "GET":
            return web.json_response(self._get(res, key_ns, name))
        if method == "DELETE":
            return web.json_response(await self._delete(request, res, key_ns, name))
        if method in ("PUT", "PATCH"):
            body = await _json_body(request)
            if method == "PUT":
                obj = self._update(res, key_ns, name, body, status_only=sub == "status")
            else:
                obj = self._patch(
                    res,
                    key_ns,
                    name,
                    body,
                    request.content_type,
                    status_only=sub == "status",
                )
            return web.json_response(obj)
        raise _ApiError(405, "the server does not allow this method on the requested resource")

    def _decorate(self, res: _Resource, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        if res.plural == "poddisruptionbudgets":
            out["status"] = self._pdb_status(obj)
        return out

    def _get(self, res: _Resource, ns: str, name: str) -> Obj:
        obj = self._store[res.plural].get((ns, name))
        if obj is None:
            raise _not_found(res, name)
        return self._decorate(res, obj)

    def _list(self, res: _Resource, ns: str | None, query: Any) -> Obj:
        predicate = _make_predicate(res, ns, query)
        items = []
        for obj in self._store[res.plural].values():
            if predicate(obj):
                item = self._decorate(res, obj)
                # List items carry no kind/apiVersion on the wire; the list does.
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _create_from_request(self, res: _Resource, ns: str, body: Obj) -> Obj:
        if body.get("kind") not in (None, res.kind):
            raise _ApiError(400, f"the API version in the data does not match: {body.get('kind')}")
        if res.namespaced and ("", ns) not in self._store["namespaces"]:
            raise _ApiError(
                404,
                f'namespaces "{ns}" not found',
                details={"name": ns, "kind": "namespaces"},
            )
        meta = body.setdefault("metadata", {})
        if res.namespaced and meta.get("namespace") not in (None, ns):
            raise _ApiError(
                400,
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if res.plural == "pods" and "status" not in body:
            running = bool(body.get("spec", {}).get("nodeName"))
            body["status"] = {"phase": "Running" if running else "Pending"}
        if res.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
            body["status"] = {"phase": "Active"}
        for drop in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp"):
            meta.pop(drop, None)
        return self._decorate(res, self._create(res, ns, body))

    def _check_rv(self, res: _Resource, current: Obj, body: Obj) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            name = current["metadata"]["name"]
            raise _ApiError(
                409,
                f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                reason="Conflict",
                details={"name": name, "group": res.group, "kind": res.plural},
            )

    def _update(self, res: _Resource, ns: str, name: str, body: Obj, *, status_only: bool) -> Obj:
        current = self._store[res.plural].get((ns, name))
        if current is None:
            raise _not_found(res, name)
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise _ApiError(400, "the name of the object does not match the name on the URL")
        self._check_rv(res, current, body)
        new = copy.deepcopy(current)
        if status_only:
            new["status"] = copy.deepcopy(body.get("status", {}))
        else:
            for key, value in body.items():
                if key in ("kind", "apiVersion", "metadata", "status"):
                    continue
                new[key] = copy.deepcopy(value)
            if res.plural in _NO_SPEC:
                # Nothing server-owned at the top level: a PUT replaces the whole payload.
                for key in [
                    k for k in new if k not in body and k not in ("kind", "apiVersion", "metadata")
                ]:
                    del new[key]
            meta = body.get("metadata") or {}
            for key in ("labels", "annotations", "ownerReferences", "finalizers"):
                if key in meta:
                    new["metadata"][key] = copy.deepcopy(meta[key])
                else:
                    new["metadata"].pop(key, None)
        return self._commit(res, ns, name, new)

    def _patch(
        self,
        res: _Resource,
        ns: str,
        name: str,
        body: Any,
        content_type: str,
        *,
        status_only: bool,
    ) -> Obj:
        current = self._store[res.plural].get((ns, name))
        if current is None:
            raise _not_found(res, name)
        if not isinstance(body, dict):
            raise _ApiError(
                415, f"the body of the request was in an unknown format: {content_type}"
            )
        self._check_rv(res, current, body)
        new = copy.deepcopy(current)
        if content_type == "application/merge-patch+json":
            _merge_patch(new, body)
        elif content_type == "application/strategic-merge-patch+json":
            _strategic_merge(new, body, ())
        else:
            raise _ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/merge-patch+json, application/strategic-merge-patch+json "
                f"(got {content_type})",
            )
        # Immutable and subresource-owned parts are restored, as the real strategies do.
        for key in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
            if key in current["metadata"]:
                new["metadata"][key] = current["metadata"][key]
        new["kind"], new["apiVersion"] = current["kind"], current["apiVersion"]
        if status_only:
            status = new.get("status")
            new = copy.deepcopy(current)
            new["status"] = status if status is not None else {}
        elif "status" in current and res.plural != "namespaces":
            new["status"] = copy.deepcopy(current["status"])
        return self._commit(res, ns, name, new)

    def _commit(self, res: _Resource, ns: str, name: str, new: Obj) -> Obj:
        old = self._store[res.plural].get((ns, name))
        if res.group == RBAC_GROUP and old is not None and old.get("roleRef") != new.get("roleRef"):
            raise _ApiError(
                422,
                f'{res.kind}.rbac.authorization.k8s.io "{name}" is invalid: roleRef: Invalid '
                "value: cannot change roleRef",
            )
        if res.plural == "nodes":
            _validate_taints(name, new)
        if new == old:
            return self._decorate(res, new)  # a no-op write does not bump resourceVersion
        self._store_put(res, ns, new, "MODIFIED")
        if res.plural == "nodes":
            self._sync_node_taints(name)
        stored = self._store[res.plural].get((ns, name), new)
        return self._decorate(res, stored)

    async def _delete(self, request: web.Request, res: _Resource, ns: str, name: str) -> Obj:
        grace: int | None = None
        raw = request.query.get("gracePeriodSeconds")
        body: Obj = {}
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                parsed = json.loads(await request.read() or b"{}")
                body = parsed if isinstance(parsed, dict) else {}
        if raw is None and body.get("gracePeriodSeconds") is not None:
            raw = str(body["gracePeriodSeconds"])
        if raw is not None:
            try:
                grace = int(raw)
            except ValueError as exc:
                raise _ApiError(400, f"invalid gracePeriodSeconds {raw!r}") from exc
        if res.plural == "pods":
            return self._delete_pod(ns, name, grace)
        current = self._store[res.plural].get((ns, name))
        if current is None:
            raise _not_found(res, name)
        if res.plural == "nodes":
            self._remove_node(name)
        else:
            self._store_remove(res, ns, name)
        return status_object(
            200,
            "",
            reason="",
            details={
                "name": name,
                "group": res.group,
                "kind": res.plural,
                "uid": current["metadata"]["uid"],
            },
        )

    async def _watch(
        self, request: web.Request, res: _Resource, ns: str | None
    ) -> web.StreamResponse:
        query = request.query
        predicate = _make_predicate(res, ns, query)
        raw_rv = query.get("resourceVersion", "")
        try:
            since = int(raw_rv) if raw_rv not in ("", "0") else None
        except ValueError as exc:
            raise _ApiError(400, f"invalid resource version {raw_rv!r}") from exc
        try:
            timeout = float(query.get("timeoutSeconds") or _DEFAULT_WATCH_TIMEOUT)
        except ValueError as exc:
            raise _ApiError(400, "invalid timeoutSeconds") from exc
        bookmarks = _truthy(query.get("allowWatchBookmarks"))

        # Everything up to registering the watcher runs without an await, so no change can
        # slip between the backlog and the live stream.
        expired = since is not None and since < self._compacted_rv
        backlog: list[tuple[str, Obj]] = []
        watcher: _Watcher | None = None
        if not expired:
            if since is None:
                backlog = [
                    ("ADDED", copy.deepcopy(o))
                    for o in self._store[res.plural].values()
                    if predicate(o)
                ]
            else:
                backlog = [
                    (event, obj)
                    for rv, plural, event, obj in self._history
                    if rv > since and plural == res.plural and predicate(obj)
                ]
            watcher = _Watcher(res, predicate)
            self._watchers.add(watcher)

        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        timer: asyncio.Future[None] | None = None
        getter: asyncio.Future[tuple[str, Obj] | None] | None = None
        try:
            await response.prepare(request)
            if expired:
                message = f"too old resource version: {since} ({self._compacted_rv})"
                await _write_event(response, "ERROR", _ApiError(410, message).status)
                return response
            assert watcher is not None
            for event, obj in backlog:
                await _write_event(response, event, obj)
            timer = asyncio.ensure_future(self.clock.sleep(timeout))
            ended_by_timeout = False
            while True:
                getter = asyncio.ensure_future(watcher.queue.get())
                done, _ = await asyncio.wait({getter, timer}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    ended_by_timeout = True
                    break
                item = getter.result()
                getter = None
                if item is None:
                    break
                await _write_event(response, item[0], item[1])
            if bookmarks and ended_by_timeout:
                mark = {
                    "kind": res.kind,
                    "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(self._rv)},
                }
                await _write_event(response, "BOOKMARK", mark)
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; nothing to tell it
        finally:
            if watcher is not None:
                self._watchers.discard(watcher)
            for fut in (timer, getter):
                if fut is not None and not fut.done():
                    fut.cancel()
        return response


# -------------------------------------------------------------------- helpers


def _condition(ctype: str, status: str, reason: str, message: str, now: float) -> Obj:
    return {
        "type": ctype,
        "status": status,
        "lastHeartbeatTime": rfc3339(now),
        "lastTransitionTime": rfc3339(now),
        "reason": reason,
        "message": message,
    }


def _find_condition(obj: Obj | None, ctype: str) -> Obj | None:
    if obj is None:
        return None
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond  # type: ignore[no-any-return]
    return None


def _set_taint(node: Obj, key: str, effect: str, now: float) -> None:
    taints = node.setdefault("spec", {}).setdefault("taints", [])
    if not any(t.get("key") == key and t.get("effect") == effect for t in taints):
        taints.append({"key": key, "effect": effect, "timeAdded": rfc3339(now)})


def _has_taint(node: Obj, key: str, effect: str) -> bool:
    return any(
        t.get("key") == key and t.get("effect") == effect
        for t in (node.get("spec") or {}).get("taints") or []
    )


def _tolerates(pod: Obj, key: str, effect: str) -> bool:
    """``v1.Toleration.ToleratesTaint`` for a taint without a value."""
    for tol in (pod.get("spec") or {}).get("tolerations") or []:
        if tol.get("effect") not in (None, "", effect):
            continue
        operator = tol.get("operator") or "Equal"
        if not tol.get("key") and operator == "Exists":
            return True
        if tol.get("key") == key and (operator == "Exists" or not tol.get("value")):
            return True
    return False


def _validate_taints(name: str, node: Obj) -> None:
    """The API server's validation of ``spec.taints`` (``validateNodeTaints``)."""
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate((node.get("spec") or {}).get("taints") or []):
        where = f"spec.taints[{i}]"
        if not isinstance(taint, dict):
            errors.append(f"{where}: Invalid value: a taint must be an object")
            continue
        key = taint.get("key") or ""
        effect = taint.get("effect") or ""
        if not key:
            errors.append(f"{where}.key: Required value")
        elif not isinstance(key, str) or not _QUALIFIED_NAME.match(key):
            errors.append(f"{where}.key: Invalid value: {key!r}: must be a qualified name")
        if not effect:
            errors.append(f"{where}.effect: Required value")
        elif effect not in _TAINT_EFFECTS:
            supported = ", ".join(f'"{e}"' for e in _TAINT_EFFECTS)
            errors.append(
                f'{where}.effect: Unsupported value: "{effect}": supported values: {supported}'
            )
        if (key, effect) in seen:
            errors.append(
                f'{where}: Duplicate value: "{key}:{effect}": taints must be unique by key and '
                "effect pair"
            )
        seen.add((key, effect))
    if errors:
        raise _ApiError(422, f'Node "{name}" is invalid: {", ".join(errors)}', reason="Invalid")


def _drop_taint(node: Obj, key: str) -> None:
    spec = node.get("spec", {})
    if "taints" in spec:
        spec["taints"] = [t for t in spec["taints"] if t.get("key") != key]


def _scaled(value: int | str, total: int) -> int:
    """An IntOrString budget: ``"50%"`` of ``total`` rounds up, as the disruption controller."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def _not_found(res: _Resource, name: str) -> _ApiError:
    return _ApiError(
        404,
        f'{res.qualified} "{name}" not found',
        details={"name": name, "group": res.group, "kind": res.plural},
    )


def _error_response(exc: _ApiError) -> web.Response:
    return web.json_response(exc.status, status=exc.code)


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise _ApiError(400, f"the request body is not valid JSON: {exc}") from exc


async def _write_event(response: web.StreamResponse, event: str, obj: Obj) -> None:
    await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")


def _truthy(value: str | None) -> bool:
    """Query booleans as Go's strconv.ParseBool reads them (the Python client sends "True")."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _classify(request: web.Request) -> tuple[str, str]:
    """``(verb, kind)`` for the request counters: ``("LIST", "pods")``, ``("POST",
    "pods/eviction")``. GETs of collections are counted as the verbs LIST and WATCH."""
    m = _PATH.fullmatch(request.path)
    if m is None:
        return request.method, request.path
    kind = m["plural"] if m["sub"] is None else f"{m['plural']}/{m['sub']}"
    verb = request.method
    if verb == "GET" and m["name"] is None:
        verb = "WATCH" if _truthy(request.query.get("watch")) else "LIST"
    return verb, kind


# ---- selectors

_FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "spec.nodeName": lambda o: o.get("spec", {}).get("nodeName", ""),
    "spec.unschedulable": lambda o: str(bool(o.get("spec", {}).get("unschedulable"))).lower(),
    "status.phase": lambda o: o.get("status", {}).get("phase", ""),
}

_LABEL_TERM = re.compile(
    r"\s*(?:(?P<neg>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|!=|=)\s*(?P<value>[\w./-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*"
)


def _make_predicate(res: _Resource, ns: str | None, query: Any) -> Callable[[Obj], bool]:
    checks: list[Callable[[Obj], bool]] = []
    if ns is not None:
        checks.append(lambda o: o["metadata"].get("namespace") == ns)
    field_selector = query.get("fieldSelector") or ""
    for term in filter(None, (t.strip() for t in field_selector.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", term)
        if m is None or m[1] not in _FIELDS:
            raise _ApiError(
                400, f'"{term}" is not a known field selector: only "{", ".join(_FIELDS)}"'
            )
        checks.append(_field_check(_FIELDS[m[1]], m[3], negate=m[2] == "!="))
    label_selector = query.get("labelSelector") or ""
    if label_selector:
        requirements = _parse_label_selector(label_selector)
        checks.append(_labels_check(requirements))
    return lambda o: all(check(o) for check in checks)


def _field_check(
    getter: Callable[[Obj], str], wanted: str, *, negate: bool
) -> Callable[[Obj], bool]:
    return lambda obj: (getter(obj) == wanted) != negate


def _labels_check(requirements: list[Callable[[dict[str, str]], bool]]) -> Callable[[Obj], bool]:
    return lambda obj: all(req(obj["metadata"].get("labels") or {}) for req in requirements)


def _label_requirement(
    key: str, *, values: set[str] | None = None, negate: bool = False
) -> Callable[[dict[str, str]], bool]:
    """``values=None`` tests existence; otherwise membership (equality is a set of one)."""
    if values is None:
        return lambda labels: (key in labels) != negate
    return lambda labels: (labels.get(key) in values) != negate


def _split_selector(text: str) -> Iterable[str]:
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def _parse_label_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    out: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_selector(text):
        if not term.strip():
            continue
        m = _LABEL_TERM.fullmatch(term)
        if m is None:
            raise _ApiError(400, f"unable to parse requirement: {term!r}")
        if m["neg"]:
            out.append(_label_requirement(m["nkey"], negate=True))
        elif m["op"]:
            out.append(_label_requirement(m["key"], values={m["value"]}, negate=m["op"] == "!="))
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            out.append(_label_requirement(m["key"], values=values, negate=m["setop"] == "notin"))
        else:
            out.append(_label_requirement(m["key"]))
    return out


def _selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector. An empty selector matches every pod (policy/v1 semantics)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# ---- patches

# Lists that strategic merge patch merges by key instead of replacing (from the Go types'
# patchMergeKey tags); every other list is replaced wholesale, as in a merge patch.
_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("metadata", "ownerReferences"): "uid",
    ("spec", "containers"): "name",
}


def _merge_patch(target: Obj, patch: Obj) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _strategic_merge(target: Obj, patch: Obj, path: tuple[str, ...]) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # directives such as $retainKeys are not needed by healer
        here = (*path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _strategic_merge(target[key], value, here)
        elif isinstance(value, list) and here in _MERGE_KEYS:
            merge_key = _MERGE_KEYS[here]
            items: list[Any] = list(target.get(key) or [])
            for item in value:
                if not isinstance(item, dict):
                    continue
                index = next(
                    (i for i, old in enumerate(items) if old.get(merge_key) == item.get(merge_key)),
                    None,
                )
                if item.get("$patch") == "delete":
                    if index is not None:
                        items.pop(index)
                elif index is None:
                    items.append(copy.deepcopy(item))
                else:
                    _strategic_merge(items[index], item, here)
            target[key] = items
        else:
            target[key] = copy.deepcopy(value)
