"""The few settings the read-only commands (``healer status``, ``history``, ``pause``...) need
from the configuration, read without pydantic: the state directory, each cluster's name, its
pools' names and sizes and whether its etcd is read. Building every model of the configuration
costs more than the rest of ``healer status`` at fleet size; a production host always has the
file (/etc/healer/healer.yaml), so status would always pay it.

:func:`read_summary` vouches only for what it reads, checked as the models check it (names, sizes,
uniqueness). Anything else, it declines (returns None) and the caller loads the file in full
(:func:`healer.config.load_config`), which is also what reports an error, exactly as before:
a file that cannot be read or parsed, a setting it reads that is wrong, a ``state`` section
(PostgreSQL: the store needs the validated section) or ``etcd.mode: direct`` (status reads that
etcd with the cluster's full settings). The rest of the file is not validated here:
``healer validate`` and the daemon do that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from healer.config.yamldoc import FastDocLoader
from healer.model import Role

if TYPE_CHECKING:
    from healer.config.model import HealerConfig

# As the models check a cluster's and a pool's name (ClusterConfig.name, PoolConfig.name).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_MAX = 40
_POOL_SIZE_MAX = 10000  # PoolConfig.size
_ROLES = {str(r.value) for r in Role}
# The etcd modes whose status needs no more than the mode (EtcdConfig.mode): `direct` is read with
# the cluster's full settings.
_ETCD_SUMMARIZED = ("off", "portforward")

T = TypeVar("T")


@dataclass(frozen=True)
class PoolSummary:
    name: str
    size: int


@dataclass(frozen=True)
class ClusterSummary:
    name: str
    pools: tuple[PoolSummary, ...]
    etcd_mode: str = "off"


@dataclass(frozen=True)
class ConfigSummary:
    state_dir: Path | None
    clusters: tuple[ClusterSummary, ...]
    # The validated configuration, when it had to be loaded (etcd read, a PostgreSQL state).
    full: HealerConfig | None = None


def summary_of(config: HealerConfig) -> ConfigSummary:
    """The summary of a configuration loaded in full."""
    clusters = tuple(
        ClusterSummary(c.name, tuple(PoolSummary(p.name, p.size) for p in c.pools), c.etcd.mode)
        for c in config.clusters
    )
    return ConfigSummary(config.state_dir, clusters, config)


def read_summary(path: str | Path) -> ConfigSummary | None:
    """The summary of the file at ``path``; None when only the full load can tell (see the
    module's description)."""
    path = Path(path)
    try:
        loader = FastDocLoader(path.read_text())
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("state") is not None:
        return None
    state_dir = data.get("stateDir")
    if state_dir is not None and (not isinstance(state_dir, str) or not state_dir):
        return None
    clusters = _items(data.get("clusters"), _cluster)
    if clusters is None or not _unique(c.name for c in clusters):
        return None
    if any(c.etcd_mode not in _ETCD_SUMMARIZED for c in clusters):
        return None
    if state_dir is not None:
        # Relative to the file, as the full load resolves it.
        state_dir = Path(state_dir)
        if not state_dir.is_absolute():
            state_dir = path.parent.resolve() / state_dir
    return ConfigSummary(state_dir, clusters)


def _items(value: Any, read: Callable[[Any], T | None]) -> tuple[T, ...] | None:
    """Each item of a non-empty list read by ``read``; None if it is not one or an item is off."""
    if not isinstance(value, list) or not value:
        return None
    out = [read(item) for item in value]
    return tuple(item for item in out if item is not None) if None not in out else None


def _name(value: Any) -> str | None:
    ok = isinstance(value, str) and len(value) <= _NAME_MAX and _NAME.match(value)
    return value if ok else None


def _cluster(item: Any) -> ClusterSummary | None:
    if not isinstance(item, dict):
        return None
    name = _name(item.get("name"))
    pools = _items(item.get("pools"), _pool)
    etcd = item.get("etcd")
    if etcd is None:
        etcd = {}
    mode = etcd.get("mode", "off") if isinstance(etcd, dict) else None
    if name is None or pools is None or not _unique(p.name for p, _ in pools) or mode is None:
        return None
    # At most one control-plane pool, of an odd size (etcd's members), as ClusterConfig checks.
    cps = [p for p, role in pools if role == Role.CONTROL_PLANE.value]
    if len(cps) > 1 or (cps and cps[0].size % 2 == 0):
        return None
    return ClusterSummary(name, tuple(p for p, _ in pools), etcd_mode=mode)


def _pool(item: Any) -> tuple[PoolSummary, str] | None:
    """A pool and its role."""
    if not isinstance(item, dict):
        return None
    name, size = _name(item.get("name")), item.get("size")
    role = item.get("role", Role.WORKER.value)
    if name is None or type(size) is not int or not 0 <= size <= _POOL_SIZE_MAX:
        return None
    return (PoolSummary(name, size), role) if isinstance(role, str) and role in _ROLES else None


def _unique(names: Iterable[str]) -> bool:
    seen = list(names)
    return len(seen) == len(set(seen))
