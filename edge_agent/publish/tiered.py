"""The outbox's storage and its failure modes: a SQLite file, backed by memory.

- A write that fails (disk full, read-only) sends new messages to memory; the file is still
  read, so its unsent messages go first, and writing is retried every `retry_interval`
  seconds (memory is then moved to the file, in order).
- A delete that fails leaves tombstones: the messages count as gone (delivered, dropped,
  expired, quarantined), are never fetched again, and the delete is retried.
- A read that fails means the file is damaged: `recover` (outbox_open.py) salvages what can be
  read into a fresh file; without it, or when that fails, the file is left for the next start
  and the run goes on in memory. Either way `generation` changes so the owner recounts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from edge_agent.health import Counters
from edge_agent.publish.stores import (
    DB_ERRORS,
    Entry,
    MemoryStore,
    SqliteStore,
    Store,
    Stored,
    is_corruption,
)

log = logging.getLogger(__name__)

RETRY_INTERVAL = 60.0  # seconds between attempts to write to a disk that failed
MAX_RESCUES = 3  # salvages of a failing file per run before it is given up

# Salvages a failing disk store (closing it) into a fresh one, leaving out the given seqs;
# None when that is impossible.
Recover = Callable[[SqliteStore, frozenset[int]], SqliteStore | None]


class TieredStore:
    """A disk store (optional) and a memory store behind one interface. Not thread-safe:
    the Outbox calls it with its lock held."""

    def __init__(
        self,
        store: Store,
        counters: Counters,
        *,
        label: str | None = None,
        recover: Recover | None = None,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.counters = counters
        self.disk = store if isinstance(store, SqliteStore) else None
        self.mem = store if isinstance(store, MemoryStore) else MemoryStore()
        self.label = label or (f"sqlite {self.disk.path}" if self.disk else "memory")
        self.generation = 0  # changes when a salvage replaced what is stored: recount
        self._recover = recover
        self._rescues = 0
        self._retry_interval = retry_interval
        self._next_retry = 0.0
        self._write_error = ""  # why new messages go to memory although a file is open
        self._delete_error = ""
        self._abandoned = ""  # why the file was given up during this run
        self.tombstones: set[int] = set()  # counted as gone, but still in the file

    @property
    def mode(self) -> str:
        """Where messages are kept, e.g. `sqlite /x/o.db` or `memory (fallback: ...)`."""
        if self._abandoned:
            return f"memory (fallback: {self._abandoned})"
        if self._write_error:
            return f"{self.label}; new messages in memory ({self._write_error})"
        return self.label

    def stores(self) -> list[Store]:
        """The disk store (while usable) first, then memory."""
        return [self.disk, self.mem] if self.disk is not None else [self.mem]

    def totals(self) -> tuple[int, int, int]:
        """(count, bytes, max seq) over both stores."""
        count, size, top = self.mem.totals()
        if self.disk is None:
            return count, size, top
        try:
            d_count, d_size, d_top = self.disk.totals()
        except DB_ERRORS as exc:
            self._fault("read", exc)
            return self.totals()  # bounded: after MAX_RESCUES the file is given up
        return count + d_count, size + d_size, max(top, d_top)

    # -- faults ----------------------------------------------------------------------------
    def _fault(self, what: str, exc: BaseException, seqs: list[int] | None = None) -> None:
        """A disk operation failed: a damaged file is salvaged, a failed write degrades."""
        if what == "read" or is_corruption(exc):
            self.tombstones.update(seqs or ())  # the salvage must not bring them back
            self._unreadable(what, exc)
        elif not self._write_error:
            self._write_error = f"write failed: {exc}"
            self._schedule_retry()
            self.counters.inc("outbox.errors")
            log.error(
                "outbox %s: write failed (%s): new messages are kept in memory (lost if the "
                "agent stops) while the messages in the file are still delivered; writing is "
                "retried every %.0fs",
                self.disk.path if self.disk else self.label,
                exc,
                self._retry_interval,
            )

    def _schedule_retry(self) -> None:
        now = time.monotonic()
        if self._next_retry <= now:
            self._next_retry = now + self._retry_interval

    def _unreadable(self, what: str, exc: BaseException) -> None:
        """Salvage what the damaged file still holds into a fresh one, else give it up."""
        store = self.disk
        if store is None:
            return
        self.disk = None
        self.generation += 1
        self.counters.inc("outbox.errors")
        log.error(
            "outbox %s: %s failed (%s): recovering the messages that can still be read",
            store.path,
            what,
            exc,
        )
        fresh = None
        if self._recover is not None and self._rescues < MAX_RESCUES:
            self._rescues += 1
            fresh = self._recover(store, frozenset(self.tombstones))
        else:
            with contextlib.suppress(*DB_ERRORS):
                store.close()
        self.tombstones.clear()
        self._write_error = ""
        if fresh is None:
            self._abandoned = f"unreadable: {store.path}"
            log.error(
                "outbox %s is given up for this run: its messages stay in the file for the "
                "next start; new messages are kept in memory only and lost if the agent stops",
                store.path,
            )
        else:
            self.disk = fresh
            if len(self.mem):  # written there while the old file failed: move them now
                self._write_error, self._next_retry = "write failed before a salvage", 0.0
                self.housekeep()

    def housekeep(self) -> None:
        """Retry what failed: deleting tombstones, moving messages from memory to the disk."""
        disk = self.disk
        if disk is None or not (self.tombstones or self._write_error):
            return
        if time.monotonic() < self._next_retry:
            return
        self._next_retry = time.monotonic() + self._retry_interval
        try:
            if self.tombstones:
                disk.delete(sorted(self.tombstones))
                self.tombstones.clear()
            if self._write_error:
                held = self.mem.rows(-1, len(self.mem)) if len(self.mem) else []
                disk.insert_many(held)
                self.mem.delete([i.seq for i in held])
                self._write_error = ""
                log.warning(
                    "outbox %s can be written again: %d messages moved from memory to it",
                    disk.path,
                    len(held),
                )
        except DB_ERRORS as exc:
            if is_corruption(exc):
                self._unreadable("retry", exc)
            else:
                log.debug("outbox %s still cannot be written: %s", disk.path, exc)

    # -- operations ------------------------------------------------------------------------
    def insert(self, items: list[Stored]) -> None:
        """Store committed messages: on disk while it takes them, else in memory."""
        if self.disk is not None and not self._write_error:
            try:
                self.disk.insert_many(items)
                return
            except DB_ERRORS as exc:
                self._fault("write", exc)
        self.mem.insert_many(items)

    def read(self, after: int, limit: int) -> list[Stored]:
        """Up to limit messages with seq > after, oldest first, tombstones skipped."""
        found = self._read(after, limit)
        if found is None:  # a read failed and the stores changed: read them once more
            found = self._read(after, limit) or []
        return found

    def _read(self, after: int, limit: int) -> list[Stored] | None:
        out: list[Stored] = []
        stores = self.stores()
        for store in stores:
            got: list[Stored] = []
            cursor = after
            while len(got) < limit:
                try:
                    rows = store.rows(cursor, limit)
                except DB_ERRORS as exc:
                    self._fault("read", exc)
                    return None
                got += [r for r in rows if r.seq not in self.tombstones]
                if len(rows) < limit:
                    break
                cursor = rows[-1].seq  # tombstones were skipped: read on past them
            out += got
        if len(stores) > 1:
            out.sort(key=lambda i: i.seq)  # disk and memory interleave after a write retry
        return out[:limit]

    def oldest(self, kind: str) -> Entry | None:
        """The oldest stored message of a kind."""
        found = []
        for store in self.stores():
            try:
                entry = store.oldest(kind, self.tombstones)
            except DB_ERRORS as exc:
                self._fault("read", exc)
                return None
            if entry is not None:
                found.append(entry)
        return min(found, default=None)

    def older_than(self, created: float) -> list[Entry]:
        """Messages stored before `created`."""
        out: list[Entry] = []
        for store in self.stores():
            try:
                out += store.older_than(created)
            except DB_ERRORS as exc:
                self._fault("read", exc)
                return []
        return [e for e in out if e[0] not in self.tombstones]

    def remove(self, seqs: list[int]) -> set[int]:
        """Take messages out; returns the seqs that no longer count (deleted, or tombstoned
        because the disk could not delete them). Already-tombstoned seqs are not returned."""
        if self.tombstones:
            seqs = [s for s in seqs if s not in self.tombstones]
        gone = set(self.mem.delete(seqs))
        rest = [s for s in seqs if s not in gone] if gone else seqs
        if rest and self.disk is not None:
            gone.update(self._disk_delete(self.disk, rest))
        return gone

    def _disk_delete(self, disk: SqliteStore, seqs: list[int]) -> list[int]:
        try:
            gone = disk.delete(seqs)
        except DB_ERRORS as exc:
            if is_corruption(exc):
                self._fault("delete", exc, seqs)
                return seqs
            return self._tombstone(disk, seqs, exc)
        if self._delete_error:
            log.warning("outbox %s: deleting works again", disk.path)
            self._delete_error = ""
        return gone

    def _tombstone(self, disk: SqliteStore, seqs: list[int], exc: BaseException) -> list[int]:
        try:
            present = disk.existing(seqs)
        except DB_ERRORS:
            present = seqs  # cannot tell: they were in the file when fetched
        self.tombstones.update(present)
        if not self._delete_error:
            self._delete_error = str(exc)
            self._schedule_retry()
            self.counters.inc("outbox.errors")
            log.error(
                "outbox %s: delete failed (%s): the messages still count as delivered and "
                "are not sent again in this run; the delete is retried (a restart before it "
                "succeeds re-sends them, with the same id)",
                disk.path,
                exc,
            )
        return present

    def quarantine(self, item: Stored, reason: str, at: float) -> int | None:
        """Move a message to the dead letters; None when it is not stored (any more), else
        how many old dead letters were dropped to stay within the bounds."""
        if item.seq in self.tombstones:
            return None
        dropped = self.mem.quarantine(item, reason, at)
        disk = self.disk
        if dropped is not None or disk is None:
            return dropped
        try:
            return disk.quarantine(item, reason, at)
        except DB_ERRORS as exc:
            if is_corruption(exc):
                self._fault("quarantine", exc, [item.seq])
            elif not self._tombstone(disk, [item.seq], exc):
                return None
        return self.mem.add_dead_letter(item, reason, at)  # kept for this run only

    def dead_letter_count(self) -> int:
        """Dead letters in both stores."""
        count = self.mem.dead_letter_count()
        if self.disk is not None:
            try:
                count += self.disk.dead_letter_count()
            except DB_ERRORS as exc:
                log.debug("cannot count dead letters: %s", exc)
        return count

    def close(self) -> int:
        """Save what memory holds if the disk takes it again, close; returns the number of
        messages that were only in memory (now lost)."""
        if self.disk is not None:
            self._next_retry = 0.0
            self.housekeep()
        for store in self.stores():
            try:
                store.close()
            except DB_ERRORS as exc:
                log.warning("outbox close failed: %s", exc)
        self.disk = None  # a late flush must not touch a closed connection
        return len(self.mem)
