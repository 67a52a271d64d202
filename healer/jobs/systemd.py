"""systemd integration: the sd_notify protocol (standard library only) and the supervisor that
turns the daemon's own health into READY=1, STATUS= and WATCHDOG=1.

sd_notify is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the variable
is unset and every call is a no-op, so the daemon runs the same under a terminal, in the lab and
in tests. Notification is best-effort: a failed send is logged, never raised (systemd itself
notices a service that stops talking, through the watchdog).

The watchdog is honest: :class:`Supervisor` sends ``WATCHDOG=1`` only when the supervised object
reports no liveness problem *and* the event loop woke the watchdog task on time. A daemon whose
loop is blocked, whose event consumer or tracker is stuck, or that lost track of a running
workflow stops pinging, and systemd restarts it (``WatchdogSec=`` with ``Restart=on-failure``).

The supervisor's rounds are deadlines on the injected clock (:class:`healer.clock.DeadlineQueue`),
not APScheduler jobs: APScheduler plans on the wall clock, and the status round is what notices a
step of it and reschedules APScheduler (:mod:`healer.jobs.scheduler`); a watchdog held off by a
step back would have systemd restart a healthy daemon.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import structlog

from healer.clock import Clock, DeadlineQueue, RealClock

log = structlog.get_logger("healer.jobs.systemd")

_STATUS = "status"
_WATCHDOG = "watchdog"


class Notifier:
    """Sends sd_notify messages to ``address``; a no-op when ``address`` is None."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address: str | None = None
        if address:
            if address.startswith("@"):
                # The abstract namespace: a leading NUL instead of the '@'.
                self._address = "\0" + address[1:]
            elif address.startswith("/"):
                self._address = address
            else:
                log.warning(
                    "systemd.notify_unsupported",
                    address=address,
                    detail="only AF_UNIX notify sockets are supported; notifications are off",
                )
        # WATCHDOG_PID names the process the watchdog is meant for; another process (a child
        # that inherited the environment) must not ping on its behalf.
        if watchdog_usec and (watchdog_pid is None or watchdog_pid == os.getpid()):
            self._watchdog_usec: int | None = watchdog_usec
        else:
            self._watchdog_usec = None
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ

        def number(name: str) -> int | None:
            text = env.get(name, "").strip()
            if not text:
                return None
            try:
                return int(text)
            except ValueError:
                log.warning("systemd.bad_environment", variable=name, value=text)
                return None

        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=number("WATCHDOG_USEC"),
            watchdog_pid=number("WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WatchdogSec=``, as sd_watchdog_enabled advises)."""
        if self._address is None or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2_000_000

    def send(self, *lines: str) -> bool:
        if self._address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:  # once: a missing socket would otherwise log on every ping
                log.warning("systemd.notify_failed", error=str(exc), message=lines[0])
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def status(self, status: str) -> bool:
        return self.send(*_status(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this to the reload it
        # asked for; older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status or "stopping"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> list[str]:
    if not text:
        return []
    return ["STATUS=" + " ".join(text.split())]  # one line: a newline would end the field


class Supervised(Protocol):
    def liveness(self) -> list[str]:
        """Reasons the process is not healthy right now; empty when it is."""

    def status_line(self) -> str:
        """What the daemon is doing, in one line, for ``systemctl status``."""


class Supervisor:
    """Keeps systemd informed while the daemon runs: STATUS= when it changes, WATCHDOG=1 while
    healthy. ``on_tick`` runs at every status round (the daemon publishes its status for
    `healer status` and refreshes gauges there)."""

    def __init__(
        self,
        target: Supervised,
        notifier: Notifier,
        *,
        clock: Clock | None = None,
        status_interval: float = 10.0,
        on_tick: Callable[[str], None] | None = None,
        on_liveness: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._target = target
        self._notifier = notifier
        self._clock = clock or RealClock()
        self._status_interval = status_interval
        self._on_tick = on_tick
        self._on_liveness = on_liveness
        self._last_status: str | None = None
        self._withheld = False
        self._last_ping: float | None = None  # time.monotonic() of the last watchdog round

    async def run(self) -> None:
        """A status round every ``status_interval`` and, under a systemd watchdog, a watchdog
        round every half ``WatchdogSec=``, each counted from the end of the previous one."""
        rounds: DeadlineQueue[str] = DeadlineQueue(self._clock)
        intervals = {_STATUS: self._status_interval}
        if self._notifier.watchdog_interval is not None:
            intervals[_WATCHDOG] = self._notifier.watchdog_interval
        for name in intervals:
            rounds.schedule(name, self._clock.now())
        while True:
            for _, name in await rounds.due():
                if name == _STATUS:
                    self.status_round()
                else:
                    self.watchdog_round()
                rounds.schedule(name, self._clock.now() + intervals[name])

    def publish_status(self) -> str:
        line = self._target.status_line()
        if line != self._last_status:
            self._notifier.status(line)
            self._last_status = line
        if self._on_tick is not None:
            self._on_tick(line)
        return line

    def status_round(self) -> None:
        try:
            self.publish_status()
        except Exception as exc:
            # A status round that fails (the state database busy, say) is reported and
            # retried next round; it must not take the daemon down with it.
            log.warning("supervisor.status_failed", error=str(exc), exc_type=type(exc).__name__)

    def check(self, lag: float, max_lag: float) -> list[str]:
        """The watchdog's verdict for one round: the target's problems plus loop lag."""
        try:
            problems = list(self._target.liveness())
        except Exception as exc:
            problems = [f"the liveness check failed: {type(exc).__name__}: {exc}"]
        if lag > max_lag:
            problems.append(f"event loop lag {lag:.1f}s (limit {max_lag:.1f}s)")
        if self._on_liveness is not None:
            self._on_liveness(problems)
        return problems

    def watchdog_round(self) -> None:
        """Ping systemd's watchdog if nothing is wrong; otherwise say why not."""
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        # Lag is measured on the monotonic clock whatever clock the daemon uses: systemd's
        # watchdog runs in real time. A round that wakes more than a whole interval late means
        # the loop was blocked for half of WatchdogSec=: that alone withholds the ping.
        woke = time.monotonic()
        last, self._last_ping = self._last_ping, woke
        lag = 0.0 if last is None else max(0.0, woke - last - interval)
        problems = self.check(lag, interval)
        if not problems:
            self._notifier.watchdog()
            if self._withheld:
                log.info("watchdog.resumed")
            self._withheld = False
        else:
            # systemd restarts the service after WatchdogSec= without a ping: say why first.
            log.error("watchdog.withheld", problems=problems)
            self._notifier.status("unhealthy: " + "; ".join(problems))
            self._last_status = None
            self._withheld = True
