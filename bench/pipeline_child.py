"""`edge-agent run` as a child process (its peak RSS) and an MQTT receiver that timestamps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent


class Receiver:
    """Every message on the device's topics with its receipt time (epoch s)."""

    def __init__(self, port: int, device: str) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(f"edge/{device}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (time.time(), m.topic, bytes(m.payload))
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("subscriber did not subscribe")

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def detections(self) -> list[tuple[float, dict[str, Any]]]:
        """(receipt time, payload) of every detections message."""
        return [
            (t, json.loads(p)) for t, topic, p in self.messages if topic.endswith("/detections")
        ]

    def last_counters(self) -> dict[str, int]:
        """Counters of the last stats message (the final one, after a clean exit)."""
        stats = [p for _, topic, p in self.messages if topic.endswith("/stats")]
        return dict(json.loads(stats[-1]).get("counters", {})) if stats else {}


@dataclass
class Peak:
    """Peak memory of a child, KiB: VmHWM (the kernel's peak RSS) and the largest anonymous
    (private heap, arenas, tensors, frames) and file-backed (mapped libraries) parts seen."""

    hwm: int = 0
    anon: int = 0
    file: int = 0

    def sample(self, pid: int) -> None:
        """Read /proc/<pid>/status once (nothing once the process has exited)."""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

        def kib(key: str) -> int:
            parts = fields.get(key, "0").split()
            return int(parts[0]) if parts else 0

        self.hwm = max(self.hwm, kib("VmHWM"))
        self.anon = max(self.anon, kib("RssAnon"))
        self.file = max(self.file, kib("RssFile"))


def evict_libraries(extra: list[Path] | None = None) -> int:
    """Drop the page cache of the interpreter's and the venv's shared objects (and `extra`
    files), so a child maps them as a freshly booted device does. Files just written by pip
    sit in the page cache as large folios, which a kernel with large-folio ext4 maps whole:
    the same libraries then add ~40 MB of (shared, clean) RSS. Returns the files evicted."""
    roots = {sysconfig.get_paths()["platlib"], sysconfig.get_paths()["purelib"], sys.base_prefix}
    files = [p for root in roots for p in Path(root).rglob("*.so*") if p.is_file()]
    count = 0
    for path in [*files, *(extra or [])]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fdatasync(fd)  # dirty pages are not dropped: write them back first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return count


def run_child(cfg: Path, stop: Callable[[], bool] | None = None, timeout: float = 900) -> Peak:
    """`edge-agent run` until it exits, or SIGTERM once `stop()` is true; its peak memory.

    The peak is VmHWM read while it runs: wait4()'s ru_maxrss would also count this process,
    because the child starts as a (v)fork of it and the kernel keeps the larger peak at exec."""
    argv = [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)]
    log = cfg.parent / "agent.log"  # a file, not a pipe: a chatty child never blocks on it
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline, signalled, peak = time.monotonic() + timeout, False, Peak()
    while proc.poll() is None:
        peak.sample(proc.pid)
        if stop is not None and not signalled and stop():
            proc.send_signal(signal.SIGTERM)
            signalled = True
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"edge-agent run {cfg} exited {proc.returncode}: {tail}")
    return peak


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
