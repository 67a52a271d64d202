"""Whether the state database takes writes: a full disk, a read-only database or an I/O error.

A failed write is not a crash. The store maps SQLite's ``SQLITE_FULL``, ``SQLITE_READONLY`` and
``SQLITE_IOERR`` to :class:`~healer.errors.StateUnwritable` (:func:`unwritable`), which the layers
above catch, and tells :class:`WriteHealth`. From that write on, an *episode* is open:

* it is logged once (``state.unwritable``) and counted (``healer_state_write_failures_total`` for
  every failed write, ``healer_state_writable`` 0 while it lasts);
* the planner decides nothing for any cluster (``StateUnwritable``), as for an unreachable API;
  the daemon's /healthz answers 503 with the reason;
* the audit rows recorded meanwhile are held here, in order and bounded, and written when the
  database takes writes again (``Recorder``): the line and the metric go out at once; so are
  those of a batch of writes lost whole (``Store.batch``: written, then not committed). Only in a
  process that retries (:attr:`WriteHealth.retrying`, the daemon): a command's row would be lost
  with its process, so there the error goes up;
* :func:`keep_trying` probes with a write of :data:`PROBE_BYTES` on a backoff policy of the
  injected clock; the first probe that works closes the episode (``state.writable_again``).

A write that succeeds during an episode does not close it: on a nearly full disk small writes
may pass while larger ones fail, and decisions thaw only once there is room to work.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from healer.errors import StateUnwritable
from healer.telemetry.lazylog import get_logger

if TYPE_CHECKING:
    import asyncio

    from healer.clock import Clock

# asyncio, the retry policies and the metrics are imported when an episode needs them: every
# command that reads the state builds a WriteHealth, and `healer status` must start fast.

log = get_logger("healer.store")  # structlog, imported when it first logs

DISK_FULL = "DiskFull"
READ_ONLY = "ReadOnly"
IO_ERROR = "IOError"
# The stable reason of a frozen decision while the state database takes no writes.
STATE_UNWRITABLE = "StateUnwritable"

# SQLite's primary result codes (the low byte of an extended code).
_KINDS = {
    sqlite3.SQLITE_FULL: DISK_FULL,
    sqlite3.SQLITE_READONLY: READ_ONLY,
    sqlite3.SQLITE_IOERR: IO_ERROR,
}
_ADVICE = {
    DISK_FULL: "free space on the filesystem of {dir}",
    READ_ONLY: "make {path} and {dir} writable by healer's user (or remount the filesystem "
    "read-write)",
    IO_ERROR: "check the disk under {dir} (dmesg, smartctl)",
}
PROBE_BYTES = 64 * 1024  # the room a probe write needs before decisions thaw
MAX_HELD_ROWS = 10_000  # audit rows held during one episode; older ones beyond are dropped


def unwritable(exc: sqlite3.Error, path: Path) -> StateUnwritable | None:
    """The :class:`StateUnwritable` a failed write of ``path`` means, or None for any other
    database error (a constraint, a bug: those go up as they are)."""
    code = getattr(exc, "sqlite_errorcode", None)
    kind = _KINDS.get(code & 0xFF) if isinstance(code, int) else None
    if kind is None:
        return None
    advice = _ADVICE[kind].format(path=path, dir=path.parent)
    return StateUnwritable(
        f"cannot write the state database {path}: {exc} ({kind}); {advice}. healer decides "
        "nothing until it can write again, and retries by itself",
        kind=kind,
        path=str(path),
    )


class WriteHealth:
    """The episode of a state database that takes no writes: opened by the first failed write,
    closed by a probe that works (:func:`keep_trying`). One per :class:`Store`."""

    def __init__(self) -> None:
        self.problem: StateUnwritable | None = None
        # True while keep_trying runs: an episode will end here, so audit rows may wait for it.
        self.retrying = False
        self.failed_writes = 0  # in the current episode
        self._held: list[dict[str, Any]] = []
        self._dropped = 0
        # Made on first wait (asyncio.Event binds no loop at creation); set per self.problem.
        self._events: tuple[asyncio.Event, asyncio.Event] | None = None
        # healer_state_writable starts at 1 (healer.telemetry.metrics): a gauge set here would
        # import prometheus_client into every command.

    def _down_up(self) -> tuple[asyncio.Event, asyncio.Event]:
        """The events "a write failed" and "writes work", in the state of :attr:`problem`."""
        if self._events is None:
            import asyncio

            self._events = (asyncio.Event(), asyncio.Event())
            self._events[0 if self.problem is not None else 1].set()
        return self._events

    def failed(self, problem: StateUnwritable) -> None:
        """A write failed: counted every time, logged once per episode."""
        from healer.telemetry import metrics

        metrics.STATE_WRITE_FAILURES.labels(problem.kind).inc()
        self.failed_writes += 1
        if self.problem is not None:
            return
        self.problem = problem
        metrics.STATE_WRITABLE.set(0)
        if self._events is not None:
            self._events[1].clear()
            self._events[0].set()
        log.error(
            "state.unwritable",
            reason=STATE_UNWRITABLE,
            kind=problem.kind,
            path=problem.path,
            detail=str(problem),
        )

    def hold(self, row: dict[str, Any]) -> None:
        """Keep an audit row (:meth:`Store.audit`'s keyword arguments) for when writes work."""
        if len(self._held) >= MAX_HELD_ROWS:
            self._held.pop(0)
            self._dropped += 1
        self._held.append(row)

    def recovered(self) -> tuple[list[dict[str, Any]], int]:
        """Close the episode: the held rows to write, in order, and how many were dropped."""
        from healer.telemetry import metrics

        held, dropped = self._held, self._dropped
        self._held, self._dropped = [], 0
        if self.problem is not None:
            log.warning(
                "state.writable_again",
                reason="StateWritable",
                kind=self.problem.kind,
                path=self.problem.path,
                failed_writes=self.failed_writes,
                held_audit_rows=len(held),
                dropped_audit_rows=dropped,
            )
        self.problem = None
        self.failed_writes = 0
        metrics.STATE_WRITABLE.set(1)
        if self._events is not None:
            self._events[0].clear()
            self._events[1].set()
        return held, dropped

    async def wait_unwritable(self) -> StateUnwritable:
        """Until a write fails (at once when one has): the problem."""
        while self.problem is None:
            await self._down_up()[0].wait()
        return self.problem

    async def wait_writable(self) -> None:
        """Until the database takes writes (at once when it does)."""
        while self.problem is not None:
            await self._down_up()[1].wait()


OnChange = Callable[[StateUnwritable | None], Awaitable[None]]


class Store(Protocol):
    """What the probe needs of :class:`healer.store.sqlite.Store` (which imports this module)."""

    path: Path
    writes: WriteHealth

    def probe_write(self) -> None: ...

    def audit(
        self,
        *,
        at: float,
        cluster: str,
        event: str,
        reason: str,
        message: str,
        node: str | None = None,
        pool: str | None = None,
        workflow_id: str | None = None,
        evidence: dict[str, Any] | Sequence[Any] | None = None,
    ) -> None: ...


def recover(store: Store) -> None:
    """One probe: raises :class:`StateUnwritable` while the database takes no writes; when it
    does, closes the episode and writes the audit rows held meanwhile."""
    store.probe_write()
    held, dropped = store.writes.recovered()
    for n, row in enumerate(held):
        try:
            store.audit(**row)
        except StateUnwritable:
            # Full again already: the rest waits for the next episode's end.
            for rest in held[n:]:
                store.writes.hold(rest)
            raise
    if dropped:
        store.audit(
            at=held[0]["at"] if held else 0.0,
            cluster="*",
            event="state.audit_rows_dropped",
            reason=STATE_UNWRITABLE,
            message=f"{dropped} audit row(s) recorded while {store.path} took no writes were "
            f"dropped (more than {MAX_HELD_ROWS} held); the log has them",
        )


async def keep_trying(
    store: Store,
    clock: Clock,
    *,
    on_change: OnChange,
    first: float = 1.0,
    cap: float = 30.0,
) -> None:
    """Runs until cancelled: when a write fails, tell ``on_change(problem)``, probe on a capped
    exponential backoff (``first`` .. ``cap`` seconds on ``clock``) until a probe works, then
    tell ``on_change(None)``."""
    from healer.backoff import call, retrying

    store.writes.retrying = True

    async def probe() -> None:
        recover(store)

    try:
        while True:
            problem = await store.writes.wait_unwritable()
            await on_change(problem)
            policy = retrying(clock, first=first, cap=cap, jitter=0.2, retry_on=(StateUnwritable,))
            await call(policy, probe)
            await on_change(None)
    finally:
        store.writes.retrying = False
