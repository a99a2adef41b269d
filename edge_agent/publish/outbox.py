"""The outbox: every message is stored before it is handed to MQTT and removed only on PUBACK.

A SQLite database in WAL mode holds the messages in order (`seq`). Limits by bytes and age
drop the lowest-priority messages first (samples, then stats, then detections), counting every
drop. A disk that fills up or a corrupt database switches the outbox to memory (logged and
counted) so the pipeline keeps running.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence

from edge_agent.config.schema import OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage
from edge_agent.publish.stores import (
    MemoryStore,
    SqliteStore,
    Store,
    Stored,
    default_path,
    open_store,
)

__all__ = ["MemoryStore", "Outbox", "SqliteStore", "Store", "Stored", "default_path", "open_store"]

log = logging.getLogger(__name__)

# Lower number = dropped first when the outbox is full. Unknown kinds rank with detections.
PRIORITY = {"samples": 0, "stats": 1, "detections": 2}
DROP_ORDER = sorted(PRIORITY, key=PRIORITY.__getitem__)
DROP_LOG_INTERVAL = 10.0  # seconds between "outbox full" warnings
STAGE_LIMIT = 4 * 2**20  # staged bytes at which a producer commits without waiting
FRESH_LIMIT = 8 * 2**20  # bytes of committed, unsent messages also kept in memory


def priority(kind: str) -> int:
    """Drop priority of a message kind."""
    return PRIORITY.get(kind, max(PRIORITY.values()))


class Outbox:
    """Ordered, bounded, acknowledged message store shared by producers and the MQTT sender."""

    def __init__(self, store: Store, cfg: OutboxConfig, counters: Counters) -> None:
        self.cfg = cfg
        self.counters = counters
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)  # notified whenever messages leave
        self._disk: Store | None = store if isinstance(store, SqliteStore) else None
        self._disk_writable = self._disk is not None
        self._mem = store if self._disk is None else MemoryStore()
        self._count, self._bytes, self._seq = store.totals()
        self._staged: list[OutMessage] = []
        self._staged_bytes = 0
        # Committed messages not yet fetched, so the hot path never reads back from disk.
        self._fresh: deque[Stored] = deque()
        self._fresh_bytes = 0
        self._next_drop_log = 0.0
        if self._count:
            log.info(
                "outbox holds %d messages (%d bytes) from a previous run; they go first",
                self._count,
                self._bytes,
            )

    def _stores(self) -> list[Store]:
        return [s for s in (self._disk, self._mem) if s is not None]

    def _degrade(self, what: str, exc: Exception) -> None:
        """Disk trouble: new messages go to memory; an unreadable disk is abandoned."""
        log.error("outbox %s failed (%s): keeping new messages in memory until restart", what, exc)
        self.counters.inc("outbox.errors")
        self._disk_writable = False
        if what != "write":
            self._disk = None

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

    def flush(self) -> None:
        """Commit staged messages, applying the size limit (drops are counted)."""
        with self._lock:
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
                self._insert(items)
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

    def _insert(self, items: list[Stored]) -> None:
        if self._disk is not None and self._disk_writable:
            try:
                self._disk.insert_many(items)
                return
            except (sqlite3.Error, OSError) as exc:
                self._degrade("write", exc)
        self._mem.insert_many(items)

    def _make_room(self, size: int, kind: str) -> bool:
        """Evict lower-or-equal priority messages, oldest first, until `size` fits."""
        limit = self.cfg.max_bytes
        if size > limit:
            return False
        for victim in DROP_ORDER:
            if priority(victim) > priority(kind):
                break
            while self._bytes + size > limit:
                seqs = [s for store in self._stores() for s in self._safe_oldest(store, victim)]
                if not seqs:
                    break
                self._remove(seqs[:1], "dropped")  # one at a time: drop no more than needed
        return self._bytes + size <= limit

    def _safe_oldest(self, store: Store, kind: str) -> list[int]:
        try:
            return store.oldest(kind, 1)
        except (sqlite3.Error, OSError) as exc:
            self._degrade("read", exc)
            return []

    def _remove(self, seqs: Sequence[int], reason: str) -> None:
        for store in self._stores():
            try:
                gone = store.delete(seqs)
            except (sqlite3.Error, OSError) as exc:
                self._degrade("delete", exc)
                continue
            if reason != "acked" and gone:
                self._forget()  # the cache may hold what was just removed
            if gone:
                self.changed.notify_all()
            for kind, size in gone:
                self._count -= 1
                self._bytes -= size
                if reason != "acked":
                    self.counters.inc(f"outbox.{reason}.{kind}")
            if reason == "dropped" and gone and time.monotonic() >= self._next_drop_log:
                self._next_drop_log = time.monotonic() + DROP_LOG_INTERVAL
                log.warning(
                    "outbox full (%d bytes): dropping the oldest %s messages (counted "
                    "in outbox.dropped.<kind>)",
                    self.cfg.max_bytes,
                    gone[0][0],
                )

    def fetch(self, after: int, limit: int) -> list[Stored]:
        """Commit what is staged, then up to `limit` messages with seq > after, oldest first."""
        self.flush()
        out: list[Stored] = []
        with self._lock:
            fresh = self._fresh
            while fresh and fresh[0].seq <= after:
                self._fresh_bytes -= len(fresh.popleft().msg.payload)
            if fresh and fresh[0].seq == after + 1:
                while fresh and len(out) < limit:
                    out.append(fresh.popleft())
                    self._fresh_bytes -= len(out[-1].msg.payload)
                return out
            for store in self._stores():
                if len(out) >= limit:
                    break
                try:
                    out += store.rows(after, limit - len(out))
                except (sqlite3.Error, OSError) as exc:
                    self._degrade("read", exc)
        return out

    def ack(self, seqs: Sequence[int]) -> None:
        """Remove messages the broker acknowledged."""
        if seqs:
            with self._lock:
                self._remove(seqs, "acked")

    def expire(self, now: float | None = None) -> None:
        """Drop messages older than max_age (counted as outbox.expired.<kind>)."""
        cutoff = (now if now is not None else time.time()) - self.cfg.max_age
        with self._lock:
            for store in self._stores():
                try:
                    seqs = store.older_than(cutoff)
                except (sqlite3.Error, OSError) as exc:
                    self._degrade("read", exc)
                    continue
                if seqs:
                    log.warning(
                        "outbox: %d messages older than %.0fs expired", len(seqs), self.cfg.max_age
                    )
                    self._remove(seqs, "expired")

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
        """Commit what is staged and close the stores."""
        self.flush()
        with self._lock:
            for store in self._stores():
                try:
                    store.close()
                except sqlite3.Error as exc:
                    log.warning("outbox close failed: %s", exc)
