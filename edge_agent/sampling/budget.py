"""Sliding-window budgets in frame time, and a deterministic per-camera random draw."""

from __future__ import annotations

import zlib
from collections import deque

import numpy as np

from edge_agent.sampling.config import Budget

# Replay timestamps are epoch + offset; without slack, an entry exactly one window old could
# survive or expire depending on float rounding.
EPSILON_S = 1e-6


class Window:
    """At most `limit` takes in any `seconds` of frame time: a take at t is allowed when
    fewer than `limit` takes have a ts in (t - seconds, t]."""

    def __init__(self, seconds: float, limit: int) -> None:
        self.seconds = seconds
        self.limit = limit
        self._times: deque[float] = deque()

    def allows(self, ts: float) -> bool:
        """Whether a take at ts fits (nothing is recorded)."""
        while self._times and self._times[0] <= ts - self.seconds + EPSILON_S:
            self._times.popleft()
        return len(self._times) < self.limit

    def take(self, ts: float) -> None:
        """Record a take at ts."""
        self._times.append(ts)


class Budgets:
    """A strategy's (or a camera's) per-minute, per-hour and per-day limits together."""

    def __init__(self, budget: Budget) -> None:
        self.windows = [Window(seconds, limit) for seconds, limit in budget.limits()]

    def allows(self, ts: float) -> bool:
        """Whether every window has room at ts."""
        return all(w.allows(ts) for w in self.windows)

    def take(self, ts: float) -> None:
        """Spend one sample at ts in every window."""
        for w in self.windows:
            w.take(ts)


class Draw:
    """Bernoulli draws seeded by the camera name: a replay samples the same frames each run."""

    def __init__(self, camera: str, probability: float) -> None:
        self.probability = probability
        self._rng = np.random.default_rng(zlib.crc32(camera.encode()))

    def __call__(self) -> bool:
        """One draw (call once per processed frame)."""
        return bool(self._rng.random() < self.probability)
