"""The daemon's own log: structlog, one JSON object a line on stderr (and a file if set)."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Tee:
    """Write each line to stderr and, when configured, to an append-only log file."""

    def __init__(self, log_file: str | None) -> None:
        self.path = log_file or None
        self.file: TextIO | None = None
        self.reopen()

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path:
            self.file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, line: str) -> None:
        stream = sys.stderr
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed (--daemon): the file still gets the line
        if self.file is not None:
            try:
                self.file.write(line)
            except OSError:
                pass  # a full log disk must not stop the queue

    def flush(self) -> None:
        pass


_sink: _Tee | None = None


def configure_logging(level: str = "info", fmt: str = "json", log_file: str | None = None) -> None:
    """Set up structlog for the daemon; call again (SIGHUP) to change level or file."""
    global _sink
    if _sink is None or _sink.path != (log_file or None):
        _sink = _Tee(log_file)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def reopen_log_file() -> None:
    """Reopen the configured log file (SIGHUP after logrotate)."""
    if _sink is not None:
        _sink.reopen()
