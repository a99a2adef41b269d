"""`Detections`: every box of one frame as a struct of arrays, from the decoder to the payload.

Per-frame cost grows with numpy operations, not with Python loops over boxes. Boxes are xyxy
normalized 0..1 of the frame; selection by a boolean mask or an index array returns a new value
that shares nothing mutable with the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Selector = npt.NDArray[np.bool_] | npt.NDArray[np.integer] | slice

NO_TRACK = -1  # tracker_id of a box no track owns
Anchor = Literal["bottom_center", "center", "top_center", "top_left", "bottom_left"]


def _empty_float(*shape: int) -> FloatArray:
    return np.zeros(shape, np.float32)


@dataclass(frozen=True, eq=False)
class Detections:
    """The boxes of one frame.

    xyxy: (N,4) float32, normalized 0..1 of the frame; score: (N,) float32 0..1;
    class_id: (N,) int64, index into the model's labels; tracker_id: (N,) int64, NO_TRACK when
    untracked; keypoints: (N,K,2) float32 normalized xy, or None; data: extra per-box arrays
    (each with N rows), e.g. a classifier's `sub_label_id` and `sub_score`.
    """

    xyxy: FloatArray = field(default_factory=lambda: _empty_float(0, 4))
    score: FloatArray = field(default_factory=lambda: _empty_float(0))
    class_id: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    tracker_id: IntArray | None = None
    keypoints: FloatArray | None = None
    data: Mapping[str, npt.NDArray[np.generic]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.score)
        checks = [self.xyxy.shape == (n, 4), self.class_id.shape == (n,)]
        if self.tracker_id is not None:
            checks.append(self.tracker_id.shape == (n,))
        if self.keypoints is not None:
            checks.append(self.keypoints.ndim == 3 and len(self.keypoints) == n)
        checks += [len(v) == n for v in self.data.values()]
        if not all(checks):
            raise ValueError(f"Detections arrays disagree on the number of boxes ({n})")

    def __len__(self) -> int:
        return len(self.score)

    def __getitem__(self, index: Selector) -> Detections:
        """The boxes selected by a boolean mask, an index array or a slice."""
        return _derived(
            self.xyxy[index],
            self.score[index],
            self.class_id[index],
            None if self.tracker_id is None else self.tracker_id[index],
            None if self.keypoints is None else self.keypoints[index],
            {k: v[index] for k, v in self.data.items()} if self.data else {},
        )

    @property
    def tracked(self) -> IntArray:
        """tracker_id, or NO_TRACK for every box when nothing tracked them."""
        if self.tracker_id is None:
            return np.full(len(self), NO_TRACK, np.int64)
        return self.tracker_id

    def with_tracker_id(self, tracker_id: IntArray) -> Detections:
        """The same boxes owned by these tracks."""
        if tracker_id.shape != self.score.shape:
            raise ValueError(f"{len(tracker_id)} tracker ids for {len(self)} boxes")
        return _derived(self.xyxy, self.score, self.class_id, tracker_id, self.keypoints, self.data)

    def with_data(self, **arrays: npt.NDArray[np.generic]) -> Detections:
        """The same boxes with more per-box arrays."""
        n = len(self)
        if any(len(v) != n for v in arrays.values()):
            raise ValueError(f"per-box arrays must have {n} rows")
        return _derived(
            self.xyxy,
            self.score,
            self.class_id,
            self.tracker_id,
            self.keypoints,
            {**self.data, **arrays},
        )

    def area(self) -> FloatArray:
        """Box areas as a fraction of the frame."""
        b = self.xyxy
        # np.maximum, not np.clip: the same result at a fraction of the call overhead, which
        # is what a frame of a few boxes costs.
        w = np.maximum(b[:, 2] - b[:, 0], 0)
        h = np.maximum(b[:, 3] - b[:, 1], 0)
        areas: FloatArray = w * h
        return areas

    def anchors(self, anchor: Anchor = "bottom_center") -> FloatArray:
        """(N,2) points of the boxes: where a box "is" for zones and lines."""
        b = self.xyxy
        points: FloatArray = np.empty((len(b), 2), np.float32)
        if anchor in ("top_left", "bottom_left"):
            points[:, 0] = b[:, 0]
        else:
            np.add(b[:, 0], b[:, 2], out=points[:, 0])
            points[:, 0] *= 0.5
        if anchor == "center":
            np.add(b[:, 1], b[:, 3], out=points[:, 1])
            points[:, 1] *= 0.5
        else:
            points[:, 1] = b[:, 1] if anchor in ("top_center", "top_left") else b[:, 3]
        return points

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        """All boxes of several values, in order (optional arrays only when all have them)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections()
        tids = [p.tracker_id for p in parts]
        kps = [p.keypoints for p in parts]
        keys = set.intersection(*(set(p.data) for p in parts))
        return Detections(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.class_id for p in parts]),
            None if any(t is None for t in tids) else np.concatenate(tids),  # type: ignore[arg-type]
            None if any(k is None for k in kps) else np.concatenate(kps),  # type: ignore[arg-type]
            {k: np.concatenate([p.data[k] for p in parts]) for k in keys},
        )


def _derived(
    xyxy: FloatArray,
    score: FloatArray,
    class_id: IntArray,
    tracker_id: IntArray | None,
    keypoints: FloatArray | None,
    data: Mapping[str, npt.NDArray[np.generic]],
) -> Detections:
    """A Detections made from the arrays of a valid one (a selection, or a new array checked
    by the caller), without checking them again: selections run several times per frame."""
    out = object.__new__(Detections)
    for name, value in (
        ("xyxy", xyxy),
        ("score", score),
        ("class_id", class_id),
        ("tracker_id", tracker_id),
        ("keypoints", keypoints),
        ("data", data),
    ):
        object.__setattr__(out, name, value)
    return out


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """(N,M) IoU of xyxy boxes a (N,4) against b (M,4)."""
    # Column by column: a handful of boxes per frame, where each numpy call's overhead is
    # what counts, not the arithmetic.
    ax1, ay1, ax2, ay2 = (a[:, i, None] for i in range(4))
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    iw = np.minimum(ax2, bx2) - np.maximum(ax1, bx1)
    ih = np.minimum(ay2, by2) - np.maximum(ay1, by1)
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = np.maximum(ax2 - ax1, 0) * np.maximum(ay2 - ay1, 0)
    area_b = np.maximum(bx2 - bx1, 0) * np.maximum(by2 - by1, 0)
    union = area_a + area_b - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return iou.astype(np.float32, copy=False)  # a copy only for float64 boxes
