"""Lab scenarios: inject one failure, wait until the daemon has dealt with it, judge the outcome.

Each scenario names what it expects (``expectations``), so a report says plainly whether healer
did the right thing: replaced a dead node, left a rebooting one alone, refused to act on a
partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from healer.config import ClusterConfig
from healer.lab.harness import LabHarness
from healer.lab.report import invariants, refusals, remediations
from healer.store.sqlite import DB_NAME, Store

if TYPE_CHECKING:
    from healer.app import Daemon

log = structlog.get_logger("healer.lab")

SETTLE_TIMEOUT = 90.0
POLL = 0.2
TARGET_POOL = "workers"
PARTITION_FRACTION = 0.6
OUTAGE_SECONDS = 10.0


class DaemonControl(Protocol):
    """The lab's daemon as a scenario sees it: started, stopped and restarted on demand."""

    @property
    def daemon(self) -> Daemon | None:
        """The running daemon (None while stopped)."""

    async def start(self) -> None:
        """Start the daemon on the lab's state directory (no-op if it runs)."""

    async def stop(self) -> None:
        """Stop the daemon as SIGTERM would (no-op if it is stopped)."""


# What a restart does to the state directory's database first (see Context.restart_daemon).
STATE_KEPT = "keep"
STATE_DELETED = "delete"
STATE_ZERO_BYTE = "zero-byte"
STATE_FOREIGN = "foreign"
STATE_PRESERVED = "preserved"  # the database the state directory held when the lab started
PRESERVED_SUFFIX = ".lab-preserved"


def preserve_state(state_dir: Path) -> Path | None:
    """Keep the state directory's database (and its side files) out of the way, untouched, for
    a scenario that starts the daemon itself: the lab opens its own view of the store before
    the scenario runs, and must not be the one that finds (and converts) what the operator put
    there. Returns where it went, or None when there was none."""
    path = state_dir / DB_NAME
    if not path.exists():
        return None
    kept = path.with_name(path.name + PRESERVED_SUFFIX)
    for suffix in ("", "-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(kept.with_name(kept.name + suffix))
    return kept


@dataclass
class Context:
    harness: LabHarness
    store: Store
    cluster: ClusterConfig
    control: DaemonControl
    # The database the state directory held when the lab started (see preserve_state).
    preserved_state: Path | None = None

    @property
    def daemon(self) -> Daemon | None:
        return self.control.daemon

    async def restart_daemon(self, *, state: str = STATE_KEPT) -> None:
        """Stop the daemon, do ``state`` to its database, start it again; ``self.store`` is
        reopened on whatever database the new daemon uses.

        ``delete`` removes ``healer.sqlite`` (and its WAL files), ``zero-byte`` leaves an empty
        file in its place, ``foreign`` a SQLite database of some other program, ``preserved``
        puts back the database the state directory held when the lab started.
        """
        await self.control.stop()
        self.store.close()
        state_dir = self.harness.state_dir
        if state != STATE_KEPT:
            for suffix in ("", "-wal", "-shm", "-journal"):
                (state_dir / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
        if state == STATE_ZERO_BYTE:
            (state_dir / DB_NAME).write_bytes(b"")
        elif state == STATE_FOREIGN:
            with contextlib.closing(sqlite3.connect(state_dir / DB_NAME)) as db:
                db.execute("CREATE TABLE songs (title TEXT, artist TEXT)")
                db.execute("INSERT INTO songs VALUES ('Blue Monday', 'New Order')")
                db.commit()
        elif state == STATE_PRESERVED:
            if self.preserved_state is None:
                raise ValueError("the state directory held no database to put back")
            for suffix in ("", "-wal", "-shm", "-journal"):
                side = self.preserved_state.with_name(self.preserved_state.name + suffix)
                if side.exists():
                    side.rename(state_dir / f"{DB_NAME}{suffix}")
        elif state not in (STATE_KEPT, STATE_DELETED):
            raise ValueError(f"unknown state action {state!r}")
        await self.control.start()
        # The daemon opens (and judges) the database first: opened here before it, the lab's own
        # store would create it or move a foreign one aside, and the daemon would see neither.
        await _until(
            lambda: _daemon_opened_store(self.control), timeout=30.0, what="daemon store open"
        )
        self.store = Store.open(state_dir)

    @property
    def thresholds(self) -> dict[str, float]:
        health = self.cluster.health_for(TARGET_POOL)
        unknown = next(
            (
                c.timeout
                for c in health.unhealthy_conditions
                if (c.type, c.status) == ("Ready", "Unknown")
            ),
            math.inf,
        )
        return {
            "lease_grace_s": self.harness.timings.lease_grace,
            "ready_unknown_timeout_s": unknown,
            "reboot_timeout_s": health.reboot_timeout,
            "node_startup_timeout_s": health.node_startup_timeout,
        }

    def workflows_for(self, node: str) -> list[Any]:
        return self.store.workflows(cluster=self.cluster.name, node=node)


async def _daemon_opened_store(control: DaemonControl) -> bool:
    daemon = control.daemon
    return daemon is not None and daemon.store is not None


async def _until(predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(POLL)
    log.warning("lab.settle_timeout", waited_for=what, timeout=timeout)
    return False


async def _replaced(ctx: Context, node: str) -> bool:
    wfs = [w for w in ctx.workflows_for(node) if w.state != "running"]
    if not wfs:
        return False
    if wfs[-1].state == "failed":
        return True
    return wfs[-1].replacement_name in await ctx.harness.ready_nodes()


async def _single_node_replaced(
    ctx: Context, inject: Callable[[str], Any], failure: str, expected_detection: float
) -> dict[str, Any]:
    target = ctx.harness.pool_nodes(TARGET_POOL)[0]
    injected_at = time.time()
    log.info("lab.injected", node=target, failure=failure)
    result = inject(target)
    if asyncio.iscoroutine(result):
        await result
    await _until(lambda: _replaced(ctx, target), timeout=SETTLE_TIMEOUT, what=f"{target} replaced")
    rems = [
        r for r in remediations(ctx.store, ctx.cluster.name, injected_at) if r["node"] == target
    ]
    ready = await ctx.harness.ready_nodes()
    for r in rems:
        r["failure_injected_at"] = injected_at
        r["expected_start_at"] = injected_at + expected_detection
        r["start_delay_s"] = round(r["started_at"] - r["expected_start_at"], 3)
        r["replacement_ready"] = r["replacement"] in ready
    old = ctx.harness.machine(target)
    expectations = {
        "remediated_once": len(rems) == 1,
        "succeeded": bool(rems) and rems[-1]["result"] == "succeeded",
        "replacement_ready": bool(rems) and rems[-1]["replacement_ready"],
        "old_machine_gone": old is None,
        "started_within_1s_of_threshold": bool(rems) and abs(rems[0]["start_delay_s"]) <= 1.0,
    }
    return {
        "injected": [{"node": target, "failure": failure, "at": injected_at}],
        "remediations": rems,
        "expectations": expectations,
        "since": injected_at,
    }


async def scenario_crash(ctx: Context) -> dict[str, Any]:
    t = ctx.thresholds
    return await _single_node_replaced(
        ctx, ctx.harness.crash, "crash", t["lease_grace_s"] + t["ready_unknown_timeout_s"]
    )


async def scenario_hang(ctx: Context) -> dict[str, Any]:
    t = ctx.thresholds
    return await _single_node_replaced(
        ctx, ctx.harness.hang, "hang", t["lease_grace_s"] + t["ready_unknown_timeout_s"]
    )


async def scenario_bad_upgrade(ctx: Context) -> dict[str, Any]:
    return await _single_node_replaced(
        ctx, ctx.harness.bad_upgrade, "bad-upgrade", ctx.thresholds["reboot_timeout_s"]
    )


async def scenario_provider_outage(ctx: Context) -> dict[str, Any]:
    t = ctx.thresholds
    ctx.harness.provider_outage(OUTAGE_SECONDS + t["lease_grace_s"] + t["ready_unknown_timeout_s"])
    out = await _single_node_replaced(
        ctx,
        ctx.harness.crash,
        "crash during a provider outage",
        t["lease_grace_s"] + t["ready_unknown_timeout_s"],
    )
    out["provider_outage_s"] = OUTAGE_SECONDS
    return out


async def scenario_reboot(ctx: Context) -> dict[str, Any]:
    target = ctx.harness.pool_nodes(TARGET_POOL)[0]
    injected_at = time.time()
    downtime = ctx.harness.timings.reboot_downtime
    log.info("lab.injected", node=target, failure="reboot", downtime=downtime)
    await ctx.harness.reboot(target, downtime=downtime, upgrade=True)
    # Watch past the reboot timeout: a planned reboot that comes back is never remediated.
    horizon = ctx.thresholds["reboot_timeout_s"] + 3.0
    await asyncio.sleep(horizon)
    back = target in await ctx.harness.ready_nodes()
    rems = remediations(ctx.store, ctx.cluster.name, injected_at)
    return {
        "injected": [
            {"node": target, "failure": "reboot", "at": injected_at, "downtime_s": downtime}
        ],
        "remediations": rems,
        "expectations": {"no_remediation": not rems, "node_back_ready": back},
        "since": injected_at,
    }


async def scenario_partition(ctx: Context) -> dict[str, Any]:
    pool = ctx.harness.pool_nodes(TARGET_POOL)
    cut = pool[: math.ceil(len(pool) * PARTITION_FRACTION)]
    injected_at = time.time()
    log.info("lab.injected", failure="partition", nodes=",".join(cut))
    ctx.harness.partition(cut)
    t = ctx.thresholds
    horizon = t["lease_grace_s"] + t["ready_unknown_timeout_s"] + 4.0
    await asyncio.sleep(horizon)
    refused = refusals(ctx.store, ctx.cluster.name, injected_at)
    log.info("lab.healing_partition", nodes=",".join(cut))
    ctx.harness.heal(cut)

    async def all_back() -> bool:
        return set(cut) <= await ctx.harness.ready_nodes()

    back = await _until(all_back, timeout=30.0, what="partitioned nodes back")
    rems = remediations(ctx.store, ctx.cluster.name, injected_at)
    return {
        "injected": [{"node": n, "failure": "partition", "at": injected_at} for n in cut],
        "partitioned_fraction": len(cut) / len(pool),
        "remediations": rems,
        "refusals": refused,
        "expectations": {
            "no_remediation": not rems,
            "refusal_recorded": any(r["reason"] == "TooManyUnhealthyInPool" for r in refused),
            "nodes_back_after_heal": back,
        },
        "since": injected_at,
    }


Scenario = Callable[[Context], Awaitable[dict[str, Any]]]

SCENARIOS: dict[str, Scenario] = {
    "crash": scenario_crash,
    "hang": scenario_hang,
    "reboot": scenario_reboot,
    "bad-upgrade": scenario_bad_upgrade,
    "partition": scenario_partition,
    "provider-outage": scenario_provider_outage,
}


# Scenarios that start the daemon themselves (``await ctx.control.start()``), after setting up
# the world it wakes up to (a cluster older than nodeStartupTimeout, say). For the others the
# daemon runs before the scenario begins.
STARTS_ITS_OWN_DAEMON: set[str] = set()


async def run_scenario(name: str, ctx: Context) -> dict[str, Any]:
    started = time.time()
    result = await SCENARIOS[name](ctx)
    since = result.pop("since")
    result.setdefault("refusals", refusals(ctx.store, ctx.cluster.name, since))
    ready = await ctx.harness.ready_nodes()
    result["invariants"] = invariants(
        cluster=ctx.cluster,
        machines=ctx.harness.cloud.machines(include_terminated=True),
        destroy_log=ctx.harness.cloud.destroy_log(),
        ready_nodes=ready,
        store=ctx.store,
    )
    ok = all(result["expectations"].values()) and result["invariants"]["ok"]
    return {
        "scenario": name,
        "cluster": ctx.cluster.name,
        "ok": ok,
        "thresholds": ctx.thresholds,
        "started_at": started,
        "finished_at": time.time(),
        "duration_s": round(time.time() - started, 2),
        **result,
    }


# The day-one safety scenarios live in modules of their own, which import Context from here.
from healer.lab.scenarios_adopt import SCENARIOS_ADOPT  # noqa: E402
from healer.lab.scenarios_breaker import SCENARIOS_BREAKER  # noqa: E402
from healer.lab.scenarios_capacity import SCENARIOS_CAPACITY  # noqa: E402
from healer.lab.scenarios_clock import SCENARIOS_CLOCK  # noqa: E402
from healer.lab.scenarios_provenance import SCENARIOS_PROVENANCE  # noqa: E402
from healer.lab.scenarios_zone import SCENARIOS_ZONE  # noqa: E402

for _more in (
    SCENARIOS_ADOPT,
    SCENARIOS_PROVENANCE,
    SCENARIOS_CAPACITY,
    SCENARIOS_ZONE,
    SCENARIOS_BREAKER,
    SCENARIOS_CLOCK,
):
    SCENARIOS.update(_more)
