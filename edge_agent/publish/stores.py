"""Outbox storage: SQLite (WAL) on disk, or memory. The policy lives in outbox.py."""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from edge_agent.publish.payloads import OutMessage

log = logging.getLogger(__name__)

DB_ERRORS = (sqlite3.Error, OSError)
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
DEAD_LETTERS_MAX = 1000  # dead letters kept at most (oldest deleted first)...
DEAD_LETTERS_MAX_BYTES = 10 * 2**20  # ...and at most this many payload bytes
CHUNK = 500  # rows per statement (SQLite limits the number of bound parameters)

Entry = tuple[int, str, int]  # (seq, kind, payload size): enough to account for a message


@dataclass(frozen=True)
class Stored:
    """A message with its outbox sequence number and the time it was stored (epoch s)."""

    seq: int
    created: float
    msg: OutMessage


def is_corruption(exc: BaseException) -> bool:
    """True when SQLite says the file is damaged (not merely unwritable or busy)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def db_uri(path: Path, mode: str) -> str:
    """A SQLite URI for `path` (`mode`: ro, rw, rwc, or `immutable` for a read-only peek)."""
    query = "mode=ro&immutable=1" if mode == "immutable" else f"mode={mode}"
    return f"file:{quote(str(path))}?{query}"


class Store(Protocol):
    """Storage primitives; the Outbox applies the policy on top."""

    def insert_many(self, items: Sequence[Stored]) -> None: ...
    def rows(self, after: int, limit: int) -> list[Stored]: ...
    def oldest(self, kind: str, skip: Container[int]) -> Entry | None: ...
    def older_than(self, created: float) -> list[Entry]: ...
    def delete(self, seqs: Sequence[int]) -> list[int]: ...
    def existing(self, seqs: Sequence[int]) -> list[int]: ...
    def quarantine(self, item: Stored, reason: str, at: float) -> int | None: ...
    def dead_letter_count(self) -> int: ...
    def totals(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...


class MemoryStore:
    """Messages in a dict ordered by seq (outbox disabled, or the disk cannot be used)."""

    def __init__(self) -> None:
        self._items: OrderedDict[int, Stored] = OrderedDict()
        self._dead: deque[tuple[Stored, str, float]] = deque()
        self._dead_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def insert_many(self, items: Sequence[Stored]) -> None:
        """Add messages."""
        for item in items:
            self._items[item.seq] = item

    def rows(self, after: int, limit: int) -> list[Stored]:
        """Up to limit messages with seq > after, in order."""
        out = []
        for seq, item in self._items.items():  # seqs are inserted in increasing order
            if seq > after:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    def oldest(self, kind: str, skip: Container[int]) -> Entry | None:
        """The oldest message of a kind whose seq is not in skip."""
        for seq, item in self._items.items():
            if item.msg.kind == kind and seq not in skip:
                return seq, kind, len(item.msg.payload)
        return None

    def older_than(self, created: float) -> list[Entry]:
        """Messages stored before `created`."""
        return [
            (s, i.msg.kind, len(i.msg.payload))
            for s, i in self._items.items()
            if i.created < created
        ]

    def delete(self, seqs: Sequence[int]) -> list[int]:
        """Remove messages; returns the seqs that were present."""
        if not self._items:
            return []
        return [s for s in seqs if self._items.pop(s, None) is not None]

    def existing(self, seqs: Sequence[int]) -> list[int]:
        """The seqs that are stored."""
        return [s for s in seqs if s in self._items]

    def quarantine(self, item: Stored, reason: str, at: float) -> int | None:
        """Move a message to the dead letters; None when it is not here, else how many old
        dead letters were dropped to stay within the bounds."""
        if self._items.pop(item.seq, None) is None:
            return None
        return self.add_dead_letter(item, reason, at)

    def add_dead_letter(self, item: Stored, reason: str, at: float) -> int:
        """Keep a dead letter; returns how many old ones were dropped."""
        self._dead.append((item, reason, at))
        self._dead_bytes += len(item.msg.payload)
        dropped = 0
        while self._dead and (
            len(self._dead) > DEAD_LETTERS_MAX or self._dead_bytes > DEAD_LETTERS_MAX_BYTES
        ):
            self._dead_bytes -= len(self._dead.popleft()[0].msg.payload)
            dropped += 1
        return dropped

    def dead_letter_count(self) -> int:
        """Dead letters held."""
        return len(self._dead)

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
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    kind TEXT NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""
COLUMNS = "seq, id, topic, payload, kind, qos, retain, created"


def _row(item: Stored) -> tuple[int, str, str, bytes, str, int, int, float, int]:
    m = item.msg
    return (item.seq, m.id, m.topic, m.payload, m.kind, m.qos, int(m.retain), item.created,
            len(m.payload))  # fmt: skip


class SqliteStore:
    """Messages in a SQLite database (WAL). `sync=normal` survives a killed process.

    Opening creates the file when missing and adds tables an older outbox lacks."""

    def __init__(self, path: Path, sync: str) -> None:
        self.path = path
        self.db = sqlite3.connect(
            db_uri(path, "rwc"), uri=True, check_same_thread=False, isolation_level=None
        )
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self.db.executescript(_SCHEMA)
        except BaseException:
            self.db.close()
            raise

    def _transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                self.db.execute(sql, params)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def insert_many(self, items: Sequence[Stored]) -> None:
        """Store messages in one transaction (committed on return)."""
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", [_row(i) for i in items]
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def rows(self, after: int, limit: int) -> list[Stored]:
        """Up to limit messages with seq > after, in order."""
        cur = self.db.execute(
            f"SELECT {COLUMNS} FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (after, limit),
        )
        return [
            Stored(seq, created, OutMessage(mid, topic, bytes(payload), kind, qos, bool(ret)))
            for seq, mid, topic, payload, kind, qos, ret, created in cur
        ]

    def oldest(self, kind: str, skip: Container[int]) -> Entry | None:
        """The oldest message of a kind whose seq is not in skip."""
        cur = self.db.execute("SELECT seq, size FROM messages WHERE kind = ? ORDER BY seq", (kind,))
        try:
            for seq, size in cur:
                if seq not in skip:
                    return int(seq), kind, int(size)
        finally:
            cur.close()  # ends the read at once instead of when the cursor is collected
        return None

    def older_than(self, created: float) -> list[Entry]:
        """Messages stored before `created`."""
        cur = self.db.execute(
            "SELECT seq, kind, size FROM messages WHERE created < ? ORDER BY seq", (created,)
        )
        return [(int(s), str(k), int(n)) for s, k, n in cur]

    def delete(self, seqs: Sequence[int]) -> list[int]:
        """Remove messages in one transaction (all or none); returns the seqs that were present."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            out = self._seqs_in("DELETE FROM messages WHERE seq IN ({}) RETURNING seq", seqs)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return out

    def existing(self, seqs: Sequence[int]) -> list[int]:
        """The seqs that are stored (a read: works on a full disk)."""
        return self._seqs_in("SELECT seq FROM messages WHERE seq IN ({})", seqs)

    def _seqs_in(self, sql: str, seqs: Sequence[int]) -> list[int]:
        """Run `sql` (one `IN ({})` list, returning seq) over seqs in CHUNK-sized parts."""
        out: list[int] = []
        for start in range(0, len(seqs), CHUNK):
            chunk = list(seqs[start : start + CHUNK])
            cur = self.db.execute(sql.format(",".join("?" * len(chunk))), chunk)
            out += [row[0] for row in cur]
        return out

    def quarantine(self, item: Stored, reason: str, at: float) -> int | None:
        """Move a message to the dead letters in one transaction; None when it is not here,
        else how many old dead letters were dropped to stay within the bounds."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            gone = self.db.execute(
                "DELETE FROM messages WHERE seq = ? RETURNING seq", (item.seq,)
            ).fetchall()
            dropped = None
            if gone:
                self.db.execute(
                    "INSERT INTO dead_letters VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (*_row(item), reason, at),
                )
                dropped = self._trim_dead_letters()
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return dropped

    def _trim_dead_letters(self) -> int:
        count, size = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters"
        ).fetchone()
        if count <= DEAD_LETTERS_MAX and size <= DEAD_LETTERS_MAX_BYTES:
            return 0
        victims = []
        for rowid, length in self.db.execute(
            "SELECT rowid, size FROM dead_letters ORDER BY rowid"
        ).fetchall():
            if count <= DEAD_LETTERS_MAX and size <= DEAD_LETTERS_MAX_BYTES:
                break
            victims.append(rowid)
            count, size = count - 1, size - length
        for start in range(0, len(victims), CHUNK):
            chunk = victims[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM dead_letters WHERE rowid IN ({marks})", chunk)  # noqa: S608
        return len(victims)

    def insert_dead_letters(self, rows: Sequence[Sequence[object]]) -> None:
        """Store dead letters as read from another outbox (salvage), in one transaction."""
        self._transaction(
            [("INSERT INTO dead_letters VALUES (?,?,?,?,?,?,?,?,?,?,?)", r) for r in rows]
        )

    def dead_letter_count(self) -> int:
        """Dead letters held."""
        return int(self.db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def totals(self) -> tuple[int, int, int]:
        """(count, bytes, max seq)."""
        count, size, top = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM messages"
        ).fetchone()
        return int(count), int(size), int(top)

    def close(self) -> None:
        """Checkpoint and close."""
        self.db.close()


def default_path(device_id: str, environ: Mapping[str, str]) -> Path:
    """`$STATE_DIRECTORY` (systemd's StateDirectory=), else the XDG state folder."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / f"outbox-{device_id}.db"
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-agent" / f"outbox-{device_id}.db"
