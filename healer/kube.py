"""The Kubernetes seam: the only module in healer that imports ``kubernetes_asyncio``.

It owns talking to one cluster's API server and turning what comes back into healer's own frozen
records (:class:`NodeInfo`, :class:`PodInfo`, :class:`LeaseInfo`, :class:`NamespaceInfo`,
:class:`RbacObject`, :class:`SecretInfo`, :class:`WatchEvent`) and typed errors. Nothing it returns or raises is a ``kubernetes_asyncio``
type:

* the API cannot be reached, answers 5xx, or throttles with 429 (except an eviction refused by a
  disruption budget) -> :class:`healer.errors.KubeUnavailable` (retry later);
* a watch's resourceVersion is too old (410 Gone / ``Expired``) -> :class:`WatchExpired` (re-list);
* any other unexpected 4xx -> :class:`healer.errors.PermanentError` naming the object;
* expected answers are values, not errors: a missing node is ``None`` / ``False``, an eviction
  blocked by a PodDisruptionBudget is :attr:`EvictResult.BLOCKED` with the budget's message.

Requests go through the generated API methods with ``_preload_content=False`` so that bodies are
read as plain JSON (the same bytes a real apiserver or :mod:`healer.lab.kubeapi` sends) and the
status code is ours to interpret. Watches are streamed line by line from the same raw response
rather than through ``kubernetes_asyncio.watch.Watch``, which builds its own default ApiClient,
silently retries 410 once and resumes on its own; healer wants to see every 410 and decide.
"""

from __future__ import annotations

import base64
import enum
import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    Configuration,
    CoordinationV1Api,
    CoreV1Api,
    RbacAuthorizationV1Api,
)
from kubernetes_asyncio.client.exceptions import OpenApiException
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from healer.clock import Clock, RealClock
from healer.errors import ConfigError, KubeUnavailable, PermanentError, TemporaryError

NODE_LEASE_NAMESPACE = "kube-node-lease"
ANNOTATION_MIRROR = "kubernetes.io/config.mirror"
# Non-graceful node shutdown (GA in Kubernetes 1.28): on a node that is not Ready and carries
# this taint, kube-controller-manager force-deletes the pods and detaches their volumes at once.
# Only for a machine known to be off: the pods' old copies must not be running any more.
TAINT_OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_VALUE = "nodeshutdown"
_TAINT_CONFLICT_RETRIES = 5

# Slack on top of the server-side watch timeout before the client gives up on a silent stream.
_WATCH_READ_SLACK = 30.0

Json = dict[str, Any]


class WatchExpired(TemporaryError):
    """The resourceVersion a watch asked for is older than the server's history (410 Gone).

    Not a :class:`KubeUnavailable`: the API is fine, the caller's cursor is stale. The remedy is
    to list again and watch from the new resourceVersion, immediately and without backoff.
    """


class EvictResult(enum.Enum):
    EVICTED = "evicted"  # the eviction was accepted; the pod is terminating or gone
    BLOCKED = "blocked"  # a PodDisruptionBudget refused it (HTTP 429); try again later
    GONE = "gone"  # the pod no longer exists (HTTP 404)


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute
    value: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: dict[str, str]
    unschedulable: bool
    # condition type -> (status "True"|"False"|"Unknown", lastTransitionTime as epoch seconds)
    conditions: dict[str, tuple[str, float]]
    taints: tuple[Taint, ...]
    created_at: float
    resource_version: str

    @property
    def ready(self) -> str | None:
        """The Ready condition's status, or None when the node has not reported one."""
        cond = self.conditions.get("Ready")
        return cond[0] if cond else None


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str | None
    owner_kinds: tuple[str, ...]  # kinds in metadata.ownerReferences, e.g. ("DaemonSet",)
    is_mirror: bool  # a static pod's mirror: the API cannot evict or really delete it
    deleting: bool  # metadata.deletionTimestamp is set ("Terminating")
    phase: str

    @property
    def is_daemonset(self) -> bool:
        return "DaemonSet" in self.owner_kinds


@dataclass(frozen=True)
class LeaseInfo:
    name: str  # for node leases, the node name
    holder: str | None
    renew_time: float | None
    duration: int | None
    resource_version: str


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: dict[str, str]
    resource_version: str


@dataclass(frozen=True)
class RbacObject:
    """A Role, ClusterRole, RoleBinding or ClusterRoleBinding. ``content`` is the kind's own
    payload as JSON: ``{"rules": [...]}`` for roles, ``{"roleRef": {...}, "subjects": [...]}``
    for bindings."""

    kind: str
    name: str
    namespace: str | None
    labels: dict[str, str]
    content: dict[str, Any]
    resource_version: str


@dataclass(frozen=True)
class SecretInfo:
    namespace: str
    name: str
    type: str
    data: dict[str, bytes] = field(repr=False)  # decoded; never shown in reprs or logs
    labels: dict[str, str]
    resource_version: str


RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
_RBAC_CONTENT = {
    "Role": ("rules",),
    "ClusterRole": ("rules", "aggregationRule"),
    "RoleBinding": ("roleRef", "subjects"),
    "ClusterRoleBinding": ("roleRef", "subjects"),
}


@dataclass(frozen=True)
class WatchEvent:
    """One watch event. ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK; a BOOKMARK carries no
    object, only a ``resource_version`` to resume from."""

    type: str
    obj: NodeInfo | LeaseInfo | None
    resource_version: str


# ------------------------------------------------------------------ time


def format_time(ts: float) -> str:
    """RFC 3339 with seconds precision, as ``metav1.Time``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(ts: float) -> str:
    """RFC 3339 with microseconds, as ``metav1.MicroTime`` (lease renewTime)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# ------------------------------------------------------------------ JSON -> records


def node_from_json(obj: Json, *, now: float) -> NodeInfo:
    """``now`` stands in for a condition's missing lastTransitionTime: a condition with no known
    start must not look as if it had been bad since 1970."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    conditions: dict[str, tuple[str, float]] = {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        since = parse_time(cond.get("lastTransitionTime"))
        if since is None:
            since = parse_time(cond.get("lastHeartbeatTime"))
        conditions[str(cond.get("type"))] = (
            str(cond.get("status", "Unknown")),
            since if since is not None else now,
        )
    taints = tuple(
        Taint(key=str(t.get("key", "")), effect=str(t.get("effect", "")), value=t.get("value"))
        for t in spec.get("taints") or []
    )
    return NodeInfo(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        unschedulable=bool(spec.get("unschedulable", False)),
        conditions=conditions,
        taints=taints,
        created_at=parse_time(meta.get("creationTimestamp")) or now,
        resource_version=str(meta.get("resourceVersion", "")),
    )


def pod_from_json(obj: Json) -> PodInfo:
    meta = obj.get("metadata") or {}
    return PodInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        node=(obj.get("spec") or {}).get("nodeName"),
        owner_kinds=tuple(str(o.get("kind", "")) for o in meta.get("ownerReferences") or []),
        is_mirror=ANNOTATION_MIRROR in (meta.get("annotations") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
        phase=str((obj.get("status") or {}).get("phase", "Unknown")),
    )


def lease_from_json(obj: Json) -> LeaseInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    return LeaseInfo(
        name=str(meta.get("name", "")),
        holder=spec.get("holderIdentity"),
        renew_time=parse_time(spec.get("renewTime")),
        duration=int(duration) if duration is not None else None,
        resource_version=str(meta.get("resourceVersion", "")),
    )


def namespace_from_json(obj: Json) -> NamespaceInfo:
    meta = obj.get("metadata") or {}
    return NamespaceInfo(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def secret_from_json(obj: Json) -> SecretInfo:
    meta = obj.get("metadata") or {}
    return SecretInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        type=str(obj.get("type", "Opaque")),
        data={k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()},
        labels=dict(meta.get("labels") or {}),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def rbac_from_json(kind: str, obj: Json) -> RbacObject:
    meta = obj.get("metadata") or {}
    return RbacObject(
        kind=kind,
        name=str(meta.get("name", "")),
        namespace=meta.get("namespace"),
        labels=dict(meta.get("labels") or {}),
        content={k: obj[k] for k in _RBAC_CONTENT[kind] if obj.get(k) is not None},
        resource_version=str(meta.get("resourceVersion", "")),
    )


# ------------------------------------------------------------------ the client


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any  # decoded JSON, or the text when the server did not send JSON
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("message") or self.body.get("reason") or "")
        return str(self.body)[:200]


class KubeClient:
    """A thin async adapter over one cluster's API server. Use as ``async with`` or call
    :meth:`close`."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self._api = api_client
        self._core = CoreV1Api(api_client)
        self._coordination = CoordinationV1Api(api_client)
        self._rbac = RbacAuthorizationV1Api(api_client)
        self._clock: Clock = clock if clock is not None else RealClock()
        self._request_timeout = request_timeout

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
        config = Configuration()
        where = str(path) if path is not None else _default_kubeconfig()
        try:
            if where is None:
                where = "in-cluster service account"
                load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
            else:
                await load_kube_config(
                    config_file=where,
                    context=context,
                    client_configuration=config,
                    persist_config=False,
                )
        except (ConfigException, OSError, ValueError) as exc:
            raise ConfigError(f"kubeconfig {where}: {exc}") from exc
        return cls(ApiClient(config), clock=clock, request_timeout=request_timeout)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    # -------------------------------------------------------------- plumbing

    async def _call(
        self, what: str, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> _Answer:
        kwargs.setdefault("_request_timeout", self._request_timeout)
        try:
            response = await method(*args, _preload_content=False, **kwargs)
            try:
                data = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeUnavailable(
                f"{what}: cannot reach the Kubernetes API at {self.host}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        except OpenApiException as exc:
            raise PermanentError(f"{what}: the request could not be built: {exc}") from exc
        return _Answer(response.status, _decode(data), _retry_after(response.headers))

    def _fail(self, what: str, answer: _Answer) -> None:
        """Raise the typed error for an answer the caller did not expect."""
        if answer.status >= 500 or answer.status == 429:
            raise KubeUnavailable(
                f"{what}: the Kubernetes API at {self.host} answered {answer.status}: "
                f"{answer.message}",
                delay=answer.retry_after,
            )
        raise PermanentError(
            f"{what}: the Kubernetes API answered {answer.status}: {answer.message}"
        )

    def _expect(self, what: str, answer: _Answer) -> Any:
        if not answer.ok:
            self._fail(what, answer)
        return answer.body

    async def _watch(
        self,
        what: str,
        method: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        resource_version: str,
        timeout_seconds: int,
        parse: Callable[[Json], NodeInfo | LeaseInfo],
    ) -> AsyncGenerator[WatchEvent, None]:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._request_timeout,
            sock_read=timeout_seconds + _WATCH_READ_SLACK,
        )
        try:
            response = await method(
                *args,
                watch=True,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
                allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeUnavailable(
                f"{what}: cannot reach the Kubernetes API at {self.host}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        clean_end = False
        try:
            if response.status != 200:
                answer = _Answer(
                    response.status, _decode(await response.read()), _retry_after(response.headers)
                )
                if answer.status == 410:
                    raise WatchExpired(
                        f"{what} from resourceVersion {resource_version}: {answer.message}"
                    )
                self._fail(what, answer)
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    raise KubeUnavailable(
                        f"{what}: the watch stream from {self.host} broke: "
                        f"{exc or type(exc).__name__}"
                    ) from exc
                if not line:
                    clean_end = True
                    return  # the server ended the watch (timeoutSeconds): resume from the last RV
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    kind, obj = str(event["type"]), event["object"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise KubeUnavailable(f"{what}: malformed watch event {line[:200]!r}") from exc
                if kind == "ERROR":
                    code = int(obj.get("code", 0)) if isinstance(obj, dict) else 0
                    answer = _Answer(code, obj, None)
                    if code == 410:
                        raise WatchExpired(
                            f"{what} from resourceVersion {resource_version}: {answer.message}"
                        )
                    self._fail(what, answer)
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if kind == "BOOKMARK":
                    yield WatchEvent(type=kind, obj=None, resource_version=rv)
                else:
                    yield WatchEvent(type=kind, obj=parse(obj), resource_version=rv)
        finally:
            # An unfinished stream cannot go back to the connection pool.
            if clean_end:
                response.release()
            else:
                response.close()

    # -------------------------------------------------------------- nodes

    async def list_nodes(self) -> tuple[list[NodeInfo], str]:
        body = self._expect("list nodes", await self._call("list nodes", self._core.list_node))
        now = self._clock.now()
        nodes = [node_from_json(item, now=now) for item in body.get("items") or []]
        return nodes, str(body["metadata"]["resourceVersion"])

    def watch_nodes(
        self, resource_version: str, timeout_seconds: int = 60
    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream node events after ``resource_version`` until the server ends the watch.

        Raises :class:`WatchExpired` when the version is too old, :class:`KubeUnavailable` when
        the stream cannot be opened or breaks. Close it with ``contextlib.aclosing`` when
        stopping early."""
        return self._watch(
            "watch nodes",
            self._core.list_node,
            (),
            resource_version,
            timeout_seconds,
            lambda obj: node_from_json(obj, now=self._clock.now()),
        )

    async def get_node(self, name: str) -> NodeInfo | None:
        raw = await self._get_node_json(name)
        return node_from_json(raw, now=self._clock.now()) if raw is not None else None

    async def _get_node_json(self, name: str) -> Json | None:
        what = f'get node "{name}"'
        answer = await self._call(what, self._core.read_node, name)
        if answer.status == 404:
            return None
        body: Json = self._expect(what, answer)
        return body

    async def cordon(self, name: str) -> bool:
        """Mark the node unschedulable. False if the node no longer exists."""
        return await self._patch_node(
            f'cordon node "{name}"', name, {"spec": {"unschedulable": True}}
        )

    async def set_node_labels(self, name: str, labels: dict[str, str | None]) -> bool:
        """Set (or, with ``None``, remove) node labels. False if the node no longer exists."""
        return await self._patch_node(
            f'label node "{name}"', name, {"metadata": {"labels": labels}}
        )

    async def _patch_node(self, what: str, name: str, patch: Json) -> bool:
        answer = await self._call(
            what,
            self._core.patch_node,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True

    async def add_taint(self, name: str, taint: Taint) -> bool:
        """Add ``taint`` to the node (kept as is when one with its key and effect is there).

        ``spec.taints`` is a list the API replaces whole, so the new list is written with the
        resourceVersion it was read at, and re-read on a 409 conflict (the node controller adds
        and removes its own taints meanwhile). A NoExecute taint gets ``timeAdded``, as kubectl
        sets it. False if the node no longer exists."""
        what = f'taint node "{name}" with {taint.key}={taint.value or ""}:{taint.effect}'

        def change(taints: list[Json]) -> list[Json] | None:
            if any(t.get("key") == taint.key and t.get("effect") == taint.effect for t in taints):
                return None
            new: Json = {"key": taint.key, "effect": taint.effect}
            if taint.value is not None:
                new["value"] = taint.value
            if taint.effect == "NoExecute":
                new["timeAdded"] = format_time(self._clock.wall())  # read by other hosts
            return [*taints, new]

        return await self._update_taints(what, name, change)

    async def remove_taint(self, name: str, key: str) -> bool:
        """Remove every taint with ``key``. False if the node no longer exists."""
        what = f'untaint node "{name}" ({key})'

        def change(taints: list[Json]) -> list[Json] | None:
            kept = [t for t in taints if t.get("key") != key]
            return None if len(kept) == len(taints) else kept

        return await self._update_taints(what, name, change)

    async def _update_taints(
        self, what: str, name: str, change: Callable[[list[Json]], list[Json] | None]
    ) -> bool:
        for _ in range(_TAINT_CONFLICT_RETRIES):
            raw = await self._get_node_json(name)
            if raw is None:
                return False
            taints = list((raw.get("spec") or {}).get("taints") or [])
            new = change(taints)
            if new is None:
                return True
            patch = {
                "metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]},
                "spec": {"taints": new},
            }
            answer = await self._call(
                what,
                self._core.patch_node,
                name,
                patch,
                _content_type="application/merge-patch+json",
            )
            if answer.status == 404:
                return False
            if answer.status == 409:
                continue  # changed since we read it: read again
            self._expect(what, answer)
            return True
        raise KubeUnavailable(
            f"{what}: the node kept changing ({_TAINT_CONFLICT_RETRIES} conflicts in a row)"
        )

    async def delete_node(self, name: str) -> bool:
        """Delete the Node object. False if it was already gone."""
        what = f'delete node "{name}"'
        answer = await self._call(what, self._core.delete_node, name)
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True

    # -------------------------------------------------------------- pods

    async def pods_on_node(self, name: str) -> list[PodInfo]:
        what = f'list pods on node "{name}"'
        answer = await self._call(
            what, self._core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={name}"
        )
        body = self._expect(what, answer)
        return [pod_from_json(item) for item in body.get("items") or []]

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

    # -------------------------------------------------------------- leases

    async def list_leases(self) -> tuple[list[LeaseInfo], str]:
        what = f"list leases in {NODE_LEASE_NAMESPACE}"
        answer = await self._call(
            what, self._coordination.list_namespaced_lease, NODE_LEASE_NAMESPACE
        )
        body = self._expect(what, answer)
        leases = [lease_from_json(item) for item in body.get("items") or []]
        return leases, str(body["metadata"]["resourceVersion"])

    def watch_leases(
        self, resource_version: str, timeout_seconds: int = 60
    ) -> AsyncGenerator[WatchEvent, None]:
        """Like :meth:`watch_nodes`, for the node leases in ``kube-node-lease``."""
        return self._watch(
            f"watch leases in {NODE_LEASE_NAMESPACE}",
            self._coordination.list_namespaced_lease,
            (NODE_LEASE_NAMESPACE,),
            resource_version,
            timeout_seconds,
            lease_from_json,
        )

    # -------------------------------------------------------------- kubelet side

    async def register_node(self, name: str, labels: dict[str, str]) -> bool:
        """Create the Node as a kubelet does. If it already exists, adopt it (making sure the
        given labels are set) and return False."""
        what = f'register node "{name}"'
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {},
        }
        answer = await self._call(what, self._core.create_node, body)
        if answer.status == 409:
            if labels and not await self.set_node_labels(name, dict(labels)):
                # Deleted between our create and the patch: try once more from scratch.
                return await self.register_node(name, labels)
            return False
        self._expect(what, answer)
        return True

    async def set_node_ready(self, name: str, status: str, reason: str, message: str) -> bool:
        """Post the Ready condition as a kubelet does. The heartbeat time is always now; the
        transition time only moves when the status changes. False if the node does not exist."""
        current = await self._get_node_json(name)
        if current is None:
            return False
        previous = next(
            (
                c
                for c in (current.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready"
            ),
            None,
        )
        now = format_time(self._clock.wall())  # read by other hosts
        transition = (
            previous["lastTransitionTime"]
            if previous is not None
            and previous.get("status") == status
            and previous.get("lastTransitionTime")
            else now
        )
        patch = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": status,
                        "reason": reason,
                        "message": message,
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": transition,
                    }
                ]
            }
        }
        what = f'set Ready={status} on node "{name}"'
        # A dict body goes out as a strategic merge patch: conditions merge by type, so the
        # other conditions are left alone.
        answer = await self._call(what, self._core.patch_node_status, name, patch)
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True

    async def renew_lease(self, name: str, holder: str, duration_seconds: int) -> None:
        """Create or renew ``kube-node-lease/<name>`` with renewTime now. Updates carry the
        resourceVersion read, so a concurrent writer makes us re-read rather than overwrite."""
        what = f'renew lease "{NODE_LEASE_NAMESPACE}/{name}"'
        for _ in range(3):
            renew = format_micro_time(self._clock.wall())  # read by other hosts
            answer = await self._call(
                what, self._coordination.read_namespaced_lease, name, NODE_LEASE_NAMESPACE
            )
            if answer.status == 404:
                body: Json = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
                    "spec": {
                        "holderIdentity": holder,
                        "leaseDurationSeconds": duration_seconds,
                        "acquireTime": renew,
                        "renewTime": renew,
                    },
                }
                answer = await self._call(
                    what, self._coordination.create_namespaced_lease, NODE_LEASE_NAMESPACE, body
                )
            else:
                body = self._expect(what, answer)
                spec = body.setdefault("spec", {})
                spec.update(
                    holderIdentity=holder, leaseDurationSeconds=duration_seconds, renewTime=renew
                )
                answer = await self._call(
                    what,
                    self._coordination.replace_namespaced_lease,
                    name,
                    NODE_LEASE_NAMESPACE,
                    body,
                )
            if answer.status in (404, 409):
                continue  # raced with another writer or a delete: read again
            self._expect(what, answer)
            return
        raise TemporaryError(f"{what}: kept conflicting with concurrent writers")

    # -------------------------------------------------------------- namespaces

    async def list_namespaces(self) -> list[NamespaceInfo]:
        body = self._expect(
            "list namespaces", await self._call("list namespaces", self._core.list_namespace)
        )
        return [namespace_from_json(item) for item in body.get("items") or []]

    async def patch_namespace_labels(self, name: str, labels: dict[str, str | None]) -> bool:
        """Set (or, with ``None``, remove) namespace labels. False if the namespace is gone."""
        what = f'label namespace "{name}"'
        answer = await self._call(
            what,
            self._core.patch_namespace,
            name,
            {"metadata": {"labels": labels}},
            _content_type="application/merge-patch+json",
        )
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True

    # -------------------------------------------------------------- secrets

    async def get_secret(self, namespace: str, name: str) -> SecretInfo | None:
        what = f'get secret "{namespace}/{name}"'
        answer = await self._call(what, self._core.read_namespaced_secret, name, namespace)
        if answer.status == 404:
            return None
        return secret_from_json(self._expect(what, answer))

    async def put_secret(
        self,
        namespace: str,
        name: str,
        *,
        type_: str,
        data: dict[str, bytes],
        labels: dict[str, str] | None = None,
        resource_version: str | None = None,
    ) -> None:
        """Create the Secret, or replace it as read at ``resource_version``. A concurrent
        change (409) raises :class:`TemporaryError`. The data never appears in errors."""
        what = f'put secret "{namespace}/{name}"'
        meta: Json = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": type_,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        if resource_version:
            answer = await self._call(
                what, self._core.replace_namespaced_secret, name, namespace, body
            )
        else:
            answer = await self._call(what, self._core.create_namespaced_secret, namespace, body)
        if answer.status == 409:
            raise TemporaryError(f"{what}: changed concurrently; re-read and try again")
        self._expect(what, answer)

    # -------------------------------------------------------------- RBAC

    def _rbac_methods(self, kind: str) -> tuple[bool, str]:
        """(namespaced, method stem) for one of :data:`RBAC_KINDS`."""
        stems = {
            "Role": (True, "role"),
            "ClusterRole": (False, "cluster_role"),
            "RoleBinding": (True, "role_binding"),
            "ClusterRoleBinding": (False, "cluster_role_binding"),
        }
        if kind not in stems:
            raise PermanentError(f"unknown RBAC kind {kind!r}; expected one of {RBAC_KINDS}")
        return stems[kind]

    @staticmethod
    def _rbac_what(verb: str, kind: str, name: str, namespace: str | None) -> str:
        where = f"{namespace}/{name}" if namespace else name
        return f'{verb} {kind} "{where}"'

    async def list_rbac(self, kind: str, label_selector: str | None = None) -> list[RbacObject]:
        """Every object of ``kind`` (in all namespaces), optionally filtered by labels."""
        namespaced, stem = self._rbac_methods(kind)
        method = getattr(
            self._rbac, f"list_{stem}_for_all_namespaces" if namespaced else f"list_{stem}"
        )
        what = f"list {kind}s"
        kwargs = {"label_selector": label_selector} if label_selector else {}
        body = self._expect(what, await self._call(what, method, **kwargs))
        return [rbac_from_json(kind, item) for item in body.get("items") or []]

    async def get_rbac(
        self, kind: str, name: str, namespace: str | None = None
    ) -> RbacObject | None:
        namespaced, stem = self._rbac_methods(kind)
        what = self._rbac_what("get", kind, name, namespace)
        if namespaced:
            answer = await self._call(
                what, getattr(self._rbac, f"read_namespaced_{stem}"), name, namespace
            )
        else:
            answer = await self._call(what, getattr(self._rbac, f"read_{stem}"), name)
        if answer.status == 404:
            return None
        return rbac_from_json(kind, self._expect(what, answer))

    def _rbac_body(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        labels: dict[str, str],
        content: dict[str, Any],
        resource_version: str | None = None,
    ) -> Json:
        meta: Json = {"name": name, "labels": dict(labels)}
        if namespace is not None:
            meta["namespace"] = namespace
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": meta,
            **content,
        }

    async def create_rbac(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        labels: dict[str, str],
        content: dict[str, Any],
    ) -> RbacObject:
        namespaced, stem = self._rbac_methods(kind)
        what = self._rbac_what("create", kind, name, namespace)
        body = self._rbac_body(kind, name, namespace, labels, content)
        if namespaced:
            answer = await self._call(
                what, getattr(self._rbac, f"create_namespaced_{stem}"), namespace, body
            )
        else:
            answer = await self._call(what, getattr(self._rbac, f"create_{stem}"), body)
        if answer.status == 409:
            raise TemporaryError(f"{what}: it already exists (created concurrently); re-read")
        return rbac_from_json(kind, self._expect(what, answer))

    async def replace_rbac(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        labels: dict[str, str],
        content: dict[str, Any],
        *,
        resource_version: str,
    ) -> RbacObject | None:
        """Replace the object as read at ``resource_version``. None if it is gone; a concurrent
        change (409) raises :class:`TemporaryError` so the caller re-reads."""
        namespaced, stem = self._rbac_methods(kind)
        what = self._rbac_what("replace", kind, name, namespace)
        body = self._rbac_body(kind, name, namespace, labels, content, resource_version)
        if namespaced:
            answer = await self._call(
                what, getattr(self._rbac, f"replace_namespaced_{stem}"), name, namespace, body
            )
        else:
            answer = await self._call(what, getattr(self._rbac, f"replace_{stem}"), name, body)
        if answer.status == 404:
            return None
        if answer.status == 409:
            raise TemporaryError(f"{what}: changed concurrently; re-read and try again")
        return rbac_from_json(kind, self._expect(what, answer))

    async def delete_rbac(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete the object. False if it was already gone."""
        namespaced, stem = self._rbac_methods(kind)
        what = self._rbac_what("delete", kind, name, namespace)
        if namespaced:
            answer = await self._call(
                what, getattr(self._rbac, f"delete_namespaced_{stem}"), name, namespace
            )
        else:
            answer = await self._call(what, getattr(self._rbac, f"delete_{stem}"), name)
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True


def _default_kubeconfig() -> str | None:
    """Where the default loading rules find a kubeconfig; None means use the in-cluster
    service account (no $KUBECONFIG, no ~/.kube/config, and running in a pod)."""
    explicit = os.environ.get("KUBECONFIG")
    if explicit:
        return explicit
    home = Path.home() / ".kube" / "config"
    if not home.exists() and "KUBERNETES_SERVICE_HOST" in os.environ:
        return None
    return str(home)


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return data.decode("utf-8", errors="replace")


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _disruption_budget_message(answer: _Answer) -> str | None:
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
