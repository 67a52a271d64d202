"""What a configuration reload (SIGHUP) may change while the daemon runs.

A reload is all or nothing: the new file is parsed and validated like at start-up, then compared
with the running configuration. Policies (health thresholds, remediation limits, pools, pauses,
the breaker, schedules, orphan and reboot policies) are swapped in at once; connections are not
(which cluster API, which cloud account, which broker, which listener), since reconnecting them
safely is what a restart does. A change to one of those rejects the whole reload, naming the
fields, and the old configuration stays in force.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from healer.config import HealerConfig

# Top-level fields that only take effect with a restart: each names a connection, a listener or
# where state lives, or (dryRun) a mode the planner fixes when it starts.
RESTART_ONLY = ("state_dir", "dry_run", "log_format", "mqtt", "webhook", "metrics")
RESTART_ONLY_PER_CLUSTER = ("kubeconfig", "context", "provider")

# "  FIELD: message", or with the place in the file first: "  FILE:LINE:COLUMN: FIELD: message".
_ERROR_LINE = re.compile(r"^\s+(?:\S+:\d+:\d+: )?(?P<path>[^:\s][^:]*): ")


def _alias(model: type[BaseModel], field: str) -> str:
    info = model.model_fields[field]
    return info.alias or field


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def restart_required(old: HealerConfig, new: HealerConfig) -> list[str]:
    """Field paths (as written in the file) whose change needs a restart; empty if none."""
    changed = [
        _alias(HealerConfig, name)
        for name in RESTART_ONLY
        if name in HealerConfig.model_fields
        and _dump(getattr(old, name)) != _dump(getattr(new, name))
    ]
    old_names = [c.name for c in old.clusters]
    new_names = [c.name for c in new.clusters]
    if old_names != new_names:
        changed.append(f"clusters (names {', '.join(old_names)} -> {', '.join(new_names)})")
        return changed
    for i, (a, b) in enumerate(zip(old.clusters, new.clusters, strict=True)):
        for name in RESTART_ONLY_PER_CLUSTER:
            if _dump(getattr(a, name)) != _dump(getattr(b, name)):
                changed.append(f"clusters[{i}].{_alias(type(a), name)}")
    return changed


def field_paths(message: str) -> list[str]:
    """The field paths a :class:`~healer.errors.ConfigError` message lists, one per line."""
    return [m.group("path") for line in message.splitlines() if (m := _ERROR_LINE.match(line))]
