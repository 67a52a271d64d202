"""``healer status``: the daemon, pools with their configured sizes, nodes, workflows in flight,
pauses, breakers, blocking alerts and spare capacity, as text or JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from healer.cli.common import config_path, open_store, state_dir_for, timeline, ts
from healer.config import load_config
from healer.errors import ConfigError
from healer.store.sqlite import BREAKER_BAD_UPGRADE, NodeRow, Store


def _daemon_info(store: Store) -> dict[str, Any]:
    """The running daemon as its last status round left it in the state database."""
    info = store.get_meta("daemon")
    if not isinstance(info, dict):
        return {"running": False, "detail": "no daemon has run on this state directory"}
    age = timeline(Path(store.path).parent) - float(info.get("updated_at", 0.0))
    # Three missed status rounds: stopped or stuck, whatever the pid says.
    fresh = age <= 3 * float(info.get("status_interval", 10.0)) + 5.0
    alive = True
    try:
        os.kill(int(info.get("pid", 0)), 0)
    except ProcessLookupError:
        alive = False
    except (PermissionError, ValueError, OverflowError):
        pass  # another user's process (or no pid): the freshness decides
    return info | {"running": fresh and alive, "seconds_since_update": round(age, 1)}


def _pools(args: argparse.Namespace, nodes: list[NodeRow]) -> list[dict[str, Any]]:
    """Pools with their desired size (from the config, when one is readable) and node health."""
    desired: dict[tuple[str, str], int] = {}
    explicit = bool(args.config or os.environ.get("HEALER_CONFIG"))
    path = config_path(args)
    if explicit or Path(path).exists():
        try:
            config = load_config(path)
        except ConfigError as exc:
            if explicit:
                raise
            # The default file is optional here: say why the sizes are missing, and go on.
            print(f"note: configured pool sizes not shown: {exc}", file=sys.stderr)
        else:
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
    nodes = store.nodes(args.cluster)
    running = store.workflows(cluster=args.cluster, state="running")
    pauses = store.pauses()
    breakers = store.breakers()
    bad_upgrade = store.breakers(kind=BREAKER_BAD_UPGRADE)
    daemon = _daemon_info(store)
    pools = _pools(args, nodes)
    capacity = capacity_report(store, pools, cluster=args.cluster)
    blocking = _blocking_alerts(args, store)
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
                    "capacity": capacity,
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
    return 0


def _blocking_alerts(args: argparse.Namespace, store: Store) -> dict[str, list[str]]:
    """Blocking alerts firing now, per cluster (they pause remediation and reboots there)."""
    from healer.planner.alert_blocks import AlertBlocks

    blocks = AlertBlocks(store=store)
    now = timeline(state_dir_for(args))
    clusters = sorted({b.cluster for b in blocks.blocks(args.cluster)})
    return {c: list(names) for c in clusters if (names := blocks.active(c, now))}
