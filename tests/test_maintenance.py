"""Maintenance windows: a pure function of the instant and the windows (table-driven)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from healer.config import MaintenanceWindow
from healer.planner.maintenance import in_window, next_change, reboots_allowed

BERLIN = ZoneInfo("Europe/Berlin")


def w(
    start: str, end: str, days: tuple[str, ...] | None = None, tz: str = "UTC"
) -> MaintenanceWindow:
    kwargs = {"start": start, "end": end, "timezone": tz}
    if days is not None:
        kwargs["days"] = days  # type: ignore[assignment]
    return MaintenanceWindow(**kwargs)  # type: ignore[arg-type]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# 2024-03-02 is a Saturday; 2024-03-31 is the spring-forward Sunday in Europe.
CASES = [
    # (what, windows, now, expected)
    ("inside a daily window", [w("02:00", "04:00")], utc(2024, 3, 5, 3, 0), True),
    ("start is inclusive", [w("02:00", "04:00")], utc(2024, 3, 5, 2, 0), True),
    ("end is exclusive", [w("02:00", "04:00")], utc(2024, 3, 5, 4, 0), False),
    ("before the window", [w("02:00", "04:00")], utc(2024, 3, 5, 1, 59), False),
    ("right day", [w("02:00", "04:00", ("tue",))], utc(2024, 3, 5, 3, 0), True),
    ("wrong day", [w("02:00", "04:00", ("mon",))], utc(2024, 3, 5, 3, 0), False),
    ("past midnight, same night", [w("23:00", "02:00", ("sat",))], utc(2024, 3, 2, 23, 30), True),
    ("past midnight, next morning", [w("23:00", "02:00", ("sat",))], utc(2024, 3, 3, 1, 0), True),
    ("past midnight, ended", [w("23:00", "02:00", ("sat",))], utc(2024, 3, 3, 2, 0), False),
    # Sunday 23:30 is not in a Saturday-night window, even though it is after 23:00.
    ("belongs to its start day", [w("23:00", "02:00", ("sat",))], utc(2024, 3, 3, 23, 30), False),
    ("until 24:00", [w("22:00", "24:00", ("sat",))], utc(2024, 3, 2, 23, 59), True),
    ("24:00 ends at midnight", [w("22:00", "24:00", ("sat",))], utc(2024, 3, 3, 0, 0), False),
    (
        "equal start and end: a whole day",
        [w("06:00", "06:00", ("sat",))],
        utc(2024, 3, 3, 5, 0),
        True,
    ),
    # 02:00-04:00 Berlin is 01:00-03:00 UTC in winter...
    ("time zone, winter", [w("02:00", "04:00", tz="Europe/Berlin")], utc(2024, 3, 5, 1, 30), True),
    (
        "time zone, winter, local 04:30",
        [w("02:00", "04:00", tz="Europe/Berlin")],
        utc(2024, 3, 5, 3, 30),
        False,
    ),
    # ...and 00:00-02:00 UTC in summer: wall-clock time follows daylight saving.
    ("time zone, summer", [w("02:00", "04:00", tz="Europe/Berlin")], utc(2024, 7, 2, 0, 30), True),
    (
        "time zone, summer, UTC 02:30",
        [w("02:00", "04:00", tz="Europe/Berlin")],
        utc(2024, 7, 2, 2, 30),
        False,
    ),
    ("one of several", [w("02:00", "03:00"), w("12:00", "13:00")], utc(2024, 3, 5, 12, 30), True),
    ("no windows", [], utc(2024, 3, 5, 12, 30), False),
]


@pytest.mark.parametrize(("what", "windows", "now", "expected"), CASES, ids=[c[0] for c in CASES])
def test_in_window(
    what: str, windows: list[MaintenanceWindow], now: datetime, expected: bool
) -> None:
    assert in_window(now, windows) is expected
    assert in_window(now.timestamp(), windows) is expected  # epoch seconds give the same answer


def test_reboots_allowed_any_time_without_windows() -> None:
    assert reboots_allowed(utc(2024, 3, 5, 12, 0), []) is True
    assert reboots_allowed(utc(2024, 3, 5, 12, 0), [w("02:00", "04:00")]) is False


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        in_window(datetime(2024, 3, 5, 3, 0), [w("02:00", "04:00")])


def test_next_change() -> None:
    windows = [w("02:00", "04:00", ("tue", "thu"))]
    # Monday noon: opens Tuesday 02:00.
    assert next_change(utc(2024, 3, 4, 12, 0), windows) == utc(2024, 3, 5, 2, 0)
    # Inside: closes at 04:00.
    assert next_change(utc(2024, 3, 5, 3, 0), windows) == utc(2024, 3, 5, 4, 0)
    # Back-to-back windows are one stretch: the change is at the end of the second.
    joined = [w("02:00", "04:00"), w("04:00", "05:00")]
    assert next_change(utc(2024, 3, 5, 3, 0), joined) == utc(2024, 3, 5, 5, 0)
    assert next_change(utc(2024, 3, 5, 3, 0), []) is None


def test_next_change_across_daylight_saving() -> None:
    # Spring forward on Sunday 2024-03-31: 02:00-04:00 Berlin is 01:00-02:00 UTC that night.
    windows = [w("02:00", "04:00", ("sun",), tz="Europe/Berlin")]
    opens = next_change(utc(2024, 3, 30, 12, 0), windows)
    assert opens is not None and opens.astimezone(BERLIN).hour == 3  # 02:00 does not exist
    closes = next_change(opens, windows)
    assert closes == datetime(2024, 3, 31, 4, 0, tzinfo=BERLIN).astimezone(UTC)
