"""`edge-agent run` as a child process (its peak RSS) and an MQTT receiver that timestamps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a running process (VmHWM), KiB; 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0
    )


def run_child(cfg: Path, stop: Callable[[], bool] | None = None, timeout: float = 900) -> int:
    """`edge-agent run` until it exits, or SIGTERM once `stop()` is true; its peak RSS in KiB.

    The peak is VmHWM read while it runs: wait4()'s ru_maxrss would also count this process,
    because the child starts as a (v)fork of it and the kernel keeps the larger peak at exec."""
    argv = [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)]
    log = cfg.parent / "agent.log"  # a file, not a pipe: a chatty child never blocks on it
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline, signalled, peak = time.monotonic() + timeout, False, 0
    while proc.poll() is None:
        peak = max(peak, vm_hwm_kib(proc.pid))
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
