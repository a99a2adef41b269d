"""Opening files the user names (config, model, labels, password, certificates): regular files
only, so a FIFO, a device or a socket given by mistake is refused at once instead of blocking
the agent forever (opening a FIFO for reading waits for a writer, reading a device never ends)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


class NotRegularFile(OSError):
    """The path exists but is not a regular file."""

    def __init__(self, path: Path, mode: int) -> None:
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        super().__init__(f"{path} is {kind}, not a regular file")
        self.strerror = f"is {kind}, not a regular file"
        self.filename = str(path)


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; anything else raises NotRegularFile (an OSError)."""
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: Path) -> None:
    """Raise NotRegularFile (or FileNotFoundError) unless path is a regular file, for files
    that a library opens by name (TLS certificates)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path, mode)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (models are megabytes)."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (fsync of the directory itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
