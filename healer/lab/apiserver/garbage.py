"""kube-controller-manager's garbage collector, played on the store.

A DELETE is answered at once; the collector comes afterwards, as the real one does with its
default ``propagationPolicy: Background``: an object whose owners (``metadata.ownerReferences``)
are all gone is deleted, and one that keeps a live owner loses the references to the gone ones.
An owner is gone when no object of its kind and name exists (in the dependent's namespace for a
namespaced kind) or the one there has another uid: a Node deleted and registered again under the
same name does not keep the old one's Lease.

The fake stores only some kinds. An owner of a kind it does not store (a DaemonSet, ...) or of
a workload kind it stores only for the disruption controller's scale (a ReplicaSet, ...: the
lab's pods name owners that were never created) counts as present, so its dependents are never
collected by mistake.
"""

from __future__ import annotations

import copy

import structlog

from healer.lab.apiserver.resources import RESOURCES, WORKLOADS, Obj, Resource
from healer.lab.apiserver.store import Store

log = structlog.get_logger(__name__)

# (apiVersion, kind) -> the stored resource, for resolving owner references.
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES.values() if r.plural not in WORKLOADS}


def owner_gone(store: Store, ref: Obj, namespace: str) -> bool:
    """Whether the owner ``ref`` points at no longer exists (False for kinds not stored)."""
    res = BY_KIND.get((str(ref.get("apiVersion")), str(ref.get("kind"))))
    if res is None:
        return False
    owner = store.get(res.plural, namespace if res.namespaced else "", ref.get("name", ""))
    if owner is None:
        return True
    uid = ref.get("uid")
    return bool(uid) and owner["metadata"].get("uid") != uid


def collect_garbage(store: Store) -> None:
    """One pass of the garbage collector over every stored object."""
    for res in RESOURCES.values():
        for (ns, name), obj in list(store.objects[res.plural].items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not refs:
                continue
            gone = [ref for ref in refs if owner_gone(store, ref, ns)]
            if not gone:
                continue
            if len(gone) == len(refs):
                store.remove(res, ns, name)
                log.info(
                    "fake_apiserver.garbage_collected",
                    kind=res.kind,
                    object=f"{ns}/{name}" if ns else name,
                    owners=",".join(f"{ref.get('kind')}/{ref.get('name')}" for ref in refs),
                )
            else:
                _drop_references(store, res, ns, obj, gone)


def _drop_references(store: Store, res: Resource, ns: str, obj: Obj, gone: list[Obj]) -> None:
    """A dependent with a live owner left keeps only the references to live owners."""
    updated = copy.deepcopy(obj)
    updated["metadata"]["ownerReferences"] = [
        ref for ref in obj["metadata"]["ownerReferences"] if ref not in gone
    ]
    store.put(res, ns, updated, "MODIFIED")
