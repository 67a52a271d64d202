"""Logging set-up: structlog with stable dotted event names.

JSON lines in production (journald keeps them whole), a readable console renderer on a terminal.
Context (cluster, pool, node, workflow) is bound through contextvars by the code that owns it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal, TextIO

import structlog

# The wrapper class structlog uses for each minimum level (make_filtering_bound_logger gives the
# same class for a level every time): what enabled_for reads the configured level from.
_MIN_LEVEL: dict[type, int] = {
    structlog.make_filtering_bound_logger(level): level
    for level in (
        logging.NOTSET,
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
        logging.CRITICAL,
    )
}


def enabled_for(level: int) -> bool:
    """Whether a line at ``level`` (``logging.DEBUG``, ...) would be written under structlog's
    configuration as it is now. For hot paths: loggers are not cached (so that
    ``structlog.testing.capture_logs`` sees every line), so each call on a module's logger binds
    a new one, even for a level that is then dropped. A wrapper class other than structlog's
    filtering ones says True: the line is made and its logger decides."""
    found = _MIN_LEVEL.get(structlog.get_config()["wrapper_class"])
    return found is None or level >= found


def use_color(stream: TextIO) -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set to anything non-empty
    (https://no-color.org; ``healer --no-color`` sets it)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def configure(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=use_color(sys.stderr))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging; keep them at WARNING so our events stay readable.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
