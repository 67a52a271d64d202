"""Loading the YAML file: validation errors that name the file and the field path; relative
paths resolved against the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from healer.config.model import ClusterConfig, HealerConfig
from healer.errors import ConfigError


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


def format_validation_error(source: str, exc: ValidationError) -> str:
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
    for err in errors:
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {_field_path(tuple(err['loc']))}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: Any, *, source: str = "<config>", base_dir: Path | None = None
) -> HealerConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'clusters' list")
    try:
        cfg = HealerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except ValueError as exc:
        # PyYAML turns a number into an int before any field sees it; Python refuses one of
        # thousands of digits (int_max_str_digits). No field takes a number that long.
        digits = re.search(r"has (\d+) digits", str(exc))
        size = f" ({digits.group(1)} digits)" if digits else f": {exc}"
        raise ConfigError(
            f"{path}: a number in the file is too long to be any value{size}"
        ) from None
    return parse_config(data, source=str(path), base_dir=path.parent.resolve())
