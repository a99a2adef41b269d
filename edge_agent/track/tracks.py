"""Per-track state: label vote, score history, confirmation, stillness (plain Python)."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.track.config import TrackConfig

State = Literal["tentative", "tracked", "lost"]
Box = tuple[float, float, float, float]


@dataclass(eq=False, slots=True)
class Track:
    """One object followed across frames. Read it; only the tracker changes it.

    id: public id, 0 until the track has `min_hits` hits; label: class id voted over the
    history (score-weighted); box: the last detected xyxy box; confirmed latches once the
    median of the last `median_window` scores reaches the label's threshold; age: frames
    since the first hit; scores: the last `history` scores, oldest first.
    """

    id: int
    label: int
    first_ts: float
    first_frame: int
    last_ts: float
    last_frame: int
    box: Box
    best_score: float
    best_box: Box
    best_frame: int
    median_window: int
    hits: int = 0
    age: int = 0
    label_changed: bool = False
    confirmed: bool = False
    stationary: bool = False
    state: State = "tentative"
    scores: deque[float] = field(default_factory=deque)
    votes: dict[int, float] = field(default_factory=dict)
    centres: deque[tuple[float, float]] = field(default_factory=deque)

    @property
    def median_score(self) -> float:
        """Median of the last `median_window` scores (0 before any)."""
        if not self.scores:
            return 0.0
        tail = list(self.scores)[-self.median_window :]
        return float(statistics.median(tail))

    def misses(self, frame: int) -> int:
        """Frames since the last hit, as of `frame`."""
        return frame - self.last_frame


def new_track(cfg: TrackConfig, box: Box, ts: float, frame: int) -> Track:
    """A tentative track for its first box (the caller records the hit)."""
    return Track(
        id=0,
        label=-1,
        first_ts=ts,
        first_frame=frame,
        last_ts=ts,
        last_frame=frame,
        box=box,
        best_score=-1.0,
        best_box=box,
        best_frame=frame,
        median_window=cfg.median_window,
        scores=deque(maxlen=max(cfg.history, cfg.median_window)),
        centres=deque(maxlen=cfg.stationary_frames),
    )


def record_hit(
    t: Track, cfg: TrackConfig, hit: tuple[Box, float, int], ts: float, frame: int, need: float
) -> None:
    """Fold one matched box (box, score, class id) into the track; `need` is the threshold."""
    box, score, class_id = hit
    t.box, t.last_ts, t.last_frame = box, ts, frame
    t.hits += 1
    t.age = frame - t.first_frame
    t.scores.append(score)
    if score > t.best_score:
        t.best_score, t.best_box, t.best_frame = score, box, frame
    t.votes[class_id] = t.votes.get(class_id, 0.0) + score
    label = max(t.votes, key=t.votes.__getitem__)
    t.label_changed = t.label not in (-1, label)
    t.label = label
    # The median of a short burst is a few lucky frames (a static false positive scores high
    # for a moment when someone walks past it): wait until the window is full.
    enough = max(cfg.min_hits, cfg.median_window)
    if not t.confirmed and t.hits >= enough and t.median_score >= need:
        t.confirmed = True
    _update_stationary(t, cfg, box)


def _update_stationary(t: Track, cfg: TrackConfig, box: Box) -> None:
    """Stationary when the centre stayed within `enter` x box size over the whole window;
    moving again only beyond `exit`, so a jittering box does not flap."""
    x1, y1, x2, y2 = box
    t.centres.append(((x1 + x2) / 2, (y1 + y2) / 2))
    if len(t.centres) < (t.centres.maxlen or 0):
        return
    xs = [c[0] for c in t.centres]
    ys = [c[1] for c in t.centres]
    moved = max(max(xs) - min(xs), max(ys) - min(ys))
    size = max((x2 - x1) * (y2 - y1), 1e-18) ** 0.5
    limit = cfg.stationary_exit if t.stationary else cfg.stationary_enter
    t.stationary = moved <= limit * size
