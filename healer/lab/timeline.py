"""A live, readable timeline for the lab: one line per thing that happened, with relative time.

A structlog renderer: ``+  12.41s  health.unhealthy        workers-3f9a1c2e  ReadyUnknownTimeout …``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

# Events too chatty for the timeline (still visible with --verbose via JSON logs).
_QUIET_PREFIXES = ("kubelet.lease", "kubelet.heartbeat", "kube_watch.", "mqtt.message")
_KEYS_FIRST = ("node", "reason", "detail", "replacement", "step", "error")


class TimelineRenderer:
    def __init__(self, *, start: float | None = None, stream: TextIO | None = None) -> None:
        self.start = start if start is not None else time.time()
        self.stream = stream or sys.stdout

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        event = str(event_dict.pop("event", ""))
        level = event_dict.pop("level", "info")
        for key in ("timestamp", "logger", "cluster", "pool", "workflow", "exc_info"):
            event_dict.pop(key, None)
        rel = time.time() - self.start
        parts = [f"+{rel:8.2f}s", f"{event:<32}"]
        node = event_dict.pop("node", None)
        if node:
            parts.append(f"{node:<28}")
        for key in _KEYS_FIRST[1:]:
            if key in event_dict:
                parts.append(f"{key}={event_dict.pop(key)}")
        parts.extend(f"{k}={v}" for k, v in event_dict.items() if v is not None)
        line = "  ".join(parts)
        if level in ("warning", "error", "critical"):
            line = f"{line}  [{level}]"
        return line


def _drop_quiet(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    event = str(event_dict.get("event", ""))
    if event.startswith(_QUIET_PREFIXES):
        raise structlog.DropEvent
    return event_dict


def configure_timeline(start: float | None = None) -> TimelineRenderer:
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    return renderer
