"""The state directory as a daemon holds it: one writer at a time, private to its owner.

One daemon per state directory. Two would both decide for the same nodes: one machine destroyed
twice, two replacements created (issue 10). So a daemon (``healer run``, the lab) takes an
exclusive ``flock`` on ``healer.lock`` in the directory before it opens anything else there,
and keeps it while it runs. The kernel drops the lock when the process ends, however it ends
(SIGKILL included), so a restart after a crash takes it at once; the file stays, holding the
pid of the last holder, which a refused daemon names. Nothing else takes the lock: the
commands (``status``, ``history``, ``pause``, ``remediate`` ...) read the database, and what
they ask of the daemon they write there for it to act on; they never decide anything themselves.

What healer keeps there is private: the directory 0700, the files in it 0600, whatever the umask
it was started with. The daemon creates them so (its umask is 077, like the unit's ``UMask=``)
and narrows wider modes it finds at start (``state.mode_narrowed``). Subdirectories keep their
own rules (a cluster's keys: :mod:`healer.provisioning.keystore`, which refuses a key others can
read rather than hide that it was exposed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from pathlib import Path
from types import TracebackType

import structlog

from healer.errors import StateError

log = structlog.get_logger("healer.store")

LOCK_FILE = "healer.lock"
DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_UMASK = 0o077
# The holder writes its pid just after it takes the lock; a daemon refused in between waits
# this long for it before saying the pid is unknown.
PID_WAIT = 1.0
_PID_POLL = 0.02


class StateLocked(StateError):
    """Another process holds the state directory's lock."""

    def __init__(self, state_dir: Path, lock_file: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "a process whose pid it has not written yet"
        stop = f"`kill {pid}`" if pid is not None else f"`fuser {lock_file}` shows it"
        super().__init__(
            f"another healer daemon ({who}) is running on the state directory {state_dir}: it "
            f"holds the lock {lock_file}. One daemon per state directory, or both would act on "
            f"the same nodes. Stop that one first (`systemctl stop healer`, or {stop}), or give "
            "this one a state directory of its own (--state-dir). Commands such as `healer "
            "status` and `healer pause` work while it runs"
        )
        self.state_dir = state_dir
        self.lock_file = lock_file
        self.pid = pid


class StateDirLock:
    """The exclusive lock on a state directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path, *, pid_wait: float = PID_WAIT) -> StateDirLock:
        """Take the lock of ``state_dir`` (which must exist) or raise :class:`StateLocked` at
        once, naming the holder's pid. The descriptor is not inherited by child processes:
        a lock left to a child would outlive the daemon."""
        path = state_dir / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, FILE_MODE)
        except OSError as exc:
            raise StateError(
                f"{path}: cannot open the state directory's lock file: {exc.strerror}. The "
                f"daemon's user must own {state_dir} and the files in it"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd, wait=pid_wait)
            os.close(fd)
            raise StateLocked(state_dir, path, pid) from None
        except OSError as exc:
            os.close(fd)
            raise StateError(f"{path}: cannot lock the state directory: {exc.strerror}") from exc
        mine = f"{os.getpid()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine, 0)
        return cls(state_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def settle(self) -> list[tuple[Path, int, int]]:
        """Say so (``state.claimed``) and narrow the modes found (:func:`make_private`): the
        part of a claim that logs, once the daemon's logging is set up."""
        log.info(
            "state.claimed", state_dir=str(self.state_dir), lock=str(self.path), pid=os.getpid()
        )
        return make_private(self.state_dir)

    def release(self) -> None:
        """Let the lock go (closing the descriptor drops it). The file stays: removing it would
        let a daemon that opened it just before lock an inode nobody else sees."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> StateDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def is_claimed(state_dir: Path, *, locks: Path = Path("/proc/locks")) -> bool | None:
    """Whether a daemon (or the lab) holds ``state_dir`` now, seen without touching the lock:
    taking it, even shared and for an instant, could refuse a daemon starting at that moment.
    Linux lists every flock in /proc/locks by device and inode. None: cannot tell."""
    try:
        st = (state_dir / LOCK_FILE).stat()
    except FileNotFoundError:
        return False  # no daemon ever ran here
    except OSError:
        return None
    try:
        table = locks.read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:131075 0 EOF" (device major:minor in hex)
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[5].count(":") != 2:
            continue
        major, minor, inode = fields[5].split(":")
        with contextlib.suppress(ValueError):
            if (int(major, 16), int(minor, 16), int(inode)) == (
                os.major(st.st_dev),
                os.minor(st.st_dev),
                st.st_ino,
            ):
                return True
    return False


def _holder(fd: int, *, wait: float) -> int | None:
    """The pid in the lock file; the holder may be between taking the lock and writing it."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(_PID_POLL)


def make_private(state_dir: Path) -> list[tuple[Path, int, int]]:
    """Narrow the modes of ``state_dir`` (to 0700) and of the entries directly in it (no group
    or other bits: 0600 for a file); ``(path, was, now)`` for each one changed, each logged
    (``state.mode_narrowed``). Symbolic links are left alone; one that cannot be changed (not
    ours) is logged (``state.mode_not_narrowed``) and left to the database to report."""
    changed: list[tuple[Path, int, int]] = []
    entries = [state_dir]
    with contextlib.suppress(OSError):
        entries += sorted(state_dir.iterdir())
    for path in entries:
        try:
            st = path.lstat()
        except FileNotFoundError:  # gone meanwhile (a side file SQLite removed)
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        was = stat.S_IMODE(st.st_mode)
        now = DIR_MODE if path == state_dir else was & ~PRIVATE_UMASK
        if was == now:
            continue
        try:
            os.chmod(path, now)
        except OSError as exc:
            log.warning(
                "state.mode_not_narrowed", path=str(path), mode=f"{was:04o}", error=exc.strerror
            )
            continue
        log.warning("state.mode_narrowed", path=str(path), was=f"{was:04o}", now=f"{now:04o}")
        changed.append((path, was, now))
    return changed


def claim(state_dir: Path, *, pid_wait: float = PID_WAIT) -> StateDirLock:
    """What a daemon does first: create ``state_dir`` (0700) if missing and take its lock.
    Raises :class:`StateLocked` when another daemon runs on it, :class:`StateError` when the
    directory cannot be used. Logs nothing (the daemon's logging may not be set up yet): call
    :meth:`StateDirLock.settle` next."""
    try:
        state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"{state_dir}: cannot create the state directory: {exc.strerror}. Create it for the "
            "daemon's user (systemd does: StateDirectory=healer), or pass --state-dir"
        ) from exc
    if not state_dir.is_dir():
        raise StateError(f"{state_dir}: the state directory is not a directory")
    return StateDirLock.acquire(state_dir, pid_wait=pid_wait)
