"""Logging setup: readable text on a terminal, JSON lines under systemd or when asked.

Every formatted record (message, arguments, exception text, stack) passes through one
`Redactor` as the last step of formatting, so no secret reaches stderr or the journal.
Uncaught exceptions (main thread, other threads, `__del__`) and Python warnings are routed
through the same handler instead of being printed raw.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

from edge_agent.redact import Redactor

log = logging.getLogger(__name__)

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _unformattable(record: logging.LogRecord, exc: Exception) -> logging.LogRecord:
    """A copy of a record whose message failed to format (a `%d` given a str), made safe."""
    # logging's default would print msg and args raw to stderr via handleError: instead
    # render them here, where the result still passes through the redactor.
    clone = copy.copy(record)
    clone.msg = f"unformattable log message {record.msg!r} % {record.args!r}: {exc}"
    clone.args = None
    return clone


class RedactingFormatter(logging.Formatter):
    """The text format, with the whole rendered record passed through a redactor."""

    def __init__(self, redactor: Redactor, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt, "%H:%M:%S")
        self.redactor = redactor
        self.converter = time.localtime

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as text, then redact it (traceback and stack included)."""
        try:
            text = super().format(record)
        except Exception as exc:  # any error of the caller's format string or args
            text = super().format(_unformattable(record, exc))
        return self.redactor(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc, stack), each value redacted."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor if redactor is not None else Redactor()

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        try:
            message = record.getMessage()
        except Exception as exc:  # any error of the caller's format string or args
            record = _unformattable(record, exc)
            message = record.getMessage()
        redact = self.redactor
        # Redact before serialising: JSON escaping (\" \\ \uXXXX) must not hide a secret.
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": redact(record.name),
            "msg": redact(message),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry)


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose own error report cannot print a record's raw arguments."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        super().__init__(stream)
        self.redactor = redactor

    def handleError(self, record: logging.LogRecord) -> None:
        """Report a failed emit in one redacted line (the default prints msg and args)."""
        if not logging.raiseExceptions:
            return
        exc = sys.exc_info()[1]
        line = f"--- logging error in {record.name} ({record.pathname}:{record.lineno}): {exc!r}"
        # If stderr itself is gone there is nowhere left to tell.
        with contextlib.suppress(Exception):
            sys.stderr.write(self.redactor(line) + "\n")


def running_as_service() -> bool:
    """True under systemd (it sets INVOCATION_ID / JOURNAL_STREAM for services)."""
    return "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)  # keep Ctrl-C quiet and conventional
        return
    log.critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # what threading's default hook does too
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    log.critical("uncaught exception in thread %s", name, exc_info=exc_info)


def _log_unraisable(args: Any) -> None:
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    log.error("%s: %r", args.err_msg or "exception ignored in", args.object, exc_info=exc_info)


def _route_raw_output_through_logging() -> None:
    """Python's own stderr printers (tracebacks, warnings) bypass handlers: redirect them."""
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable
    logging.captureWarnings(True)


def setup_logging(
    level: str,
    fmt: str = "auto",
    redactor: Redactor | None = None,
    *,
    stream: TextIO | None = None,
) -> Redactor:
    """Configure the root logger once for the process; returns the redactor in use."""
    redactor = redactor if redactor is not None else Redactor()
    use_json = fmt == "json" or (fmt == "auto" and running_as_service())
    handler = RedactingHandler(stream if stream is not None else sys.stderr, redactor)
    handler.setFormatter(JsonFormatter(redactor) if use_json else RedactingFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # paho logs nothing by default; keep third-party chatter at warning.
    logging.getLogger("paho").setLevel(logging.WARNING)
    _route_raw_output_through_logging()
    return redactor
