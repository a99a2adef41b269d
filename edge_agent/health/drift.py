"""The drift signal of one camera: per label, the mean confidence and the detections per hour of
the boxes it reports, learned over a baseline of frame time, compared with a rolling window.

Time is the frames' `ts`, not the wall clock, so a replay (whose `ts` advance at the file's
rate) is judged like the same hours of a live camera. The baseline is the first
`drift.baseline` seconds after the first frame; the window is the last `drift.window` seconds
after the baseline, kept as BUCKETS rolling buckets of per-class sums. A detection is one
reported box on one frame (a person in view for 10 s at 10 fps counts 100).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.control.config import DriftConfig

BUCKETS = 60  # the window moves in steps of window / BUCKETS
HOUR = 3600.0


def _label(labels: Sequence[str], class_id: int) -> str:
    return labels[class_id] if class_id < len(labels) else f"class_{class_id}"


def _figures(count: int, total: float, seconds: float) -> dict[str, Any]:
    """{mean_score, per_hour, count}; a figure without data is null."""
    return {
        "mean_score": round(total / count, 4) if count else None,
        "per_hour": round(count * HOUR / seconds, 2) if seconds > 0 else None,
        "count": count,
    }


def _add(
    count: npt.NDArray[np.int64],
    total: npt.NDArray[np.float64],
    class_id: npt.NDArray[np.int64],
    score: npt.NDArray[np.float32],
) -> None:
    """Add one frame's boxes to per-class sums in place (two bincounts, no loop over boxes)."""
    if class_id.size:
        count += np.bincount(class_id, minlength=len(count))
        total += np.bincount(class_id, weights=score, minlength=len(total))


@dataclass(frozen=True)
class _Totals:
    """Per-class sums over one period, and the seconds of frame time it covers."""

    count: npt.NDArray[np.int64]
    score: npt.NDArray[np.float64]
    seconds: float


class DriftMonitor:
    """Per-class sums of one camera's reported boxes; fed by its post thread (one call per
    frame, vectorized), read by the stats builder (thread-safe)."""

    def __init__(self, camera: str, cfg: DriftConfig, labels: Sequence[str]) -> None:
        self.camera = camera
        self.cfg = cfg
        self._labels = list(labels)
        n = max(len(self._labels), 1)
        self._base_count = np.zeros(n, np.int64)
        self._base_score = np.zeros(n, np.float64)
        self._win_count = np.zeros((BUCKETS, n), np.int64)
        self._win_score = np.zeros((BUCKETS, n), np.float64)
        self._slot_bucket = np.full(BUCKETS, -1, np.int64)  # the bucket each ring slot holds
        self._width = cfg.window / BUCKETS
        self._start: float | None = None  # ts of the first frame
        self._last = 0.0  # the latest ts seen
        self._bucket = -1  # the latest bucket (0 = the first window step after the baseline)
        self._lock = threading.Lock()

    def observe(
        self, ts: float, class_id: npt.NDArray[np.int64], score: npt.NDArray[np.float32]
    ) -> None:
        """Count one frame's reported boxes (class ids and scores, any number)."""
        if class_id.size and int(class_id.min()) < 0:
            keep = class_id >= 0  # not a class: never counted
            class_id, score = class_id[keep], score[keep]
        with self._lock:
            if self._start is None:
                self._start = ts
            self._last = max(self._last, ts)
            if class_id.size and int(class_id.max()) >= len(self._base_count):
                self._grow(int(class_id.max()) + 1)  # ids past the label list: `class_<id>`
            end = self._start + self.cfg.baseline
            if self._last < end:
                _add(self._base_count, self._base_score, class_id, score)
                return
            # A clock stepping back (live camera, NTP) counts into the current bucket.
            bucket = max(int((ts - end) // self._width), self._bucket)
            slot = bucket % BUCKETS
            if self._slot_bucket[slot] != bucket:
                self._win_count[slot] = 0
                self._win_score[slot] = 0.0
                self._slot_bucket[slot] = bucket
            self._bucket = bucket
            _add(self._win_count[slot], self._win_score[slot], class_id, score)

    def _grow(self, n: int) -> None:
        extra = n - len(self._base_count)
        self._base_count = np.pad(self._base_count, (0, extra))
        self._base_score = np.pad(self._base_score, (0, extra))
        self._win_count = np.pad(self._win_count, ((0, 0), (0, extra)))
        self._win_score = np.pad(self._win_score, ((0, 0), (0, extra)))

    def _periods(self) -> tuple[_Totals, _Totals | None, bool]:
        """(baseline, window or None while learning, whether the window is full)."""
        with self._lock:
            start = self._start if self._start is not None else self._last
            end = start + self.cfg.baseline
            base = _Totals(
                self._base_count.copy(),
                self._base_score.copy(),
                min(self.cfg.baseline, self._last - start),
            )
            if self._last < end or self._start is None:
                return base, None, False
            first = self._bucket - BUCKETS + 1
            live = (self._slot_bucket >= max(first, 0)) & (self._slot_bucket <= self._bucket)
            span = self._last - (end + max(first, 0) * self._width)
            window = _Totals(
                self._win_count[live].sum(axis=0),
                self._win_score[live].sum(axis=0),
                span,
            )
            return base, window, first >= 0

    def report(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """({baseline_complete, labels: {label: {baseline, current}}}, warnings)."""
        base, window, full = self._periods()
        labels: dict[str, Any] = {}
        warnings: list[dict[str, Any]] = []
        seen = base.count if window is None else base.count + window.count
        for i in np.flatnonzero(seen).tolist():
            name = _label(self._labels, i)
            before = _figures(int(base.count[i]), float(base.score[i]), base.seconds)
            now = None
            if window is not None:
                now = _figures(int(window.count[i]), float(window.score[i]), window.seconds)
                warnings += self._judge(name, before, now, full)
            labels[name] = {"baseline": before, "current": now}
        return {"baseline_complete": window is not None, "labels": labels}, warnings

    def _judge(
        self, label: str, before: dict[str, Any], now: dict[str, Any], full: bool
    ) -> list[dict[str, Any]]:
        """Warnings for one label: judged only with min_count detections in the baseline;
        the score also needs min_count in the window, the rate a full window."""
        cfg = self.cfg
        if before["count"] < cfg.min_count:
            return []
        checks = []
        if now["count"] >= cfg.min_count:
            checks.append(("drift_score", before["mean_score"], now["mean_score"]))
        if full and before["per_hour"]:
            checks.append(("drift_rate", before["per_hour"], now["per_hour"] or 0.0))
        out = []
        for kind, was, value in checks:
            drop = (was - value) / was
            if drop > cfg.max_drop:
                out.append(
                    {
                        "kind": kind,
                        "camera": self.camera,
                        "label": label,
                        "baseline": was,
                        "current": value,
                        "drop": round(drop, 3),
                    }
                )
        return out
