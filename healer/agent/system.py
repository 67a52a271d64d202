"""What the agent asks of the machine: files, commands and systemd's shutdown jobs."""

from __future__ import annotations

import logging
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
