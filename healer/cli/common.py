"""What several commands share: where the config and the state are, the state database opened
as its owner, the daemon's timeline and how times are shown."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from healer.errors import ConfigError

if TYPE_CHECKING:
    from healer.config import HealerConfig
    from healer.config.summary import ConfigSummary
    from healer.store.sqlite import Store

DEFAULT_CONFIG = "/etc/healer/healer.yaml"
DEFAULT_STATE_DIR = "/var/lib/healer"
# `healer status` lists every node up to this many; past it, the nodes that are not healthy
# (`--nodes` lists them all): at fleet size the pool table's counts are the overview.
STATUS_NODES_LISTED = 100

T = TypeVar("T")


def ts(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def state_dir_for(
    args: argparse.Namespace, config: HealerConfig | ConfigSummary | None = None
) -> Path:
    given = state_dir_given(args)
    if given is not None:
        return given
    if config is not None and config.state_dir is not None:
        return config.state_dir
    return Path(DEFAULT_STATE_DIR)


def state_dir_given(args: argparse.Namespace) -> Path | None:
    """The state directory named by ``--state-dir`` or ``HEALER_STATE_DIR``, which win over the
    configuration's ``stateDir``; None when neither names one."""
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    if os.environ.get("HEALER_STATE_DIR"):
        return Path(os.environ["HEALER_STATE_DIR"])
    return None


def config_path(args: argparse.Namespace) -> str:
    return str(getattr(args, "config", None) or os.environ.get("HEALER_CONFIG") or DEFAULT_CONFIG)


def as_state_owner(state_dir: Path) -> None:
    """Run as root, become the owner of the state directory before touching the database.

    SQLite creates its -wal and -shm files as whoever opens the database first; a root-owned
    one in /var/lib/healer would lock the daemon (User=healer) out of its own state. Dropping
    to the directory's owner is what `sudo -u healer healer ...` does, done for the operator.
    """
    if os.geteuid() != 0 or not state_dir.is_dir():
        return
    st = state_dir.stat()
    if st.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)


def optional_config(args: argparse.Namespace) -> tuple[HealerConfig | None, str | None]:
    """The configuration for a command that can do without it: (config, None) when one is
    readable; (None, why) when the default file is missing or unusable. A file named with
    ``-c`` or HEALER_CONFIG must load: its error is raised (exit 2). Read once per command
    (kept on ``args``): opening the store and the command itself both ask."""
    return _kept(args, "_config_read", _read_config)


def config_summary(args: argparse.Namespace) -> tuple[ConfigSummary | None, str | None]:
    """What the read-only commands need of the configuration (:mod:`healer.config.summary`),
    as :func:`optional_config` would give it (the same errors, raised or returned), without
    building the models when the file's summary can be read without them. Kept on ``args``."""
    return _kept(args, "_config_summary", _read_summary)


def _kept(args: argparse.Namespace, key: str, read: Callable[[argparse.Namespace], T]) -> T:
    """``read(args)``, once per command: kept on ``args`` under ``key``."""
    if not hasattr(args, key):
        setattr(args, key, read(args))
    got: T = getattr(args, key)
    return got


def _read_summary(args: argparse.Namespace) -> tuple[ConfigSummary | None, str | None]:
    path, _, missing = _config_file(args)
    if missing is not None:
        return None, missing
    from healer.config.summary import read_summary, summary_of

    light = read_summary(path)
    if light is not None:
        return light, None
    config, problem = optional_config(args)  # etcd or PostgreSQL state, or an error to report
    return (None if config is None else summary_of(config)), problem


def _config_file(args: argparse.Namespace) -> tuple[str, bool, str | None]:
    """The configuration file, whether it was named (``-c``, HEALER_CONFIG) and, when it is the
    default one and missing, why there is none."""
    explicit = bool(getattr(args, "config", None) or os.environ.get("HEALER_CONFIG"))
    path = config_path(args)
    if not explicit and not Path(path).exists():
        return path, explicit, f"no configuration at {path}"
    return path, explicit, None


def _read_config(args: argparse.Namespace) -> tuple[HealerConfig | None, str | None]:
    path, explicit, missing = _config_file(args)
    if missing is not None:
        return None, missing
    from healer.config import load_config  # pydantic: only when there is a file to read

    try:
        return load_config(path), None
    except ConfigError as exc:
        if explicit:
            raise
        return None, str(exc)


def open_store(args: argparse.Namespace) -> Store:
    """The daemon's existing state database (a command that only reads refuses to create one):
    the configuration's PostgreSQL database when it has a ``state`` section, else the SQLite
    file of the state directory."""
    from healer.store.sqlite import DB_NAME, Store

    state_dir = state_dir_for(args)
    shared = configured_store(args, state_dir)
    if shared is not None:
        return shared
    as_state_owner(state_dir)
    if not Store.has_state(state_dir):
        raise ConfigError(
            f"no healer state in {state_dir} (looked for {DB_NAME}); pass --state-dir or set "
            "HEALER_STATE_DIR to the daemon's state directory"
        )
    return Store.open(state_dir)


def configured_store(args: argparse.Namespace, state_dir: Path) -> Store | None:
    """The configuration's PostgreSQL state (``state.url``, docs/state-backends.md), opened;
    None when the state is the SQLite file of ``state_dir``."""
    summary, _ = config_summary(args)  # a `state` section is always loaded in full
    config = summary.full if summary is not None else None
    if config is None or config.state is None:
        return None
    from healer.store.backends import open_store as open_backend

    return open_backend(state_dir, config.state)


def daemon_info(store: Store) -> dict[str, Any]:
    """The running daemon as its last status round left it in the state database."""
    info = store.get_meta("daemon")
    if not isinstance(info, dict):
        return {"running": False, "detail": "no daemon has run on this state directory"}
    age = timeline(Path(store.path).parent) - float(info.get("updated_at", 0.0))
    # Three missed status rounds: stopped or stuck, whatever the pid says.
    fresh = age <= 3 * float(info.get("status_interval", 10.0)) + 5.0
    alive = True
    try:
        os.kill(int(info.get("pid", 0)), 0)
    except ProcessLookupError:
        alive = False
    except (PermissionError, ValueError, OverflowError):
        pass  # another user's process (or no pid): the freshness decides
    return info | {"running": fresh and alive, "seconds_since_update": round(age, 1)}


def timeline(state_dir: Path) -> float:
    """Now on the daemon's timeline (healer/clock.py), which is what it stores times on: the
    wall clock may have stepped since."""
    from healer.clock import RealClock

    return RealClock.resume(state_dir).now()
