"""The REST verbs on stored objects, as the apiserver's generic registry and the per-kind
strategies answer them: create (with defaults and validation), get and list (PDBs carry their
computed status), update and patch (optimistic concurrency on resourceVersion, immutable and
subresource-owned parts kept, RBAC ``roleRef`` immutable, a no-op write not bumping the
version), delete (pods gracefully, nodes with their pods; owned objects such as the node's
lease go later, with the garbage collector)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from healer.clock import Clock
from healer.lab.apiserver.admission import admit_pod
from healer.lab.apiserver.errors import ApiError, not_found, status_object
from healer.lab.apiserver.eviction import pdb_status
from healer.lab.apiserver.lifecycle import delete_pod, remove_node, sync_node_taints
from healer.lab.apiserver.objects import new_namespace
from healer.lab.apiserver.patches import merge_patch, strategic_merge
from healer.lab.apiserver.resources import (
    BY_PLURAL,
    NO_SPEC,
    RBAC_GROUP,
    SCALED,
    Obj,
    Resource,
    rfc3339,
)
from healer.lab.apiserver.selectors import make_predicate
from healer.lab.apiserver.store import Store
from healer.lab.apiserver.taints import validate_taints


def ensure_namespace(store: Store, clock: Clock, name: str) -> Obj:
    existing = store.get("namespaces", "", name)
    if existing is not None:
        return existing
    return create(store, clock, BY_PLURAL["namespaces"], "", new_namespace(name))


def create(store: Store, clock: Clock, res: Resource, ns: str, obj: Obj) -> Obj:
    meta = obj.setdefault("metadata", {})
    name = meta.get("name")
    if not name:
        raise ApiError(422, f'{res.kind} "" is invalid: metadata.name: Required value')
    if (ns, name) in store.objects[res.plural]:
        raise ApiError(
            409,
            f'{res.qualified} "{name}" already exists',
            reason="AlreadyExists",
            details={"name": name, "group": res.group, "kind": res.plural},
        )
    if res.plural == "nodes":
        validate_taints(name, obj)
    obj["kind"] = res.kind
    obj["apiVersion"] = res.api_version
    if res.namespaced:
        meta["namespace"] = ns
    else:
        meta.pop("namespace", None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = rfc3339(clock.now())
    meta.pop("deletionTimestamp", None)
    if res.plural != "namespaces" and res.plural not in NO_SPEC:
        obj.setdefault("spec", {})
    if res.plural in SCALED:
        obj["spec"].setdefault("replicas", 1)  # apps/v1 defaulting
    if res.plural in ("nodes", "pods", "namespaces"):
        # Go serialises these (non-pointer) status structs even when empty.
        obj.setdefault("status", {})
    store.put(res, ns, obj, "ADDED")
    if res.plural == "nodes":
        sync_node_taints(store, clock, name)
    return copy.deepcopy(store.objects[res.plural][(ns, name)])


def decorate(store: Store, res: Resource, obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    if res.plural == "poddisruptionbudgets":
        out["status"] = pdb_status(store, obj)
    return out


def get(store: Store, res: Resource, ns: str, name: str) -> Obj:
    return decorate(store, res, _existing(store, res, ns, name))


def _existing(store: Store, res: Resource, ns: str, name: str) -> Obj:
    """The stored object, or the apiserver's 404 for it."""
    obj = store.get(res.plural, ns, name)
    if obj is None:
        raise not_found(res, name)
    return obj


def list_objects(store: Store, res: Resource, ns: str | None, query: Any) -> Obj:
    predicate = make_predicate(res, ns, query)
    items = []
    for obj in store.objects[res.plural].values():
        if predicate(obj):
            item = decorate(store, res, obj)
            # List items carry no kind/apiVersion on the wire; the list does.
            item.pop("kind", None)
            item.pop("apiVersion", None)
            items.append(item)
    items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    return {
        "kind": f"{res.kind}List",
        "apiVersion": res.api_version,
        "metadata": {"resourceVersion": str(store.rv)},
        "items": items,
    }


def create_from_request(store: Store, clock: Clock, res: Resource, ns: str, body: Obj) -> Obj:
    if body.get("kind") not in (None, res.kind):
        raise ApiError(400, f"the API version in the data does not match: {body.get('kind')}")
    if res.namespaced and ("", ns) not in store.objects["namespaces"]:
        raise ApiError(
            404,
            f'namespaces "{ns}" not found',
            details={"name": ns, "kind": "namespaces"},
        )
    meta = body.setdefault("metadata", {})
    if res.namespaced and meta.get("namespace") not in (None, ns):
        raise ApiError(
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
        )
    if res.plural == "pods":
        admit_pod(store.get("namespaces", "", ns), body)
        # The API server ignores a new pod's status: it is Pending until its kubelet says
        # otherwise (a status patch), even with spec.nodeName set.
        body["status"] = {"phase": "Pending"}
    if res.plural == "namespaces":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        body["status"] = {"phase": "Active"}
    for drop in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp"):
        meta.pop(drop, None)
    return decorate(store, res, create(store, clock, res, ns, body))


def _check_rv(res: Resource, current: Obj, body: Obj) -> None:
    wanted = (body.get("metadata") or {}).get("resourceVersion")
    if wanted and wanted != current["metadata"]["resourceVersion"]:
        name = current["metadata"]["name"]
        raise ApiError(
            409,
            f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            reason="Conflict",
            details={"name": name, "group": res.group, "kind": res.plural},
        )


def update(
    store: Store,
    clock: Clock,
    res: Resource,
    ns: str,
    name: str,
    body: Obj,
    *,
    status_only: bool,
) -> Obj:
    current = _existing(store, res, ns, name)
    if (body.get("metadata") or {}).get("name") not in (None, name):
        raise ApiError(400, "the name of the object does not match the name on the URL")
    _check_rv(res, current, body)
    new = copy.deepcopy(current)
    if status_only:
        new["status"] = copy.deepcopy(body.get("status", {}))
    else:
        for key, value in body.items():
            if key in ("kind", "apiVersion", "metadata", "status"):
                continue
            new[key] = copy.deepcopy(value)
        if res.plural in NO_SPEC:
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
    return _commit(store, clock, res, ns, name, new)


def patch(
    store: Store,
    clock: Clock,
    res: Resource,
    ns: str,
    name: str,
    body: Any,
    content_type: str,
    *,
    status_only: bool,
) -> Obj:
    current = _existing(store, res, ns, name)
    if not isinstance(body, dict):
        raise ApiError(415, f"the body of the request was in an unknown format: {content_type}")
    _check_rv(res, current, body)
    new = copy.deepcopy(current)
    if content_type == "application/merge-patch+json":
        merge_patch(new, body)
    elif content_type == "application/strategic-merge-patch+json":
        strategic_merge(new, body, ())
    else:
        raise ApiError(
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
    return _commit(store, clock, res, ns, name, new)


def _commit(store: Store, clock: Clock, res: Resource, ns: str, name: str, new: Obj) -> Obj:
    old = store.get(res.plural, ns, name)
    if res.group == RBAC_GROUP and old is not None and old.get("roleRef") != new.get("roleRef"):
        raise ApiError(
            422,
            f'{res.kind}.rbac.authorization.k8s.io "{name}" is invalid: roleRef: Invalid '
            "value: cannot change roleRef",
        )
    if res.plural == "nodes":
        validate_taints(name, new)
    # A no-op write does not bump resourceVersion, unless it is a Secret stored under a key
    # that is not the write key now: that one is stored again (an encryption-key rotation).
    stale = res.plural == "secrets" and store.encryption.stale((ns, name))
    if new == old and not stale:
        return decorate(store, res, new)
    store.put(res, ns, new, "MODIFIED")
    if res.plural == "nodes":
        sync_node_taints(store, clock, name)
    stored = store.objects[res.plural].get((ns, name), new)
    return decorate(store, res, stored)


def delete(store: Store, clock: Clock, res: Resource, ns: str, name: str, grace: int | None) -> Obj:
    if res.plural == "pods":
        return delete_pod(store, clock, ns, name, grace)
    current = _existing(store, res, ns, name)
    if res.plural == "nodes":
        remove_node(store, name)
    else:
        store.remove(res, ns, name)
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
