"""A stop always completes: the sources' reconnect loop never takes a stop for an outage, and
`healer run` exits by its stop deadline whatever still runs (the real daemon with both peers gone
is tests/faults/test_stop_unreachable.py)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tenacity import AsyncRetrying

from healer.backoff import retrying
from healer.cli.run import EXIT_STOP_FORCED, STOP_DEADLINE
from healer.clock import VirtualClock
from healer.sources.reconnect import first_failure, reconnect_forever

GUARD = 5.0  # seconds a test waits for a task that should be over at once


def policy(clock: VirtualClock) -> AsyncRetrying:
    return retrying(clock, first=1.0, cap=1.0, retry_on=(OSError,), retry_result=lambda _: True)


async def stop(task: asyncio.Task[object]) -> None:
    """Cancel ``task``; it must end, cancelled, at once (not retry in virtual time for ever)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=GUARD)
    assert task in done, "the reconnect loop took the stop for an outage and retried"
    assert task.cancelled()


async def test_an_error_raised_on_the_way_out_does_not_swallow_the_stop() -> None:
    """A client's clean-up that fails while cancelled (aiomqtt's disconnect on a dead link)."""
    clock = VirtualClock()
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise OSError("the link was gone too") from None

    task = asyncio.ensure_future(
        reconnect_forever(session, policy=policy(clock), held=lambda: False)
    )
    await asyncio.sleep(0)
    await stop(task)
    assert sessions == 1


async def test_a_link_failing_as_the_stop_comes_does_not_swallow_it() -> None:
    """The MQTT session consumes and subscribes side by side; its link fails in the very tick
    the stop comes."""
    clock = VirtualClock()
    link_lost = asyncio.Event()

    async def consume() -> None:
        await link_lost.wait()
        raise OSError("disconnected during message iteration")

    async def session() -> None:
        await first_failure(consume(), asyncio.Event().wait())

    task = asyncio.ensure_future(
        reconnect_forever(session, policy=policy(clock), held=lambda: False)
    )
    await asyncio.sleep(0)
    link_lost.set()
    await stop(task)


async def test_a_stop_that_comes_with_the_brokers_answer_is_not_lost() -> None:
    """Python 3.11's ``asyncio.wait_for`` drops a cancellation that comes in the tick its future
    completes (gh-86296), and aiomqtt waits for CONNACK that way: the session then went on
    connected, and the lab's `quit` waited on it for ever. The session still has to stop."""
    clock = VirtualClock()
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def connect() -> None:
        waiting.set()
        await asyncio.wait_for(answer, timeout=10)

    async def session() -> None:
        await connect()
        await first_failure(asyncio.Event().wait(), asyncio.Event().wait())

    task = asyncio.ensure_future(
        reconnect_forever(session, policy=policy(clock), held=lambda: False)
    )
    await waiting.wait()
    await asyncio.sleep(0)  # inside wait_for
    answer.set_result(None)  # the broker's answer and the stop in the same tick
    await stop(task)


async def test_asyncio_timeout_keeps_the_stop_that_wait_for_drops() -> None:
    """Why healer bounds its waits with ``asyncio.timeout``, never ``asyncio.wait_for``: the
    same race as above, a stop in the tick the awaited answer comes, is kept by the former."""
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def bounded() -> str:
        waiting.set()
        async with asyncio.timeout(10):
            return await answer

    task = asyncio.ensure_future(bounded())
    await waiting.wait()
    await asyncio.sleep(0)
    answer.set_result("view")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=GUARD)
    assert task in done and task.cancelled()


def test_healer_has_no_asyncio_wait_for() -> None:
    # Each was a wait that a stop could pass through unnoticed (the test above): the MQTT
    # session's (through aiomqtt: reconnect.stop_if_cancelling), the planner's and `healer
    # status`'s etcd views, the key push's ssh.
    root = Path(__file__).resolve().parent.parent / "healer"
    found = [
        f"{path.relative_to(root.parent)}:{n}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\basyncio\.wait_for\(", line)
    ]
    assert found == []


async def test_an_outage_without_a_stop_is_still_retried() -> None:
    """Sessions whose side-by-side parts fail are retried: nothing is taken for a stop (on
    Python 3.11 a failing TaskGroup child would leave the task looking cancelled for good)."""
    clock = VirtualClock()
    sessions = 0

    async def link() -> None:
        if sessions <= 2:
            raise OSError("refused")
        await asyncio.Event().wait()

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        await first_failure(link(), asyncio.Event().wait())

    task = asyncio.ensure_future(
        reconnect_forever(session, policy=policy(clock), held=lambda: False)
    )
    await clock.advance(2.5)
    assert sessions == 3
    await stop(task)


# -- healer run's stop deadline (a real process: it ends with os._exit) -------------------------

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from healer.cli.run import run_until_signalled

    async def daemon(stubborn):
        print("running", flush=True)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not stubborn:
                    raise
                print("ignoring the stop", flush=True)

    stubborn = sys.argv[1] == "stubborn"
    sys.exit(run_until_signalled(daemon(stubborn), stop_deadline=float(sys.argv[2])))
    """
)


def run_and_stop(mode: str, deadline: float, signals: int = 1) -> tuple[int, float, str]:
    """Start the script, SIGTERM it ``signals`` times once it runs; (status, seconds, output)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode, str(deadline)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.2)  # the signal handlers are installed right after the task starts
        started = time.monotonic()
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        status = proc.wait(timeout=GUARD + deadline)
        return status, time.monotonic() - started, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stop_that_completes_exits_0_at_once() -> None:
    status, took, output = run_and_stop("cooperative", deadline=30.0)
    assert status == 0, output
    assert took < 2.0
    assert "daemon.stopped" in output and "daemon.stop_forced" not in output


def test_a_stop_that_hangs_exits_anyway_at_the_deadline_saying_why() -> None:
    status, took, output = run_and_stop("stubborn", deadline=1.0)
    assert status == EXIT_STOP_FORCED, output
    assert 1.0 <= took < 1.0 + GUARD
    assert "ignoring the stop" in output
    assert "daemon.stop_forced" in output and "the stop deadline passed" in output


def test_a_second_signal_cuts_the_stop_short() -> None:
    status, took, output = run_and_stop("stubborn", deadline=30.0, signals=2)
    assert status == EXIT_STOP_FORCED, output
    assert took < GUARD
    assert "a second SIGTERM" in output


def test_the_stop_deadline_comes_before_systemd_kills() -> None:
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "healer.service").read_text()
    match = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M)
    assert match, "healer.service sets TimeoutStopSec= in seconds"
    # Room to log, flush and exit before systemd's SIGKILL.
    assert int(match.group(1)) - 5 >= STOP_DEADLINE
