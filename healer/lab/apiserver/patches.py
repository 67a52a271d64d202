"""PATCH bodies: RFC 7386 JSON merge patch and the strategic merge patch healer sends (lists
merged by their Go ``patchMergeKey``)."""

from __future__ import annotations

import copy
from typing import Any

from healer.lab.apiserver.resources import Obj

# Lists that strategic merge patch merges by key instead of replacing (from the Go types'
# patchMergeKey tags); every other list is replaced wholesale, as in a merge patch.
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("metadata", "ownerReferences"): "uid",
    ("spec", "containers"): "name",
}


def merge_patch(target: Obj, patch: Obj) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def strategic_merge(target: Obj, patch: Obj, path: tuple[str, ...]) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # directives such as $retainKeys are not needed by healer
        here = (*path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            strategic_merge(target[key], value, here)
        elif isinstance(value, list) and here in MERGE_KEYS:
            merge_key = MERGE_KEYS[here]
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
                    strategic_merge(items[index], item, here)
            target[key] = items
        else:
            target[key] = copy.deepcopy(value)
