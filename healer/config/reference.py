"""The configuration reference, generated from the config models themselves.

``python -m healer.config.reference > docs/config-reference.md``; a test keeps the committed file in
step with the code, so the reference can never fall behind a new setting.
"""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from healer.config import HealerConfig


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in get_args(annotation) if a is not type(None)]
        return " or ".join(parts)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in get_args(annotation))
    if origin in (tuple, list):
        inner = [a for a in get_args(annotation) if a is not Ellipsis]
        return f"list of {_type_name(inner[0])}" if inner else "list"
    if origin is dict:
        _key, value = get_args(annotation) or (Any, Any)
        return f"map of {_type_name(value)}"
    if isinstance(annotation, type):
        if annotation.__name__ == "Threshold":
            return "count or percentage"
        if issubclass(annotation, BaseModel):
            return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
        if annotation is float:
            return "number"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default
    if value is PydanticUndefined or value is None:
        return "—" if info.default_factory is None else "(empty)"
    if isinstance(value, BaseModel):
        return "(defaults)"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return f"`{text}`" if text else '`""`'


def _key(name: str, info: FieldInfo) -> str:
    return info.alias or name


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the models in `healer/config/` by `python -m healer.config.reference`; do not edit by hand.",
        "Durations are seconds or `30s`/`5m`/`1h`, at most `365d`; other numbers at most",
        "2147483647, never infinite or `.nan`; secrets are references (`{env: NAME}`,",
        "`{file: PATH}` or `{credential: NAME}`). See [configuration.md](configuration.md) for a",
        "guided tour.",
        "",
    ]
    seen: set[type[BaseModel]] = set()
    queue: list[type[BaseModel]] = [HealerConfig]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        lines += [f"## {model.__name__}", ""]
        if doc and not doc.startswith("!!!") and "Usage docs" not in doc:
            lines += [doc, ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            meaning = (info.description or "").replace("\n", " ").replace("|", "\\|")
            lines.append(
                f"| `{_key(name, info)}` | {_type_name(info.annotation)} | {_default(info)} | {meaning} |"
            )
            queue.extend(m for m in _models_in(info.annotation) if m not in seen)
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
