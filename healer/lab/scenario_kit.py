"""The kit every lab scenario is written with: the :class:`Context` a scenario gets (the lab
harness, the daemon's store, the cluster config, the daemon control), the thresholds it times
itself by, waiting for a condition (:func:`until`), and the :data:`Scenario` type the registry
in :mod:`healer.lab.scenarios` holds.
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
from healer.store.sqlite import DB_NAME, Store

if TYPE_CHECKING:
    from healer.app.daemon import Daemon

log = structlog.get_logger("healer.lab")

SETTLE_TIMEOUT = 90.0
POLL = 0.2
TARGET_POOL = "workers"


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
        await until(
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
            "lease_grace_s": self.harness.node_monitor.grace,
            # How late after the grace the cluster may notice (its controller's period).
            "detection_slack_s": self.harness.node_monitor.late_by,
            "ready_unknown_timeout_s": unknown,
            "reboot_timeout_s": health.reboot_timeout,
            "node_startup_timeout_s": health.node_startup_timeout,
        }

    def workflows_for(self, node: str) -> list[Any]:
        return self.store.workflows(cluster=self.cluster.name, node=node)


async def _daemon_opened_store(control: DaemonControl) -> bool:
    daemon = control.daemon
    return daemon is not None and daemon.store is not None


async def until(predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False, and a
    ``lab.settle_timeout`` warning naming ``what``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(POLL)
    log.warning("lab.settle_timeout", waited_for=what, timeout=timeout)
    return False


async def replaced(ctx: Context, node: str) -> bool:
    """Whether ``node``'s remediation is over: failed, or its replacement is Ready."""
    wfs = [w for w in ctx.workflows_for(node) if w.state != "running"]
    if not wfs:
        return False
    if wfs[-1].state == "failed":
        return True
    return wfs[-1].replacement_name in await ctx.harness.ready_nodes()


Scenario = Callable[[Context], Awaitable[dict[str, Any]]]
