"""Retries of a workflow step (healer/workflow/retry.py) in virtual time: temporary errors spend
the attempt budget, an unreachable Kubernetes API does not."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.config import RetryPolicy
from healer.errors import KubeUnavailable, ProviderError, TemporaryError
from healer.workflow.retry import with_retries

T0 = 1_700_000_000.0
POLICY = RetryPolicy.model_validate({"attempts": 3, "initialDelay": 1.0, "maxDelay": 4.0})


class Script:
    """An async callable that raises the queued errors in turn, then returns "ok", recording
    the clock's time of every call, and what ``with_retries`` tells of retries and outages
    (``True`` when an outage starts, ``False`` when it ends)."""

    def __init__(self, clock: VirtualClock, errors: Sequence[BaseException]) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.calls: list[float] = []
        self.retries: list[int] = []
        self.outages: list[bool] = []

    def retried(self, attempt: int, wait: float, exc: BaseException | None) -> None:
        self.retries.append(attempt)

    def outage(self, exc: KubeUnavailable | None) -> None:
        self.outages.append(exc is not None)

    async def __call__(self) -> str:
        self.calls.append(self.clock.now() - T0)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def run(clock: VirtualClock, fn: Script) -> asyncio.Task[str]:
    task = asyncio.create_task(
        with_retries(
            fn, policy=POLICY, clock=clock, what="drain", on_retry=fn.retried, on_outage=fn.outage
        )
    )
    await clock.settle()
    return task


async def test_an_api_outage_longer_than_the_budget_is_waited_out() -> None:
    clock = VirtualClock(T0)
    outage = [KubeUnavailable("cannot reach the Kubernetes API") for _ in range(30)]
    fn = Script(clock, outage)
    with capture_logs() as logs:
        task = await run(clock, fn)
        await clock.advance(30 * POLICY.max_delay)
        assert task.done()
        assert task.result() == "ok"
    assert len(fn.calls) == 31
    gaps = [b - a for a, b in zip(fn.calls, fn.calls[1:], strict=False)]
    assert max(gaps) <= POLICY.max_delay
    # Told once when the API went away and once when it came back, not per try; and no
    # attempt spent.
    assert fn.retries == []
    assert fn.outages == [True, False]
    events = [e["event"] for e in logs]
    assert events == ["workflow.waiting_for_api", "workflow.api_reachable"]
    assert logs[1]["waited"] == pytest.approx(fn.calls[-1] - fn.calls[0], abs=0.01)


async def test_other_temporary_errors_keep_their_budget_across_outages() -> None:
    clock = VirtualClock(T0)
    down = KubeUnavailable("down")
    errors: list[BaseException] = []
    for i in range(POLICY.attempts):
        errors += [down, down, ProviderError(f"cloud outage {i}")]
    fn = Script(clock, errors)
    task = await run(clock, fn)
    await clock.advance(100 * POLICY.max_delay)
    assert task.done()
    with pytest.raises(ProviderError, match="cloud outage 2"):
        task.result()
    assert len(fn.calls) == 3 * POLICY.attempts  # every provider error counted, no outage
    assert len(fn.retries) == POLICY.attempts - 1
    # Three outages, each told once at its start and once at its end.
    assert fn.outages == [True, False] * POLICY.attempts


async def test_a_temporary_error_still_exhausts_the_attempts() -> None:
    clock = VirtualClock(T0)
    fn = Script(clock, [TemporaryError("busy")] * 10)
    task = await run(clock, fn)
    await clock.advance(100)
    with pytest.raises(TemporaryError, match="busy"):
        task.result()
    assert len(fn.calls) == POLICY.attempts


async def test_cancelling_a_step_that_waits_for_the_api_stops_it_at_once() -> None:
    clock = VirtualClock(T0)
    fn = Script(clock, [KubeUnavailable("down") for _ in range(1000)])
    task = await run(clock, fn)
    await clock.advance(60)
    assert not task.done()
    calls = len(fn.calls)
    task.cancel()
    await clock.settle()
    assert task.cancelled()
    await clock.advance(60)
    assert len(fn.calls) == calls  # nothing tried after the cancellation
    assert fn.outages == [True]  # the API did not come back
