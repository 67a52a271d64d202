"""``healer run``: the daemon in the foreground until SIGTERM/SIGINT, reloading on SIGHUP.

Before anything opens the state it claims the state directory (:mod:`healer.store.statedir`):
a second daemon on it exits 2 at once, naming the first one's pid. A directory named on the
command line (as the unit does) or in the environment is claimed before even the configuration
is read, so the refusal takes no more than the interpreter's start. Then the state database is
checked, so a damaged one stops the start with the file's name and what to do (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from healer.cli.common import config_path, state_dir_for, state_dir_given
from healer.errors import ConfigError

if TYPE_CHECKING:
    from healer.config import HealerConfig
    from healer.store.statedir import StateDirLock

log = structlog.get_logger("healer.cli")

# SIGTERM -> exit at the latest, whatever the peers do: inside systemd/healer.service's
# TimeoutStopSec=60s, so the daemon says itself why it stops late instead of being SIGKILLed
# without a word (tests/test_stop_paths.py keeps the two apart).
STOP_DEADLINE = 50.0
# The exit status of a stop that had to be forced: not 0, so it is seen (and not 2, which the
# unit's RestartPreventExitStatus= keeps for configuration errors).
EXIT_STOP_FORCED = 1


def cmd_run(args: argparse.Namespace) -> int:
    from healer.store.statedir import PRIVATE_UMASK, claim

    # What the daemon creates is its own, whatever umask it was started with (the unit sets
    # UMask=0077; a shell usually 022). Put back on return, for a caller in the same process.
    umask = os.umask(PRIVATE_UMASK)
    lock = None
    try:
        given = state_dir_given(args)
        lock = claim(given) if given is not None else None
        return _run(args, lock)
    finally:
        if lock is not None:
            lock.release()
        os.umask(umask)


def _run(args: argparse.Namespace, lock: StateDirLock | None) -> int:
    """The daemon, once its state directory is claimed (or, when only the configuration names
    it, right after reading that)."""
    from healer.config import load_config
    from healer.config.warnings import config_warnings
    from healer.store.sqlite import check_state
    from healer.store.statedir import claim
    from healer.telemetry.logs import configure

    path = Path(config_path(args))
    config = load_config(path)
    configure(config.log_format)
    for warning in config_warnings(config):
        log.warning("config.warning", detail=warning)
    state_dir = state_dir_for(args, config)
    if getattr(args, "replicas", False) and config.state is None:
        from healer.errors import ConfigError

        raise ConfigError(
            f"{path}: healer run --replicas needs a shared PostgreSQL state (state: {{url: "
            "postgresql://...}); without it each daemon has its own SQLite file and would act "
            "on the same clusters. See docs/state-backends.md"
        )
    with lock if lock is not None else claim(state_dir) as held:
        held.settle()
        check_state(state_dir)
        preflight(config, path)
        from healer.app.daemon import Daemon
        from healer.jobs.systemd import Notifier

        # Under systemd (Type=notify): READY/STATUS/WATCHDOG/STOPPING; elsewhere a no-op.
        notifier = Notifier.from_env()
        daemon = Daemon(
            config,
            state_dir=state_dir,
            dry_run=args.dry_run,
            notifier=notifier,
            config_path=path,
            replica=getattr(args, "replica_id", None),
        )
        return run_until_signalled(daemon.run(), on_stop=notifier.stopping, on_reload=daemon.reload)


def preflight(config: HealerConfig, path: Path) -> None:
    """What would otherwise fail only once the daemon runs, and less clearly: an unknown plugin
    (the same problem, and exit status, as ``healer validate``), the lab's own configuration
    given to ``run`` (it has no kubeconfig: the lab fills in its own API server's). A
    kubeconfig that cannot serve is named when the daemon connects
    (:func:`healer.kube.connection.kubeconfig_problem`), after its state is open."""
    from healer.cli.validate import plugin_problems
    from healer.share import shared

    problems = plugin_problems(config, str(path))
    if path.resolve() == shared("config", "lab.yaml").resolve():
        problems.append(
            f"{path} is the lab's configuration (no kubeconfig: the lab fills in its own): run "
            f"it with `healer lab`, which starts the API server and the machines it needs"
        )
    if problems:
        raise ConfigError("\n".join(problems))


def run_until_signalled(
    coro: Coroutine[Any, Any, object],
    *,
    on_stop: Callable[[], object] | None = None,
    on_reload: Callable[[], Awaitable[object]] | None = None,
    stop_deadline: float = STOP_DEADLINE,
) -> int:
    """Run ``coro`` until SIGTERM/SIGINT (cancelled: workflows checkpoint and resume at the next
    start); SIGHUP calls ``on_reload`` (ExecReload= in the unit sends it).

    The stop has ``stop_deadline`` seconds from the first signal; a second signal cuts it short.
    Past it the process exits anyway (:data:`EXIT_STOP_FORCED`), logging ``daemon.stop_forced``
    with what was still running: a task that will not end, a thread stuck in a blocking call
    (asyncio.run waits for those without limit). Nothing is lost by it: every workflow step is
    journalled whole before the next begins (docs/operations.md, "Stop").
    """

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Future[object]] = set()
        deadline: threading.Timer | None = None

        def stop(sig: signal.Signals) -> None:
            nonlocal deadline
            if deadline is not None:
                _exit_anyway(loop, f"a second {sig.name}", stop_deadline)
            log.info("daemon.stopping", signal=sig.name, deadline_s=stop_deadline)
            deadline = threading.Timer(
                stop_deadline, _exit_anyway, (loop, "the stop deadline passed", stop_deadline)
            )
            deadline.daemon = True
            deadline.start()
            if on_stop is not None:
                on_stop()
            task.cancel()

        def reload() -> None:
            assert on_reload is not None
            log.info("config.reload_requested", signal="SIGHUP")
            job = asyncio.ensure_future(on_reload())
            reloads.add(job)
            job.add_done_callback(reloads.discard)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        if on_reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("daemon.stopped")

    asyncio.run(main())
    return 0


def _exit_anyway(loop: asyncio.AbstractEventLoop, why: str, deadline: float) -> None:
    """End the process now, saying why and what was still running (from the stop deadline's
    timer thread, or the loop's signal handler)."""
    try:
        tasks = sorted(t.get_name() for t in asyncio.all_tasks(loop) if not t.done())
    except RuntimeError:  # the loop changed its tasks under us; the log line matters more
        tasks = []
    others = (threading.current_thread(), threading.main_thread())
    threads = sorted(t.name for t in threading.enumerate() if t not in others)
    log.error(
        "daemon.stop_forced",
        reason=why,
        deadline_s=deadline,
        tasks=tasks,
        threads=threads,
        exit_status=EXIT_STOP_FORCED,
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_STOP_FORCED)
