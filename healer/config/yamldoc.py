"""The YAML reading every configuration reader shares, without pydantic (``healer status``
reads the file through :mod:`healer.config.summary` without building a model)."""

from __future__ import annotations

from typing import Any

import yaml

try:
    from yaml import CSafeLoader as _FastBase
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _FastBase  # type: ignore[assignment]


class _OnceEach(yaml.constructor.SafeConstructor):
    """The safe constructor, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys given beside it override the merged ones
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the constructor below says what is wrong
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first.start_mark.line + 1}, column "
                    f"{first.start_mark.column + 1}); a key may appear once in a mapping",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


class DocLoader(_OnceEach, yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping; its errors are the ones
    the configuration's messages quote (``FILE:LINE:COLUMN: not valid YAML: ...``)."""


class FastDocLoader(_OnceEach, _FastBase):
    """The same on libyaml's parser, when PyYAML has it: a tenth of the time on a fleet's file
    (100 clusters: 28 ms instead of 355 ms). For a reader that leaves reporting an error to
    :class:`DocLoader` (:mod:`healer.config.summary`)."""
