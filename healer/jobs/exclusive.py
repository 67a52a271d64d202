"""Work a command does in the daemon's place (a roll, a key rotation): it holds the state
directory's lock meanwhile, so no daemon decides about the same cluster at the same time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from healer.errors import PermanentError
from healer.store.statedir import StateDirLock, StateLocked


class DaemonRunning(PermanentError):
    """A daemon holds the state directory's lock."""


@contextmanager
def exclusive(state_dir: Path, *, what: str) -> Iterator[None]:
    """Hold ``state_dir``'s lock for the block; :class:`DaemonRunning` when a daemon has it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = StateDirLock.acquire(state_dir)
    except StateLocked as exc:
        raise DaemonRunning(
            f"{what} runs in the daemon's place and needs the state directory's lock, which a "
            "daemon holds. Stop the daemon for the while (`systemctl stop healer`), run it, then "
            f"start the daemon again ({exc})"
        ) from None
    try:
        yield
    finally:
        lock.release()
