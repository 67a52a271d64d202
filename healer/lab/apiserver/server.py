"""The fake apiserver as tests and the lab hold it: started on a free port (``async with``),
a kubeconfig pointing at it, the state methods that drive it directly (``add_node``,
``add_pod``, ``fail_next``, ``set_unreachable``, ...), and the front door every request passes:
request counters, injected faults, unreachability, bearer-token authentication. The node
lifecycle controller runs every ``monitor_period`` while the server is up."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import json
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web

from healer.clock import Clock, RealClock
from healer.lab.apiserver import garbage, lifecycle, objects, routes, verbs
from healer.lab.apiserver.encryption import EncryptionAtRest
from healer.lab.apiserver.errors import ApiError, error_response
from healer.lab.apiserver.objects import DEFAULT_POD_GRACE
from healer.lab.apiserver.resources import (
    ANNOTATION_MIRROR,
    BY_PLURAL,
    NODE_LEASE_NAMESPACE,
    Obj,
    rfc3339_micro,
)
from healer.lab.apiserver.store import Store

log = structlog.get_logger(__name__)


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    remaining: int


class FakeApiServer:
    """The fake apiserver. All state lives in its :class:`Store`; every mutation goes through
    the store so that resourceVersions, history and watchers stay consistent whether the
    change came over HTTP or from a state method."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        lease_grace: float = 40.0,
        monitor_period: float = 1.0,
        podgc_quarantine: float = 40.0,
        history_limit: int = 1000,
        token: str | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.lease_grace = lease_grace
        self.monitor_period = monitor_period
        # How long a deleted node's pods stay before the pod GC force-deletes them.
        self.podgc_quarantine = podgc_quarantine
        self._orphaned_since: dict[str, float] = {}
        self.token = token if token is not None else secrets.token_urlsafe(16)
        # (verb, path kind) -> count, e.g. ("POST", "pods/eviction"), ("WATCH", "nodes").
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._store = Store(history_limit=history_limit)
        self._faults: list[_Fault] = []
        self._unreachable: Literal["503", "close"] | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._url: str | None = None
        self._monitor: asyncio.Task[None] | None = None
        for ns in ("default", "kube-system", "kube-public", NODE_LEASE_NAMESPACE):
            verbs.ensure_namespace(self._store, self.clock, ns)

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
        return str(self._store.rv)

    def add_node(self, name: str, labels: dict[str, str] | None = None, ready: bool = True) -> Obj:
        node = objects.new_node(name, labels, ready=ready, now=self.clock.now())
        return verbs.create(self._store, self.clock, BY_PLURAL["nodes"], "", node)

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
        verbs.ensure_namespace(self._store, self.clock, namespace)
        meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        if annotations:
            meta["annotations"] = dict(annotations)
        if owner_kind is not None:
            api = "v1" if owner_kind in ("Node", "ReplicationController") else "apps/v1"
            owner_name = name.rsplit("-", 1)[0]
            # The stored workload of that kind and name (add_replicaset), else one never made.
            plural = f"{owner_kind.lower()}s"
            stored = self._store.objects.get(plural, {}).get((namespace, owner_name))
            meta["ownerReferences"] = [
                {
                    "apiVersion": api,
                    "kind": owner_kind,
                    "name": owner_name,
                    "uid": stored["metadata"]["uid"] if stored else str(uuid.uuid4()),
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
                "terminationGracePeriodSeconds": DEFAULT_POD_GRACE,
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
        return verbs.create(self._store, self.clock, BY_PLURAL["pods"], namespace, pod)

    def add_replicaset(self, namespace: str, name: str, replicas: int) -> Obj:
        """A ReplicaSet (no controller of it runs): its pods (``add_pod`` with ``owner_kind``
        "ReplicaSet" and a name ``<name>-...``) count its replicas in their budgets."""
        verbs.ensure_namespace(self._store, self.clock, namespace)
        rs: Obj = {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
        }
        return verbs.create(self._store, self.clock, BY_PLURAL["replicasets"], namespace, rs)

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
        verbs.ensure_namespace(self._store, self.clock, namespace)
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
        return verbs.create(
            self._store, self.clock, BY_PLURAL["poddisruptionbudgets"], namespace, pdb
        )

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        ns = verbs.ensure_namespace(self._store, self.clock, name)
        if labels:
            ns = copy.deepcopy(ns)
            ns["metadata"].setdefault("labels", {}).update(labels)
            ns = self._store.put(BY_PLURAL["namespaces"], "", ns, "MODIFIED")
        return copy.deepcopy(ns)

    def set_lease(
        self, node: str, renew_time: float | None = None, holder: str | None = None
    ) -> Obj:
        """Create or renew ``kube-node-lease/<node>`` as the kubelet would: owned by its Node
        once the Node exists."""
        res = BY_PLURAL["leases"]
        renew = self.clock.now() if renew_time is None else renew_time
        existing = self._store.get("leases", NODE_LEASE_NAMESPACE, node)
        owner = self._store.get("nodes", "", node)
        if existing is None:
            lease = objects.new_lease(node, holder=holder, renew=renew, owner=owner)
            return verbs.create(self._store, self.clock, res, NODE_LEASE_NAMESPACE, lease)
        lease = copy.deepcopy(existing)
        if owner is not None and not lease["metadata"].get("ownerReferences"):
            lease["metadata"]["ownerReferences"] = objects.node_owner(owner)
        lease["spec"]["renewTime"] = rfc3339_micro(renew)
        if holder is not None:
            lease["spec"]["holderIdentity"] = holder
        return copy.deepcopy(self._store.put(res, NODE_LEASE_NAMESPACE, lease, "MODIFIED"))

    @property
    def encryption(self) -> EncryptionAtRest:
        """Which key each Secret is stored under (healer.lab.apiserver.encryption)."""
        return self._store.encryption

    def node(self, name: str) -> Obj | None:
        return self._copy("nodes", "", name)

    def nodes(self) -> list[Obj]:
        return [copy.deepcopy(o) for o in self._store.objects["nodes"].values()]

    def pod(self, namespace: str, name: str) -> Obj | None:
        return self._copy("pods", namespace, name)

    def pods_on(self, node: str) -> list[Obj]:
        return lifecycle.pods_on(self._store, node)

    def lease(self, node: str) -> Obj | None:
        return self._copy("leases", NODE_LEASE_NAMESPACE, node)

    def namespace(self, name: str) -> Obj | None:
        return self._copy("namespaces", "", name)

    def _copy(self, plural: str, ns: str, name: str) -> Obj | None:
        obj = self._store.get(plural, ns, name)
        return copy.deepcopy(obj) if obj is not None else None

    def delete_node(self, name: str) -> bool:
        """Delete a node directly (as an operator with kubectl would)."""
        if self._store.get("nodes", "", name) is None:
            return False
        lifecycle.remove_node(self._store, name)
        return True

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older resourceVersions now get 410."""
        self._store.compact()

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
        self._store.end_watches(resource)

    def request_count(self, verb: str, kind: str) -> int:
        return self.requests[(verb.upper(), kind)]

    def check_nodes(self) -> None:
        """One pass of the node lifecycle controller, the pod garbage collector and the
        garbage collector of owned objects."""
        lifecycle.check_nodes(
            self._store,
            self.clock,
            lease_grace=self.lease_grace,
            podgc_quarantine=self.podgc_quarantine,
            orphaned_since=self._orphaned_since,
        )
        garbage.collect_garbage(self._store)

    async def _monitor_loop(self) -> None:
        while True:
            await self.clock.sleep(self.monitor_period)
            try:
                self.check_nodes()
            except Exception:  # the controller must outlive one bad pass, and say so
                log.exception("fake_apiserver.monitor_failed")

    # ---------------------------------------------------------------- HTTP

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        verb, kind = routes.classify(request)
        self.requests[(verb, kind)] += 1
        if self._unreachable == "close":
            # Drop the connection without an answer; what we return is never written.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if self._unreachable == "503":
            return error_response(
                ApiError(503, "the server is currently unable to handle the request")
            )
        for fault in self._faults:
            if (
                fault.remaining > 0
                and fault.method in ("*", request.method, verb)
                and fault.path.search(request.path)
            ):
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                return error_response(ApiError(fault.status, f"injected fault {fault.status}"))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return error_response(ApiError(401, "Unauthorized"))
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as exc:
            return error_response(exc)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        return await routes.dispatch(request, self._store, self.clock)
