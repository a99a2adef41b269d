"""The outbox policy and its SQLite store: order, limits, priorities, expiry, failure modes."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_agent.config.schema import OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish.outbox import MemoryStore, Outbox, SqliteStore, Stored
from edge_agent.publish.outbox_open import open_outbox
from edge_agent.publish.payloads import OutMessage


def _msg(i: int, kind: str = "detections", size: int = 100) -> OutMessage:
    return OutMessage(f"id{i}", f"edge/d/cam/{kind}", bytes([i % 256]) * size, kind)


def _outbox(tmp: Path, counters: Counters, **limits: object) -> Outbox:
    cfg = OutboxConfig.model_validate({"path": str(tmp / "o.db"), **limits})
    return open_outbox(cfg, "d", counters, {})


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_fifo_fetch_and_ack(tmp: Path, store: str) -> None:
    counters = Counters()
    cfg = OutboxConfig()
    backend = SqliteStore(tmp / "o.db", "normal") if store == "sqlite" else MemoryStore()
    box = Outbox(backend, cfg, counters)
    for i in range(10):
        box.put(_msg(i))
    assert len(box) == 10  # staged messages count as undelivered
    first = box.fetch(0, 4)
    assert [s.msg.id for s in first] == ["id0", "id1", "id2", "id3"]
    assert [s.msg.id for s in box.fetch(first[-1].seq, 100)] == [f"id{i}" for i in range(4, 10)]
    box.ack(first)
    assert len(box) == 6 and box.bytes == 600
    assert [s.msg.id for s in box.fetch(0, 2)] == ["id4", "id5"]


def test_survives_reopen_in_order(tmp: Path) -> None:
    box = _outbox(tmp, Counters())
    for i in range(5):
        box.put(_msg(i))
    box.ack(box.fetch(0, 1))
    box.close()
    again = _outbox(tmp, Counters())
    assert len(again) == 4
    assert [s.msg for s in again.fetch(0, 10)] == [_msg(i) for i in range(1, 5)]
    again.put(_msg(9))
    assert again.fetch(0, 10)[-1].msg.id == "id9"  # new seqs continue after the old ones


DROP_CASES = [
    # (existing kinds, incoming kind, limit in messages, expected survivors, dropped counters)
    (
        "samples go first",
        ["samples", "detections", "stats"],
        "detections",
        3,
        ["detections", "stats", "detections"],
        {"outbox.dropped.samples": 1},
    ),
    (
        "then stats",
        ["stats", "detections", "detections"],
        "detections",
        3,
        ["detections", "detections", "detections"],
        {"outbox.dropped.stats": 1},
    ),
    (
        "then oldest detections",
        ["detections", "detections"],
        "detections",
        2,
        ["detections", "detections"],
        {"outbox.dropped.detections": 1},
    ),
    (
        "a sample never evicts a detection",
        ["detections", "detections"],
        "samples",
        2,
        ["detections", "detections"],
        {"outbox.dropped.samples": 1},
    ),
    (
        "a sample evicts an older sample",
        ["samples", "detections"],
        "samples",
        2,
        ["detections", "samples"],
        {"outbox.dropped.samples": 1},
    ),
]


@pytest.mark.parametrize(
    ("existing", "incoming", "limit", "survivors", "dropped"),
    [c[1:] for c in DROP_CASES],
    ids=[c[0] for c in DROP_CASES],
)
def test_drop_policy(
    tmp: Path,
    existing: list[str],
    incoming: str,
    limit: int,
    survivors: list[str],
    dropped: dict[str, int],
) -> None:
    counters = Counters()
    box = _outbox(tmp, counters, max_bytes=limit * 100)
    for i, kind in enumerate(existing):
        box.put(_msg(i, kind))
    box.flush()
    box.put(_msg(99, incoming))
    assert [s.msg.kind for s in box.fetch(0, 10)] == survivors
    assert {k: v for k, v in counters.snapshot().items() if "dropped" in k} == dropped
    assert box.bytes <= limit * 100


def test_size_strings_and_oversize_message(tmp: Path) -> None:
    counters = Counters()
    box = _outbox(tmp, counters, max_bytes="1KiB")
    assert box.cfg.max_bytes == 1024
    box.put(_msg(0, size=2000))
    assert box.fetch(0, 10) == []
    assert counters.get("outbox.dropped.detections") == 1


def test_expiry_by_age(tmp: Path) -> None:
    counters = Counters()
    box = _outbox(tmp, counters, max_age="1h")
    box.put(_msg(0))
    box.put(_msg(1, "samples"))
    box.flush()
    box.expire(now=1e12)
    assert len(box) == 0
    assert counters.get("outbox.expired.detections") == 1
    assert counters.get("outbox.expired.samples") == 1


class FullDisk(SqliteStore):
    """A store whose inserts fail like a full disk after `ok` successes."""

    def __init__(self, path: Path, ok: int) -> None:
        super().__init__(path, "normal")
        self.ok = ok

    def insert_many(self, items: Sequence[Stored]) -> None:
        if self.ok <= 0:
            raise sqlite3.OperationalError("database or disk is full")
        self.ok -= 1
        super().insert_many(items)


def test_disk_full_keeps_running_in_memory(tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    box = Outbox(FullDisk(tmp / "o.db", ok=3), OutboxConfig(), counters)
    for i in range(6):
        box.put(_msg(i))
        box.flush()
    assert counters.get("outbox.errors") == 1
    assert "disk is full" in caplog.text
    items = box.fetch(0, 10)
    assert [s.msg.id for s in items] == [f"id{i}" for i in range(6)]  # disk first, then memory
    assert "new messages in memory" in box.mode
    box.ack(items)
    assert len(box) == 0


class BrokenReads(SqliteStore):
    """A store that fails to read (a corrupted page found at run time)."""

    def rows(self, after: int, limit: int) -> list[Stored]:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def delete(self, seqs: Sequence[int]) -> list[int]:
        raise sqlite3.DatabaseError("database disk image is malformed")


def test_unreadable_disk_is_abandoned_not_fatal(tmp: Path) -> None:
    first = _outbox(tmp, Counters())
    first.put(_msg(0))
    first.close()
    counters = Counters()
    box = Outbox(BrokenReads(tmp / "o.db", "normal"), OutboxConfig(), counters)
    assert len(box) == 1
    assert box.fetch(0, 10) == []  # the previous run's message cannot be read back...
    assert counters.get("outbox.errors") == 1
    assert len(box) == 0  # ...and no longer counts, so nothing waits for it forever
    assert box.mode.startswith("memory (fallback: unreadable")
    box.put(_msg(1))
    assert [s.msg.id for s in box.fetch(0, 10)] == ["id1"]


def test_corrupt_file_is_moved_aside(tmp: Path) -> None:
    path = tmp / "o.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    counters = Counters()
    box = _outbox(tmp, counters)
    assert len(box) == 0 and box.mode == f"sqlite {path}"
    assert counters.get("outbox.corrupt") == 1
    assert [p.read_bytes()[:29] for p in tmp.glob("o.db.corrupt-*")] == [
        b"this is not a sqlite database"
    ]
