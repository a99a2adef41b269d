"""The outbox under real faults: permissions, read-only and full file systems, damaged pages,
a second agent on the same file, and the dead letters.

Permission faults run the open in a forked child that drops to user `nobody` with
os.setresuid (we are root, and root ignores file modes); read-only and full disks are small
tmpfs mounts (remounted read-only, or filled), unmounted in `finally`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.schema import OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish.outbox import Outbox, SqliteStore, Stored
from edge_agent.publish.outbox_open import OutboxError, open_outbox
from edge_agent.publish.payloads import OutMessage
from edge_agent.publish.stores import DEAD_LETTERS_MAX
from tests.helpers import (
    IMAGES,
    SSD,
    SSD_LABELS,
    AgentProcess,
    Broker,
    Subscriber,
    base_config,
    write_config,
)

NOBODY = 65534
N_IMAGES = len([p for p in IMAGES.iterdir() if p.is_file()])


def _msg(i: int, size: int = 100, kind: str = "detections", topic: str = "edge/d/c") -> OutMessage:
    payload = json.dumps({"id": f"id{i}", "pad": "x" * max(0, size - 30)}).encode()
    return OutMessage(f"id{i}", f"{topic}/{kind}", payload, kind)


def _cfg(path: Path, **extra: Any) -> OutboxConfig:
    return OutboxConfig.model_validate({"path": str(path), **extra})


def _fill(path: Path, n: int, size: int = 100, topic: str = "edge/d/c") -> None:
    box = open_outbox(_cfg(path), "d", Counters(), {})
    for i in range(n):
        box.put(_msg(i, size, topic=topic))
    box.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _drain(box: Outbox, rounds: int = 10_000) -> list[str]:
    """Fetch and acknowledge everything, like the MQTT sender; returns the ids in order."""
    cursor, out = 0, []
    for _ in range(rounds):
        items = box.fetch(cursor, 100)
        if not items:
            break
        out += [i.msg.id for i in items]
        cursor = items[-1].seq
        box.ack(items)
    return out


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A private tmpfs of `size`, unmounted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="outbox-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        done = subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0
        if not done:  # something still holds a file open: detach now, freed when closed
            subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()


def _fill_disk(folder: Path) -> None:
    """Take every free byte of the file system (the write fails with ENOSPC)."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder user nobody can reach (pytest's tmp is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="outbox-faults-"))
    folder.chmod(0o755)
    yield folder
    for sub in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            sub.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _attempt(path: Path) -> dict[str, Any]:
    """Open the outbox at path, use it, close it; what happened, as plain data."""
    handler = _Lines()
    logger = logging.getLogger("edge_agent")
    logger.addHandler(handler)
    counters = Counters()
    try:
        box = open_outbox(_cfg(path), "d", counters, {})
    except OutboxError as exc:
        return {"error": str(exc), "log": handler.lines}
    finally:
        logger.removeHandler(handler)
    box.put(_msg(999))
    fetched = [s.msg.id for s in box.fetch(0, 1000)]
    mode = box.mode
    box.close()
    return {"mode": mode, "counters": counters.snapshot(), "log": handler.lines, "got": fetched}


def _as_nobody(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run fn in a forked child running as user nobody; its result comes back as JSON."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            out = fn()
        except BaseException as exc:
            out = {"crash": repr(exc)}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    return result


# -- opening: each fault kind gets its own answer ---------------------------------------------


def _dir_at_path(d: Path) -> Path:
    (d / "o.db").mkdir()
    return d / "o.db"


def _parent_is_file(d: Path) -> Path:
    (d / "state").write_text("not a folder")
    return d / "state" / "o.db"


def _fifo_at_path(d: Path) -> Path:
    os.mkfifo(d / "o.db")
    return d / "o.db"


ERROR_CASES = [
    ("a directory at the path", _dir_at_path, "is a directory: set outbox.path to a file"),
    ("a parent that is a file", _parent_is_file, "/state is a file, not a directory"),
    ("a fifo at the path", _fifo_at_path, "is not a regular file (a fifo)"),
]


@pytest.mark.parametrize(
    ("make", "text"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_unusable_path_is_a_config_error(
    tmp: Path, make: Callable[[Path], Path], text: str
) -> None:
    path = make(tmp)
    result = _attempt(path)
    assert text in result["error"] and str(path) in result["error"]
    assert not list(tmp.glob("*.corrupt-*"))


def _fallback_checks(result: dict[str, Any], path: Path, cause: str, pending: str) -> None:
    assert "crash" not in result and "error" not in result, result
    assert result["mode"] == f"memory (fallback: {cause}: {path})"
    assert result["counters"].get("outbox.fallback") == 1
    assert result["got"] == ["id999"]  # works, in memory
    line = next(x for x in result["log"] if "cannot be used" in x)
    assert f"({cause}" in line and "kept in memory only and lost if the agent stops" in line
    assert pending in line


@pytest.mark.parametrize(
    "case", ["file owned by root", "folder closed (chmod 000)", "new file in a closed folder"]
)
def test_permission_denied_falls_back_and_leaves_the_file(shared_dir: Path, case: str) -> None:
    path = shared_dir / "o.db"
    if case != "new file in a closed folder":
        _fill(path, 20)
        before = _sha(path)
    if case == "file owned by root":
        path.chmod(0o644)  # nobody may read it but not write it, nor create -wal in the folder
        pending = "its 20 pending messages will be sent when it can be opened"
    elif case == "folder closed (chmod 000)":
        shared_dir.chmod(0o000)
        pending = "the file, if any, is left untouched"
    else:
        path = shared_dir / "closed" / "o.db"
        path.parent.mkdir(mode=0o555)
        pending = "no outbox file was created"
    result = _as_nobody(lambda: _attempt(path))
    shared_dir.chmod(0o755)
    _fallback_checks(result, path, "permission denied", pending)
    if case == "new file in a closed folder":
        assert list(path.parent.iterdir()) == []
    else:
        assert _sha(path) == before
        assert sorted(p.name for p in shared_dir.iterdir()) == ["o.db", "o.db.lock"]


def test_read_only_file_system_falls_back_and_leaves_the_file() -> None:
    with tmpfs("1m") as folder:
        path = folder / "o.db"
        _fill(path, 20)
        before = _sha(path)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        result = _attempt(path)
        _fallback_checks(
            result, path, "read-only file system", "its 20 pending messages will be sent"
        )
        assert _sha(path) == before
        assert sorted(p.name for p in folder.iterdir()) == ["o.db", "o.db.lock"]


@pytest.mark.parametrize("existing", [True, False], ids=["healthy file", "no file yet"])
def test_disk_full_at_start_falls_back_and_leaves_the_file(existing: bool) -> None:
    with tmpfs("256k") as folder:
        path = folder / "o.db"
        if existing:
            _fill(path, 20)
            before = _sha(path)
        _fill_disk(folder)
        result = _attempt(path)
        pending = "its 20 pending messages will be sent" if existing else "no outbox file"
        _fallback_checks(result, path, "disk full", pending)
        if existing:
            assert _sha(path) == before
            assert not list(folder.glob("*.corrupt-*"))
        else:
            assert not path.exists()
        (folder / "filler").unlink()  # space again: the next start uses the file
        box = open_outbox(_cfg(path), "d", Counters(), {})
        assert box.mode == f"sqlite {path}" and len(box) == (20 if existing else 0)
        box.close()


def test_second_outbox_on_the_same_file_names_the_first(tmp: Path) -> None:
    path = tmp / "o.db"
    first = open_outbox(_cfg(path), "d", Counters(), {})
    first.put(_msg(1))
    with pytest.raises(OutboxError) as err:
        open_outbox(_cfg(path), "d", Counters(), {})
    text = str(err.value)
    assert f"outbox {path} is in use by another edge-agent (pid {os.getpid()}: " in text
    assert text.endswith("give each agent its own device_id or outbox.path")
    assert len(first) == 1  # the refused second open did not touch it
    first.close()
    again = open_outbox(_cfg(path), "d", Counters(), {})
    assert [s.msg.id for s in again.fetch(0, 10)] == ["id1"]
    again.close()


def test_lock_dies_with_its_process(tmp: Path) -> None:
    path = tmp / "o.db"
    code = (
        "import sys, time\n"
        "from edge_agent.config.schema import OutboxConfig\n"
        "from edge_agent.health import Counters\n"
        "from edge_agent.publish.outbox_open import open_outbox\n"
        f"box = open_outbox(OutboxConfig(path={str(path)!r}), 'd', Counters(), {{}})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(OutboxError, match=f"in use by another edge-agent \\(pid {child.pid}"):
            open_outbox(_cfg(path), "d", Counters(), {})
    finally:
        child.kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
        child.wait()
    box = open_outbox(_cfg(path), "d", Counters(), {})
    assert box.mode == f"sqlite {path}"
    box.close()


# -- damaged pages -----------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise AssertionError("unreachable")


def _leaf_rowids(data: bytes, pageno: int, page_size: int) -> list[int]:
    """Rowids of the cells on a table leaf page (SQLite file format, section 1.6)."""
    base = (pageno - 1) * page_size
    header = base + (100 if pageno == 1 else 0)
    assert data[header] == 0x0D, "not a table leaf page"
    cells = int.from_bytes(data[header + 3 : header + 5], "big")
    out = []
    for i in range(cells):
        ptr = int.from_bytes(data[header + 8 + 2 * i : header + 10 + 2 * i], "big")
        _size, pos = _varint(data, base + ptr)
        out.append(_varint(data, pos)[0])
    return out


def _pages(path: Path, name: str, pagetype: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno",
            (name, pagetype),
        ).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows]


def _damage(path: Path, pageno: int, page_size: int = 4096) -> None:
    """Garbage over one whole page (a bad sector), header byte included."""
    rnd = random.Random(pageno)
    garbage = bytes([0xFF]) + bytes(rnd.getrandbits(8) for _ in range(page_size - 1))
    with open(path, "r+b") as f:
        f.seek((pageno - 1) * page_size)
        f.write(garbage)


def _lost_on(path: Path, target: str) -> tuple[int, set[int]]:
    """Pick a page to damage; returns it and the seqs stored on it."""
    if target == "a table leaf":
        leaves = _pages(path, "messages", "leaf")
        page = leaves[len(leaves) // 2]
        return page, set(_leaf_rowids(path.read_bytes(), page, 4096))
    if target == "an index leaf":
        leaves = _pages(path, "messages_kind", "leaf")
        return leaves[len(leaves) // 2], set()
    overflow = _pages(path, "messages", "overflow")  # only the one big message overflows
    return overflow[len(overflow) // 2], {BIG_SEQ}


BIG_SEQ = 1500
DAMAGE_CASES = ["a table leaf", "an index leaf", "an overflow page"]


@pytest.mark.parametrize("target", DAMAGE_CASES)
def test_damaged_page_at_start_is_salvaged(tmp: Path, target: str) -> None:
    path, n = tmp / "o.db", 3000
    box = open_outbox(_cfg(path), "d", Counters(), {})
    for i in range(1, n + 1):
        box.put(_msg(i, 20_000 if i == BIG_SEQ else 100))
    box.flush()
    for item in box.fetch(0, 3):  # three dead letters travel along
        box.quarantine(item, "test")
    box.close()
    page, lost = _lost_on(path, target)
    _damage(path, page)
    damaged = _sha(path)

    counters = Counters()
    box = open_outbox(_cfg(path), "d", counters, {})
    expected = [s for s in range(4, n + 1) if s not in lost]
    assert counters.get("outbox.corrupt") == 1
    assert counters.get("outbox.salvaged") == len(expected)
    assert counters.get("outbox.lost") == len(lost)
    asides = list(tmp.glob("o.db.corrupt-*"))
    assert len(asides) == 1 and _sha(asides[0]) == damaged  # kept as found, for inspection
    assert box.mode == f"sqlite {path}" and len(box) == len(expected)
    assert box.dead_letter_count() == 3
    items = box.fetch(0, n)
    assert [i.seq for i in items] == expected  # in seq order, ids and payloads intact
    assert all(i.msg == _msg(i.seq, 20_000 if i.seq == BIG_SEQ else 100) for i in items)
    box.put(_msg(n + 1))
    assert box.fetch(n, 10)[0].seq == n + 1
    box.close()


def test_damage_found_mid_run_is_salvaged_without_a_crash(tmp: Path) -> None:
    path, n = tmp / "o.db", 20_000  # ~6 MB: more than SQLite's page cache, so reads hit disk
    _fill(path, n, size=200)
    leaves = _pages(path, "messages", "leaf")
    page = leaves[len(leaves) // 10]
    lost = set(_leaf_rowids(path.read_bytes(), page, 4096))
    counters = Counters()
    box = open_outbox(_cfg(path), "d", counters, {})  # healthy at open
    _damage(path, page)  # then a sector goes bad under the running agent
    box.put(_msg(n + 1))
    delivered = _drain(box)
    assert delivered == [f"id{s - 1}" for s in range(1, n + 1) if s not in lost] + [f"id{n + 1}"]
    assert len(box) == 0 and box.wait_empty(0)
    assert counters.get("outbox.errors") == 1 and counters.get("outbox.corrupt") == 1
    assert counters.get("outbox.lost") == len(lost)
    assert box.mode == f"sqlite {path}"  # running on the salvaged copy
    box.put(_msg(n + 2))
    assert _drain(box) == [f"id{n + 2}"]
    box.close()


def test_damage_on_a_full_disk_goes_on_in_memory_and_is_salvaged_later() -> None:
    with tmpfs("16m") as folder:
        path, n = folder / "o.db", 20_000  # more than SQLite's page cache (see above)
        _fill(path, n, size=200)
        leaves = _pages(path, "messages", "leaf")
        page = leaves[len(leaves) // 10]
        lost = set(_leaf_rowids(path.read_bytes(), page, 4096))
        counters = Counters()
        box = open_outbox(_cfg(path), "d", counters, {})
        _fill_disk(folder)  # no room for a salvaged copy
        _damage(path, page)
        box.put(_msg(n + 1))
        delivered = _drain(box)
        assert delivered[-1] == f"id{n + 1}"  # new messages still flow, from memory
        before = delivered[:-1]
        assert before == [f"id{i}" for i in range(len(before))] and len(before) < min(lost)
        assert box.mode == f"memory (fallback: unreadable: {path})"
        assert len(box) == 0 and counters.get("outbox.errors") >= 1
        box.close()
        assert not list(folder.glob("*.corrupt-*"))  # left in place for the next start
        (folder / "filler").unlink()
        counters = Counters()
        again = open_outbox(_cfg(path), "d", counters, {})
        assert counters.get("outbox.corrupt") == 1 and counters.get("outbox.lost") == len(lost)
        seqs = [s.seq for s in again.fetch(0, n)]
        assert set(seqs).isdisjoint(lost)
        assert set(range(max(lost) + 1, n + 1)) <= set(seqs)  # nothing after the damage lost
        again.close()


# -- a disk that fills up while messages flow --------------------------------------------------


def test_disk_full_mid_run_keeps_the_accounting_right(caplog: pytest.LogCaptureFixture) -> None:
    with tmpfs("512k") as folder:
        counters = Counters()
        box = open_outbox(_cfg(folder / "o.db"), "d", counters, {})
        put: list[str] = []
        acked: list[str] = []
        cursor, extra = 0, 300
        for i in range(5000):
            box.put(_msg(i, 1000))
            put.append(f"id{i}")
            if i % 10 == 9:  # the sender keeps up partly: half of what arrives
                items = box.fetch(cursor, 5)
                cursor = items[-1].seq if items else cursor
                box.ack(items)
                acked += [s.msg.id for s in items]
            if counters.get("outbox.errors"):
                extra -= 1
                if not extra:
                    break
        assert "write failed (database or disk is full)" in caplog.text
        assert "delete failed (database or disk is full)" in caplog.text
        assert counters.get("outbox.errors") == 2  # one per kind of failure, not per attempt
        assert "new messages in memory" in box.mode
        waiting = [s.msg.id for s in box.fetch(cursor, 10_000)]
        assert sorted(acked + waiting) == sorted(put)  # each exactly once: acked or waiting
        assert len(box) == len(waiting)
        rest = []
        while items := box.fetch(cursor, 7):
            rest += [s.msg.id for s in items]
            cursor = items[-1].seq
            box.ack(items)
        assert rest == waiting and len(box) == 0 and box.wait_empty(0)
        box.close()


def test_disk_full_then_space_again_moves_memory_to_disk() -> None:
    with tmpfs("1m") as folder:
        path = folder / "o.db"
        counters = Counters()
        box = Outbox(SqliteStore(path, "normal"), _cfg(path), counters, retry_interval=0)
        for i in range(10):
            box.put(_msg(i))
        first = box.fetch(0, 10)
        _fill_disk(folder)
        for i in range(10, 400):  # more than the WAL's slack: writes fail
            box.put(_msg(i, 1000))
            box.flush()
        assert "new messages in memory" in box.mode
        box.ack(first)  # the delete may fail: the messages still count as delivered
        assert len(box) == 390
        (folder / "filler").unlink()
        box.flush()  # retry (interval 0): tombstones deleted, memory moved to the file
        assert box.mode == f"sqlite {path}"
        box.close()
        again = open_outbox(_cfg(path), "d", Counters(), {})
        assert [s.msg.id for s in again.fetch(0, 1000)] == [f"id{i}" for i in range(10, 400)]
        again.close()


# -- dead letters ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_quarantine_moves_a_message_out_of_the_queue(tmp: Path, where: str) -> None:
    counters = Counters()
    cfg = _cfg(tmp / "o.db", enabled=where == "sqlite")
    box = open_outbox(cfg, "d", counters, {})
    for i in range(5):
        box.put(_msg(i))
    items = box.fetch(0, 10)
    box.quarantine(items[2], "too large for the broker")
    box.quarantine(items[2], "again")  # already out: nothing happens
    assert len(box) == 4 and box.dead_letter_count() == 1
    assert counters.get("outbox.quarantined.detections") == 1
    assert [s.msg.id for s in box.fetch(0, 10)] == ["id0", "id1", "id3", "id4"]
    box.ack(items)
    assert len(box) == 0 and box.wait_empty(0)
    box.close()
    if where == "sqlite":
        db = sqlite3.connect(tmp / "o.db")
        rows = db.execute("SELECT id, reason FROM dead_letters").fetchall()
        assert rows == [("id2", "too large for the broker")]
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        db.close()


@pytest.mark.parametrize(
    ("n", "size", "kept", "dropped"),
    [(DEAD_LETTERS_MAX + 5, 100, DEAD_LETTERS_MAX, 5), (12, 2**20 - 100, 10, 2)],
    ids=["by count", "by bytes"],
)
def test_dead_letters_are_bounded(tmp: Path, n: int, size: int, kept: int, dropped: int) -> None:
    counters = Counters()
    box = open_outbox(_cfg(tmp / "o.db", max_bytes="1GiB"), "d", counters, {})
    for i in range(n):
        box.put(_msg(i, size))
    for item in box.fetch(0, n):
        box.quarantine(item, "test")
    assert box.dead_letter_count() == kept and len(box) == 0
    assert counters.get("outbox.dead_letters_dropped") == dropped
    box.close()
    db = sqlite3.connect(tmp / "o.db")
    ids = [r[0] for r in db.execute("SELECT id FROM dead_letters ORDER BY rowid")]
    db.close()
    assert ids == [f"id{i}" for i in range(dropped, n)]  # the oldest went first


def test_old_outbox_without_dead_letters_is_migrated(tmp: Path) -> None:
    path = tmp / "o.db"
    db = sqlite3.connect(path)
    db.executescript(
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, kind TEXT NOT NULL, qos INTEGER NOT NULL,"
        " retain INTEGER NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL);"
        "CREATE INDEX messages_kind ON messages (kind, seq);"
        "INSERT INTO messages VALUES (7, 'old', 't/detections', x'7b7d', 'detections', 1, 0,"
        " 1.5, 2);"
    )
    db.close()
    box = open_outbox(_cfg(path), "d", Counters(), {})
    [item] = box.fetch(0, 10)
    assert item == Stored(7, 1.5, OutMessage("old", "t/detections", b"{}", "detections"))
    box.quarantine(item, "test")
    assert box.dead_letter_count() == 1 and len(box) == 0
    box.close()


# -- end to end, through the real CLI -------------------------------------------------------


def _agent_config(tmp: Path, broker: Broker, outbox: Path, **source: Any) -> Path:
    cam = {"source": {"type": "images", "path": str(IMAGES), **source}, "publish_empty": True}
    cfg = base_config(broker.port, SSD, SSD_LABELS, {"cam": cam})
    cfg["outbox"]["path"] = str(outbox)
    return write_config(tmp, cfg)


def test_cli_salvages_a_damaged_outbox_and_delivers_everything(tmp: Path) -> None:
    broker = Broker().start()
    sub = Subscriber(broker.port, "edge/test-dev/#")
    agent = None
    try:
        path = tmp / "state" / "o.db"
        path.parent.mkdir()
        _fill(path, 2000, topic="edge/test-dev/old")  # a previous run's backlog
        leaves = _pages(path, "messages", "leaf")
        page = leaves[len(leaves) // 2]
        lost = set(_leaf_rowids(path.read_bytes(), page, 4096))
        _damage(path, page)
        agent = AgentProcess(_agent_config(tmp, broker, path))
        assert agent.wait(300) == 0, agent.output
        expected = {f"id{i}" for i in range(2000) if i + 1 not in lost}  # seq = i + 1
        sub.wait_for(lambda s: len(s.on("old/detections")) >= len(expected), 10)
        sub.wait_for(lambda s: len(s.on("cam/detections")) >= N_IMAGES, 10)
        assert {json.loads(m.payload)["id"] for m in sub.on("old/detections")} == expected
        assert sorted(m.json()["frame"] for m in sub.on("cam/detections")) == list(range(N_IMAGES))
        assert f"salvaged {len(expected)} messages" in agent.output
        assert "Traceback" not in agent.output
        assert len(list(path.parent.glob("o.db.corrupt-*"))) == 1
    finally:
        if agent is not None:
            agent.kill()
        sub.close()
        broker.stop()


def test_cli_second_agent_on_the_same_outbox_exits_2(tmp: Path) -> None:
    broker = Broker().start()
    sub = Subscriber(broker.port, "edge/test-dev/#")
    first = second = None
    try:
        config = _agent_config(tmp, broker, tmp / "o.db", realtime=True, fps=1.0)
        first = AgentProcess(config)
        assert first.wait_for_line("connected to broker", 60), first.output
        second = AgentProcess(config)
        assert second.wait(60) == 2
        errors = [line for line in second.lines if "in use by another edge-agent" in line]
        assert len(errors) == 1, second.output
        assert f"(pid {first.proc.pid}: edge-agent run --config {config})" in errors[0]
        assert "Traceback" not in second.output
        assert first.wait(300) == 0, first.output
        sub.wait_for(lambda s: len(s.on("cam/detections")) >= N_IMAGES, 10)
        frames = sorted(m.json()["frame"] for m in sub.on("cam/detections"))
        assert frames == list(range(N_IMAGES))
    finally:
        for agent in (first, second):
            if agent is not None:
                agent.kill()
        sub.close()
        broker.stop()


def test_cli_batch_run_on_a_disk_that_fills_up_exits_0(tmp: Path) -> None:
    broker = Broker().start()
    sub = Subscriber(broker.port, "edge/test-dev/#")
    agent = None
    try:
        with tmpfs("2m") as folder:
            path = folder / "o.db"
            _fill(path, 150, size=2000, topic="edge/test-dev/old")  # a backlog to deliver
            assert sorted(p.name for p in folder.iterdir()) == ["o.db", "o.db.lock"]
            _fill_disk(folder)
            filler = folder / "filler"
            os.truncate(filler, filler.stat().st_size - 40_000)  # room to open, not to run
            agent = AgentProcess(_agent_config(tmp, broker, path))
            assert agent.wait(300) == 0, agent.output
            assert "write failed (database or disk is full)" in agent.output
            assert "delete failed (database or disk is full)" in agent.output
            assert "Traceback" not in agent.output
        sub.wait_for(lambda s: len(s.on("cam/detections")) >= N_IMAGES, 10)
        old = {json.loads(m.payload)["id"] for m in sub.on("old/detections")}
        assert old == {f"id{i}" for i in range(150)}
        frames = sorted(m.json()["frame"] for m in sub.on("cam/detections"))
        assert frames == list(range(N_IMAGES))
    finally:
        if agent is not None:
            agent.kill()
        sub.close()
        broker.stop()
