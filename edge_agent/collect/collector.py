"""The collector's loop: take a batch of messages, store what is new, then acknowledge.

Order per batch, so a crash at any point loses nothing that was acknowledged:
1. parse and validate each message; a bad one is written to `rejected/` (durably);
2. drop messages whose id is in the index (or earlier in the batch): duplicates;
3. write the new samples' images (temp file, fsync, rename, folder fsync);
4. commit their index rows in one transaction;
5. acknowledge every message of the batch, in the order received.

A disk error in 1-4 acknowledges nothing: the batch is retried after a pause while the
broker holds the rest (its window of unacknowledged messages is full).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.collect.exports import write_exports
from edge_agent.collect.files import RejectedStore, sync_dirs, write_atomic
from edge_agent.collect.index import Index, image_path
from edge_agent.collect.mqtt import RECEIVE_MAXIMUM, Delivery
from edge_agent.collect.payload import Rejected, Sample, SampleParser
from edge_agent.collect.progress import Counts, Progress

log = logging.getLogger(__name__)

BATCH_WAIT = 0.2  # seconds to wait for a first message before looking at the clock again
RETRY_DELAY = 5.0  # seconds before a batch that hit a disk error is tried again


class Collector:
    """Stores batches of deliveries in one dataset folder and keeps its exports fresh."""

    def __init__(
        self,
        out: Path,
        index: Index,
        parser: SampleParser,
        ack: Callable[[Delivery], bool],
        image_root: str,
        export_interval: float,
    ) -> None:
        self.out = out
        self.index = index
        self.parser = parser
        self.ack = ack
        self.image_root = image_root
        self.export_interval = export_interval
        self.rejected = RejectedStore(out)
        self.counts = Counts()
        self._labels_done = 0  # label files written for samples up to this seq
        self._dirty = True  # exports are made at least once per run
        self._last_export = time.monotonic()

    def handle(self, batch: list[Delivery]) -> None:
        """Store a batch, then acknowledge it; a disk error raises before any acknowledgement."""
        parsed: list[Sample] = []
        for delivery in batch:
            try:
                parsed.append(self.parser.parse(delivery.payload))
            except Rejected as rej:
                self._reject(delivery, rej)
        known = self.index.known(s.id for s in parsed)
        fresh: list[Sample] = []
        for sample in parsed:
            if sample.id in known:
                self.counts.duplicates += 1
                continue
            known.add(sample.id)
            fresh.append(sample)
        self._write_images(fresh)
        self.index.add(fresh)
        self.counts.accepted += len(fresh)
        self._dirty = self._dirty or bool(fresh)
        for delivery in batch:
            self.ack(delivery)
        log.debug("stored a batch of %d messages; totals: %s", len(batch), self.counts.totals())

    def _reject(self, delivery: Delivery, rej: Rejected) -> None:
        path = self.rejected.add(delivery.topic, delivery.payload, rej.reason, rej.detail)
        self.counts.rejected[rej.reason] += 1
        log.warning(
            "rejected a message on %s: %s: %s (%s)",
            delivery.topic,
            rej.reason,
            rej.detail,
            path.name,
        )

    def _write_images(self, samples: list[Sample]) -> None:
        folders: set[Path] = set()
        for sample in samples:
            for picture in sample.pictures:
                path = self.out / image_path(sample, picture.stem)
                if path.parent not in folders:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    folders.add(path.parent)
                write_atomic(path, picture.data)
        sync_dirs(folders)

    def export(self, force: bool = False) -> None:
        """Regenerate the exports if samples arrived and the interval passed (or force)."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_export < self.export_interval):
            return
        started = time.monotonic()
        self._labels_done = write_exports(self.out, self.index, self.image_root, self._labels_done)
        self._dirty = False
        self._last_export = time.monotonic()
        log.debug("exports written in %.2f s", self._last_export - started)


def take_batch(
    inbox: queue.Queue[Delivery], wait: float = BATCH_WAIT, limit: int = RECEIVE_MAXIMUM
) -> list[Delivery]:
    """Up to `limit` queued deliveries, waiting up to `wait` for the first."""
    try:
        batch = [inbox.get(timeout=wait)] if limit > 0 else []
    except queue.Empty:
        return []
    while len(batch) < limit:
        try:
            batch.append(inbox.get_nowait())
        except queue.Empty:
            break
    return batch


def _handle_with_retry(collector: Collector, batch: list[Delivery], stop: threading.Event) -> bool:
    """Store a batch, retrying after disk errors; False if stopped before it was stored."""
    while True:
        try:
            collector.handle(batch)
            return True
        except (OSError, sqlite3.Error) as exc:
            log.error(
                "cannot store a batch of %d messages: %s; retrying in %g s",
                len(batch),
                exc,
                RETRY_DELAY,
            )
            if stop.wait(RETRY_DELAY):
                return False


def run_loop(
    collector: Collector,
    inbox: queue.Queue[Delivery],
    check: Callable[[], None],
    progress: Progress,
    stop: threading.Event,
) -> None:
    """Store batches until `stop`, then what is already queued; `check` raises on a refusal."""
    while not stop.is_set():
        check()
        batch = take_batch(inbox)
        if batch and not _handle_with_retry(collector, batch, stop):
            break
        export_safely(collector, force=False)
        progress.update(collector.counts)
    # Stopping: what is queued now is stored (a disk error now leaves it to the broker); what
    # arrives meanwhile stays unacknowledged for the next run.
    left = inbox.qsize()
    log.info("stopping: storing %d queued messages, then writing the exports", left)
    while batch := take_batch(inbox, wait=0.0, limit=min(left, RECEIVE_MAXIMUM)):
        left -= len(batch)
        if not _handle_with_retry(collector, batch, stop):
            break


def export_safely(collector: Collector, force: bool) -> bool:
    """Refresh the exports; a disk error is logged (the index still has everything)."""
    try:
        collector.export(force)
        return True
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot write the exports: %s (the index keeps every sample)", exc)
        return False
