"""Must-show 3 of issue 13: changing a pool's image makes `healer plan` list a rolling
replacement, and `healer apply` replaces the machines one at a time through the remediation
workflow while the pool never lacks more than `maxUnavailable` running machines (nor holds more
than `maxSurge` extra ones).

The lab's world (fake API server, lab cloud, simulated kubelets) runs in the test's loop; the CLI
runs in a worker thread, as it would in another process. A watcher samples the lab cloud's
machine table and the API's Ready nodes over the whole roll.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from healer.cli.main import main
from healer.config.rollout import TAG_SPEC
from healer.lab.harness import LabHarness, LabTimings
from healer.model import TAG_POOL, Role
from healer.store.sqlite import Store

FAST = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.1)
SIZE = 3


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _config(path: Path, kubeconfig: Path, *, image: str, rollout: dict[str, int]) -> None:
    cluster = {
        "name": "demo",
        "provider": {"plugin": "lab"},
        "kubeconfig": str(kubeconfig),
        "pools": [
            {
                "name": "workers",
                "size": SIZE,
                "machine": {"size": "small", "image": image},
                "rollout": rollout,
            }
        ],
    }
    path.write_text(yaml.safe_dump({"logFormat": "json", "clusters": [cluster]}))


@contextlib.asynccontextmanager
async def lab_world(
    tmp_path: Path, roles: dict[str, Role]
) -> AsyncIterator[tuple[LabHarness, Path, list[str]]]:
    """The lab's world for cluster ``demo`` (no broker), its config path and the CLI's
    ``-c``/``--state-dir`` arguments; stopped afterwards."""
    state = tmp_path / "state"
    harness = LabHarness(
        state_dir=state, cluster="demo", timings=FAST, with_broker=False, pool_roles=roles
    )
    await harness.start()
    config = tmp_path / "healer.yaml"
    try:
        yield harness, config, ["-c", str(config), "--state-dir", str(state)]
    finally:
        await harness.stop()


def _running(harness: LabHarness) -> list[dict[str, Any]]:
    return [
        m
        for m in harness.cloud.machines()
        if m["state"] == "running" and m["tags"].get(TAG_POOL) == "workers"
    ]


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.mark.parametrize(
    ("rollout", "low", "high"),
    [
        ({"maxSurge": 0, "maxUnavailable": 1}, SIZE - 1, SIZE),  # in place, one at a time
        ({"maxSurge": 1, "maxUnavailable": 0}, SIZE, SIZE + 1),  # surge: never below size
    ],
    ids=["in-place", "surge"],
)
async def test_an_image_change_rolls_the_pool_one_machine_at_a_time(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rollout: dict[str, int],
    low: int,
    high: int,
) -> None:
    async with lab_world(tmp_path, {"workers": Role.WORKER}) as (harness, config, args):
        state = harness.state_dir
        _config(config, harness.kubeconfig, image="debian-12", rollout=rollout)
        assert await _cli("apply", *args, "--yes") == 0
        first = {m["name"] for m in _running(harness)}
        assert len(first) == SIZE
        await harness.wait_ready(SIZE, timeout=15)
        capsys.readouterr()

        _config(config, harness.kubeconfig, image="ubuntu-24.04", rollout=rollout)
        assert await _cli("plan", *args, "--detailed-exitcode") == 2
        out = capsys.readouterr().out
        rolls = [line for line in out.splitlines() if "rolling replacement" in line]
        assert sorted(line.split()[2].rstrip(":") for line in rolls) == sorted(first)
        assert all(line.strip().startswith("~ machine") for line in rolls)
        assert "ubuntu-24.04" in rolls[0]

        samples: list[tuple[int, int]] = []

        async def watch() -> None:
            while True:
                ready = await harness.ready_nodes()
                samples.append((len(_running(harness)), len(ready)))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            code = await asyncio.wait_for(_cli("apply", *args, "--yes"), timeout=90)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        out = capsys.readouterr().out
        assert code == 0, out

        after = _running(harness)
        assert len(after) == SIZE
        assert not {m["name"] for m in after} & first  # every old machine replaced
        assert {m["image"] for m in after} == {"lab-img-ubuntu-24.04"}
        assert len({m["tags"][TAG_SPEC] for m in after}) == 1
        # Over the whole roll: never fewer running machines than size - maxUnavailable, never
        # more than size + maxSurge.
        running = [r for r, _ in samples]
        assert len(samples) > 20
        assert min(running) >= low, samples
        assert max(running) <= high, samples

        # One at a time: the workflows' lifetimes do not overlap, and each went through the
        # repair workflow's steps, journalled.
        store = Store.open(state)
        try:
            flows = sorted(
                (wf for wf in store.workflows(cluster="demo") if wf.reason == "Rollout"),
                key=lambda wf: wf.started_at,
            )
            assert [wf.state for wf in flows] == ["succeeded"] * SIZE
            assert {wf.node for wf in flows} == first
            for before, nxt in itertools.pairwise(flows):
                assert before.finished_at is not None and before.finished_at <= nxt.started_at
            steps = {s["step"] for s in store.steps(flows[0].id) if s["status"] == "done"}
            assert {"cordon", "drain", "fence", "delete_node", "create_machine"} <= steps
            assert {"wait_for_join"} <= steps
            # The order the budget allows: surge (the new machine first) only with maxSurge.
            assert ("preflight" in steps) == (rollout["maxSurge"] > 0)
        finally:
            store.close()

        assert await _cli("plan", *args, "--detailed-exitcode") == 0


async def test_a_roll_killed_mid_replacement_resumes_it_first_and_then_goes_on(
    tmp_path: Path,
) -> None:
    """SIGKILL after the first replacement destroyed its old machine (the pool one short): the
    next `apply` finishes that workflow from its journal before it looks at the pool's size, so
    the pool is not refilled twice, then rolls the rest."""
    rollout = {"maxSurge": 0, "maxUnavailable": 1}
    async with lab_world(tmp_path, {"workers": Role.WORKER}) as (harness, config, args):
        _config(config, harness.kubeconfig, image="debian-12", rollout=rollout)
        assert await _cli("apply", *args, "--yes") == 0
        first = {m["name"] for m in _running(harness)}
        await harness.wait_ready(SIZE, timeout=15)

        _config(config, harness.kubeconfig, image="ubuntu-24.04", rollout=rollout)
        env = dict(os.environ, HEALER_FAILPOINTS="workflow.destroy_machine.after=kill")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "healer.cli", "apply", *args, "--yes", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await asyncio.wait_for(proc.wait(), timeout=60) == -signal.SIGKILL
        assert len(_running(harness)) == SIZE - 1  # killed with the pool one short

        created_before = len(harness.cloud.driver.ex_created_log())
        assert await _cli("apply", *args, "--yes") == 0
        after = _running(harness)
        assert len(after) == SIZE and not {m["name"] for m in after} & first
        # Exactly one new machine per old one: nothing was created to fill the short pool.
        assert len(harness.cloud.driver.ex_created_log()) - created_before == SIZE
        store = Store.open(harness.state_dir)
        try:
            flows = [wf for wf in store.workflows(cluster="demo") if wf.reason == "Rollout"]
            assert sorted(wf.state for wf in flows) == ["succeeded"] * SIZE
            # The killed one was resumed at the step whose "done" line the kill prevented (its
            # machine already destroyed: the step is safe to repeat and destroys nothing more).
            (resumed,) = store.audit_log(cluster="demo", event="rollout.resumed")
            assert resumed.reason == "destroy_machine" and resumed.node in first
        finally:
            store.close()
