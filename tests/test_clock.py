"""The clock: a timeline that wall-clock steps do not move (healer/clock.py), remote timestamps
placed on it, its continuation across restarts, and the tracker + planner in virtual time with
the wall clock stepped under them."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from healer.clock import (
    CHECKPOINT_FILE,
    RESUMED_AFTER_REBOOT,
    RESUMED_FIRST,
    RESUMED_SAME_BOOT,
    Checkpoint,
    DeadlineQueue,
    RealClock,
    VirtualClock,
    read_checkpoint,
    resume_at,
    to_timeline,
)
from healer.kube.records import LeaseInfo, NodeInfo
from healer.model import EventKind
from healer.planner.planner import FAILED_COOLDOWN
from healer.sources.kube_watch import lease_events, node_events
from healer.store.sqlite import FAILED
from tests.test_planner import Rig

T = 1_700_000_000.0
HOUR = 3600.0


class Fake:
    """A settable time source."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


# -- remote timestamps onto the timeline ---------------------------------------------------

TO_TIMELINE = [
    # (remote, now, wall, expected, why)
    (T - 30, T, T, T - 30, "no step: the remote time as it is"),
    (T + 5, T, T, T, "a remote clock ahead of ours: never after now"),
    (T - 30, T, T + HOUR, T - 30, "our wall clock stepped +1h: the timeline was right"),
    (T - 30, T, T - HOUR, T, "our wall clock stepped -1h: the later reading, capped at now"),
    (T - 2 * HOUR, T, T - HOUR, T - HOUR, "-1h, an old remote time: moved later by the step"),
]


@pytest.mark.parametrize(("remote", "now", "wall", "expected", "why"), TO_TIMELINE)
def test_to_timeline(remote: float, now: float, wall: float, expected: float, why: str) -> None:
    assert to_timeline(remote, now=now, wall=wall) == expected, why


def test_a_remote_time_is_never_placed_earlier_than_either_reading_of_a_step() -> None:
    for d in (-HOUR, -1.0, 0.0, 1.0, HOUR):
        for age in (0.0, 10.0, 2 * HOUR):
            remote = T - age
            placed = to_timeline(remote, now=T, wall=T - d)
            assert placed <= T
            assert placed >= min(T, remote) and placed >= min(T, remote + d)


# -- RealClock: monotonic timeline, injectable wall clock ---------------------------------


def test_real_clock_durations_follow_the_monotonic_clock_not_the_wall_clock() -> None:
    wall, mono = Fake(T), Fake(100.0)
    clock = RealClock(wall=wall, monotonic=mono)
    assert clock.now() == T and clock.wall() == T
    wall.value += HOUR  # the host's clock steps
    assert clock.now() == T and clock.wall() == T + HOUR
    mono.value += 5.0  # five real seconds pass
    wall.value += 5.0
    assert clock.now() == T + 5.0
    clock.step(-2 * HOUR)  # a step of this clock object only (the lab's clock-jump)
    assert clock.now() == T + 5.0 and clock.wall() == T - HOUR + 5.0
    # A remote time stamped "now" by a correct host: placed at now, not an hour back.
    assert clock.from_wall(T + 5.0) == T + 5.0


async def test_real_clock_sleep_until_is_on_the_timeline() -> None:
    clock = RealClock(wall=lambda: time.time() + HOUR)  # a wall clock an hour ahead
    deadline = clock.now() + 0.05
    started = time.monotonic()
    await clock.sleep_until(deadline)
    assert 0.04 <= time.monotonic() - started < 1.0
    assert clock.now() >= deadline


# -- across restarts -----------------------------------------------------------------------

RESUME = [
    # (saved, wall, boot_id, boottime, expected, how)
    (None, T, "b1", 50.0, T, RESUMED_FIRST),
    # Same boot, wall stepped +1h while stopped: the timeline continues by the real 20 s.
    (Checkpoint(T, T, "b1", 30.0), T + HOUR + 20, "b1", 50.0, T + 20, RESUMED_SAME_BOOT),
    # Same boot, wall stepped -1h: the same.
    (Checkpoint(T, T, "b1", 30.0), T - HOUR + 20, "b1", 50.0, T + 20, RESUMED_SAME_BOOT),
    # After a reboot: the wall clock, but never before the checkpoint.
    (Checkpoint(T, T, "b1", 30.0), T + 600, "b2", 5.0, T + 600, RESUMED_AFTER_REBOOT),
    (Checkpoint(T, T, "b1", 30.0), T - HOUR, "b2", 5.0, T, RESUMED_AFTER_REBOOT),
    # No boot id on this platform: as after a reboot.
    (Checkpoint(T, T, None, None), T - HOUR, None, None, T, RESUMED_AFTER_REBOOT),
    # A boot-time clock that went backwards is not the same boot (a copied state directory).
    (Checkpoint(T, T, "b1", 30.0), T - 60, "b1", 10.0, T, RESUMED_AFTER_REBOOT),
]


@pytest.mark.parametrize(("saved", "wall", "boot_id", "boottime", "expected", "how"), RESUME)
def test_resume_at(
    saved: Checkpoint | None,
    wall: float,
    boot_id: str | None,
    boottime: float | None,
    expected: float,
    how: str,
) -> None:
    assert resume_at(saved, wall=wall, boot_id=boot_id, boottime=boottime) == (expected, how)


def test_a_restart_continues_the_timeline_through_a_step_while_stopped(tmp_path: Path) -> None:
    wall, mono, boottime = Fake(T), Fake(10.0), Fake(10.0)

    def boot() -> tuple[str | None, float | None]:
        return "boot-1", boottime()

    first = RealClock.resume(tmp_path, wall=wall, monotonic=mono, boot=boot)
    assert first.resumed == RESUMED_FIRST
    mono.value += 100.0
    boottime.value += 100.0
    first.checkpoint()
    recorded = first.now()  # e.g. a failed remediation's finished_at
    assert recorded == T + 100.0
    # Stopped; 30 real seconds pass and NTP steps the wall clock an hour ahead.
    mono.value += 30.0
    boottime.value += 30.0
    wall.value += 130.0 + HOUR
    second = RealClock.resume(tmp_path, wall=wall, monotonic=mono, boot=boot)
    assert second.resumed == RESUMED_SAME_BOOT
    assert second.now() == pytest.approx(recorded + 30.0)  # the cooldown saw 30 s, not 1 h
    # The CLI resumes the same way and reads the same now (it never writes the checkpoint).
    cli = RealClock.resume(tmp_path, wall=wall, monotonic=mono, boot=boot)
    assert cli.now() == pytest.approx(second.now())


def test_after_a_reboot_time_never_runs_back_past_the_checkpoint(tmp_path: Path) -> None:
    clock = RealClock.resume(tmp_path, wall=Fake(T), monotonic=Fake(0.0), boot=lambda: ("a", 1.0))
    clock.checkpoint()
    saved = read_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert saved is not None and saved.timeline == T and saved.boot_id == "a"
    again = RealClock.resume(
        tmp_path, wall=Fake(T - HOUR), monotonic=Fake(0.0), boot=lambda: ("b", 1.0)
    )
    assert again.resumed == RESUMED_AFTER_REBOOT and again.now() == T


@pytest.mark.parametrize("content", ["", "{not json", '{"timeline": "soon"}', "[]", "null"])
def test_a_damaged_checkpoint_is_a_first_start(tmp_path: Path, content: str) -> None:
    (tmp_path / CHECKPOINT_FILE).write_text(content)
    clock = RealClock.resume(tmp_path, wall=Fake(T), monotonic=Fake(0.0))
    assert clock.resumed == RESUMED_FIRST and clock.now() == T


def test_checkpoint_file_is_plain_json(tmp_path: Path) -> None:
    clock = RealClock.resume(tmp_path, wall=Fake(T), monotonic=Fake(7.0), boot=lambda: ("x", 9.0))
    clock.step(HOUR)
    clock.checkpoint()
    doc = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    assert doc == {"timeline": T, "wall": T + HOUR, "boot_id": "x", "boottime": 9.0}


# -- the Kubernetes source maps remote times with the wall clock it read -----------------


def _node(since: float) -> NodeInfo:
    return NodeInfo(
        name="w-1",
        labels={},
        unschedulable=False,
        conditions={"Ready": ("Unknown", since)},
        taints=(),
        created_at=T - 86_400,
        resource_version="1",
    )


def _since(events: list, condition: str = "Ready") -> float:  # type: ignore[type-arg]
    for ev in events:
        if ev.kind is EventKind.CONDITION and ev.condition == condition:
            return float(ev.since)
        if ev.conditions and condition in ev.conditions:
            return float(ev.conditions[condition][1])
    raise AssertionError(f"no {condition} in {events}")


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        (T, T - 30),  # no step
        (T + HOUR, T - 30),  # our wall clock +1h: the API's time is right on the timeline
        (T - HOUR, T),  # -1h: the later reading, capped at now (threshold counts from now)
    ],
)
def test_node_events_place_last_transition_time_on_the_timeline(
    wall: float, expected: float
) -> None:
    events = node_events(cluster="c", current=_node(T - 30), previous=None, now=T, wall=wall)
    assert _since(events) == expected
    # An unchanged lastTransitionTime is not news, however the mapping came out.
    assert node_events(cluster="c", current=_node(T - 30), previous=_node(T - 30), now=T) == []


def test_lease_renewals_are_placed_on_the_timeline() -> None:
    lease = LeaseInfo(name="w-1", holder="w-1", renew_time=T - 3, duration=40, resource_version="1")
    [beat] = lease_events(cluster="c", current=lease, previous_renew=None, now=T, wall=T - HOUR)
    assert beat.at == T  # after a -1h step a renewal cannot look an hour older than it is
    [beat] = lease_events(cluster="c", current=lease, previous_renew=None, now=T, wall=T + HOUR)
    assert beat.at == T - 3


# -- tracker + planner in virtual time: a step fires nothing and lifts nothing -----------


@pytest.fixture
async def rig(tmp_path: Path):
    r = Rig(tmp_path)
    tasks = [asyncio.create_task(r.tracker.run())]
    yield r
    for t in tasks:
        t.cancel()
    r.store.close()


def _step_everything(rig: Rig, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Step the wall clock for the clock object *and* for any code that would read the
    process's wall clock directly, so a stray time.time() in a decision would show."""
    rig.clock.step(seconds)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


async def test_a_wall_clock_step_fires_no_pending_threshold(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.cluster()
    t0 = rig.clock.now()
    await rig.fail("w-1")  # Ready=Unknown, threshold 5 s
    await rig.clock.advance(2.0)
    _step_everything(rig, monkeypatch, +HOUR)
    await rig.clock.advance(2.9)
    assert rig.started == []
    assert rig.refusals() == []
    _step_everything(rig, monkeypatch, -HOUR)
    await rig.clock.advance(0.05)
    assert rig.started == []
    await rig.clock.advance(0.1)  # t0 + 5.05: the real threshold
    [wf] = rig.started
    assert wf.node == "w-1" and wf.started_at == pytest.approx(t0 + 5.0, abs=0.1)


async def test_a_wall_clock_step_lifts_no_failed_remediation_cooldown(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.cluster()
    await rig.fail("w-1")
    await rig.clock.advance(6.0)
    [wf] = rig.started
    now = rig.clock.now()
    rig.store.update_workflow(wf.with_(state=FAILED, error="boom", finished_at=now, updated_at=now))
    await rig.planner.on_workflow_finished(rig.store.workflow(wf.id))  # type: ignore[arg-type]
    _step_everything(rig, monkeypatch, FAILED_COOLDOWN + HOUR)
    await rig.clock.advance(30.0)  # many planner rechecks after the step
    assert len(rig.started) == 1
    assert ("w-1", "RemediationFailedRecently") in rig.refusals()


# -- nothing that decides reads the wall clock directly ----------------------------------

ROOT = Path(__file__).resolve().parent.parent
WALL_READS = re.compile(r"\btime\.time\(\)|\bdatetime\.(?:now|utcnow|today)\(|\bdate\.today\(")
# The clock itself; the lab's simulated world (its own time); the node agent (another host);
# X.509 validity (certificates are wall-clock dates by definition).
ALLOWED = (
    "healer/clock.py",
    "healer/lab/",
    "healer/agent/",
    "healer/provisioning/pki.py",
    "healer/provisioning/etcd_access.py",  # the etcd client certificate's validity
    "healer/store/sqlite.py",  # db_now(): the database's own clock, as PostgreSQL's now()
)


def test_no_decision_code_reads_the_wall_clock_directly() -> None:
    offenders = []
    for path in sorted([*(ROOT / "healer").rglob("*.py"), *(ROOT / "providers").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(ALLOWED) or rel.startswith("providers/lab/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if WALL_READS.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == [], "use healer.clock (now() for decisions, wall() to record):\n" + (
        "\n".join(offenders)
    )


async def test_the_lab_clock_jump_command_steps_only_the_daemons_wall_clock() -> None:
    from types import SimpleNamespace

    from healer.lab.main import _command

    clock = RealClock()
    control = SimpleNamespace(daemon=SimpleNamespace(clock=clock))
    before = clock.now()
    assert await _command(None, ["clock-jump", "3600"], control=control)  # type: ignore[arg-type]
    assert clock.wall() - clock.now() == pytest.approx(HOUR, abs=0.5)
    assert clock.now() - before < 0.5
    assert abs(time.time() - clock.now()) < 0.5  # the process's (and the lab world's) time


# -- the deadline queue --------------------------------------------------------------------

# (operations, advance by, expected due (deadline offset, key) in order, why)
DEADLINES = [
    ([("schedule", "a", 10)], 9, [], "not yet"),
    ([("schedule", "a", 10)], 10, [(10, "a")], "due at its deadline, inclusive"),
    ([("schedule", "a", 10), ("schedule", "b", 5)], 20, [(5, "b"), (10, "a")], "earliest first"),
    ([("schedule", "a", 10), ("schedule", "a", 30)], 20, [], "a later deadline replaces"),
    ([("schedule", "a", 30), ("schedule", "a", 10)], 10, [(10, "a")], "an earlier one too"),
    ([("schedule", "a", 10), ("cancel", "a", 0)], 20, [], "cancelled"),
    ([("cancel", "a", 0), ("schedule", "a", 10)], 10, [(10, "a")], "cancel of nothing: no-op"),
    ([("schedule", "a", 5), ("schedule", "b", 5)], 5, [(5, "a"), (5, "b")], "ties: set order"),
    ([("schedule", "a", -5)], 0, [(-5, "a")], "in the past: due at once"),
]


@pytest.mark.parametrize(("ops", "advance", "expected", "why"), DEADLINES)
async def test_deadline_queue(
    ops: list[tuple[str, str, float]],
    advance: float,
    expected: list[tuple[float, str]],
    why: str,
) -> None:
    clock = VirtualClock(T)
    queue: DeadlineQueue[str] = DeadlineQueue(clock)
    for op, key, offset in ops:
        if op == "schedule":
            queue.schedule(key, T + offset)
        else:
            queue.cancel(key)
    fired: list[tuple[float, str, float]] = []  # deadline, key, when it was handed out

    async def consume() -> None:
        while True:
            fired.extend((at, key, clock.now()) for at, key in await queue.due())

    consumer = asyncio.create_task(consume())
    await clock.advance(advance)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    # Each handed out at its deadline (or at once, when that had passed), and gone from the queue.
    assert fired == [(T + o, k, max(T, T + o)) for o, k in expected], why
    assert not any(key in queue for _, key in expected), why
    assert clock.next_deadline is None  # the consumer left no sleeper behind


async def test_deadline_queue_hands_out_what_is_due_together_in_one_batch() -> None:
    clock = VirtualClock(T)
    queue: DeadlineQueue[str] = DeadlineQueue(clock)
    queue.schedule("b", T + 5)
    queue.schedule("a", T + 3)
    queue.schedule("c", T + 9)
    await clock.advance(6)
    assert await queue.due() == [(T + 3, "a"), (T + 5, "b")]
    assert len(queue) == 1 and queue.when("c") == T + 9


async def test_deadline_queue_wakes_for_a_deadline_set_while_it_waits() -> None:
    clock = VirtualClock(T)
    queue: DeadlineQueue[str] = DeadlineQueue(clock)
    queue.schedule("late", T + 100)
    waiter = asyncio.create_task(queue.due())
    await clock.advance(1)
    queue.schedule("soon", T + 5)  # earlier than what it sleeps for: it must wake for this one
    await clock.advance(4)
    assert waiter.done() and waiter.result() == [(T + 5, "soon")]
    assert queue.when("late") == T + 100 and queue.earliest() == T + 100


async def test_deadline_queue_with_nothing_scheduled_waits_for_a_schedule() -> None:
    clock = VirtualClock(T)
    queue: DeadlineQueue[str] = DeadlineQueue(clock)
    waiter = asyncio.create_task(queue.due())
    await clock.advance(1000)
    assert not waiter.done() and clock.next_deadline is None
    queue.schedule("a", clock.now())
    await clock.settle()
    assert waiter.done() and waiter.result() == [(T + 1000, "a")]


def test_deadline_queue_overdue_is_the_lateness_of_the_earliest() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue(VirtualClock(T))
    assert queue.overdue(T) == 0.0
    queue.schedule("a", T + 10)
    queue.schedule("b", T + 20)
    assert queue.overdue(T + 5) == 0.0
    assert queue.overdue(T + 15) == 5.0
    queue.cancel("a")
    assert queue.overdue(T + 15) == 0.0 and queue.earliest() == T + 20
    assert queue.pop_due(T + 25) == [(T + 20, "b")] and len(queue) == 0


async def test_deadline_queue_cancelled_waiter_leaves_no_sleeper_behind() -> None:
    clock = VirtualClock(T)
    queue: DeadlineQueue[str] = DeadlineQueue(clock)
    queue.schedule("a", T + 10)
    waiter = asyncio.create_task(queue.due())
    await clock.settle()
    assert clock.next_deadline == T + 10
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert clock.next_deadline is None
