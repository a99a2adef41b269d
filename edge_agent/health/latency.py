"""Inference times of one camera, kept in a fixed ring for percentiles over a stats interval."""

from __future__ import annotations

import threading

import numpy as np

RING_SIZE = 512  # the latest times an interval's percentiles are taken from


class LatencyRing:
    """The latest `size` inference times (ms). The post thread adds one per frame (a store
    into a preallocated array); the stats reader takes the percentiles of the times added
    since its last read."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._values = np.zeros(size, np.float32)
        self._size = size
        self._written = 0  # times added since start
        self._mark = 0  # `_written` at the last interval read
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        """Record one inference time."""
        with self._lock:
            self._values[self._written % self._size] = ms
            self._written += 1

    def take_interval(self) -> dict[str, float] | None:
        """{p50, p95} (ms) of the times added since the last call (the latest `size` of them
        when more arrived), or None when none arrived."""
        with self._lock:
            n = min(self._written - self._mark, self._size)
            self._mark = self._written
            if n == 0:
                return None
            slots = np.arange(self._written - n, self._written) % self._size
            values = self._values[slots]  # a copy: percentiles are computed outside the lock
        p50, p95 = np.percentile(values, [50, 95])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}
