"""Node operations: get, cordon, labels, taints, delete."""

from __future__ import annotations

from collections.abc import Callable

from healer.errors import KubeUnavailable
from healer.kube.connection import Answer, Connection
from healer.kube.records import Json, NodeInfo, Taint, format_time, node_from_json

_TAINT_CONFLICT_RETRIES = 5


class NodeApi(Connection):
    """What the workflow does to a Node."""

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

    async def uncordon(self, name: str) -> bool:
        """Mark the node schedulable again (after a planned reboot). False if it is gone."""
        return await self._patch_node(
            f'uncordon node "{name}"', name, {"spec": {"unschedulable": None}}
        )

    async def set_node_labels(self, name: str, labels: dict[str, str | None]) -> bool:
        """Set (or, with ``None``, remove) node labels. False if the node no longer exists."""
        return await self._patch_node(
            f'label node "{name}"', name, {"metadata": {"labels": labels}}
        )

    async def patch_node_metadata(self, what: str, name: str, metadata: Json) -> bool:
        """Merge ``metadata`` (labels, annotations; a ``None`` value removes a key) into the
        node's. False if the node no longer exists."""
        return await self._patch_node(what, name, {"metadata": metadata})

    async def _merge_patch_node(self, what: str, name: str, patch: Json) -> Answer:
        return await self._call(
            what, self._core.patch_node, name, patch, _content_type="application/merge-patch+json"
        )

    async def _patch_node(self, what: str, name: str, patch: Json) -> bool:
        answer = await self._merge_patch_node(what, name, patch)
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
            answer = await self._merge_patch_node(what, name, patch)
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
