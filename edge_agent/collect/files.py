"""Files of a dataset folder: atomic writes, the folder lock, and rejected messages.

An image is written to a temporary name, flushed to disk, renamed, and its folder synced
before the index row that names it commits: after a crash the index never points at a missing
or half-written file (an unreferenced file may be left; the redelivered message rewrites it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from edge_agent.errors import UserError

LOCK_NAME = ".collect.lock"
REJECTED_DIR = "rejected"
REJECTED_KEEP_BYTES = 1 << 20  # a huge rejected payload keeps only its first MiB


def write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Replace path with data: temp file in the same folder, fsync (if sync), rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as stream:
        stream.write(data)
        if sync:
            stream.flush()
            os.fsync(stream.fileno())
    os.replace(tmp, path)


def sync_dirs(folders: Iterable[Path]) -> None:
    """fsync folders so the renames into them survive a power loss."""
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write path atomically (no fsync: an export) unless it already holds data."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    write_atomic(path, data, sync=False)
    return True


class FolderLock:
    """An exclusive lock on a dataset folder: one collector (or rebuild) per folder."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._stream: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise a UserError naming the holder."""
        stream = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            stream.seek(0)
            holder = stream.read(200).strip() or "another process"
            stream.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"in use by another collector ({holder}): give each collector its own --out",
                    where=f"--out {self.path.parent}",
                ) from None
            raise
        stream.seek(0)
        stream.truncate()
        stream.write(f"pid {os.getpid()}\n")
        stream.flush()
        self._stream = stream

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process dies)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class RejectedStore:
    """Writes `rejected/<time>-<n>.json` (the raw payload, cut at 1 MiB) and
    `<time>-<n>.reason.json` (topic, reason, detail, size)."""

    def __init__(self, out: Path) -> None:
        self.folder = out / REJECTED_DIR
        self._n = 0

    def add(self, topic: str, payload: bytes, reason: str, detail: str) -> Path:
        """Store one rejected message durably; returns the payload file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        while True:
            self._n += 1
            stem = f"{stamp}-{self._n}"
            if not (self.folder / f"{stem}.json").exists():
                break
        kept = payload[:REJECTED_KEEP_BYTES]
        write_atomic(self.folder / f"{stem}.json", kept)
        info: dict[str, Any] = {
            "topic": topic,
            "reason": reason,
            "detail": detail,
            "bytes": len(payload),
            "truncated": len(kept) < len(payload),
            "received_at": round(time.time(), 3),
        }
        write_atomic(self.folder / f"{stem}.reason.json", json.dumps(info, indent=1).encode())
        sync_dirs([self.folder])
        return self.folder / f"{stem}.json"
