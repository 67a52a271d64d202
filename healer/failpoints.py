"""Fault injection for crash tests, in the manner of etcd's gofail.

``HEALER_FAILPOINTS="workflow.drain.after=kill,workflow.cordon.before=raise"`` makes the named
points kill the process with SIGKILL (no cleanup, like a power cut), raise, or ``stop`` it with
SIGSTOP (a paused process, which goes on where it stopped on SIGCONT). Unset in production:
a lookup in an empty dict.
"""

from __future__ import annotations

import os
import signal

_ACTIONS = {"kill", "raise", "stop"}


class FailpointError(RuntimeError):
    pass


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action = action or "kill"
        if action not in _ACTIONS:
            raise ValueError(f"HEALER_FAILPOINTS: unknown action {action!r} for {name!r}")
        points[name] = action
    return points


_points = _parse(os.environ.get("HEALER_FAILPOINTS", ""))


def hit(name: str) -> None:
    action = _points.get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "raise":
        raise FailpointError(f"failpoint {name}")
