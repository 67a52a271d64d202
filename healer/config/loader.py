"""Loading the YAML file: every validation error names the file, the line and the column (the
YAML node the field came from) and the field path; an unknown key gets the closest known ones
("did you mean"); a key given twice in one mapping is an error at its second line (PyYAML would
keep the last silently); relative paths resolved against the file.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from healer.config.model import ClusterConfig, HealerConfig
from healer.config.yamldoc import DocLoader, FastDocLoader
from healer.errors import ConfigError
from healer.suggest import did_you_mean

# A field path -> where its YAML node starts: (line, column), both from 1.
Marks = dict[tuple[str | int, ...], tuple[int, int]]


def _marks(node: yaml.Node, path: tuple[str | int, ...] = (), out: Marks | None = None) -> Marks:
    """Where each field of the document starts: a mapping entry at its key, a list item at
    itself."""
    out = {} if out is None else out
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = key_node.value
                out[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                _marks(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _marks(item, (*path, i), out)
    return out


def _where(loc: tuple[Any, ...], marks: Marks) -> tuple[int, int] | None:
    """The deepest node of the document along pydantic's error location (which also holds
    entries of its own, such as validator names, that no node has): a missing field is reported
    at the mapping that lacks it."""
    path: tuple[str | int, ...] = ()
    for part in loc:
        if (*path, part) in marks:
            path = (*path, part)
    return marks.get(path)


def _model_fields(annotation: Any) -> list[type[BaseModel]]:
    """The config models a field's annotation can hold (through Optional, unions, tuples,
    lists and dict values)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_fields(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin in (typing.Union, types.UnionType, tuple, list, dict, frozenset, set):
        return [m for arg in typing.get_args(annotation) for m in _model_fields(arg)]
    return []


def _keys_at(loc: tuple[Any, ...]) -> set[str]:
    """The keys the configuration takes where pydantic found the unknown key ``loc[-1]``."""
    models: list[type[BaseModel]] = [HealerConfig]
    for part in loc[:-1]:
        if not isinstance(part, str):
            continue  # a list index: the same models
        found = [
            m
            for model in models
            for name, info in model.model_fields.items()
            if part in (name, info.alias)
            for m in _model_fields(info.annotation)
        ]
        if found:
            models = found
    return {info.alias or name for m in models for name, info in m.model_fields.items()}


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "constrained-")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(source: str, exc: ValidationError, marks: Marks | None = None) -> str:
    errors = exc.errors()
    # A failing item also makes pydantic report its container as too short; that is noise.
    failing = [tuple(e["loc"]) for e in errors if e["type"] != "too_short"]
    errors = [
        e
        for e in errors
        if e["type"] != "too_short"
        or not any(loc[: len(e["loc"])] == tuple(e["loc"]) for loc in failing)
    ]
    lines = [f"{source}: invalid configuration ({len(errors)} problem(s))"]
    problems: list[tuple[tuple[int, int], str]] = []
    for err in errors:
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            msg = f"unknown key {loc[-1]!r}{did_you_mean(loc[-1], _keys_at(loc))}"
        at = _where(loc, marks) if marks else None
        where = f"{source}:{at[0]}:{at[1]}: " if at else ""
        problems.append((at or (0, 0), f"  {where}{_field_path(loc)}: {msg}"))
    # In the order of the file, as an editor walks it.
    lines += [line for _, line in sorted(problems, key=lambda p: p[0])]
    return "\n".join(lines)


def parse_config(
    data: Any, *, source: str = "<config>", base_dir: Path | None = None, marks: Marks | None = None
) -> HealerConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'clusters' list")
    try:
        cfg = HealerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, marks)) from None
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    return cfg


def _resolve_paths(cfg: HealerConfig, base: Path) -> HealerConfig:
    """Relative paths in the file are relative to the file, not to the working directory."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    clusters = tuple(
        _resolve_provisioning_paths(c.model_copy(update={"kubeconfig": fix(c.kubeconfig)}), fix)
        for c in cfg.clusters
    )
    return cfg.model_copy(update={"clusters": clusters, "state_dir": fix(cfg.state_dir)})


def _resolve_provisioning_paths(
    c: ClusterConfig, fix: Callable[[Path | None], Path | None]
) -> ClusterConfig:
    update: dict[str, Any] = {}
    if c.ssh.public_key_file is not None:
        update["ssh"] = c.ssh.model_copy(update={"public_key_file": fix(c.ssh.public_key_file)})
    if c.agent is not None and c.agent.tls_ca is not None:
        update["agent"] = c.agent.model_copy(update={"tls_ca": fix(c.agent.tls_ca)})
    if c.kubernetes is not None and c.kubernetes.audit.policy_file is not None:
        audit = c.kubernetes.audit.model_copy(
            update={"policy_file": fix(c.kubernetes.audit.policy_file)}
        )
        update["kubernetes"] = c.kubernetes.model_copy(update={"audit": audit})
    return c.model_copy(update=update) if update else c


def load_config(path: str | Path) -> HealerConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from exc
    try:
        try:
            data, marks = _load_yaml(text, FastDocLoader)
        except yaml.YAMLError:
            _load_yaml(text, DocLoader)  # raises it again, in PyYAML's own words
            raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except ValueError as exc:
        # PyYAML turns a number into an int before any field sees it; Python refuses one of
        # thousands of digits (int_max_str_digits). No field takes a number that long.
        digits = re.search(r"has (\d+) digits", str(exc))
        size = f" ({digits.group(1)} digits)" if digits else f": {exc}"
        raise ConfigError(
            f"{path}: a number in the file is too long to be any value{size}"
        ) from None
    return parse_config(data, source=str(path), base_dir=path.parent.resolve(), marks=marks)


def place(path: str | Path, loc: tuple[str | int, ...]) -> str:
    """``FILE:LINE:COLUMN`` of the field at ``loc`` in a configuration file that loads (for the
    problems found after loading, such as an unknown plugin); ``FILE`` alone if it cannot say."""
    try:
        _, marks = _load_yaml(Path(path).read_text())
    except (OSError, yaml.YAMLError, ValueError):
        return str(path)
    at = _where(loc, marks)
    return f"{path}:{at[0]}:{at[1]}" if at else str(path)


def _load_yaml(
    text: str, parser: type[DocLoader | FastDocLoader] = FastDocLoader
) -> tuple[Any, Marks]:
    """The document and where each of its fields starts (one parse: the node tree is kept)."""
    loader = parser(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        return loader.construct_document(node), _marks(node)
    finally:
        loader.dispose()
