"""A live, readable timeline for the lab: one entry per thing that happened, with relative time.

A structlog renderer: ``+  12.41s  health.unhealthy  workers-3f9a1c2e  reason=ReadyUnknownTimeout``.
An entry fits :data:`WIDTH` columns: what does not fit goes on indented continuation lines.
Absolute times (``until=``, ``at=``, ``..._at=``) are shown in ISO 8601 UTC, never as epoch
seconds.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

# Events too chatty for the timeline (still visible with --verbose via JSON logs).
_QUIET_PREFIXES = ("kubelet.lease", "kubelet.heartbeat", "kube_watch.", "mqtt.message")
_KEYS_FIRST = ("node", "reason", "detail", "replacement", "step", "error")
WIDTH = 100  # columns an entry fits in
_EVENT_COLUMN = 26
_NODE_COLUMN = 26
_CONTINUATION = " " * 12  # under the event name, past the relative time
# Keys whose numeric value is an absolute time (epoch seconds) rather than a duration.
_TIME_KEYS = ("at", "until", "since")
# Epoch seconds between 2001 and 5138: anything smaller is a duration or a count.
_EPOCH_RANGE = (1e9, 1e11)


def iso_utc(at: float) -> str:
    """``at`` (epoch seconds) as ISO 8601 UTC with milliseconds: ``2026-12-02T04:29:21.205Z``.
    Fixed width, so these strings sort as the times do."""
    text = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def is_time_key(key: str) -> bool:
    return key in _TIME_KEYS or key.endswith(("_at", "_until", "_since"))


def shown(key: str, value: Any) -> Any:
    """``value`` as the timeline and the reports show it: an absolute time in ISO 8601."""
    if (
        is_time_key(key)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and _EPOCH_RANGE[0] <= value < _EPOCH_RANGE[1]
    ):
        return iso_utc(float(value))
    return value


def fit(line: str, width: int = WIDTH) -> str:
    """``line`` wrapped at spaces (a word longer than a line is cut) into lines of at most
    ``width`` columns, each continuation indented."""
    if len(line) <= width:
        return line
    return "\n".join(
        textwrap.wrap(
            line,
            width=width,
            subsequent_indent=_CONTINUATION,
            break_long_words=True,
            break_on_hyphens=False,
        )
    )


class TimelineRenderer:
    def __init__(
        self, *, start: float | None = None, stream: TextIO | None = None, width: int = WIDTH
    ) -> None:
        self.start = start if start is not None else time.time()
        self.stream = stream or sys.stdout
        self.width = width

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        event = str(event_dict.pop("event", ""))
        level = event_dict.pop("level", "info")
        for key in ("timestamp", "logger", "cluster", "pool", "workflow", "exc_info"):
            event_dict.pop(key, None)
        rel = time.time() - self.start
        parts = [f"+{rel:8.2f}s", f"{event:<{_EVENT_COLUMN}}"]
        node = event_dict.pop("node", None)
        if node:
            parts.append(f"{node:<{_NODE_COLUMN}}")
        if level in ("warning", "error", "critical"):
            parts.append(f"[{level}]")
        for key in _KEYS_FIRST[1:]:
            if key in event_dict:
                parts.append(f"{key}={shown(key, event_dict.pop(key))}")
        parts.extend(f"{k}={shown(k, v)}" for k, v in event_dict.items() if v is not None)
        return fit("  ".join(parts).rstrip(), self.width)


def _drop_quiet(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    event = str(event_dict.get("event", ""))
    if event.startswith(_QUIET_PREFIXES):
        raise structlog.DropEvent
    return event_dict


def configure_timeline(
    start: float | None = None, *, write: Callable[[str], None] | None = None
) -> TimelineRenderer:
    """Render the logs as the timeline on stdout, or through ``write`` (one entry, no newline):
    the interactive lab prints them above its prompt (:mod:`healer.lab.console`)."""
    renderer = TimelineRenderer(start=start)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _drop_quiet,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=(
            structlog.PrintLoggerFactory(file=sys.stdout)
            if write is None
            else structlog.PrintLoggerFactory(file=_WriteEach(write))  # type: ignore[arg-type]
        ),
        cache_logger_on_first_use=False,
    )
    return renderer


class _WriteEach:
    """A file that hands each entry structlog's PrintLogger prints to ``write``."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write

    def write(self, text: str) -> int:
        if text.strip():
            self._write(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass
