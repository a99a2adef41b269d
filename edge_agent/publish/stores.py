"""Outbox storage: SQLite (WAL) on disk, or memory. The policy lives in outbox.py."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage

log = logging.getLogger(__name__)


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
