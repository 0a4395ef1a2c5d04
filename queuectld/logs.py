"""The daemon's own log: structlog, one event a line on stderr (and in a file if set).

* ``json`` (the default): one JSON object a line, for journald and log shippers.
* ``console``: ``key=value`` lines for people at a terminal.

Under journald (``$JOURNAL_STREAM`` names our stderr) each stderr line starts with a
syslog priority prefix such as ``<6>``, which journald turns into the entry's
``PRIORITY=`` (so ``journalctl -p warning`` works) and strips; the timestamp is left
out there because journald stamps every line itself. The log file, when configured,
always gets timestamps and never the prefix.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# structlog level name -> syslog priority (sd-daemon(3) prefixes).
PRIORITY = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}

# The first keys of every line, in this order; the rest follow as logged.
_HEAD = ("timestamp", "level", "event")


def stderr_is_journal(env: dict[str, str] | None = None) -> bool:
    """True if stderr is the journald stream systemd connected (``$JOURNAL_STREAM``)."""
    value = (env if env is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class _Sink:
    """Renders each event for stderr and, when configured, an append-only log file."""

    def __init__(self, log_file: str | None) -> None:
        self.path = log_file or None
        self.file: TextIO | None = None
        self.fmt = "json"
        self.journal = False
        self._json = structlog.processors.JSONRenderer(sort_keys=False)
        self._console = structlog.dev.ConsoleRenderer(colors=False)
        self.reopen()

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it); a file that cannot be opened is skipped."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path:
            try:
                self.file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                self._write_stderr(f"queuectld: cannot open log file {self.path}: {exc}\n")

    def render(self, event: dict[str, Any], stamped: bool) -> str:
        ordered = {k: event[k] for k in _HEAD if k in event}
        ordered.update((k, v) for k, v in event.items() if k not in _HEAD)
        if not stamped:
            ordered.pop("timestamp", None)
        if self.fmt == "console":
            return str(self._console(None, "", ordered))
        return str(self._json(None, "", ordered))

    def emit(self, event: dict[str, Any]) -> None:
        line = self.render(event, stamped=not self.journal) + "\n"
        if self.journal:
            line = f"<{PRIORITY.get(str(event.get('level', 'info')), 6)}>{line}"
        self._write_stderr(line)
        if self.file is not None:
            try:
                self.file.write(line if not self.journal else self.render(event, True) + "\n")
            except OSError:
                pass  # a full log disk must not stop the queue

    @staticmethod
    def _write_stderr(line: str) -> None:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass  # stderr closed (--daemon): the file still gets the line


class _Logger:
    """The structlog "logger": hands each event dict to the sink."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def msg(self, **event: Any) -> None:
        self._sink.emit(event)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _as_kwargs(logger: Any, method: str, event: Any) -> Any:
    return event  # a dict: structlog calls _Logger.<method>(**event)


_sink: _Sink | None = None

# Events for records of the standard library's loggers (asyncio reports a task whose
# exception nobody retrieved, or a callback that raised, through logging; warnings go to
# "py.warnings" once captured).
_STDLIB_EVENTS = {"asyncio": "asyncio_error", "py.warnings": "python_warning"}


class _StdlibBridge(logging.Handler):
    """Turns standard-library log records into events of our own log (JSON like the rest)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a record with bad arguments must not be lost either
            message = str(record.msg)
        structlog.get_logger(record.name).log(
            record.levelno,
            _STDLIB_EVENTS.get(record.name, "python_log"),
            logger=record.name,
            message=message.strip(),
            exc_info=record.exc_info or False,
        )


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """An exception nothing caught ended a thread (the store thread, say): log it."""
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    structlog.get_logger("queuectld").error("thread_failed", thread=name, exc_info=exc_info)


def _capture_stdlib() -> None:
    """Route asyncio's messages, warnings and uncaught thread errors to our log (once)."""
    root = logging.getLogger()
    if not any(isinstance(h, _StdlibBridge) for h in root.handlers):
        root.addHandler(_StdlibBridge())
        root.setLevel(logging.WARNING)  # asyncio's debug chatter stays out
        logging.captureWarnings(True)
        threading.excepthook = _thread_failed


def configure_logging(level: str = "info", fmt: str = "json", log_file: str | None = None) -> None:
    """Set up structlog for the daemon; call again (SIGHUP) to change level, format or file."""
    global _sink
    if _sink is None or _sink.path != (log_file or None):
        if _sink is not None and _sink.file is not None:
            _sink.file.close()
        _sink = _Sink(log_file)
    _sink.fmt = fmt
    _sink.journal = stderr_is_journal()
    sink = _sink
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _as_kwargs,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=lambda *args: _Logger(sink),
        cache_logger_on_first_use=False,
    )
    _capture_stdlib()


def reopen_log_file() -> None:
    """Reopen the configured log file (SIGHUP after logrotate)."""
    if _sink is not None:
        _sink.reopen()
