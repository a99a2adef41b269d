"""The outbox: every message is stored before it is handed to MQTT and removed only on PUBACK.

A SQLite database in WAL mode holds the messages in order (`seq`). Limits by bytes and age
drop the lowest-priority messages first (samples and snapshots, then stats, then detections),
counting every drop. Disk trouble (tiered.py) never stops the pipeline and never corrupts the
accounting: a message counts until it is acknowledged, dropped, expired or quarantined, whether
or not the disk can delete it at that moment. Opening (paths, locking, classifying faults, salvage)
is in outbox_open.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from edge_agent.config.schema import OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage
from edge_agent.publish.stores import Entry, MemoryStore, SqliteStore, Store, Stored, default_path
from edge_agent.publish.tiered import RETRY_INTERVAL, Recover, TieredStore

__all__ = ["MemoryStore", "Outbox", "SqliteStore", "Store", "Stored", "default_path"]

log = logging.getLogger(__name__)

# Lower number = dropped first when the outbox is full; a message never evicts a higher one.
# Events (one per track change) outrank per-frame detections; a retained snapshot (a large
# JPEG, replaced by the next one) goes with the samples; answers to commands are kept.
PRIORITY = {
    "samples": 0,
    "snapshot": 0,
    "stats": 1,
    "detections": 2,
    "state": 2,
    "events": 3,
    "cmd_result": 3,
}
DROP_ORDER = sorted(PRIORITY, key=PRIORITY.__getitem__)
DROP_LOG_INTERVAL = 10.0  # seconds between "outbox full" warnings
STAGE_LIMIT = 4 * 2**20  # staged bytes at which a producer commits without waiting
FRESH_LIMIT = 8 * 2**20  # bytes of committed, unsent messages also kept in memory


class FileLock(Protocol):
    """What the outbox needs of the lock on its file (outbox_open.OutboxLock)."""

    def release(self) -> None:
        """Give the file up to other processes."""


def priority(kind: str) -> int:
    """Drop priority of a message kind."""
    return PRIORITY.get(kind, max(PRIORITY.values()))


class Outbox:
    """Ordered, bounded, acknowledged message store shared by producers and the MQTT sender."""

    def __init__(
        self,
        store: Store,
        cfg: OutboxConfig,
        counters: Counters,
        *,
        mode: str | None = None,
        lock: FileLock | None = None,
        recover: Recover | None = None,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.cfg = cfg
        self.counters = counters
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)  # notified whenever messages leave
        self._tiers = TieredStore(
            store, counters, label=mode, recover=recover, retry_interval=retry_interval
        )
        self._file_lock = lock
        self._staged: list[OutMessage] = []
        self._staged_bytes = 0
        # For the publisher's wait: committed messages no fetch has returned yet, and when
        # the last commit was (time.monotonic()).
        self._unfetched = False
        self.last_commit = 0.0
        # Committed messages not yet fetched, so the hot path never reads back from disk.
        self._fresh: deque[Stored] = deque()
        self._fresh_bytes = 0
        self._next_drop_log = 0.0
        self._count = self._bytes = self._seq = 0
        self._seen = -1  # the tiers' generation the totals were computed for
        with self._lock:
            self._sync()
        if self._count:
            log.info(
                "outbox holds %d messages (%d bytes) from a previous run; they go first",
                self._count,
                self._bytes,
            )

    @property
    def mode(self) -> str:
        """Where messages are kept: `sqlite /x/o.db`, `memory (disabled)`,
        `memory (fallback: permission denied: /x/o.db)`, ..."""
        with self._lock:
            return self._tiers.mode

    def _sync(self) -> bool:
        """Recount from the stores if a fault changed what they hold; True if it did."""
        if self._tiers.generation == self._seen:
            return False
        count, size, top = self._tiers.totals()
        self._seen = self._tiers.generation  # after totals(), which may itself salvage
        self._count, self._bytes, self._seq = count, size, max(self._seq, top)
        self._forget()
        self.changed.notify_all()
        return True

    def put(self, msg: OutMessage) -> None:
        """Stage a message; the publisher thread commits staged messages in one transaction
        (group commit) before it sends any of them. A producer that outruns the publisher
        commits itself once STAGE_LIMIT bytes are waiting."""
        with self._lock:
            self._staged.append(msg)
            self._staged_bytes += len(msg.payload)
            if self._staged_bytes < STAGE_LIMIT:
                return
        self.flush()

    @property
    def has_staged(self) -> bool:
        """Whether messages wait to be committed (a plain read: a hint, never a promise)."""
        return bool(self._staged)

    @property
    def unfetched(self) -> bool:
        """Whether messages were committed since a fetch last returned all it could (a
        producer that commits by itself, or a commit just before the publisher's wait)."""
        return self._unfetched

    def flush(self) -> None:
        """Commit staged messages, applying the size limit (drops are counted)."""
        with self._lock:
            self._tiers.housekeep()
            self._sync()
            batch, self._staged, self._staged_bytes = self._staged, [], 0
            items = []
            now = time.time()
            for msg in batch:
                size = len(msg.payload)
                if not self._make_room(size, msg.kind):
                    self.counters.inc(f"outbox.dropped.{msg.kind}")
                    log.warning("outbox full: dropped new %s message %s", msg.kind, msg.id)
                    continue
                self._seq += 1
                items.append(Stored(self._seq, now, msg))
                self._count += 1
                self._bytes += size
            if items:
                self._tiers.insert(items)
                self._unfetched, self.last_commit = True, time.monotonic()
                if not self._sync():  # a salvage recounted: the cache would be stale
                    self._remember(items)
        if log.isEnabledFor(logging.DEBUG):  # per-message audit trail, only when asked
            for item in items:
                log.debug(
                    "committed %s to outbox (seq %d, %s)", item.msg.id, item.seq, item.msg.kind
                )

    def _remember(self, items: list[Stored]) -> None:
        self._fresh.extend(items)
        self._fresh_bytes += sum(len(i.msg.payload) for i in items)
        if self._fresh_bytes > FRESH_LIMIT:  # a backlog: read it back from the store instead
            self._forget()

    def _forget(self) -> None:
        self._fresh.clear()
        self._fresh_bytes = 0

    def _make_room(self, size: int, kind: str) -> bool:
        """Evict lower-or-equal priority messages, oldest first, until `size` fits."""
        limit = self.cfg.max_bytes
        if size > limit:
            return False
        for victim in DROP_ORDER:
            if priority(victim) > priority(kind):
                break
            while self._bytes + size > limit:
                before = self._bytes
                entry = self._tiers.oldest(victim)
                if self._sync() or entry is None:
                    break
                self._remove([entry], "dropped")  # one at a time: drop no more than needed
                if self._bytes >= before:
                    break  # no progress: never spin on a store that misbehaves
        return self._bytes + size <= limit

    def _remove(self, entries: Sequence[Entry], reason: str) -> None:
        """Take messages out of the count, whether or not the disk could delete them."""
        gone = self._tiers.remove([e[0] for e in entries])
        if self._sync() or not gone:
            return  # after a salvage the recount already left them out
        if reason != "acked":
            self._forget()  # the cache may hold what was just removed
        self.changed.notify_all()
        first = ""
        for seq, kind, size in entries:
            if seq in gone:
                first = first or kind
                self._count -= 1
                self._bytes -= size
                if reason != "acked":
                    self.counters.inc(f"outbox.{reason}.{kind}")
        if reason == "dropped" and time.monotonic() >= self._next_drop_log:
            self._next_drop_log = time.monotonic() + DROP_LOG_INTERVAL
            log.warning(
                "outbox full (%d bytes): dropping the oldest %s messages (counted "
                "in outbox.dropped.<kind>)",
                self.cfg.max_bytes,
                first,
            )

    def fetch(self, after: int, limit: int) -> list[Stored]:
        """Commit what is staged, then up to `limit` messages with seq > after, oldest first."""
        self.flush()
        with self._lock:
            found = self._read_after(after, limit)
            if len(found) < limit:
                self._unfetched = False  # everything committed so far has been handed out
            return found

    def _read_after(self, after: int, limit: int) -> list[Stored]:
        fresh = self._fresh
        while fresh and fresh[0].seq <= after:
            self._fresh_bytes -= len(fresh.popleft().msg.payload)
        if fresh and fresh[0].seq == after + 1:
            out: list[Stored] = []
            while fresh and len(out) < limit:
                out.append(fresh.popleft())
                self._fresh_bytes -= len(out[-1].msg.payload)
            return out
        if after >= self._seq:
            return []  # nothing committed beyond: no read (the idle loop polls this)
        found = self._tiers.read(after, limit)
        self._sync()
        return found

    def ack(self, items: Sequence[Stored]) -> None:
        """Remove messages the broker acknowledged; they count as delivered even when the
        disk cannot delete them right now."""
        if items:
            with self._lock:
                self._remove([(i.seq, i.msg.kind, len(i.msg.payload)) for i in items], "acked")

    def quarantine(self, item: Stored, reason: str) -> None:
        """Move a message out of the queue into the dead letters: it no longer counts and is
        never fetched again (counted as outbox.quarantined.<kind>)."""
        with self._lock:
            dropped = self._tiers.quarantine(item, reason, time.time())
            if not self._sync():
                if dropped is None:
                    log.debug("quarantine: %s is no longer in the outbox", item.msg.id)
                    return
                self._count -= 1
                self._bytes -= len(item.msg.payload)
                self.changed.notify_all()
        self.counters.inc(f"outbox.quarantined.{item.msg.kind}")
        if dropped:
            self.counters.inc("outbox.dead_letters_dropped", dropped)

    def dead_letter_count(self) -> int:
        """Messages in the dead letters (quarantined), at most 1000 / 10 MB."""
        with self._lock:
            return self._tiers.dead_letter_count()

    def expire(self, now: float | None = None) -> None:
        """Drop messages older than max_age (counted as outbox.expired.<kind>)."""
        cutoff = (now if now is not None else time.time()) - self.cfg.max_age
        with self._lock:
            entries = self._tiers.older_than(cutoff)
            if self._sync() or not entries:
                return
            log.warning(
                "outbox: %d messages older than %.0fs expired", len(entries), self.cfg.max_age
            )
            self._remove(entries, "expired")

    def __len__(self) -> int:
        with self._lock:
            return self._count + len(self._staged)

    def wait_empty(self, timeout: float) -> bool:
        """Block up to timeout seconds for the outbox to become empty."""
        with self.changed:
            return self.changed.wait_for(lambda: not (self._count or self._staged), timeout)

    @property
    def bytes(self) -> int:
        """Payload bytes currently stored."""
        with self._lock:
            return self._bytes

    def close(self) -> None:
        """Commit what is staged, close the stores and release the file lock."""
        self.flush()
        with self._lock:
            lost = self._tiers.close()
            if lost:
                log.warning(
                    "outbox: %d undelivered messages were kept in memory only and are lost",
                    lost,
                )
            if self._file_lock is not None:
                self._file_lock.release()
                self._file_lock = None
