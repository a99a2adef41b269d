"""Choose frames worth relabeling: low-confidence detections, under a per-minute budget."""

from __future__ import annotations

from collections import deque

from edge_agent.config.schema import DetectConfig, SamplesConfig
from edge_agent.types import Detection, FrameResult

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
    """Picks frames with a detection scoring in [min_score, max_score) of a wanted label."""

    reason = "low_confidence"

    def __init__(self, cfg: SamplesConfig, detect: DetectConfig) -> None:
        self.cfg = cfg
        self.wanted = set(detect.labels) if detect.labels is not None else None
        self.limit = RateLimit(cfg.max_per_minute)

    def candidate(self, result: FrameResult) -> bool:
        """True when the frame holds an uncertain detection of a label the camera reports."""
        return any(
            self.cfg.min_score <= d.score < self.cfg.max_score
            and (self.wanted is None or d.label in self.wanted)
            for d in result.raw
        )

    def select(self, result: FrameResult) -> tuple[Detection, ...] | None:
        """The detections to publish with the sample, or None when the frame is not sampled."""
        if not self.cfg.enabled or not self.candidate(result):
            return None
        if not self.limit.allow(result.frame.ts):
            return None
        return tuple(d for d in result.raw if d.score >= self.cfg.min_score)
