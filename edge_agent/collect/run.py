"""`edge-agent collect`: set up, run until SIGTERM/SIGINT, flush, exit 0.

Mistakes of use (an unreachable broker at start, a refused login, an unusable --out, a
dataset folder in use by another collector) are `UserError`s: one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import threading
from pathlib import Path
from types import FrameType

from edge_agent.collect.collector import Collector, export_safely, run_loop
from edge_agent.collect.exports import write_exports
from edge_agent.collect.files import FolderLock
from edge_agent.collect.index import INDEX_NAME, Index
from edge_agent.collect.mqtt import Subscription
from edge_agent.collect.options import CollectOptions, options_from, prepare_out
from edge_agent.collect.payload import SampleParser
from edge_agent.collect.progress import make_progress
from edge_agent.errors import UserError
from edge_agent.logs import setup_logging
from edge_agent.redact import Redactor

log = logging.getLogger(__name__)


def _install_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask for a clean stop (the handler only sets an event)."""

    def _on_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # nothing else here: the loop logs and stops after its current batch

    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)


def _open_index(out: Path, must_exist: bool) -> Index:
    path = out / INDEX_NAME
    if must_exist and not path.is_file():
        raise UserError(f"no index at {path}: nothing to rebuild from", where=f"--out {out}")
    try:
        return Index(path)
    except sqlite3.Error as exc:
        raise UserError(f"cannot open the index {path}: {exc}", where=f"--out {out}") from None


def rebuild(opts: CollectOptions) -> int:
    """Regenerate every export from the index alone (no broker)."""
    index = _open_index(opts.out, must_exist=True)
    try:
        write_exports(opts.out, index, opts.image_root)
        log.info("exports rebuilt from %d samples in %s", index.count(), opts.out)
    finally:
        index.close()
    return 0


def collect(opts: CollectOptions, stop: threading.Event) -> int:
    """Subscribe and store samples until `stop`; exports are flushed before returning."""
    index = _open_index(opts.out, must_exist=False)
    try:
        sub = Subscription(opts)
        collector = Collector(
            opts.out,
            index,
            SampleParser(opts.max_image_bytes),
            sub.ack,
            opts.image_root,
            opts.export_interval,
        )
        sub.start()
        log.info("%d samples already in %s", index.count(), opts.out)
        progress = make_progress(str(opts.out))
        try:
            run_loop(collector, sub.inbox, sub.check, progress, stop)
        finally:
            sub.close()
            export_safely(collector, force=True)
            progress.close(collector.counts)
    finally:
        index.close()
    return 0


def run(args: argparse.Namespace, redactor: Redactor) -> int:
    """`edge-agent collect` from parsed arguments."""
    setup_logging(args.log_level, args.log_format, redactor)
    opts = options_from(args)
    redactor.add(opts.password)
    prepare_out(opts.out)
    lock = FolderLock(opts.out)
    try:
        lock.acquire()
    except OSError as exc:
        raise UserError(
            f"cannot lock the folder: {exc.strerror}", where=f"--out {opts.out}"
        ) from None
    try:
        if opts.rebuild:
            return rebuild(opts)
        stop = threading.Event()
        _install_signals(stop)
        return collect(opts, stop)
    finally:
        lock.release()
