"""Frames waiting for the detector: `Job`s in one bounded slot per camera."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Protocol

from edge_agent.health import Counters
from edge_agent.types import Frame

END = None  # end-of-stream marker placed in a slot after a finite source's last frame


@dataclass(frozen=True)
class Job:
    """A captured frame on its way: `detect` False when the motion gate skipped it (such
    jobs travel only when something downstream wants every frame)."""

    frame: Frame
    detect: bool


class FrameSink(Protocol):
    """Where a capture thread puts frames (and END after a finite source's last one)."""

    def put(self, item: Frame | None, stop: threading.Event) -> bool:
        """Take one frame or END; False if stop was set while waiting for room."""
        ...


class FrameSlot:
    """Frames waiting for the detector: a bounded FIFO for replay (back-pressure, nothing
    skipped), or a single newest-frame slot for live cameras (older frames are skipped and
    counted, so latency never grows)."""

    def __init__(
        self, camera: str, live: bool, size: int, counters: Counters, wake: threading.Event
    ) -> None:
        self.camera = camera
        self.live = live
        self.counters = counters
        self.wake = wake
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=1 if live else size)

    def put(self, item: Job | None, stop: threading.Event) -> bool:
        """Add a frame (or END); False if stop was set while waiting for room."""
        if self.live and item is not END:
            return self._replace(item)
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                self.wake.set()
                return True
            except queue.Full:
                if stop.is_set() and item is not END:
                    return False

    def _replace(self, item: Job) -> bool:
        while True:
            try:
                self._queue.put_nowait(item)
                self.wake.set()
                return True
            except queue.Full:
                try:
                    old = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if old is END:  # never discard the end marker
                    self._queue.put_nowait(old)
                    return False
                self.counters.inc(f"frames.skipped.{self.camera}")

    def get(self) -> tuple[bool, Job | None]:
        """(True, item) when something was waiting, else (False, None)."""
        try:
            return True, self._queue.get_nowait()
        except queue.Empty:
            return False, None

    def empty(self) -> bool:
        """True when nothing waits."""
        return self._queue.empty()
