"""The one clock: healer's own timeline for every decision, the wall clock only to record and
to talk to other hosts; virtual time for tests.

Why a timeline and not ``time.time()``
    Thresholds, cooldowns, hourly budgets, breaker windows, reboot grants and heartbeat windows
    are all "now minus then" comparisons. On the wall clock an NTP step (or ``date -s``) of +1 h
    expires every pending timer at once and lifts every cooldown; -1 h freezes them for an hour.
    So :meth:`Clock.now` is *healer's timeline*: seconds since the epoch at the moment the
    process started (or resumed, below), advanced by the monotonic clock. Every duration
    computed as a difference of ``now()`` values is immune to steps of the wall clock, yet the
    values still look like epoch seconds, so they are stored, compared with stored rows and
    printed as dates as before. :meth:`Clock.wall` is the wall clock itself, used only for what
    leaves the process as a date for other hosts or humans (Kubernetes timestamps healer writes,
    the join token's expiry, reboot permits' ``ts``/``expiresAt``, the webhook signature's skew
    check, the reload-time metric).

    The alternative, a separate ``Clock.monotonic()`` for every deadline and ``now()`` kept on
    the wall clock, would have changed every caller (and every stored deadline: a monotonic
    reading means nothing after a restart), and a single forgotten ``now()`` in a comparison
    would bring the bug back. With the timeline the whole daemon is safe by construction and only
    the few places that really want the wall clock ask for it.

Timestamps from other hosts (:meth:`Clock.from_wall`, :func:`to_timeline`)
    A Kubernetes ``lastTransitionTime`` or lease ``renewTime``, an MQTT ``ts``, a webhook
    ``startsAt`` are wall-clock readings of another host. Until our wall clock steps, the
    timeline equals it and they compare directly. After a step of ``d = now - wall`` we do not
    know which clock was wrong: ours before the step (then the timeline is off by ``d`` and the
    remote time belongs at ``remote + d``) or ours after it (then the timeline is right and the
    remote time belongs at ``remote``). healer takes the *later* of the two and never a time
    after ``now``: ``min(now, remote + max(0, d))``. A later start of a condition, a later
    heartbeat, a later lease renewal only ever delay a threshold, never expire it early, so a
    step can make healer slower to act but never faster. The sources convert every remote time
    this way as they read it (``kube_watch.node_events``/``lease_events``, the MQTT and webhook
    sources, the orphan sweep's machine ages).

Across a restart (:meth:`RealClock.resume`, :meth:`RealClock.checkpoint`)
    Stored times (workflow ``started_at``, audit rows behind the failed-remediation cooldown, the
    hourly budget, breaker windows and storms, blocking-alert expiries) are on the timeline, so a
    new process must continue it rather than restart it from the wall clock. The daemon writes a
    checkpoint, ``clock.json`` in the state directory (the timeline, the boot id and the
    boot-time clock), at every status round and when it stops. A new process (the daemon again,
    or a ``healer`` CLI command that compares stored times with now) resumes from it:

    * on the same boot of the host: the checkpoint plus the boot-time clock elapsed since it was
      written (``CLOCK_BOOTTIME``, which counts suspend too), so a wall-clock step while healer
      was stopped (or while it ran) changes nothing: cooldowns and budgets survive it exactly;
    * after a reboot (or where there is no boot id): ``max(wall clock, checkpoint)``, so time
      never runs backwards past what was recorded, whatever the wall clock says (after a crash
      the checkpoint can be one status round older than the last row written); a *forward*
      step while the host was down cannot be told from a long stop, and makes the stop look
      longer by the step (persisted cooldowns may end early by that much);
    * no checkpoint (first start, lost state): the wall clock.

    A timeline that drifted from the wall clock (a step during this boot) stays off until the
    host reboots; the daemon logs ``clock.stepped`` when it sees a step and ``clock.resumed``
    with the offset at start. To adopt the wall clock on purpose, stop healer, delete
    ``clock.json`` and start it: that drops the protection of the first rule for this once.

    Within one process the monotonic clock does not count a suspend or a paused VM: deadlines
    are delayed by it, never fired by it.

Deadlines (:class:`DeadlineQueue`)
    One deadline per key (a node's next re-evaluation, a node's heartbeat window), and one
    coroutine that waits on the clock for the earliest and wakes early when the set changes:
    the health tracker and the heartbeat watcher share it instead of each keeping a heap.

``VirtualClock`` keeps the same two faces: :meth:`VirtualClock.advance` moves both, and
:meth:`VirtualClock.step` moves only the wall clock, as an NTP step would. :meth:`RealClock.step`
does the same to a running daemon (the lab's ``clock-jump``): only that clock object's wall
clock moves, not the host's nor the lab world's.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

CHECKPOINT_FILE = "clock.json"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

# Resume modes, in RealClock.resumed and the daemon's clock.resumed log line.
RESUMED_FIRST = "first-start"  # no checkpoint: the wall clock
RESUMED_SAME_BOOT = "same-boot"  # checkpoint + boot-time clock elapsed since it was written
RESUMED_AFTER_REBOOT = "after-reboot"  # max(wall clock, checkpoint)
RESUMED_NONE = "not-resumed"  # a RealClock built directly (tests, tools)


class Clock(Protocol):
    def now(self) -> float:
        """healer's timeline: epoch seconds that never step. Every decision uses this."""

    def wall(self) -> float:
        """The wall clock (epoch seconds), only for what is written for other hosts or humans."""

    def from_wall(self, timestamp: float) -> float:
        """A wall-clock timestamp from another host placed on the timeline (:func:`to_timeline`)."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of this clock's time."""

    async def sleep_until(self, deadline: float) -> None:
        """Suspend the caller until ``now() >= deadline``."""


def to_timeline(remote: float, *, now: float, wall: float) -> float:
    """Where a remote wall-clock ``remote`` belongs on a timeline that reads ``now`` while the
    local wall clock reads ``wall``: the later of the two readings of a step (``remote`` and
    ``remote + now - wall``), never after ``now``. Later is the safe side: it only ever delays
    a threshold."""
    return min(now, remote + max(0.0, now - wall))


@dataclass(frozen=True)
class Checkpoint:
    """What a new process needs to continue the timeline (``clock.json``)."""

    timeline: float  # now() when written
    wall: float  # the wall clock when written (for humans reading the file)
    boot_id: str | None  # the host's boot id, if it has one
    boottime: float | None  # CLOCK_BOOTTIME when written (same boot only)


def resume_at(
    saved: Checkpoint | None, *, wall: float, boot_id: str | None, boottime: float | None
) -> tuple[float, str]:
    """Where a new process's timeline starts, and which rule said so (see the module doc)."""
    if saved is None:
        return wall, RESUMED_FIRST
    if (
        boot_id is not None
        and saved.boot_id == boot_id
        and boottime is not None
        and saved.boottime is not None
        and boottime >= saved.boottime
    ):
        return saved.timeline + (boottime - saved.boottime), RESUMED_SAME_BOOT
    return max(wall, saved.timeline), RESUMED_AFTER_REBOOT


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``; None if there is none or it is unreadable (a damaged file
    is a first start for the clock, like a damaged database is for the store)."""
    try:
        doc = json.loads(path.read_text())
        saved = Checkpoint(
            timeline=float(doc["timeline"]),
            wall=float(doc.get("wall", doc["timeline"])),
            boot_id=str(doc["boot_id"]) if doc.get("boot_id") else None,
            boottime=float(doc["boottime"]) if doc.get("boottime") is not None else None,
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not math.isfinite(saved.timeline):
        return None
    return saved


def host_boot() -> tuple[str | None, float | None]:
    """The host's boot id and boot-time clock, or Nones where the platform has none."""
    try:
        boot_id: str | None = BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        boot_id = None
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    boottime = time.clock_gettime(clock_id) if clock_id is not None else None
    return boot_id, boottime


class RealClock:
    """The production clock: ``now()`` = the start anchor + monotonic time elapsed since.

    ``wall`` and ``monotonic`` are injectable so tests can step one and not the other.
    """

    def __init__(
        self,
        *,
        start: float | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        checkpoint_path: Path | None = None,
        boot: Callable[[], tuple[str | None, float | None]] = host_boot,
        resumed: str = RESUMED_NONE,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._step = 0.0  # what step() added to the wall clock
        self._base = (wall() if start is None else start) - monotonic()
        self._checkpoint_path = checkpoint_path
        self._boot = boot
        self.resumed = resumed

    @classmethod
    def resume(
        cls,
        state_dir: Path,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot: Callable[[], tuple[str | None, float | None]] = host_boot,
    ) -> RealClock:
        """The timeline continued from ``state_dir``'s checkpoint (see the module doc).

        :meth:`checkpoint` writes to that directory; a process that only reads (the CLI) simply
        never calls it.
        """
        path = state_dir / CHECKPOINT_FILE
        boot_id, boottime = boot()
        start, how = resume_at(
            read_checkpoint(path), wall=wall(), boot_id=boot_id, boottime=boottime
        )
        return cls(
            start=start,
            wall=wall,
            monotonic=monotonic,
            checkpoint_path=path,
            boot=boot,
            resumed=how,
        )

    def now(self) -> float:
        return self._base + self._monotonic()

    def wall(self) -> float:
        return self._wall() + self._step

    def from_wall(self, timestamp: float) -> float:
        now = self.now()
        return to_timeline(timestamp, now=now, wall=self.wall())

    def step(self, seconds: float) -> None:
        """Step this clock's wall clock by ``seconds`` (the lab's ``clock-jump``): what an NTP
        step does to the host, limited to this object, so a lab's world keeps its own time."""
        self._step += seconds

    def checkpoint(self) -> Checkpoint | None:
        """Write ``clock.json`` (atomically) so the next process continues the timeline. A
        no-op for a clock not made by :meth:`resume`; an unwritable directory is the store's
        problem to report, not the clock's."""
        if self._checkpoint_path is None:
            return None
        boot_id, boottime = self._boot()
        saved = Checkpoint(
            timeline=self.now(), wall=self.wall(), boot_id=boot_id, boottime=boottime
        )
        tmp = self._checkpoint_path.with_name(self._checkpoint_path.name + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(asdict(saved)) + "\n")
            os.replace(tmp, self._checkpoint_path)
        return saved

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        # asyncio sleeps on the monotonic clock too, so this wakes when the timeline gets there.
        await asyncio.sleep(max(0.0, deadline - self.now()))


class VirtualClock:
    """A clock that only moves when a test calls :meth:`advance` (both faces) or :meth:`step`
    (the wall clock only).

    Sleepers are woken in deadline order; after each wake-up the event loop gets a chance to run
    so that work scheduled by the woken task happens "at" that instant.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._step = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._step

    def from_wall(self, timestamp: float) -> float:
        return to_timeline(timestamp, now=self._now, wall=self.wall())

    def step(self, seconds: float) -> None:
        """Step the wall clock by ``seconds``, as NTP would; the timeline does not move."""
        self._step += seconds

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    @property
    def next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def settle(self, rounds: int = 20) -> None:
        """Let ready tasks run until the loop goes quiet."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline passes, in order."""
        target = self._now + seconds
        await self.settle()
        while True:
            deadline = self.next_deadline
            if deadline is None or deadline > target:
                break
            _, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()


async def sleep_until_set(clock: Clock, deadline: float | None, event: asyncio.Event) -> None:
    """Sleep on ``clock`` until ``deadline`` (for ever if None) or until ``event`` is set,
    whichever comes first; leaves ``event`` as it is."""
    sleeper = asyncio.ensure_future(
        clock.sleep_until(deadline)
        if deadline is not None
        else asyncio.get_running_loop().create_future()
    )
    waker = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waker):
            task.cancel()
        # Not gather(): a cancellation of the caller must still propagate from here.
        await asyncio.wait({sleeper, waker})


K = TypeVar("K", bound=Hashable)


class DeadlineQueue(Generic[K]):
    """At most one deadline per key, waited for on a :class:`Clock`.

    :meth:`schedule` sets (or moves) a key's deadline and :meth:`cancel` drops it. A pending
    :meth:`due` is woken only by a deadline earlier than the one it sleeps until: a deadline
    moved later or cancelled is found stale when its old time comes, so a stream of schedules
    (a heartbeat per node, a re-check per event) costs no wake-up each. :meth:`due` returns the keys
    whose deadline has come, removed from the queue, in deadline order (then scheduling order).
    One consumer at a time; anyone may schedule.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._at: dict[K, tuple[float, int]] = {}  # key -> (deadline, sequence) that counts
        # Stale entries (moved or cancelled keys) stay until they reach the top: cheaper than
        # removing them from the middle of the heap.
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._sleeping_until: float | None = None  # what a pending due() waits for (inf: none)

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def when(self, key: K) -> float | None:
        """The key's deadline, or None if it has none."""
        entry = self._at.get(key)
        return entry[0] if entry is not None else None

    def schedule(self, key: K, at: float) -> None:
        """Set ``key``'s deadline to ``at``, replacing the one it had."""
        if self.when(key) == at:
            return
        seq = next(self._seq)
        self._at[key] = (at, seq)
        heapq.heappush(self._heap, (at, seq, key))
        if self._sleeping_until is not None and at < self._sleeping_until:
            self._changed.set()

    def cancel(self, key: K) -> None:
        """Drop ``key``'s deadline, if it has one."""
        self._at.pop(key, None)

    def earliest(self) -> float | None:
        """The earliest deadline, or None when the queue is empty."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def overdue(self, now: float) -> float:
        """How many seconds the earliest deadline is past ``now`` (0.0 if none is)."""
        earliest = self.earliest()
        return 0.0 if earliest is None else max(0.0, now - earliest)

    def pop_due(self, now: float) -> list[tuple[float, K]]:
        """Remove and return the (deadline, key) pairs due at ``now``, earliest first."""
        fired: list[tuple[float, K]] = []
        while (earliest := self.earliest()) is not None and earliest <= now:
            at, _, key = heapq.heappop(self._heap)
            del self._at[key]
            fired.append((at, key))
        return fired

    async def due(self) -> list[tuple[float, K]]:
        """Wait until at least one deadline has come; return those due, removed (:meth:`pop_due`)."""
        while True:
            fired = self.pop_due(self._clock.now())
            if fired:
                return fired
            self._changed.clear()
            earliest = self.earliest()
            self._sleeping_until = math.inf if earliest is None else earliest
            try:
                await sleep_until_set(self._clock, earliest, self._changed)
            finally:
                self._sleeping_until = None

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._at.get(heap[0][2]) != (heap[0][0], heap[0][1]):
            heapq.heappop(heap)
