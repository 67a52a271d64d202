"""Two daemons on one state directory (issue 10, must-show 1): the second `healer run` exits 2
within 2 s naming the first one's pid and the lock file, touching nothing; the first goes on
alone (a crashed node is replaced once, nothing destroyed twice), the commands keep working
beside it, and after a SIGKILL of the first a new daemon takes the state at once.

Before the lock, both daemons started a workflow for the same node 2 ms apart: one machine
destroyed twice, two replacements created (healer/store/statedir.py).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from healer.store.sqlite import SUCCEEDED
from healer.store.statedir import LOCK_FILE
from tests.faults.world import lab_world, scale, until

REFUSED_WITHIN = 2.0  # seconds from spawn to exit, interpreter start included
ATTEMPTS = scale(1, 5)  # second daemons tried while the first runs
BOUND = 60.0


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "healer.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30.0)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_two_daemons_on_one_state_dir(tmp_path: Path) -> None:
    async with lab_world(tmp_path) as world:
        first = await world.daemon()
        await first.ready()
        lock_file = world.state / LOCK_FILE
        assert lock_file.read_text().strip() == str(first.pid)

        for attempt in range(ATTEMPTS):
            started = time.monotonic()
            second = await world.daemon(log=world.state / f"second-{attempt}.log")
            code = await second.wait(10.0)
            took = time.monotonic() - started
            said = second.tail()
            print(f"second daemon {second.pid}: exit {code} after {took:.2f}s")
            assert code == 2, said
            assert took < REFUSED_WITHIN, f"refused after {took:.2f}s\n{said}"
            assert f"pid {first.pid}" in said and str(lock_file) in said, said
            assert "Traceback" not in said
            assert not second.logged("daemon.ready")
        assert first.running, first.tail()
        assert lock_file.read_text().strip() == str(first.pid)

        # The commands work beside the daemon: they read the database, never the lock.
        state = str(world.state)
        code, out = await cli("status", "--state-dir", state)
        assert code == 0 and "NOT RUNNING" not in out, out
        code, out = await cli("history", "--state-dir", state)
        assert code == 0, out

        # The first alone heals a crash: one workflow, nothing destroyed twice.
        target = world.harness.pool_nodes("workers")[0]
        world.harness.crash(target)
        store = world.store()
        try:

            def replaced() -> bool:
                return any(wf.state == SUCCEEDED for wf in store.workflows(node=target))

            await until(replaced, BOUND, f"{target} to be replaced", tail=first.tail)
            assert len(store.workflows(node=target)) == 1
            inv = await world.invariants(store)
            assert inv["double_deletions"] == [], inv
        finally:
            store.close()

        # SIGKILL: the kernel drops the lock with the process; a restart takes it at once.
        await first.kill()
        third = await world.daemon()
        await third.ready()
        assert lock_file.read_text().strip() == str(third.pid)
        assert third.logged("state.claimed")
        code, took = await third.stop()
        assert code == 0, third.tail()
