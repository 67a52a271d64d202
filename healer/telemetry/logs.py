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
