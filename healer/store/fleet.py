"""Cheap reads of the state for ``healer status`` and the name checks at fleet size: node counts
by cluster, pool and health counted by the database, the few columns of the nodes a table shows,
and the clusters the workflows name, none of them decoding a node's whole record in Python (the
record of 10,000 nodes is 0.4 s of JSON; these queries are a few tens of milliseconds).

Written once for both backends like the queries of :class:`~healer.store.sqlite.Store`; a
node's pool and role are read out of its JSON record by the database (``json_extract`` on SQLite,
``->>`` on PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from healer.model import Health, Role
from healer.store import schema
from healer.store.sqlite import Store

# A field of a node's JSON record, as SQL, per dialect.
_FIELD = {
    schema.SQLITE: "json_extract(record, '$.{name}')",
    schema.POSTGRES: "(record::json ->> '{name}')",
}


@dataclass(frozen=True)
class NodeCount:
    """How many nodes of ``cluster``'s ``pool`` (None: no pool) have ``health``."""

    cluster: str
    pool: str | None
    health: Health
    count: int


@dataclass(frozen=True)
class NodeLine:
    """A node as a table shows it."""

    cluster: str
    node: str
    pool: str | None
    role: str
    health: Health
    reason: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return self.__dict__ | {"health": str(self.health)}


def _field(store: Store, name: str) -> str:
    return _FIELD[store.dialect].format(name=name)


def _where(cluster: str | None, *conditions: str) -> tuple[str, tuple[Any, ...]]:
    clauses = ["cluster=?"] if cluster is not None else []
    clauses += conditions
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), (
        (cluster,) if cluster is not None else ()
    )


def node_counts(store: Store, cluster: str | None = None) -> list[NodeCount]:
    """The nodes of ``cluster`` (every cluster when None) counted by cluster, pool and health,
    sorted by cluster, pool (None first) and health."""
    where, args = _where(cluster)
    rows = store._db.execute(
        f"SELECT cluster, {_field(store, 'pool')} AS pool, health, count(*) AS n FROM nodes"
        f"{where} GROUP BY 1, 2, 3",
        args,
    ).fetchall()
    counts = [NodeCount(r[0], r[1], Health(r[2]), int(r[3])) for r in rows]
    counts.sort(key=lambda c: (c.cluster, c.pool is not None, c.pool or "", c.health))
    return counts


def node_lines(
    store: Store, cluster: str | None = None, *, unhealthy_only: bool = False
) -> list[NodeLine]:
    """The nodes of ``cluster`` (every cluster when None), sorted by cluster and name; with
    ``unhealthy_only`` only those whose health is not ``healthy``."""
    where, args = _where(cluster, *(["health<>?"] if unhealthy_only else []))
    if unhealthy_only:
        args = (*args, str(Health.HEALTHY))
    rows = store._db.execute(
        f"SELECT cluster, node, {_field(store, 'pool')} AS pool, {_field(store, 'role')} AS role,"
        f" health, reason, message FROM nodes{where} ORDER BY cluster, node",
        args,
    ).fetchall()
    return [
        NodeLine(r[0], r[1], r[2], r[3] or str(Role.WORKER), Health(r[4]), r[5], r[6]) for r in rows
    ]


def workflow_clusters(store: Store) -> set[str]:
    """The clusters any workflow, running or finished, names."""
    return {r[0] for r in store._db.execute("SELECT DISTINCT cluster FROM workflows").fetchall()}
