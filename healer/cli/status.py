"""``healer status``: the daemon, each cluster's owner (replicas on PostgreSQL), pools with their
configured sizes, nodes, workflows in flight, pauses, breakers, blocking alerts and spare
capacity, as text or JSON.

Linear in the fleet and cheap at its size: the pool table is counted by the database, and the
node table lists every node only up to ``STATUS_NODES_LISTED`` (or with ``--nodes``), else the
nodes that are not healthy; no node's whole record is decoded (:mod:`healer.store.fleet`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healer.cli.common import (
    STATUS_NODES_LISTED,
    config_path,
    config_summary,
    daemon_info,
    open_store,
    state_dir_for,
    timeline,
    ts,
)
from healer.cli.names import names_in
from healer.model import Health
from healer.store.fleet import NodeCount, NodeLine, node_counts, node_lines
from healer.store.sqlite import BREAKER_BAD_UPGRADE, Store

if TYPE_CHECKING:
    from healer.config.summary import ConfigSummary  # read without pydantic


def _pools(
    args: argparse.Namespace, config: ConfigSummary | None, counts: list[NodeCount]
) -> list[dict[str, Any]]:
    """Pools with their desired size (from the config, when one is readable) and node health."""
    desired: dict[tuple[str, str], int] = {}
    if config is not None:
        for c in config.clusters:
            if args.cluster in (None, c.name):
                for pool in c.pools:
                    desired[(c.name, pool.name)] = pool.size
    out: dict[tuple[str, str], dict[str, Any]] = {
        key: {"cluster": key[0], "pool": key[1], "size": size, "nodes": 0, "health": {}}
        for key, size in desired.items()
    }
    for n in counts:
        key = (n.cluster, n.pool or "-")
        row = out.setdefault(
            key, {"cluster": key[0], "pool": key[1], "size": None, "nodes": 0, "health": {}}
        )
        row["nodes"] += n.count
        row["health"][str(n.health)] = row["health"].get(str(n.health), 0) + n.count
    return [out[k] for k in sorted(out)]


def _listed(args: argparse.Namespace, store: Store, counts: list[NodeCount]) -> list[NodeLine]:
    """The nodes the table lists: every one up to STATUS_NODES_LISTED (or with --nodes or
    --json), else those that are not healthy."""
    every = args.nodes or args.json or sum(c.count for c in counts) <= STATUS_NODES_LISTED
    return node_lines(store, args.cluster, unhealthy_only=not every)


def cmd_status(args: argparse.Namespace) -> int:
    from healer.workflow.capacity import capacity_lines, capacity_report

    store = open_store(args)
    config, problem = config_summary(args)
    if problem is not None and Path(config_path(args)).exists():
        # The default file is optional here: say why the sizes are missing, and go on.
        print(f"note: configured pool sizes not shown: {problem}", file=sys.stderr)
    counts = node_counts(store)
    names_in(config, store, node_pools={(c.cluster, c.pool) for c in counts}).check(args.cluster)
    if args.cluster is not None:
        counts = [c for c in counts if c.cluster == args.cluster]
    nodes = _listed(args, store, counts)
    running = store.workflows(cluster=args.cluster, state="running")
    pauses = store.pauses()
    breakers = store.breakers()
    bad_upgrade = store.breakers(kind=BREAKER_BAD_UPGRADE)
    daemon = daemon_info(store)
    pools = _pools(args, config, counts)
    capacity = capacity_report(store, pools, cluster=args.cluster)
    blocking = _blocking_alerts(args, store)
    reboot_rows = _reboots(args, store)
    from healer.cli.etcd_status import etcd_lines, etcd_views

    etcd = etcd_views(state_dir_for(args, config), config, args.cluster)
    owners = _owners(args, config, store)
    if args.json:
        print(
            json.dumps(
                {
                    "daemon": daemon,
                    "pools": pools,
                    "nodes": [n.to_json() for n in nodes],
                    "workflows": [
                        {
                            "id": w.id,
                            "cluster": w.cluster,
                            "pool": w.pool,
                            "node": w.node,
                            "replacement": w.replacement_name,
                            "step": w.step,
                            "started_at": w.started_at,
                        }
                        for w in running
                    ],
                    "pauses": sorted(pauses),
                    "breakers": {c: r for c, (r, _) in breakers.items()},
                    "bad_upgrade_breakers": {c: r for c, (r, _) in bad_upgrade.items()},
                    "blocking_alerts": blocking,
                    "reboots": reboot_rows,
                    "capacity": capacity,
                    "etcd": {c: v.to_json() for c, v in etcd.items()},
                    # None: SQLite, one daemon owns every cluster (docs/state-backends.md)
                    "owners": owners,
                },
                indent=2,
            )
        )
        return 0
    if daemon["running"]:
        print(f"daemon: running (pid {daemon['pid']}): {daemon['status']}")
    elif "updated_at" in daemon:
        print(f"daemon: NOT RUNNING (last seen {ts(daemon['updated_at'])}: {daemon['status']})")
    else:
        print(f"daemon: NOT RUNNING ({daemon['detail']})")
    if pools:
        print(f"\n{'CLUSTER':<10} {'POOL':<16} {'SIZE':>4} {'NODES':>5}  HEALTH")
        for row in pools:
            health = ", ".join(f"{v} {k}" for k, v in sorted(row["health"].items())) or "-"
            size = "-" if row["size"] is None else str(row["size"])
            print(f"{row['cluster']:<10} {row['pool']:<16} {size:>4} {row['nodes']:>5}  {health}")
        print()
    for line in capacity_lines(capacity):
        print(line)
    if capacity:
        print()
    for line in etcd_lines(etcd):
        print(line)
    if etcd:
        print()
    if owners is not None:
        print(f"{'CLUSTER':<10} {'OWNER':<32} {'EPOCH':>5}  LEASE")
        for row in owners:
            left = row["expires_in"]
            lease = "-" if left is None else (f"{left:.0f}s left" if left > 0 else "expired")
            print(
                f"{row['cluster']:<10} {row['owner'] or 'NONE':<32} {row['epoch'] or '-':>5}"
                f"  {lease}"
            )
        print()
    _print_nodes(nodes, counts)
    print(f"\nworkflows in flight: {len(running)}")
    for w in running:
        print(f"  {w.id}  {w.cluster}/{w.node} -> {w.replacement_name}  step {w.step}")
    print("paused: " + (", ".join(sorted(pauses)) or "no"))
    print(
        "breaker: " + (", ".join(f"{c} OPEN ({r})" for c, (r, _) in breakers.items()) or "closed")
    )
    print(
        "bad-upgrade breaker: "
        + (", ".join(f"{c} OPEN ({r})" for c, (r, _) in bad_upgrade.items()) or "closed")
    )
    print(
        "blocking alerts: "
        + ("; ".join(f"{c}: {', '.join(names)}" for c, names in blocking.items()) or "none")
    )
    for line in _reboot_lines(reboot_rows):
        print(line)
    return 0


def _print_nodes(nodes: list[NodeLine], counts: list[NodeCount]) -> None:
    total = sum(c.count for c in counts)
    if len(nodes) < total:
        healthy = sum(c.count for c in counts if c.health is Health.HEALTHY)
        print(
            f"nodes not healthy: {len(nodes)} of {total} ({healthy} healthy not listed; "
            "--nodes lists every node)"
        )
    if not nodes:
        return
    print(f"{'CLUSTER':<10} {'NODE':<32} {'POOL':<16} {'HEALTH':<10} REASON")
    out = "\n".join(
        f"{n.cluster:<10} {n.node:<32} {n.pool or '-':<16} {n.health!s:<10} {n.reason}"
        for n in nodes
    )
    print(out)


def _reboots(args: argparse.Namespace, store: Store) -> dict[str, list[dict[str, Any]]]:
    """Reboot grants, reboots in progress and the nodes that wait, with every blocker."""
    from healer.planner.reboot_status import reboot_view

    view = reboot_view(store, now=timeline(state_dir_for(args)), cluster=args.cluster)
    return {
        "grants": [g.to_json() for g in view.grants],
        "waiting": [w.to_json() for w in view.waiting],
    }


def _reboot_lines(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    grants, waiting = rows["grants"], rows["waiting"]
    lines = [f"reboots: {len(grants)} granted or in progress, {len(waiting)} waiting"]
    for g in grants:
        lines.append(
            f"  {g['cluster']}/{g['node']} ({g['pool'] or '-'}): {g['state']}, granted "
            f"{ts(g['granted_at'])}, holds until {ts(g['expires_at'])}"
        )
    for w in waiting:
        lines.append(
            f"  {w['cluster']}/{w['node']} ({w['pool'] or '-'}) waits since {ts(w['since'])}:"
        )
        lines.extend(f"    {b['reason']}: {b['message']}" for b in w["blockers"])
    return lines


def _owners(
    args: argparse.Namespace, config: ConfigSummary | None, store: Store
) -> list[dict[str, Any]] | None:
    """Each cluster's owner among the replicas (PostgreSQL); None on SQLite (one daemon)."""
    from healer.store.leases import owners_report

    names = [c.name for c in config.clusters] if config is not None else []
    rows = owners_report(store, names)
    if rows is None or args.cluster is None:
        return rows
    return [row for row in rows if row["cluster"] == args.cluster]


def _blocking_alerts(args: argparse.Namespace, store: Store) -> dict[str, list[str]]:
    """Blocking alerts firing now, per cluster (they pause remediation and reboots there)."""
    from healer.planner.alert_blocks import AlertBlocks

    blocks = AlertBlocks(store=store)
    now = timeline(state_dir_for(args))
    clusters = sorted({b.cluster for b in blocks.blocks(args.cluster)})
    return {c: list(names) for c in clusters if (names := blocks.active(c, now))}
