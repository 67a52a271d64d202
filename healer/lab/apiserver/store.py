"""The object store: every object by resource and key, the resourceVersion counter, the change
history watches resume from (and its compaction, after which older versions get ``410
Expired``) and the fan-out of each change to the open watches.

Every mutation goes through :meth:`Store.put` / :meth:`Store.remove`, so resourceVersions,
history and watchers stay consistent whether the change came over HTTP, from a controller or
from a test's state method.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from healer.lab.apiserver.encryption import EncryptionAtRest
from healer.lab.apiserver.resources import BY_PLURAL, Obj, Resource

Key = tuple[str, str]  # (namespace, name); the namespace is "" for cluster-scoped objects


@dataclass(eq=False)  # identity semantics: watchers live in a set
class Watcher:
    resource: Resource
    predicate: Callable[[Obj], bool]
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)


class Store:
    """The cluster's objects and their history. ``objects[plural][(namespace, name)]`` is the
    stored object itself: readers that hand it out copy it."""

    def __init__(self, *, history_limit: int) -> None:
        self.rv = 1
        self.objects: dict[str, dict[Key, Obj]] = {p: {} for p in BY_PLURAL}
        self._history: collections.deque[tuple[int, str, str, Obj]] = collections.deque(
            maxlen=history_limit
        )
        # Watches may resume from any resourceVersion >= this; older ones get 410 Expired.
        self.compacted_rv = 0
        self._watchers: set[Watcher] = set()
        # Which key each Secret is stored under (healer.lab.apiserver.encryption).
        self.encryption = EncryptionAtRest()

    def get(self, plural: str, ns: str, name: str) -> Obj | None:
        return self.objects[plural].get((ns, name))

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def put(self, res: Resource, ns: str, obj: Obj, event: str) -> Obj:
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        key = (ns, obj["metadata"]["name"])
        self.objects[res.plural][key] = obj
        if res.plural == "secrets":
            self.encryption.written(key)
        self._record(rv, res, event, obj)
        return obj

    def remove(self, res: Resource, ns: str, name: str) -> Obj | None:
        obj = self.objects[res.plural].pop((ns, name), None)
        if obj is None:
            return None
        if res.plural == "secrets":
            self.encryption.removed((ns, name))
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._record(rv, res, "DELETED", obj)
        return obj

    def _record(self, rv: int, res: Resource, event: str, obj: Obj) -> None:
        snapshot = copy.deepcopy(obj)
        if len(self._history) == self._history.maxlen:
            self.compacted_rv = self._history[0][0]
        self._history.append((rv, res.plural, event, snapshot))
        for watcher in list(self._watchers):
            if watcher.resource is res and watcher.predicate(snapshot):
                watcher.queue.put_nowait((event, snapshot))

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older resourceVersions now get 410."""
        self._history.clear()
        self.compacted_rv = self.rv

    def watch(
        self, res: Resource, predicate: Callable[[Obj], bool], since: int | None
    ) -> tuple[list[tuple[str, Obj]], Watcher] | None:
        """Open a watch: the events a client resuming from ``since`` missed (every matching
        object as ``ADDED`` when ``since`` is None) and the watcher that gets the changes from
        now on; None when ``since`` is older than the history kept (410 Expired). Runs without
        an await, so no change can slip between the backlog and the live stream."""
        if since is not None and since < self.compacted_rv:
            return None
        backlog: list[tuple[str, Obj]]
        if since is None:
            backlog = [
                ("ADDED", copy.deepcopy(o))
                for o in self.objects[res.plural].values()
                if predicate(o)
            ]
        else:
            backlog = [
                (event, obj)
                for rv, plural, event, obj in self._history
                if rv > since and plural == res.plural and predicate(obj)
            ]
        watcher = Watcher(res, predicate)
        self._watchers.add(watcher)
        return backlog, watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def end_watches(self, resource: str | None = None) -> None:
        """End the open watch streams (all, or one resource's): each gets a None."""
        for watcher in list(self._watchers):
            if resource is None or watcher.resource.plural == resource:
                watcher.queue.put_nowait(None)
