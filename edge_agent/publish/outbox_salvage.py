"""Salvage a damaged outbox: copy every readable message into a fresh file, keep the damaged
one aside as `<name>.corrupt-<time>` (with its -wal and -shm) for inspection.

Rows are read in chunks by seq. When a read fails (a damaged page), the next readable seq is
found from the `messages_kind` index (which lists every seq) when it can be read, else by
probing forward; so only the rows on damaged pages are lost.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.files import fsync_dir
from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage
from edge_agent.publish.stores import CHUNK, COLUMNS, SqliteStore, Stored, db_uri

log = logging.getLogger(__name__)

SUFFIXES = ("", "-wal", "-shm")
MIN_SEQ, MAX_SEQ = -(2**63), 2**63 - 1
DEAD_COLUMNS = f"{COLUMNS}, size, reason, quarantined_at"

Row = tuple[object, ...]


def db_files(path: Path) -> list[Path]:
    """The database and its WAL side files."""
    return [Path(f"{path}{suffix}") for suffix in SUFFIXES]


def remove_db(path: Path) -> None:
    """Delete a database and its side files (a half-written salvage or a file we created)."""
    for file in db_files(path):
        with contextlib.suppress(OSError):  # missing, or on a read-only file system
            file.unlink()


@dataclass
class Reader:
    """Reads every readable row of one table of a damaged database, in key order."""

    db: sqlite3.Connection
    table: str
    columns: str
    key: str  # seq for messages; rowid for dead_letters
    skipped: bool = False  # True when a damaged range was jumped over
    _keys: list[int] | None = field(default=None, repr=False)
    _keys_loaded: bool = False

    def _query(self, start: int, limit: int) -> sqlite3.Cursor:
        return self.db.execute(
            f"SELECT {self.key}, {self.columns} FROM {self.table} "  # noqa: S608
            f"WHERE {self.key} >= ? ORDER BY {self.key} LIMIT ?",
            (start, limit),
        )

    def _chunk(self, start: int, limit: int) -> tuple[list[Row], bool]:
        """Rows from start on, and whether reading failed (rows before a failure are kept)."""
        got: list[Row] = []
        try:
            for row in self._query(start, limit):
                got.append(tuple(row))
        except sqlite3.DatabaseError:
            return got, True
        return got, False

    def rows(self) -> Iterator[Row]:
        """Every readable row (the key first), in order."""
        start: int | None = MIN_SEQ
        while start is not None:
            got, failed = self._chunk(start, CHUNK)
            yield from got
            start = _key(got[-1]) + 1 if got else start
            if not failed and len(got) < CHUNK:
                return
            # The cursor steps one row ahead, so a failure can hide the readable row before
            # it: go on one row at a time until the damaged row itself fails.
            for _ in range(CHUNK if failed else 0):
                one, failed = self._chunk(start, 1)
                if failed:
                    self.skipped = True
                    start = self._next_readable(start)
                    break
                if not one:
                    return
                yield one[0]
                start = _key(one[0]) + 1

    def _ok(self, start: int) -> bool:
        try:
            self._query(start, 1).fetchall()
        except sqlite3.DatabaseError:
            return False
        return True

    def _next_readable(self, start: int) -> int | None:
        """The smallest key > start from which reading works again."""
        keys = self.known_keys()
        if keys is not None:
            later = keys[bisect.bisect_right(keys, start) :]
            return next((k for k in later if self._ok(k)), None)
        low, step = start, 1  # no index: probe forward, then narrow down
        while True:
            if start + step > MAX_SEQ:
                return None
            if self._ok(start + step):
                break
            low, step = start + step, step * 2
        high = start + step
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if self._ok(mid) else (mid, high)
        return high

    def known_keys(self) -> list[int] | None:
        """Every seq the messages index lists (loaded once), None if unknown."""
        if not self._keys_loaded:
            self._keys_loaded = True
            self._keys = index_keys(self.db) if self.table == "messages" else None
        return self._keys


def _key(row: Row) -> int:
    key = row[0]
    return key if isinstance(key, int) else MAX_SEQ - 1  # rowids are ints; never loop


def index_keys(db: sqlite3.Connection) -> list[int] | None:
    """Every seq listed in the kind index (a separate b-tree), or None if it is unreadable."""
    try:
        cur = db.execute("SELECT seq FROM messages INDEXED BY messages_kind")
        return sorted(int(row[0]) for row in cur)
    except sqlite3.DatabaseError:
        return None


def _message(row: Row) -> Stored | None:
    """A salvaged messages row, or None when it does not hold what a message holds."""
    _key, seq, mid, topic, payload, kind, qos, retain, created = row
    if (
        isinstance(seq, int)
        and isinstance(mid, str)
        and isinstance(topic, str)
        and isinstance(payload, bytes)
        and isinstance(kind, str)
        and isinstance(qos, int)
        and qos in (0, 1, 2)
        and isinstance(retain, int)
        and isinstance(created, int | float)
    ):
        return Stored(seq, float(created), OutMessage(mid, topic, payload, kind, qos, bool(retain)))
    return None


def _tables(db: sqlite3.Connection) -> set[str]:
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        return {"messages"}  # the schema page is damaged: try the table anyway


@dataclass
class Report:
    """What a salvage recovered."""

    salvaged: int = 0
    skipped: int = 0  # rows left out on purpose (already delivered: tombstones)
    invalid: int = 0
    dead_letters: int = 0
    lost: int | None = 0  # None: unknown (the damage hid how many rows there were)


def copy_readable(src: sqlite3.Connection, dst: SqliteStore, skip: Container[int]) -> Report:
    """Copy every readable message and dead letter of src into dst."""
    report = Report()
    tables = _tables(src)
    reader = Reader(src, "messages", COLUMNS, "seq")
    batch: list[Stored] = []
    for row in reader.rows() if "messages" in tables else iter(()):
        item = _message(row)
        if item is None:
            report.invalid += 1
        elif item.seq in skip:
            report.skipped += 1
        else:
            batch.append(item)
        if len(batch) >= CHUNK:
            dst.insert_many(batch)
            report.salvaged, batch = report.salvaged + len(batch), []
    if batch:
        dst.insert_many(batch)
        report.salvaged += len(batch)
    report.lost = report.invalid
    if reader.skipped:
        keys = reader.known_keys()
        report.lost = None if keys is None else max(0, len(keys) - report.salvaged - report.skipped)
    if "dead_letters" in tables:
        rows = Reader(src, "dead_letters", DEAD_COLUMNS, "rowid").rows()
        dead: Sequence[Row] = [r[1:] for r in rows if None not in r]  # NOT NULL columns
        dst.insert_dead_letters(dead)
        report.dead_letters = len(dead)
    return report


def move_aside(path: Path) -> Path:
    """Rename the database (and side files) to `<name>.corrupt-<time>`; returns the new name."""
    stamp = int(time.time())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(f.exists() for f in db_files(aside)):
        aside, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    for src, dst in zip(db_files(path), db_files(aside), strict=True):
        with contextlib.suppress(FileNotFoundError):
            os.replace(src, dst)
    return aside


def salvage(
    path: Path, sync: str, counters: Counters, problem: str, skip: Container[int] = frozenset()
) -> SqliteStore:
    """Replace a damaged outbox by a fresh one holding every readable message (with its seq,
    id and time). Raises sqlite3.Error/OSError, leaving the damaged file in place, when the
    copy cannot be written (e.g. the disk is full)."""
    counters.inc("outbox.corrupt")
    tmp = path.with_name(f"{path.name}.salvage")
    remove_db(tmp)
    src = sqlite3.connect(db_uri(path, "rw"), uri=True, isolation_level=None)
    try:
        src.execute("PRAGMA query_only = ON")
        dst = SqliteStore(tmp, sync)
        try:
            report = copy_readable(src, dst, skip)
            busy, _frames, _done = dst.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:  # only the db file is renamed into place: it must hold everything
                raise sqlite3.OperationalError("cannot checkpoint the salvaged copy")
        finally:
            dst.close()
    except BaseException:
        remove_db(tmp)
        raise
    finally:
        src.close()
    aside = move_aside(path)
    for src_file, dst_file in reversed(list(zip(db_files(tmp), db_files(path), strict=True))):
        with contextlib.suppress(FileNotFoundError):  # side files first, the database last
            os.replace(src_file, dst_file)
    fsync_dir(path.parent)
    counters.inc("outbox.salvaged", report.salvaged)
    if report.lost:
        counters.inc("outbox.lost", report.lost)
    lost = "an unknown number of" if report.lost is None else str(report.lost)
    log.error(
        "outbox %s is damaged (%s): salvaged %d messages and %d dead letters, lost %s "
        "messages; the damaged file is kept as %s",
        path,
        problem,
        report.salvaged,
        report.dead_letters,
        lost,
        aside,
    )
    return SqliteStore(path, sync)
