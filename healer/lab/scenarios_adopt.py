"""Lab scenarios for adoption: healer meeting a cluster it has no record of.

``adopt``: a healthy cluster older than ``nodeStartupTimeout`` (the daemon not running while it
ages), then the daemon starts with no state database. ``adopt-zero-byte`` and ``adopt-foreign``
start it on a zero-byte ``healer.sqlite`` and on another program's SQLite database.
``lost-state``: the daemon runs, its database is deleted mid-life and it starts again.

In each, healer must adopt every node (``node.adopted``: judged by its conditions, never by its
age), say in its log and audit that this is a first start (``state.first_start``) and, watched
past ``nodeStartupTimeout`` and the condition timeouts again, remediate nothing and refuse nothing
in the name of a healthy node.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any

import structlog

from healer.lab.report import refusals, remediations
from healer.lab.scenario_kit import (
    STATE_DELETED,
    STATE_FOREIGN,
    STATE_PRESERVED,
    STATE_ZERO_BYTE,
    Context,
    Scenario,
    until,
)
from healer.store.sqlite import (
    DB_NAME,
    EMPTY_DATABASE,
    FOREIGN_DATABASE,
    NO_DATABASE,
    examine_state,
)

log = structlog.get_logger("healer.lab")

AGE_MARGIN = 2.0  # the youngest node is this much older than nodeStartupTimeout at start
WATCH_MARGIN = 3.0  # watched this much past nodeStartupTimeout + grace + condition timeout
SYNC_TIMEOUT = 30.0

# What each state action must read as in the daemon's first-start line.
FIRST_START_REASON = {
    STATE_DELETED: NO_DATABASE,
    STATE_ZERO_BYTE: EMPTY_DATABASE,
    STATE_FOREIGN: FOREIGN_DATABASE,
}


def _horizon(ctx: Context) -> float:
    t = ctx.thresholds
    return (
        t["node_startup_timeout_s"]
        + t["lease_grace_s"]
        + t["ready_unknown_timeout_s"]
        + (WATCH_MARGIN)
    )


async def _synced(ctx: Context) -> bool:
    daemon = ctx.daemon
    tracker = daemon.tracker if daemon is not None else None
    return tracker is not None and tracker.synced(ctx.cluster.name)


def _foreign_copies(ctx: Context) -> list[dict[str, Any]]:
    """The databases healer moved aside, with the tables they still hold."""
    out = []
    for path in sorted(ctx.harness.state_dir.glob(f"{DB_NAME}.foreign-*")):
        if path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out.append({"path": str(path), "tables": tables})
    return out


async def _restart_and_watch(ctx: Context, *, state: str, setup: str) -> dict[str, Any]:
    """Start the daemon afresh with ``state`` done to its database; watch; judge."""
    expected_first_start = FIRST_START_REASON.get(state)
    if ctx.preserved_state is not None:
        # The operator brought a database (`--state-dir` holding a zero-byte or foreign
        # healer.sqlite, say): the daemon starts on that one, and it is judged by what it is.
        found = examine_state(ctx.preserved_state)
        expected_first_start = found[0] if found is not None else None
        state, setup = STATE_PRESERVED, f"{setup}, on the healer.sqlite --state-dir held"
    created = await ctx.harness.node_created()
    nodes = sorted(created)
    started_at = time.time()
    ages = {n: round(started_at - c, 1) for n, c in created.items()}
    log.info("lab.injected", failure=setup, state=state, youngest_node_age_s=min(ages.values()))
    await ctx.restart_daemon(state=state)
    synced = await until(lambda: _synced(ctx), timeout=SYNC_TIMEOUT, what="cluster synced")
    horizon = _horizon(ctx)
    await asyncio.sleep(horizon)
    ready = await ctx.harness.ready_nodes()
    cluster = ctx.cluster.name
    rems = remediations(ctx.store, cluster, started_at)
    refused = refusals(ctx.store, cluster, started_at)
    adopted = sorted(
        {e.node for e in ctx.store.audit_log(cluster=cluster, event="node.adopted") if e.node}
    )
    unhealthy = [
        {"node": e.node, "reason": e.reason, "message": e.message}
        for e in ctx.store.audit_log(cluster=cluster, event="node.unhealthy", since=started_at)
    ]
    first_start = [
        {"reason": e.reason, "message": e.message}
        for e in ctx.store.audit_log(cluster="*", event="state.first_start", since=started_at)
    ]
    expectations = {
        "no_remediation": not rems and not ctx.store.workflows(cluster=cluster),
        "no_refusal_names_a_healthy_node": not [r for r in refused if r["node"] in ready],
        "all_nodes_adopted": adopted == nodes,
        "no_node_judged_unhealthy": not unhealthy,
        "first_start_logged": [f["reason"] for f in first_start]
        == ([expected_first_start] if expected_first_start else []),
        "cluster_synced": synced,
        "nodes_still_ready": set(nodes) <= ready,
        "no_machine_destroyed": not ctx.harness.cloud.destroy_log(),
        "nodes_older_than_startup_timeout": min(ages.values())
        > ctx.thresholds["node_startup_timeout_s"],
    }
    result: dict[str, Any] = {
        "injected": [{"failure": setup, "state": state, "at": started_at}],
        "node_age_at_start_s": ages,
        "watched_s": horizon,
        "adopted": adopted,
        "first_start": first_start,
        "unhealthy": unhealthy,
        "remediations": rems,
        "refusals": refused,
        "expectations": expectations,
        "since": started_at,
    }
    if expected_first_start == FOREIGN_DATABASE:
        moved = _foreign_copies(ctx)
        result["moved_aside"] = moved
        # The lab's own foreign database holds one table, songs; an operator's is kept whole.
        kept = [m["tables"] for m in moved]
        expectations["foreign_database_kept_aside"] = (
            kept == [["songs"]] if state == STATE_FOREIGN else len(kept) == 1
        )
    return result


def _adopt(state: str, setup: str) -> Scenario:
    async def scenario(ctx: Context) -> dict[str, Any]:
        # The daemon is not running: the cluster ages past nodeStartupTimeout unwatched.
        age = await ctx.harness.wait_older_than(
            ctx.thresholds["node_startup_timeout_s"] + AGE_MARGIN
        )
        log.info("lab.cluster_aged", youngest_node_age_s=round(age, 1))
        return await _restart_and_watch(ctx, state=state, setup=setup)

    return scenario


async def scenario_lost_state(ctx: Context) -> dict[str, Any]:
    """The daemon has been running; its database is deleted mid-life and it starts again."""
    await ctx.harness.wait_older_than(ctx.thresholds["node_startup_timeout_s"] + AGE_MARGIN)
    return await _restart_and_watch(ctx, state=STATE_DELETED, setup="state deleted mid-life")


SCENARIOS_ADOPT: dict[str, Scenario] = {
    "adopt": _adopt(STATE_DELETED, "start on an old cluster with no state"),
    "adopt-zero-byte": _adopt(STATE_ZERO_BYTE, "start on an old cluster, zero-byte healer.sqlite"),
    "adopt-foreign": _adopt(STATE_FOREIGN, "start on an old cluster, foreign healer.sqlite"),
    "lost-state": scenario_lost_state,
}

# These start the daemon themselves, on the old cluster they set up.
STARTS_ITS_OWN_DAEMON_ADOPT = frozenset({"adopt", "adopt-zero-byte", "adopt-foreign"})
