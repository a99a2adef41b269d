"""Counters shared by the stages and published in the stats message."""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Thread-safe named counters; names are `area.event` (e.g. `mqtt.dropped.samples`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        """Add to a counter."""
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> int:
        """Current value (0 when never incremented)."""
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        """A sorted copy of every counter."""
        with self._lock:
            return dict(sorted(self._values.items()))
