"""Opening the outbox: where it is, who owns it, and what is wrong with it when it cannot open.

Faults are told apart, because each has its own right answer:

- another agent holds the file, a directory (or other non-file) is at the path, a parent is
  a file: `OutboxError` (the user must fix the config; exit 2);
- permission denied, read-only file system, disk full, I/O errors: a loud fallback to memory.
  The file is never moved or modified, so its messages are sent once it can be opened;
- real damage (`PRAGMA quick_check` fails, or SQLite says malformed / not a database):
  salvage every readable message into a fresh file and keep the damaged one aside.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shlex
import sqlite3
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from edge_agent.config.schema import OutboxConfig
from edge_agent.errors import ConfigError
from edge_agent.health import Counters
from edge_agent.publish.outbox import Outbox
from edge_agent.publish.outbox_salvage import db_files, remove_db, salvage
from edge_agent.publish.stores import (
    DB_ERRORS,
    MemoryStore,
    SqliteStore,
    db_uri,
    default_path,
    is_corruption,
)
from edge_agent.publish.tiered import Recover

log = logging.getLogger(__name__)

LOW_SPACE = 128 * 1024  # bytes free under which a failed open is blamed on a full disk
SQLITE_FULL, SQLITE_BUSY, SQLITE_LOCKED = 13, 5, 6
_CAUSES = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk full (quota)",
    errno.EIO: "I/O error",
}
_FIXES = {
    "permission denied": "check the owner and mode of the file and its folder",
    "read-only file system": "the file system is mounted read-only",
    "disk full": "free space on the disk",
}


class OutboxError(ConfigError):
    """The outbox path cannot be used as configured (in use, a directory, a file as parent)."""


class Unavailable(Exception):
    """The outbox file cannot be used now for a reason outside the config (`cause`)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def os_cause(exc: OSError) -> str | None:
    """A short name for an environmental OSError (permission, read-only, full), else None."""
    return _CAUSES.get(exc.errno or 0)


def _free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use reserved blocks
    return blocks * st.f_frsize


def probe(path: Path) -> str | None:
    """Why the outbox at `path` cannot be opened read-write, found with plain file calls
    that change nothing (SQLite's own errors do not say)."""
    for file in db_files(path):
        try:
            os.close(os.open(file, os.O_RDWR | os.O_CLOEXEC))
        except FileNotFoundError:
            continue
        except OSError as exc:
            if os_cause(exc):
                return os_cause(exc)
    trial = path.with_name(f".{path.name}.probe-{os.getpid()}")
    try:
        os.close(os.open(trial, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        trial.unlink()
    except OSError as exc:
        if os_cause(exc):
            return os_cause(exc)
    with contextlib.suppress(OSError):
        if _free_bytes(path.parent) < LOW_SPACE:
            return "disk full"
    return None


def cause_of(exc: BaseException, path: Path) -> str:
    """Name the environmental cause of a failed open or write."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == SQLITE_FULL:
        return "disk full"
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return "locked by another program"
    if isinstance(exc, OSError) and os_cause(exc):
        return os_cause(exc) or ""
    return probe(path) or str(exc)


class OutboxLock:
    """An exclusive flock on `<db>.lock`, holding the owner's pid and command line. The
    kernel releases it when the process dies, so a crash never leaves a stale lock."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, db: Path) -> OutboxLock | None:
        """Lock the outbox; None when no lock file can be made (then nothing can be written
        there either). Raises OutboxError naming the other agent when it is held."""
        path = db.with_name(f"{db.name}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            try:  # a lock file we may not write can still be locked
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                log.debug("cannot create the outbox lock %s: %s", path, exc)
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            if owner == "pid unknown":  # it may have locked but not yet written its note
                time.sleep(0.2)
                owner = _owner(fd)
            os.close(fd)
            raise OutboxError(
                f"outbox {db} is in use by another edge-agent ({owner}): give each agent its "
                "own device_id or outbox.path"
            ) from None
        except OSError as exc:  # e.g. a file system without locks: run, but say so
            log.warning("cannot lock outbox %s (%s): make sure no other agent uses it", db, exc)
        with contextlib.suppress(OSError):  # the lock works without the note
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{_command_line()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        """Unlock (the file stays; its content is rewritten by the next owner)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _command_line() -> str:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog == "__main__.py":  # python -m edge_agent
        prog = "edge-agent"
    return shlex.join([prog, *sys.argv[1:]])


def _owner(fd: int) -> str:
    try:
        lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    except OSError:
        lines = []
    if not lines or not lines[0].strip().isdigit():
        return "pid unknown"
    return f"pid {lines[0].strip()}: {lines[1]}" if len(lines) > 1 else f"pid {lines[0]}"


def check_path(path: Path) -> None:
    """Raise OutboxError when the path can never hold an outbox (a directory, a device, a
    parent that is a file). Permission problems are left to the open, which falls back."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError:
        return
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise OutboxError(
                f"outbox {path} is a directory: set outbox.path to a file in it, "
                f"e.g. {path / 'outbox.db'}"
            )
        if not stat.S_ISREG(mode):
            raise OutboxError(
                f"outbox {path} is not a regular file (a {_file_type(mode)}): set "
                "outbox.path to a file"
            )
        return
    for parent in path.parents:
        try:
            parent_mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return
        if not stat.S_ISDIR(parent_mode):
            raise OutboxError(
                f"outbox {path} cannot be created: {parent} is a file, not a directory "
                "(remove it or set outbox.path elsewhere)"
            )
        return


def _file_type(mode: int) -> str:
    kinds = {
        "fifo": stat.S_ISFIFO,
        "socket": stat.S_ISSOCK,
        "character device": stat.S_ISCHR,
        "block device": stat.S_ISBLK,
    }
    for name, test in kinds.items():
        if test(mode):
            return name
    return "special file"


def quick_check(path: Path) -> str | None:
    """None when the existing file is healthy, else what is wrong with it. Raises Unavailable
    when it cannot be opened read-write (nothing is written either way)."""
    try:
        db = sqlite3.connect(db_uri(path, "rw"), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise Unavailable(cause_of(exc, path)) from None
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        if is_corruption(exc):
            return str(exc)
        raise Unavailable(cause_of(exc, path)) from None
    finally:
        db.close()
    problems = [str(r[0]) for r in rows]
    return None if problems == ["ok"] else "; ".join(problems[:3])


def open_disk(path: Path, sync: str, counters: Counters) -> SqliteStore:
    """Open (or create) the SQLite outbox, salvaging a damaged one; raises Unavailable."""
    existed = _exists(path)
    if existed is None:
        raise Unavailable(probe(path) or "cannot look at the file")
    problem = quick_check(path) if existed else None
    if problem is None:
        try:
            return SqliteStore(path, sync)
        except DB_ERRORS as exc:
            if not existed:
                remove_db(path)  # do not leave a half-made file behind
            if not is_corruption(exc):
                raise Unavailable(cause_of(exc, path)) from None
            problem = str(exc)
    try:
        return salvage(path, sync, counters, problem)
    except DB_ERRORS as exc:
        raise Unavailable(
            f"damaged ({problem}) and cannot be salvaged now: {cause_of(exc, path)}"
        ) from None


def _exists(path: Path) -> bool | None:
    """Whether the file exists; None when that cannot be seen (no permission)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return None
    return True


def pending(path: Path) -> int | None:
    """How many messages the file holds, read without writing anything; None if unknown."""
    try:
        no_wal = os.stat(f"{path}-wal").st_size == 0
    except FileNotFoundError:
        no_wal = True
    except OSError:
        no_wal = False
    peeks = ["ro", "immutable"] if no_wal else ["ro"]
    for mode in peeks:  # immutable ignores the WAL: only when there is none
        try:
            db = sqlite3.connect(db_uri(path, mode), uri=True)
            try:
                return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
            finally:
                db.close()
        except (sqlite3.Error, OSError):
            continue
    return None


def _fallback(
    path: Path, cause: str, lock: OutboxLock | None, cfg: OutboxConfig, counters: Counters
) -> Outbox:
    exists = _exists(path)
    if exists is None:
        kept = "the file, if any, is left untouched and its messages sent when it can be opened"
    elif exists:
        count = pending(path)
        held = "its pending messages" if count is None else f"its {count} pending messages"
        kept = f"the file is left untouched and {held} will be sent when it can be opened"
    else:
        kept = "no outbox file was created"
    fix = _FIXES.get(cause)
    log.error(
        "outbox %s cannot be used (%s%s): messages are kept in memory only and lost if the "
        "agent stops; %s",
        path,
        cause,
        f"; {fix}" if fix else "",
        kept,
    )
    counters.inc("outbox.fallback")
    return Outbox(
        MemoryStore(), cfg, counters, mode=f"memory (fallback: {cause}: {path})", lock=lock
    )


def _recover(path: Path, sync: str, counters: Counters) -> Recover:
    def recover(store: SqliteStore, skip: frozenset[int]) -> SqliteStore | None:
        """Salvage the failing file in place; None (the file stays) when that fails."""
        with contextlib.suppress(*DB_ERRORS):
            store.close()
        try:
            return salvage(path, sync, counters, "a read failed while running", skip)
        except DB_ERRORS as exc:
            log.error("outbox %s cannot be salvaged now: %s", path, cause_of(exc, path))
            return None

    return recover


def open_outbox(
    cfg: OutboxConfig, device_id: str, counters: Counters, environ: Mapping[str, str]
) -> Outbox:
    """The outbox the runtime uses: on disk (locked, checked, salvaged if damaged), or in
    memory when disabled or when the disk cannot be used (loudly). Raises OutboxError for
    a path that cannot work as configured or that another agent holds."""
    if not cfg.enabled:
        log.warning("outbox disabled: undelivered messages are lost if the agent stops")
        return Outbox(MemoryStore(), cfg, counters, mode="memory (disabled)")
    path = Path(os.path.abspath(cfg.path or default_path(device_id, environ)))
    check_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if not os_cause(exc):
            raise OutboxError(f"cannot create the folder of outbox {path}: {exc}") from None
        return _fallback(path, os_cause(exc) or "", None, cfg, counters)
    lock = OutboxLock.acquire(path)
    try:
        store = open_disk(path, cfg.sync, counters)
    except Unavailable as exc:
        return _fallback(path, exc.cause, lock, cfg, counters)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if lock is None:
        log.warning(
            "cannot create the lock file of outbox %s: make sure no other agent uses it", path
        )
    log.info("outbox: %s (max %d bytes, max age %.0fs)", path, cfg.max_bytes, cfg.max_age)
    return Outbox(
        store,
        cfg,
        counters,
        mode=f"sqlite {path}",
        lock=lock,
        recover=_recover(path, cfg.sync, counters),
    )
