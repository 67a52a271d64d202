"""``healer status``: the daemon, each cluster's owner (replicas on PostgreSQL), pools with their
configured sizes, nodes, workflows in flight, pauses, breakers, blocking alerts and spare
capacity, as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healer.cli.common import (
    config_path,
    daemon_info,
    open_store,
    optional_config,
    state_dir_for,
    timeline,
    ts,
)
from healer.cli.names import names_in
from healer.store.sqlite import BREAKER_BAD_UPGRADE, NodeRow, Store

if TYPE_CHECKING:
    from healer.config import HealerConfig  # loaded only when a configuration is read


def _pools(
    args: argparse.Namespace, config: HealerConfig | None, nodes: list[NodeRow]
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
    for n in nodes:
        o = n.observation
        key = (o.cluster, o.pool or "-")
        row = out.setdefault(
            key, {"cluster": key[0], "pool": key[1], "size": None, "nodes": 0, "health": {}}
        )
        row["nodes"] += 1
        row["health"][str(n.health)] = row["health"].get(str(n.health), 0) + 1
    return [out[k] for k in sorted(out)]


def cmd_status(args: argparse.Namespace) -> int:
    from healer.workflow.capacity import capacity_lines, capacity_report

    store = open_store(args)
    config, problem = optional_config(args)
    if problem is not None and Path(config_path(args)).exists():
        # The default file is optional here: say why the sizes are missing, and go on.
        print(f"note: configured pool sizes not shown: {problem}", file=sys.stderr)
    names_in(config, store).check(args.cluster)
    nodes = store.nodes(args.cluster)
    running = store.workflows(cluster=args.cluster, state="running")
    pauses = store.pauses()
    breakers = store.breakers()
    bad_upgrade = store.breakers(kind=BREAKER_BAD_UPGRADE)
    daemon = daemon_info(store)
    pools = _pools(args, config, nodes)
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
                    "nodes": [
                        {
                            "cluster": n.observation.cluster,
                            "node": n.observation.node,
                            "pool": n.observation.pool,
                            "role": str(n.observation.role),
                            "health": str(n.health),
                            "reason": n.reason,
                            "message": n.message,
                        }
                        for n in nodes
                    ],
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
    print(f"{'CLUSTER':<10} {'NODE':<32} {'POOL':<16} {'HEALTH':<10} REASON")
    for n in nodes:
        o = n.observation
        print(f"{o.cluster:<10} {o.node:<32} {o.pool or '-':<16} {n.health!s:<10} {n.reason}")
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
    args: argparse.Namespace, config: HealerConfig | None, store: Store
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
