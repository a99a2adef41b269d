"""Post-processing shared by the decoders: the decoded arrays and NMS."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
MATRIX_NMS_MAX = 512  # up to this many candidates one IoU matrix is cheaper than a loop


@dataclass(frozen=True)
class Decoded:
    """Decoder output before labels are attached.

    boxes: (N,4) float32 xyxy normalized to the model input; scores: (N,) 0..1; class_ids: (N,);
    keypoints: (N,K,2) float32 xy normalized to the model input, or None.
    """

    boxes: FloatArray
    scores: FloatArray
    class_ids: IntArray
    keypoints: FloatArray | None = None

    def take(self, keep: IntArray) -> Decoded:
        """A subset by index."""
        kps = self.keypoints[keep] if self.keypoints is not None else None
        return Decoded(self.boxes[keep], self.scores[keep], self.class_ids[keep], kps)

    @staticmethod
    def empty() -> Decoded:
        """No detections."""
        return Decoded(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def iou_one_to_many(box: FloatArray, boxes: FloatArray) -> FloatArray:
    """IoU of one xyxy box against (N,4) boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(
    decoded: Decoded, iou_threshold: float, max_out: int, max_candidates: int = 3000
) -> Decoded:
    """Greedy class-wise NMS; result sorted by score, descending."""
    if decoded.scores.size == 0:
        return decoded
    order = np.argsort(-decoded.scores, kind="stable")[:max_candidates]
    # Shift each class into its own region so one pass never suppresses across classes.
    span = float(np.abs(decoded.boxes).max()) + 1.0
    shifted = decoded.boxes + (decoded.class_ids.astype(np.float32) * span)[:, None]
    if order.size <= MATRIX_NMS_MAX:
        keep = _nms_matrix(shifted[order], iou_threshold, max_out)
        return decoded.take(order[np.asarray(keep, dtype=np.int64)])
    keep = []
    while order.size and len(keep) < max_out:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[iou_one_to_many(shifted[best], shifted[rest]) <= iou_threshold]
    return decoded.take(np.asarray(keep, dtype=np.int64))


def _nms_matrix(boxes: FloatArray, iou_threshold: float, max_out: int) -> list[int]:
    """Greedy NMS over score-sorted boxes using one IoU matrix (fast for few candidates)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    iw = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
    inter = iw * ih
    union = areas[:, None] + areas - inter
    overlap = inter > iou_threshold * np.maximum(union, 1e-12)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_out:
            break
        suppressed |= overlap[i]
    return keep
