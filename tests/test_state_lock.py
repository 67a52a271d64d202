"""One daemon per state directory (healer/store/statedir.py): the lock, what a refused daemon
says, and that the kernel lets the lock go when its holder dies, however it dies.

The lock is an ``flock`` on an open file description, so a second descriptor in this very
process conflicts with the first just as another process would. The real-process checks hold
the lock in a small child process (no lab needed); two real `healer run` on one lab are in
tests/faults/test_two_daemons.py.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from healer.cli.main import main
from healer.errors import StateError
from healer.store.statedir import LOCK_FILE, StateDirLock, StateLocked, claim

BOUND = 10.0  # seconds any process here gets to do its part


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with StateDirLock.acquire(tmp_path) as first:
        assert first.held
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(StateLocked) as refused:
            StateDirLock.acquire(tmp_path)
        assert refused.value.pid == os.getpid()
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message
        assert str(tmp_path / LOCK_FILE) in message
        assert "--state-dir" in message
    assert not first.held
    # Released: the next one takes it, and the file names the new holder.
    StateDirLock.acquire(tmp_path).release()


def test_a_holder_that_has_not_written_its_pid_yet(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, pid not written
        with pytest.raises(StateLocked) as refused:
            StateDirLock.acquire(tmp_path, pid_wait=0.0)
        assert refused.value.pid is None
        assert "has not written yet" in str(refused.value)
    finally:
        os.close(fd)


def test_a_stale_pid_from_a_dead_holder_does_not_block(tmp_path: Path) -> None:
    """The file outlives its holder (it is never removed); only the kernel lock counts."""
    (tmp_path / LOCK_FILE).write_text("999999999\n")
    with StateDirLock.acquire(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_the_lock_is_not_inherited_by_child_processes(tmp_path: Path) -> None:
    """A child (a hook, ssh) that outlived the daemon must not keep its state locked."""
    with StateDirLock.acquire(tmp_path) as lock:
        assert lock._fd is not None
        assert not os.get_inheritable(lock._fd)


def test_claim_creates_a_private_directory(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    with claim(state):
        assert (state.stat().st_mode & 0o777) == 0o700
        assert ((state / LOCK_FILE).stat().st_mode & 0o777) == 0o600


def test_claim_refuses_a_file_in_place_of_the_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    with pytest.raises(StateError, match="cannot create the state directory"):
        claim(state)


# -- real processes ---------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from healer.store.statedir import StateDirLock
    lock = StateDirLock.acquire(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(120)
    """
)


def start_holder(state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def write_config(tmp_path: Path) -> Path:
    """A valid config; `healer run` is refused before it would read the kubeconfig."""
    path = tmp_path / "healer.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "lab",
                        "kubeconfig": str(tmp_path / "kubeconfig"),
                        "provider": {"plugin": "lab"},
                        "pools": [{"name": "workers", "size": 1}],
                    }
                ]
            }
        )
    )
    return path


def test_healer_run_on_a_held_state_dir_exits_2_at_once_naming_the_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    holder = start_holder(state)
    try:
        started = time.monotonic()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "healer.cli",
                "run",
                "-c",
                str(write_config(tmp_path)),
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
        took = time.monotonic() - started
        assert run.returncode == 2, run.stderr
        assert took < 2.0, f"refused after {took:.2f}s"
        assert f"pid {holder.pid}" in run.stderr
        assert str(state / LOCK_FILE) in run.stderr
        assert "Traceback" not in run.stderr
        # Nothing of the state was touched by the refused daemon.
        assert sorted(p.name for p in state.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait(BOUND)


def test_the_lock_is_free_at_once_after_its_holder_is_killed(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    with pytest.raises(StateLocked):
        StateDirLock.acquire(tmp_path, pid_wait=0.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait(BOUND)
    # No wait, no stale-lock cleanup: the kernel dropped it with the process.
    with StateDirLock.acquire(tmp_path, pid_wait=0.0):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_read_and_request_commands_work_while_the_state_is_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status`, `history` and `pause` go through the database, never through the lock."""
    from healer.store.sqlite import Store

    Store.open(tmp_path).close()
    holder = start_holder(tmp_path)
    try:
        assert main(["history", "--state-dir", str(tmp_path)]) == 0
        assert main(["pause", "--state-dir", str(tmp_path)]) == 0
        assert "paused *" in capsys.readouterr().out
        assert main(["status", "--state-dir", str(tmp_path)]) == 0
        assert "paused: *" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait(BOUND)


async def test_the_lab_is_refused_on_a_held_state_and_does_not_reset_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`healer lab` is a daemon too; `--reset` never deletes a state from under a running one."""
    from healer.lab.main import run_lab

    state = tmp_path / "lab-state"
    state.mkdir()
    (state / "lab-cloud.sqlite").write_text("")
    lab_config = Path(__file__).parent.parent / "config" / "lab.yaml"
    with StateDirLock.acquire(state):
        for reset in (False, True):
            code = await run_lab(
                config_path=lab_config,
                state_dir=state,
                scenario=None,
                report=None,
                kubeconfig=None,
                reset=reset,
            )
            assert code == 2
            assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert (state / "lab-cloud.sqlite").exists()
