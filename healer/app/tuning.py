"""Intervals of the daemon's loops: production keeps the defaults, the lab shortens them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tuning:
    """Intervals the lab shortens; production keeps the defaults."""

    recheck_interval: float = 15.0
    join_poll_interval: float = 2.0
    watch_timeout: float = 60.0
    renew_check: float = 1.0
    request_poll: float = 1.0  # how often the daemon looks for `healer remediate` requests
    status_interval: float = 10.0  # STATUS= to systemd, the status `healer status` shows
    startup_timeout: float = 60.0  # READY=1 waits this long for sources at most
    stall_after: float = 30.0  # the watchdog calls a part stuck after this many seconds
    # Probes of a state database that took no write: the first wait, then doubling up to this.
    state_probe_first: float = 1.0
    state_probe_cap: float = 30.0
    # Heartbeats that change no verdict are written together this often (and on the way out):
    # a crash loses at most this much of the nodes' last-heartbeat times (docs/operations.md).
    heartbeat_flush_interval: float = 5.0
    event_batch: int = 500  # events the consumer takes at most per store transaction
    extra: dict[str, Any] = field(default_factory=dict)
