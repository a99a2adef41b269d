"""The console entry point: as little as possible runs before `run`'s signal handlers exist.

Loading pydantic, OpenCV and the interpreter takes seconds on a Pi; a `systemctl reload`
(SIGHUP) or stop in that window must neither kill the agent nor be lost, so the signals are
recorded first and handed to the agent once it exists.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence


def record_signals() -> list[int]:
    """Record SIGTERM, SIGINT and SIGHUP until the agent installs its own handlers."""
    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda n, _f: received.append(n))
    return received


def main(argv: Sequence[str] | None = None) -> int:
    """`edge-agent ...`: records signals early for `run`, then hands over to the CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    early = record_signals() if "run" in args else []
    from edge_agent.cli import main as cli_main

    return cli_main(args, early)
