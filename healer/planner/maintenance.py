"""Maintenance windows: may a planned disruption (a reboot) start now? Pure functions.

A window is configured per cluster (``clusters[].reboots.windows``, see
:class:`healer.config.MaintenanceWindow`): days of the week, a start and an end as wall-clock
``HH:MM`` in an IANA time zone. An end at or before the start runs past midnight into the next
day, and such a window belongs to the day it *starts* on ("sat 23:00-02:00" is Saturday night).
Wall-clock times follow daylight saving: "02:00-04:00 Europe/Berlin" is two local hours, whatever
UTC says.

Everything here takes ``now`` (epoch seconds or an aware datetime) and reads no clock, so the
reboot arbiter, the scheduler and tests agree on the answer for the same instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from healer.config import MaintenanceWindow

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()


def _moment(now: float | datetime) -> datetime:
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("in_window needs an aware datetime (or epoch seconds)")
        return now
    return datetime.fromtimestamp(now, UTC)


def _hhmm(text: str) -> time | None:
    """``"02:30"`` -> 02:30; ``"24:00"`` -> None (the end of the day)."""
    hours, minutes = (int(part) for part in text.split(":"))
    return None if hours == 24 else time(hours, minutes)


def _bounds(window: MaintenanceWindow, day: date) -> tuple[datetime, datetime]:
    """The window that starts on ``day`` (if ``day`` is one of its days), as aware datetimes."""
    zone = ZoneInfo(window.timezone)
    start_t = _hhmm(window.start) or time(0, 0)
    start = datetime.combine(day, start_t, zone)
    end_t = _hhmm(window.end)
    if end_t is None:
        end = datetime.combine(day + timedelta(days=1), time(0, 0), zone)
    elif end_t <= start_t:
        end = datetime.combine(day + timedelta(days=1), end_t, zone)
    else:
        end = datetime.combine(day, end_t, zone)
    return start, end


def _occurrences(
    window: MaintenanceWindow, around: datetime, *, before: int = 1, after: int = 8
) -> list[tuple[datetime, datetime]]:
    """The window's occurrences starting from ``before`` days before ``around``'s local date to
    ``after`` days after it."""
    local_day = around.astimezone(ZoneInfo(window.timezone)).date()
    out = []
    for offset in range(-before, after + 1):
        day = local_day + timedelta(days=offset)
        if DAYS[day.weekday()] in window.days:
            out.append(_bounds(window, day))
    return out


def in_window(now: float | datetime, windows: Sequence[MaintenanceWindow]) -> bool:
    """True when ``now`` falls inside at least one of ``windows``.

    An empty list means "no window": False. Callers that treat "no windows configured" as
    "any time" (the reboot policy does) say so themselves; see :func:`reboots_allowed`.
    """
    moment = _moment(now)
    return any(
        start <= moment < end
        for window in windows
        for start, end in _occurrences(window, moment, before=1, after=0)
    )


def reboots_allowed(now: float | datetime, windows: Sequence[MaintenanceWindow]) -> bool:
    """The reboot policy: any time when no window is configured, otherwise inside one."""
    return not windows or in_window(now, windows)


def next_change(now: float | datetime, windows: Sequence[MaintenanceWindow]) -> datetime | None:
    """When :func:`in_window` next changes its answer (within the coming eight days), or None.

    Overlapping and back-to-back windows are handled: an edge where one window ends as another
    begins is not a change.
    """
    moment = _moment(now)
    state = in_window(moment, windows)
    edges = sorted(
        {
            edge
            for window in windows
            for occurrence in _occurrences(window, moment)
            for edge in occurrence
            if edge > moment
        }
    )
    for edge in edges:
        if in_window(edge, windows) != state:
            return edge.astimezone(UTC)
    return None
