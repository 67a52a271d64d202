"""What the agent asks of the machine: files, commands and systemd's shutdown jobs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess

log = logging.getLogger("healer-agent")


def read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError:
        return []


def run_command(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, timeout=120, check=False).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("cannot run %s: %s", argv, exc)
        return 127


def sentinel_says_reboot(argv: list[str], timeout: float) -> bool:
    """kured's ``--reboot-sentinel-command``: exit status 0 means a reboot is required, any other
    means it is not. No shell; its own session, so a timeout kills all it started. One that
    cannot start or outlives ``timeout`` is logged and counts as "not required": a broken check
    must not reboot machines."""
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
    except OSError as exc:
        log.error("reboot sentinel %s cannot run (%s): taken as not required", argv, exc)
        return False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.error("reboot sentinel %s killed after %gs: taken as not required", argv, timeout)
        return False
    log.debug("reboot sentinel %s exited with %d", argv, code)
    return code == 0


def shutdown_is_reboot() -> bool | None:
    """True if systemd is shutting down for a reboot, False for a poweroff/halt, None if it
    cannot tell (no systemd): then the caller assumes a reboot, the safe side for healer."""
    try:
        out = subprocess.run(
            ["systemctl", "list-jobs", "--no-legend", "--no-pager"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    jobs = out.stdout
    if "reboot.target" in jobs or "kexec.target" in jobs:
        return True
    if "poweroff.target" in jobs or "halt.target" in jobs:
        return False
    return None if "shutdown.target" in jobs else False
