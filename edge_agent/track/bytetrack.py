"""A ByteTrack-class multi-object tracker on `Detections` (normalized boxes, class-agnostic).

Each frame: predict every track (batched Kalman), match high-score boxes to tracked and lost
tracks, then low-score boxes to the tracks still unmatched (this is what keeps an occluded or
blurred object's id), then leftover high boxes to one-hit tracks; unmatched high boxes above
`new_track_score` start tracks. Association ignores the class, so a car detected as a truck
for a few frames stays one track; its label is a score-weighted vote.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.core.detections import NO_TRACK, Detections, box_iou
from edge_agent.track import kalman
from edge_agent.track.config import TrackConfig
from edge_agent.track.tracks import Track, new_track, record_hit

log = logging.getLogger(__name__)

IndexArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
_TENTATIVE, _TRACKED, _LOST = 0, 1, 2
_CODES = {"tentative": _TENTATIVE, "tracked": _TRACKED, "lost": _LOST}


@dataclass(frozen=True)
class TrackUpdate:
    """What one frame did: the kept boxes (tracker_id set where a track with an id owns
    them; unmatched low boxes dropped) and the tracks that got an id, were hit, or ended."""

    detections: Detections
    created: tuple[Track, ...]
    updated: tuple[Track, ...]
    ended: tuple[Track, ...]


def _assign(sim: npt.NDArray[np.floating], least: float) -> tuple[IndexArray, IndexArray]:
    """Rows and columns of the best one-to-one matching whose similarity is >= least."""
    if sim.size == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty
    # lap (a small C++ Jonker-Volgenant solver) instead of scipy.optimize, whose import alone
    # costs ~50 MB of resident memory on a device with 1 GB. Imported here: lazy, like every
    # optional native module. Maximising similarity = minimising 1 - similarity.
    import lap  # type: ignore[import-untyped]

    cost = np.ascontiguousarray(1.0 - sim, dtype=np.float64)
    _, x, _ = lap.lapjv(cost, extend_cost=True, return_cost=True)
    rows = np.nonzero(x >= 0)[0]
    cols = x[rows].astype(np.intp)
    ok = sim[rows, cols] >= least
    return rows[ok], cols[ok]


class Tracker:
    """Follows boxes across frames; `update` once per frame, in frame order."""

    def __init__(
        self, cfg: TrackConfig | None = None, thresholds: Mapping[int, float] | None = None
    ) -> None:
        self.cfg = cfg or TrackConfig()
        self._thresholds = dict(thresholds or {})
        self._tracks: list[Track] = []
        self._mean = np.zeros((0, 8))
        self._cov = np.zeros((0, 8, 8))
        self._next_id = 1
        self._frame: int | None = None

    @property
    def needs_low_scores(self) -> float:
        """The score floor the detector must keep so the second stage sees low boxes."""
        return self.cfg.low_score

    @property
    def tracks(self) -> tuple[Track, ...]:
        """The live tracks that have an id (tracked or lost within the buffer)."""
        return tuple(t for t in self._tracks if t.id)

    def update(
        self, dets: Detections, ts: float, frame: int, high: BoolArray | None = None
    ) -> TrackUpdate:
        """Associate this frame's boxes with the tracks; returns what changed. `high` marks
        the first-stage boxes (default: score >= high_score); a camera passes the boxes at or
        above their label's min_score too, so boxes it would not report never start or
        steer a track, they only keep one alive."""
        if high is None:
            high = dets.score >= self.cfg.high_score
        else:
            high = high & (dets.score >= self.cfg.high_score)
        self._predict(frame)
        owner = self._associate(dets, high)
        created, updated = self._apply_hits(dets, owner, ts, frame, high)
        ended = self._age_out(owner, ts, frame)
        self._frame = frame
        keep = (owner >= 0) | high
        out = self._owned(dets, owner)[keep]
        self._drop(ended)
        return TrackUpdate(out, tuple(created), tuple(updated), tuple(ended))

    def _owned(self, dets: Detections, owner: IndexArray) -> Detections:
        """The boxes with tracker_id and `label_id` (the owning track's voted label) set;
        per-track lists, per-box numpy."""
        track_ids = np.array([t.id for t in self._tracks] + [0], np.int64)
        track_labels = np.array([t.label for t in self._tracks] + [-1], np.int64)
        ids = track_ids[owner]  # owner -1 picks the filler row
        labels = track_labels[owner]
        labels = np.where((ids != 0) & (labels >= 0), labels, dets.class_id)
        ids[ids == 0] = NO_TRACK
        return dets.with_tracker_id(ids).with_data(label_id=labels)

    def _predict(self, frame: int) -> None:
        """Move every track to this frame; lost tracks stop growing or shrinking."""
        if not self._tracks:
            return
        dt = 1.0 if self._frame is None else float(max(frame - self._frame, 1))
        lost = np.array([t.state == "lost" for t in self._tracks])
        self._mean[lost, 6:8] = 0.0
        self._mean, self._cov = kalman.predict(self._mean, self._cov, dt)

    def _associate(self, dets: Detections, high: BoolArray) -> IndexArray:
        """For each box, the index of the track it is matched to, or -1."""
        cfg = self.cfg
        owner = np.full(len(dets), -1, np.intp)
        if not self._tracks or not len(dets):
            return owner
        codes = np.array([_CODES[t.state] for t in self._tracks])
        pred = kalman.cxcywh_to_xyxy(self._mean[:, :4]).astype(np.float32)
        iou = box_iou(pred, dets.xyxy)
        low = (dets.score >= cfg.low_score) & ~high
        fused = iou * dets.score[None, :] if cfg.fuse_score else iou
        taken = np.zeros(len(self._tracks), bool)
        stages = (
            (codes != _TENTATIVE, high, fused, cfg.match_iou),
            (codes == _TRACKED, low, iou, cfg.low_match_iou),
            (codes == _TENTATIVE, high, fused, cfg.new_match_iou),
        )
        for track_ok, box_ok, sim, least in stages:
            t_idx = np.nonzero(track_ok & ~taken)[0]
            d_idx = np.nonzero(box_ok & (owner < 0))[0]
            if not len(t_idx) or not len(d_idx):
                continue  # nothing to match in this stage (most frames skip one or two)
            rows, cols = _assign(sim[t_idx[:, None], d_idx], least)
            owner[d_idx[cols]] = t_idx[rows]
            taken[t_idx[rows]] = True
        return owner

    def _apply_hits(
        self, dets: Detections, owner: IndexArray, ts: float, frame: int, high: BoolArray
    ) -> tuple[list[Track], list[Track]]:
        """Correct matched tracks, start new ones; returns (got an id, hit and had one)."""
        cfg = self.cfg
        matched = np.flatnonzero(owner >= 0)
        cxcywh = kalman.xyxy_to_cxcywh(dets.xyxy)
        if len(matched):
            t_idx = owner[matched]
            self._mean[t_idx], self._cov[t_idx] = kalman.correct(
                self._mean[t_idx], self._cov[t_idx], cxcywh[matched]
            )
        fresh = np.flatnonzero((owner < 0) & high & (dets.score >= cfg.new_track_score))
        if len(fresh):
            mean, cov = kalman.initiate(cxcywh[fresh])
            self._mean = np.concatenate([self._mean, mean])
            self._cov = np.concatenate([self._cov, cov])
            for d in fresh.tolist():
                owner[d] = len(self._tracks)
                self._tracks.append(new_track(cfg, _box(dets, d), ts, frame))
            matched = np.concatenate([matched, fresh])
        created: list[Track] = []
        updated: list[Track] = []
        boxes, scores, classes = dets.xyxy.tolist(), dets.score.tolist(), dets.class_id.tolist()
        for d in matched.tolist():
            t = self._tracks[owner[d]]
            need = self._thresholds.get(int(classes[d]), cfg.threshold)
            record_hit(t, cfg, (tuple(boxes[d]), scores[d], classes[d]), ts, frame, need)
            if t.id:
                t.state = "tracked"
                updated.append(t)
            elif t.hits >= cfg.min_hits:
                t.id, self._next_id = self._next_id, self._next_id + 1
                t.state = "tracked"
                created.append(t)
        return created, updated

    def _age_out(self, owner: IndexArray, ts: float, frame: int) -> list[Track]:
        """Unmatched tracks become lost; tracks lost past the buffer end (reported once)."""
        cfg = self.cfg
        hit = np.zeros(len(self._tracks), bool)
        hit[owner[owner >= 0]] = True
        ended: list[Track] = []
        for i in np.flatnonzero(~hit).tolist():
            t = self._tracks[i]
            if t.state == "tentative":
                ended.append(t)  # a one-hit wonder: dropped quietly, never had an id
                continue
            t.state = "lost"
            if cfg.buffer_seconds is not None:
                gone = ts - t.last_ts > cfg.buffer_seconds
            else:
                gone = t.misses(frame) > cfg.buffer_frames
            if gone:
                ended.append(t)
        return ended

    def _drop(self, ended: list[Track]) -> None:
        """Forget ended tracks; only those that had an id stay in the report."""
        if not ended:
            return
        gone = {id(t) for t in ended}
        keep = np.array([id(t) not in gone for t in self._tracks])
        self._tracks = [t for t in self._tracks if id(t) not in gone]
        self._mean, self._cov = self._mean[keep], self._cov[keep]
        ended[:] = [t for t in ended if t.id]


def _box(dets: Detections, i: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = dets.xyxy[i].tolist()
    return (x1, y1, x2, y2)
