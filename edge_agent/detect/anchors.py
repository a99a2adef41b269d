"""Anchor-based single-shot detectors without a postprocess op (MediaPipe BlazeFace style)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.detect.interpreter import TensorSpec
from edge_agent.errors import ModelError
from edge_agent.postprocess import Decoded

FloatArray = npt.NDArray[np.float32]
LOGIT_CLIP = 100.0  # MediaPipe clips logits before the sigmoid


def split_outputs(outputs: list[TensorSpec]) -> tuple[TensorSpec, TensorSpec] | None:
    """(regressors [1,N,4+2K], scores [1,N,C]) when the outputs have that shape, else None."""
    if len(outputs) != 2 or any(len(o.shape) != 3 for o in outputs):
        return None
    a, b = outputs
    if a.shape[1] != b.shape[1]:
        return None
    reg, cls = (a, b) if a.shape[2] > b.shape[2] else (b, a)
    if reg.shape[2] < 4 or (reg.shape[2] - 4) % 2 or cls.shape[2] > 4:
        return None
    return reg, cls


def ssd_anchors(strides: list[int], per_layer: int, width: int, height: int) -> FloatArray:
    """Anchor centres (N,2), normalized: MediaPipe SsdAnchorsCalculator with fixed-size anchors.

    Consecutive layers with the same stride share one grid, with `per_layer` anchors each;
    order is row, column, anchor.
    """
    centres: list[FloatArray] = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        same = 1
        while i + same < len(strides) and strides[i + same] == stride:
            same += 1
        rows, cols = -(-height // stride), -(-width // stride)  # ceil division
        ys, xs = np.meshgrid(
            (np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij"
        )
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        centres.append(np.repeat(grid, per_layer * same, axis=0))
        i += same
    return np.concatenate(centres, axis=0)


def _dequantize(values: npt.NDArray[Any], spec: TensorSpec) -> FloatArray:
    if spec.quantized:
        return (values.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)
    return values.astype(np.float32, copy=False)


class AnchorDecoder:
    """Box and keypoint offsets relative to anchor centres, in input pixels; logit scores."""

    family = "blazeface"

    def __init__(
        self,
        outputs: list[TensorSpec],
        input_size: tuple[int, int],
        strides: list[int],
        per_layer: int,
    ) -> None:
        split = split_outputs(outputs)
        if split is None:
            raise ModelError("expected two outputs [1,N,4+2K] and [1,N,C]")
        self.reg, self.cls = split
        self.width, self.height = input_size
        self.anchors = ssd_anchors(strides, per_layer, self.width, self.height)
        if self.anchors.shape[0] != self.reg.shape[1]:
            raise ModelError(
                f"model.anchors (strides {strides}, {per_layer} per layer) give "
                f"{self.anchors.shape[0]} anchors but the model has {self.reg.shape[1]}"
            )
        self.num_keypoints = (self.reg.shape[2] - 4) // 2

    def decode(self, fetch: Any, min_score: float) -> Decoded:
        """Threshold on the logit first (sigmoid is monotonic), then decode survivors."""
        logits = _dequantize(np.asarray(fetch(self.cls))[0], self.cls)
        if logits.shape[1] == 1:  # one class (faces): no argmax needed
            best_logit = logits[:, 0]
            best = np.zeros(best_logit.size, np.int64)
        else:
            best = np.argmax(logits, axis=1)
            best_logit = logits[np.arange(best.size), best]
        floor = np.log(min_score / (1 - min_score)) if 0 < min_score < 1 else -LOGIT_CLIP
        keep = np.flatnonzero(best_logit >= floor)
        if keep.size == 0:
            return Decoded.empty()
        scores = 1 / (1 + np.exp(-np.clip(best_logit[keep], -LOGIT_CLIP, LOGIT_CLIP)))
        raw = _dequantize(np.asarray(fetch(self.reg))[0][keep], self.reg)
        scale = np.array([self.width, self.height], np.float32)
        anchors = self.anchors[keep]
        centre = raw[:, 0:2] / scale + anchors
        half = raw[:, 2:4] / scale / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
        kps = raw[:, 4:].reshape(-1, self.num_keypoints, 2) / scale + anchors[:, None, :]
        return Decoded(
            boxes, scores.astype(np.float32), best[keep].astype(np.int64), kps.astype(np.float32)
        )
