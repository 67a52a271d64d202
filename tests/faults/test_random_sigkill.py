"""SIGKILL the daemon at random points of its remediations, restart it, and check after every
round that nothing was lost or done twice: no orphaned machine, no machine destroyed twice, no
workflow stuck or failed, the cloud holding exactly what the pools ask for.

Each round breaks one or two workers (a crash: powered off; a hang: running but silent; or two
crashes at once, two workflows in flight) under a real `healer run`, then kills it at a random
*kill point*: either a failpoint (``workflow.<step>.before|after``, healer/failpoints.py) or a
random moment while a workflow is running (SIGKILL from outside after a random delay, so
anywhere: mid-step, mid-HTTP call, mid-transaction). The daemon restarted after a kill may be
killed again at a later point of the same workflows; the last restart lets them finish, within
a bound. 10 kill points in `make test`, 200 in `make faults`; the seed is printed (replay with
HEALER_FAULTS_SEED=<seed>).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healer.store.sqlite import RUNNING, SUCCEEDED, Store, WorkflowRecord
from healer.workflow.runner import STEPS
from tests.faults.world import Daemon, World, fault_config, lab_world, scale, until

SIZES = {"control-plane": 1, "workers": 4}
KILLS = scale(10, 200)
# After the last restart of a round, its workflows must be done within this: else "stuck".
FINISH_BOUND = 60.0
FAILPOINT_BOUND = 30.0  # a daemon given a failpoint on the workflow's path reaches it by then
TIMER_WINDOW = 2.0  # a timed kill lands up to this long after a workflow is seen running
AGAIN = 0.5  # the chance that a restarted daemon is killed again in the same round
FAILURES = ("crash", "crash", "hang", "crash2")


def config(kubeconfig: Path) -> dict[str, Any]:
    # Hundreds of deliberate failures in a row: the hourly budget and the breaker wide open,
    # and room for two workflows at once.
    return fault_config(
        kubeconfig,
        sizes=SIZES,
        remediation={
            "maxPerHour": 100_000,
            "maxInFlight": 2,
            "maxUnhealthy": "75%",
            "maxUnhealthyPerZone": "100%",
        },
        breaker={"maxNewUnhealthy": 100_000, "maxFailures": 100_000},
    )


@dataclass
class Tally:
    seed: int
    kills: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0
    workflows: int = 0
    orphaned: list[str] = field(default_factory=list)
    doubly_deleted: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wrong_count: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "kill_points": len(self.kills),
            "by_failpoint": sum(1 for k in self.kills if k["how"] == "failpoint"),
            "by_timer": sum(1 for k in self.kills if k["how"] == "timer"),
            "steps_killed_in": dict(Counter(k["step"] for k in self.kills)),
            "rounds": self.rounds,
            "workflows": self.workflows,
            "orphaned": len(self.orphaned),
            "doubly_deleted": len(self.doubly_deleted),
            "stuck": len(self.stuck),
            "failed": len(self.failed),
            "machine_count_wrong": len(self.wrong_count),
            "seconds": round(time.monotonic() - self.started, 1),
        }


def running(store: Store, ids: set[str] | None = None) -> list[WorkflowRecord]:
    return [w for w in store.workflows(state=RUNNING) if ids is None or w.id in ids]


def later_failpoint(rng: random.Random, at: str | None) -> str:
    """A failpoint at or after step ``at`` of the replace order (any step when None)."""
    start = STEPS.index(at) if at in STEPS else 0
    step = rng.choice(STEPS[start:])
    return f"workflow.{step}.{rng.choice(('before', 'after'))}=kill"


async def one_round(world: World, store: Store, rng: random.Random, tally: Tally) -> None:
    harness = world.harness
    ready = await harness.ready_nodes()
    workers = [n for n in harness.pool_nodes("workers") if n in ready]
    failure = rng.choice(FAILURES)
    targets = rng.sample(workers, 2 if failure == "crash2" else 1)
    before = {w.id for w in store.workflows()}
    ours: set[str] = set()

    def mine() -> set[str]:
        ours.update(w.id for w in store.workflows() if w.id not in before and w.node in targets)
        return ours

    how = rng.choice(("failpoint", "timer"))
    daemon = await world.daemon(
        failpoints=later_failpoint(rng, None) if how == "failpoint" else None
    )
    for node in targets:
        if failure == "hang":
            harness.hang(node)
        else:
            harness.crash(node)

    # Kill, restart, perhaps kill again at a later point: each pass is one kill point.
    while len(tally.kills) < KILLS:
        if not await kill_point(daemon, how, rng, lambda: running(store, mine())):
            break
        in_flight = running(store, mine())
        tally.kills.append(
            {
                "round": tally.rounds,
                "failure": failure,
                "how": how,
                "point": daemon.failpoints or "timer",
                "step": in_flight[0].step,
            }
        )
        # Whatever the moment, nothing may have been destroyed twice.
        repeats = _repeats(world)
        assert not repeats, f"destroyed twice after kill {tally.kills[-1]}: {repeats}"
        if len(tally.kills) >= KILLS or rng.random() >= AGAIN:
            daemon = await world.daemon()
            break
        how = rng.choice(("failpoint", "timer"))
        fp = later_failpoint(rng, in_flight[0].step) if how == "failpoint" else None
        daemon = await world.daemon(failpoints=fp)

    if daemon.failpoints is not None:
        # Its failpoint was never reached (every workflow already past it): restart it clean.
        await daemon.kill()
        daemon = await world.daemon()
    try:
        await until(
            lambda: len(mine()) >= len(targets) and not running(store, mine()),
            FINISH_BOUND,
            "the round's workflows to finish",
            tail=daemon.tail,
        )
    except AssertionError:
        tally.stuck.extend(sorted(w.id for w in running(store, mine())) or ["(never started)"])
    for wf_id in sorted(mine()):
        wf = store.workflow(wf_id)
        if wf is not None and wf.state != SUCCEEDED and wf.state != RUNNING:
            tally.failed.append(f"{wf_id} {wf.state}: {wf.error}")
    tally.workflows += len(mine())
    expected = sum(SIZES.values())
    if not tally.stuck:
        with contextlib.suppress(AssertionError):  # what is wrong is counted just below
            await until(lambda: _settled(world, expected), FINISH_BOUND, "the pools whole")
    inv = await world.invariants(store)
    tally.orphaned.extend(inv["orphaned_machines"])
    tally.doubly_deleted.extend(inv["double_deletions"])
    if not tally.stuck and inv["machines_in_cloud"] != inv["nodes_expected"]:
        tally.wrong_count.append(inv | {"round": tally.rounds})
    rc, _ = await daemon.stop()
    assert rc == 0, daemon.tail()
    tally.rounds += 1


async def kill_point(
    daemon: Daemon,
    how: str,
    rng: random.Random,
    in_flight: Callable[[], list[WorkflowRecord]],
) -> bool:
    """Kill ``daemon`` at its failpoint or at a random moment of a running workflow; True if it
    died while a workflow of the round was still running (a kill point), False if not."""
    if how == "failpoint":
        try:
            rc = await daemon.wait(FAILPOINT_BOUND)
        except AssertionError:
            return False
        assert rc == -signal.SIGKILL, f"exited with {rc}, not at its failpoint\n{daemon.tail()}"
    else:
        await until(
            lambda: bool(in_flight()), FAILPOINT_BOUND, "a workflow to start", tail=daemon.tail
        )
        await asyncio.sleep(rng.uniform(0.0, TIMER_WINDOW))
        assert daemon.running, f"the daemon died by itself\n{daemon.tail()}"
        if not in_flight():
            return False  # the remediation was quicker than the timer
        await daemon.kill()
    return bool(in_flight())


async def _settled(world: World, expected: int) -> bool:
    machines = world.harness.cloud.machines()
    ready = await world.harness.ready_nodes()
    return len(machines) == expected and {m["name"] for m in machines} <= ready


def _repeats(world: World) -> list[str]:
    return sorted(
        {d["node_id"] for d in world.harness.cloud.destroy_log() if d["repeat"] or not d["existed"]}
    )


async def test_random_sigkill_across_workflows(
    tmp_path: Path, fault_rng: random.Random, fault_seed: int
) -> None:
    tally = Tally(seed=fault_seed)
    async with lab_world(tmp_path, sizes=SIZES, config=config) as world:
        store = world.store()
        try:
            while len(tally.kills) < KILLS and not tally.stuck:
                await one_round(world, store, fault_rng, tally)
        finally:
            store.close()
            summary = tally.summary()
            print(json.dumps(summary, indent=2))
            (tmp_path / "kills.json").write_text(json.dumps(tally.kills, indent=1))
    assert summary["kill_points"] >= KILLS, summary
    assert not tally.orphaned, (summary, tally.orphaned)
    assert not tally.doubly_deleted, (summary, tally.doubly_deleted)
    assert not tally.stuck, (summary, tally.stuck)
    assert not tally.failed, (summary, tally.failed)
    assert not tally.wrong_count, (summary, tally.wrong_count)
