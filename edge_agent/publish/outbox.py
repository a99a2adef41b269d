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
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.config.schema import OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage

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


@dataclass(frozen=True)
class Stored:
    """A message with its outbox sequence number and the time it was stored (epoch s)."""

    seq: int
    created: float
    msg: OutMessage


class Store(Protocol):
    """Storage primitives; the Outbox applies the policy on top."""

    def insert_many(self, items: Sequence[Stored]) -> None: ...
    def rows(self, after: int, limit: int) -> list[Stored]: ...
    def oldest(self, kind: str, limit: int) -> list[int]: ...
    def older_than(self, created: float) -> list[int]: ...
    def delete(self, seqs: Sequence[int]) -> list[tuple[str, int]]: ...
    def totals(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...


class MemoryStore:
    """Messages in a dict ordered by seq (used when the outbox is disabled or the disk fails)."""

    def __init__(self) -> None:
        self._items: OrderedDict[int, Stored] = OrderedDict()

    def insert_many(self, items: Sequence[Stored]) -> None:
        """Append messages."""
        for item in items:
            self._items[item.seq] = item

    def rows(self, after: int, limit: int) -> list[Stored]:
        """Up to limit messages with seq > after, in order."""
        out = []
        for seq, item in self._items.items():
            if seq > after:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    def oldest(self, kind: str, limit: int) -> list[int]:
        """Seqs of the oldest messages of a kind."""
        return [s for s, i in self._items.items() if i.msg.kind == kind][:limit]

    def older_than(self, created: float) -> list[int]:
        """Seqs stored before `created`."""
        return [s for s, i in self._items.items() if i.created < created]

    def delete(self, seqs: Sequence[int]) -> list[tuple[str, int]]:
        """Remove messages; returns (kind, size) of each one removed."""
        gone = [self._items.pop(s, None) for s in seqs]
        return [(i.msg.kind, len(i.msg.payload)) for i in gone if i is not None]

    def totals(self) -> tuple[int, int, int]:
        """(count, bytes, max seq)."""
        size = sum(len(i.msg.payload) for i in self._items.values())
        return len(self._items), size, next(reversed(self._items), 0)

    def close(self) -> None:
        """Nothing to release."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    kind TEXT NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_kind ON messages (kind, seq);
"""


class SqliteStore:
    """Messages in a SQLite database (WAL). `sync=normal` survives a killed process."""

    def __init__(self, path: Path, sync: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self.db.executescript(_SCHEMA)
        self.db.execute("SELECT count(*) FROM messages").fetchone()

    def insert_many(self, items: Sequence[Stored]) -> None:
        """Store messages in one transaction (committed on return)."""
        rows = [
            (
                i.seq,
                i.msg.id,
                i.msg.topic,
                i.msg.payload,
                i.msg.kind,
                i.msg.qos,
                int(i.msg.retain),
                i.created,
                len(i.msg.payload),
            )
            for i in items
        ]
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def rows(self, after: int, limit: int) -> list[Stored]:
        """Up to limit messages with seq > after, in order."""
        cur = self.db.execute(
            "SELECT seq, id, topic, payload, kind, qos, retain, created FROM messages "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [
            Stored(seq, created, OutMessage(mid, topic, bytes(payload), kind, qos, bool(ret)))
            for seq, mid, topic, payload, kind, qos, ret, created in cur
        ]

    def oldest(self, kind: str, limit: int) -> list[int]:
        """Seqs of the oldest messages of a kind."""
        cur = self.db.execute(
            "SELECT seq FROM messages WHERE kind = ? ORDER BY seq LIMIT ?", (kind, limit)
        )
        return [row[0] for row in cur]

    def older_than(self, created: float) -> list[int]:
        """Seqs stored before `created`."""
        cur = self.db.execute("SELECT seq FROM messages WHERE created < ?", (created,))
        return [row[0] for row in cur]

    def delete(self, seqs: Sequence[int]) -> list[tuple[str, int]]:
        """Remove messages in one transaction; returns (kind, size) of each one removed."""
        out: list[tuple[str, int]] = []
        for start in range(0, len(seqs), 500):
            chunk = list(seqs[start : start + 500])
            marks = ",".join("?" * len(chunk))
            cur = self.db.execute(
                f"DELETE FROM messages WHERE seq IN ({marks}) RETURNING kind, size",  # noqa: S608
                chunk,
            )
            out += [(kind, size) for kind, size in cur]
        return out

    def totals(self) -> tuple[int, int, int]:
        """(count, bytes, max seq)."""
        count, size, top = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM messages"
        ).fetchone()
        return int(count), int(size), int(top)

    def close(self) -> None:
        """Checkpoint and close."""
        self.db.close()


def default_path(device_id: str, environ: dict[str, str]) -> Path:
    """`$STATE_DIRECTORY` (systemd's StateDirectory=), else the XDG state folder."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / f"outbox-{device_id}.db"
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-agent" / f"outbox-{device_id}.db"


def open_store(path: Path, sync: str, counters: Counters) -> Store:
    """Open the database; a corrupt file is moved aside (kept for inspection) and recreated."""
    try:
        return SqliteStore(path, sync)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.error("outbox %s is unreadable (%s): moved to %s, starting empty", path, exc, aside)
        counters.inc("outbox.corrupt")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        return SqliteStore(path, sync)


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
        for item in items:
            log.debug("committed %s to outbox (seq %d, %s)", item.msg.id, item.seq, item.msg.kind)

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
