"""A structlog logger that imports structlog when it first logs, for the modules the quick
commands load (``healer status``, ``history``, the state store): ``import structlog`` costs more
than the rest of ``healer status`` (70 ms with rich installed), and those commands rarely log.

``log = get_logger("healer.store")`` behaves as ``structlog.get_logger("healer.store")``: the
logger is structlog's own lazy proxy, fetched on the first call, so the configuration
(:mod:`healer.telemetry.logs`) and ``structlog.testing.capture_logs`` apply as usual.
"""

from __future__ import annotations

from typing import Any, TextIO

# Where log lines go when nothing configured structlog before the first one (structlog's own
# default is stdout); see :func:`default_stream`.
_stream: TextIO | None = None


def default_stream(stream: TextIO) -> None:
    """Send the log lines of an unconfigured process to ``stream``: the ``healer`` command uses
    stderr, so a line logged while it reads the state (``state.schema_upgraded`` after an
    upgrade) never lands in the output of ``healer status --json``. A command that configures
    logging (:mod:`healer.telemetry.logs`) decides for itself."""
    global _stream
    _stream = stream


class LazyLogger:
    """``structlog.get_logger(name)``, imported and created on first use."""

    __slots__ = ("_log", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._log: Any = None

    def __getattr__(self, method: str) -> Any:
        if self._log is None:
            import structlog

            if _stream is not None and not structlog.is_configured():
                structlog.configure(logger_factory=structlog.PrintLoggerFactory(_stream))
            self._log = structlog.get_logger(self._name)
        return getattr(self._log, method)


def get_logger(name: str) -> Any:
    return LazyLogger(name)
