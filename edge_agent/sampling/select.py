"""Which frames become samples: the strategies, their budgets, near-duplicate suppression.

Runs on the camera's thread after the events step, in frame order. Frame-level strategies
look at this frame; track-level ones sample a track once. A track that ends without passing
its threshold (a likely false positive, or a short miss) is sampled on its best frame, kept
by reference while the track is open (at most `max_pending` frames per camera).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.core.detections import NO_TRACK, Detections
from edge_agent.health import Counters
from edge_agent.sampling.budget import Budgets, Draw
from edge_agent.sampling.config import SamplesConfig
from edge_agent.sampling.phash import Deduper, phash
from edge_agent.track.bytetrack import TrackUpdate
from edge_agent.track.tracks import Track
from edge_agent.types import Frame

log = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
SubLabel = tuple[str, float]


@dataclass
class FrameView:
    """What the selector reads of one processed frame."""

    frame: Frame
    raw: Detections  # every box down to the sampling floor, tracker_id where a track owns it
    reported: BoolArray  # which raw boxes the camera reports (their label's min_score)
    head: dict[str, Any]
    track: TrackUpdate | None = None
    sub_labels: Mapping[int, SubLabel | None] = field(default_factory=dict)


@dataclass
class Chosen:
    """A sample to encode: its frame, boxes, reasons and (track-level) track."""

    view: FrameView
    reasons: list[str]
    track: Track | None
    phash: int


@dataclass
class _Kept:
    view: FrameView
    score: float


class Selector:
    """One camera's strategies; `__call__` once per processed frame, in order."""

    def __init__(
        self,
        cfg: SamplesConfig,
        camera: str,
        labels: Sequence[str],
        allowed: BoolArray,
        counters: Counters,
    ) -> None:
        self.cfg, self.camera, self.labels = cfg, camera, list(labels)
        self.allowed = allowed  # by class id; the last entry for ids outside the labels
        self.counters = counters
        st = cfg.strategies
        self.names = st.enabled()
        self.budgets = {name: Budgets(getattr(st, name)) for name in self.names}
        self.camera_budget = Budgets(cfg.budget)
        self.dedup = Deduper(cfg.dedup)
        self.draw = Draw(camera, st.random.probability) if st.random is not None else None
        rare = set(st.rare_class.labels) if st.rare_class is not None else set()
        self.rare = np.array([lab in rare for lab in self.labels] + [False])
        self.sampled: dict[str, set[int]] = {name: set() for name in self.names}
        self.pending: dict[int, _Kept] = {}
        self._keep = bool({"false_positive_track", "short_track"} & set(self.names))

    def _rows(self, class_id: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        last = len(self.allowed) - 1
        return np.where((class_id >= 0) & (class_id < last), class_id, last)

    def skip(self, why: str) -> None:
        """Count a sample not taken, by reason."""
        self.counters.inc(f"samples.skipped.{why}.{self.camera}")

    def __call__(self, view: FrameView) -> list[Chosen]:
        """The samples this frame yields (usually none)."""
        out: list[Chosen] = []
        reasons, track = self._this_frame(view)
        if reasons:
            chosen = self._admit(view, reasons, track)
            out += [chosen] if chosen else []
        if view.track is not None:
            if self._keep:
                out += self._ended(view.track)
                self._remember(view, view.track)
            for t in view.track.ended:  # ids are never reused: forget them
                for done in self.sampled.values():
                    done.discard(t.id)
        return out

    # ---- strategies on this frame

    def _this_frame(self, view: FrameView) -> tuple[list[str], Track | None]:
        reasons: list[str] = []
        track: Track | None = None
        st = self.cfg.strategies
        raw, rows = view.raw, self._rows(view.raw.class_id)
        if st.low_confidence is not None:
            band = (raw.score >= st.low_confidence.min_score) & (
                raw.score < st.low_confidence.max_score
            )
            if (band & self.allowed[rows]).any():
                reasons.append("low_confidence")
        if st.rare_class is not None:
            hit, track = self._rare(view, rows, track)
            if hit:
                reasons.append("rare_class")
        if self.draw is not None and self.draw():
            reasons.append("random")
        if view.track is not None:
            for name, found in (
                ("label_flip", self._flipped(view.track)),
                ("disagreement", self._disagrees(view)),
            ):
                if found is not None and name in self.budgets:
                    reasons.append(name)
                    track = track or found
        return reasons, track

    def _rare(
        self, view: FrameView, rows: npt.NDArray[np.int64], track: Track | None
    ) -> tuple[bool, Track | None]:
        rare = self.rare[rows] & view.reported
        if not rare.any():
            return False, track
        if view.track is None:
            return True, track  # no tracking: frame-level
        # Tracking on: once per track, when it has an id (a box of a track not identified
        # yet waits for it, or every first frame of every track would be sampled too).
        tids = view.raw.tracked[rare]
        fresh = [int(t) for t in tids if t != NO_TRACK and int(t) not in self.sampled["rare_class"]]
        if not fresh:
            return False, track
        return True, track or _by_id(view.track, fresh[0])

    def _flipped(self, update: TrackUpdate) -> Track | None:
        if "label_flip" not in self.budgets:
            return None
        done = self.sampled["label_flip"]
        return next((t for t in update.updated if t.label_changed and t.id not in done), None)

    def _disagrees(self, view: FrameView) -> Track | None:
        st = self.cfg.strategies.disagreement
        if st is None or view.track is None:
            return None
        done = self.sampled["disagreement"]
        for tid, sub in view.sub_labels.items():
            if tid in done:
                continue
            t = _by_id(view.track, tid)
            if t is None:
                continue
            own = self.labels[t.label] if 0 <= t.label < len(self.labels) else None
            other = sub is not None and sub[0] in self.labels and sub[0] != own
            if sub is None or sub[1] < st.min_score or other:
                return t
        return None

    # ---- tracks that end unconfirmed: their best frame

    def _remember(self, view: FrameView, update: TrackUpdate) -> None:
        index = view.frame.index
        for t in update.updated:
            if t.confirmed:
                self.pending.pop(t.id, None)
            elif t.id and (t.best_frame == index or t.id not in self.pending):
                # Its best frame so far (or, when that came before the track had an id and
                # is gone, this one) stands for it if it ends unconfirmed.
                self._keep_frame(t, view)

    def _keep_frame(self, t: Track, view: FrameView) -> None:
        if t.id not in self.pending and len(self.pending) >= self.cfg.max_pending:
            weakest = min(self.pending, key=lambda k: self.pending[k].score, default=None)
            if weakest is None or self.pending[weakest].score >= t.best_score:
                self.skip("pending_full")
                return
            del self.pending[weakest]
            self.skip("pending_full")
        self.pending[t.id] = _Kept(view, t.best_score)

    def _ended(self, update: TrackUpdate) -> list[Chosen]:
        out: list[Chosen] = []
        for t in update.ended:
            kept = self.pending.pop(t.id, None)
            if t.confirmed or not t.id:
                continue
            name = "false_positive_track" if t.hits >= t.median_window else "short_track"
            if name not in self.budgets or kept is None:
                continue
            chosen = self._admit(kept.view, [name], t)
            out += [chosen] if chosen else []
        return out

    # ---- budgets and duplicates

    def _admit(self, view: FrameView, reasons: list[str], track: Track | None) -> Chosen | None:
        ts = view.frame.ts
        funded = [r for r in reasons if self.budgets[r].allows(ts)]
        for r in reasons:
            if r not in funded:
                self.skip(f"budget_{r}")
        if not funded:
            return None
        if not self.camera_budget.allows(ts):
            self.skip("budget_camera")
            return None
        value = phash(view.frame.image)
        if self.dedup.duplicate(value, ts):
            self.skip("duplicate")
            return None
        for r in funded:
            self.budgets[r].take(ts)
            if track is not None and r in self.sampled:
                self.sampled[r].add(track.id)
        self.camera_budget.take(ts)
        self.dedup.add(value, ts)
        return Chosen(view, funded, track, value)


def _by_id(update: TrackUpdate, tid: int) -> Track | None:
    return next((t for t in (*update.updated, *update.created) if t.id == tid), None)
