"""Choose frames worth relabeling: low-confidence detections, under a per-minute budget."""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from edge_agent.config.schema import SamplesConfig
from edge_agent.core.detections import Detections

WINDOW_S = 60.0
# Replay timestamps are epoch + offset; without slack, an entry exactly 60 s old could survive
# or expire depending on float rounding.
EPSILON_S = 1e-6


class RateLimit:
    """At most `limit` events in any 60 s of frame time (`ts`): an event at t is allowed when
    fewer than `limit` allowed events have a ts in (t - 60, t]."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._times: deque[float] = deque()

    def allow(self, ts: float) -> bool:
        """Record and allow an event at ts, or refuse it when the window is full."""
        while self._times and self._times[0] <= ts - WINDOW_S + EPSILON_S:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(ts)
        return True


class LowConfidenceSampler:
    """Picks frames with a detection scoring in [min_score, max_score) of a label the camera
    reports (`allowed`: by class id, the last entry for ids the label list does not name)."""

    reason = "low_confidence"

    def __init__(self, cfg: SamplesConfig, allowed: npt.NDArray[np.bool_]) -> None:
        self.cfg = cfg
        self.allowed = allowed
        self.limit = RateLimit(cfg.max_per_minute)

    def _rows(self, class_id: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        last = len(self.allowed) - 1
        return np.where((class_id >= 0) & (class_id < last), class_id, last)

    def candidate(self, raw: Detections) -> bool:
        """True when the frame holds an uncertain detection of a label the camera reports."""
        band = (raw.score >= self.cfg.min_score) & (raw.score < self.cfg.max_score)
        return bool((band & self.allowed[self._rows(raw.class_id)]).any())

    def select(self, raw: Detections, ts: float) -> Detections | None:
        """The boxes to publish with the sample, or None when the frame is not sampled."""
        if not self.cfg.enabled or not self.candidate(raw):
            return None
        if not self.limit.allow(ts):
            return None
        return raw[raw.score >= self.cfg.min_score]
