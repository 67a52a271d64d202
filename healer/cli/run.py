"""``healer run``: the daemon in the foreground until SIGTERM/SIGINT, reloading on SIGHUP."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from healer.cli.common import config_path, state_dir_for
from healer.config import load_config

log = structlog.get_logger("healer.cli")


def cmd_run(args: argparse.Namespace) -> int:
    from healer.app.daemon import Daemon
    from healer.config.warnings import config_warnings
    from healer.jobs.systemd import Notifier
    from healer.telemetry.logs import configure

    path = Path(config_path(args))
    config = load_config(path)
    configure(config.log_format)
    for warning in config_warnings(config):
        log.warning("config.warning", detail=warning)
    # Under systemd (Type=notify) this reports READY/STATUS/WATCHDOG/STOPPING; elsewhere no-op.
    notifier = Notifier.from_env()
    daemon = Daemon(
        config,
        state_dir=state_dir_for(args, config),
        dry_run=args.dry_run,
        notifier=notifier,
        config_path=path,
    )
    return run_until_signalled(daemon.run(), on_stop=notifier.stopping, on_reload=daemon.reload)


def run_until_signalled(
    coro: Coroutine[Any, Any, object],
    *,
    on_stop: Callable[[], object] | None = None,
    on_reload: Callable[[], Awaitable[object]] | None = None,
) -> int:
    """Run ``coro`` until SIGTERM/SIGINT (cancelled: workflows checkpoint and resume at the next
    start); SIGHUP calls ``on_reload`` (ExecReload= in the unit sends it)."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Future[object]] = set()

        def stop(sig: signal.Signals) -> None:
            log.info("daemon.stopping", signal=sig.name)
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
