"""The cluster, pool and node names an operator command may name, and the check that refuses a
name healer does not know, with the closest known one ("unknown cluster 'nosuch'; did you mean
'lab'?", exit 2) instead of pausing a cluster that does not exist.

The names come from the configuration (``-c``, HEALER_CONFIG, or the default file when it is
readable) and from the state database (nodes the daemon saw, workflows, breakers, pauses), so a
command works against a state directory alone, and a cluster the daemon has not seen yet can be
named once the configuration is given.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from healer.cli.common import config_summary
from healer.errors import ConfigError
from healer.store.fleet import node_counts, node_lines, workflow_clusters
from healer.store.sqlite import BREAKER_KINDS, Store
from healer.suggest import did_you_mean

if TYPE_CHECKING:
    from healer.config.summary import ConfigSummary


@dataclass(frozen=True)
class KnownNames:
    pools: dict[str, set[str]] = field(default_factory=dict)  # cluster -> its pools
    sources: tuple[str, ...] = ()  # where the names came from, for the message

    def check(self, cluster: str | None, pool: str | None = None) -> None:
        """Raise :class:`ConfigError` for a cluster or a pool of it that is not known."""
        if cluster is None:
            return
        where = " and ".join(self.sources) or "neither the configuration nor the state"
        if cluster not in self.pools:
            if not self.pools:
                raise ConfigError(
                    f"unknown cluster {cluster!r}: {where} names no cluster; pass -c with the "
                    "daemon's configuration or --state-dir with its state directory"
                )
            raise ConfigError(
                f"unknown cluster {cluster!r} (from {where}){did_you_mean(cluster, self.pools)}"
            )
        if pool is not None and pool not in self.pools[cluster]:
            raise ConfigError(
                f"unknown pool {pool!r} in cluster {cluster!r} (from {where})"
                f"{did_you_mean(pool, self.pools[cluster])}"
            )


def known_names(args: argparse.Namespace, store: Store | None) -> KnownNames:
    """The names in the configuration the command was given (or the default one, if readable)
    and in the state database."""
    return names_in(config_summary(args)[0], store)


def names_in(
    config: ConfigSummary | None,
    store: Store | None,
    *,
    node_pools: Iterable[tuple[str, str | None]] | None = None,
) -> KnownNames:
    """The names in ``config`` and ``store``. ``node_pools``: the (cluster, pool) pairs of the
    store's nodes when the caller has them already (``healer status`` counts them anyway)."""
    pools: dict[str, set[str]] = {}
    sources: list[str] = []
    if config is not None:
        sources.append("the configuration")
        for c in config.clusters:
            pools.setdefault(c.name, set()).update(p.name for p in c.pools)
    if store is not None:
        sources.append(f"the state in {Path(store.path).parent}")
        if node_pools is None:
            node_pools = {(c.cluster, c.pool) for c in node_counts(store)}
        for cluster, pool in node_pools:
            pools.setdefault(cluster, set()).update([pool] if pool else [])
        for cluster in workflow_clusters(store):
            pools.setdefault(cluster, set())
        for kind in BREAKER_KINDS:
            for cluster in store.breakers(kind=kind):
                pools.setdefault(cluster, set())
        for scope in store.pauses():
            if scope.startswith("cluster:"):
                pools.setdefault(scope.removeprefix("cluster:"), set())
            elif scope.startswith("pool:"):
                cluster, _, pool = scope.removeprefix("pool:").partition("/")
                pools.setdefault(cluster, set()).add(pool)
    return KnownNames(pools, tuple(sources))


def check_node(store: Store, cluster: str | None, node: str, *, also: Iterable[str] = ()) -> None:
    """Refuse a node the daemon never saw (in ``cluster``, or anywhere): not among its nodes,
    its workflows' nodes or ``also``; suggests the closest. Nothing recorded: not checked."""
    known = {n.node for n in node_lines(store, cluster)}
    known |= {wf.node for wf in store.workflows(cluster=cluster)}
    known |= set(also)
    if known and node not in known:
        raise ConfigError(
            f"unknown node {node!r}{f' in cluster {cluster!r}' if cluster else ''}"
            f"{did_you_mean(node, known)}"
        )
