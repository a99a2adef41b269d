"""Logging setup: readable text on a terminal, JSON lines under systemd or when asked."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def running_as_service() -> bool:
    """True under systemd (it sets INVOCATION_ID / JOURNAL_STREAM for services)."""
    return "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ


def setup_logging(level: str, fmt: str = "auto") -> None:
    """Configure the root logger once for the process."""
    use_json = fmt == "json" or (fmt == "auto" and running_as_service())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"
        )
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # paho logs nothing by default; keep third-party chatter at warning.
    logging.getLogger("paho").setLevel(logging.WARNING)
