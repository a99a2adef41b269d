"""Ultralytics YOLO raw outputs: v8/11 `[1,4+C,N]` (no objectness) and v5 `[1,N,5+C]`."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.detect.interpreter import TensorSpec
from edge_agent.postprocess import Decoded

FloatArray = npt.NDArray[np.float32]


def _single_rank3(outputs: list[TensorSpec]) -> tuple[int, int] | None:
    if len(outputs) != 1 or len(outputs[0].shape) != 3 or outputs[0].shape[0] != 1:
        return None
    return outputs[0].shape[1], outputs[0].shape[2]


def matches_v8(outputs: list[TensorSpec]) -> bool:
    """One [1,4+C,N] (or transposed) output with more anchors than channels."""
    dims = _single_rank3(outputs)
    return dims is not None and min(dims) > 4 and dims[0] != dims[1]


def v5_columns(outputs: list[TensorSpec], num_labels: int | None) -> bool:
    """True when the channel width is 5+C (objectness present) rather than 4+C."""
    dims = _single_rank3(outputs)
    if dims is None:
        return False
    channels = min(dims)
    if num_labels is not None:
        return channels == num_labels + 5
    # Without labels, the common v5 layout keeps anchors first: [1,N,5+C].
    return dims[0] > dims[1] and (channels - 5) % 10 == 0 and (channels - 4) % 10 != 0


def _dequantize(values: npt.NDArray[Any], spec: TensorSpec) -> FloatArray:
    if spec.quantized:
        return (values.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)
    return values.astype(np.float32, copy=False)


def _quantized_floor(spec: TensorSpec, min_score: float) -> float:
    """The score threshold expressed in the output's integer units (for cheap pre-filtering)."""
    if not spec.quantized:
        return min_score
    return min_score / spec.scale + spec.zero_point - 1e-3


def _xywh_to_xyxy(xywh: FloatArray, in_w: int, in_h: int) -> FloatArray:
    """Centre boxes -> corners normalized to the input (pixel outputs are detected and scaled)."""
    boxes = np.empty_like(xywh)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    boxes[:, 0] = xywh[:, 0] - half_w
    boxes[:, 1] = xywh[:, 1] - half_h
    boxes[:, 2] = xywh[:, 0] + half_w
    boxes[:, 3] = xywh[:, 1] + half_h
    if boxes.size and float(np.abs(xywh).max()) > 2.0:
        boxes /= np.array([in_w, in_h, in_w, in_h], dtype=np.float32)
    return boxes


class YoloV8Decoder:
    """YOLOv8/YOLO11: 4 box columns then C sigmoid class scores, per anchor."""

    family = "yolov8"

    def __init__(self, output: TensorSpec, input_size: tuple[int, int]) -> None:
        self.spec = output
        self.in_w, self.in_h = input_size
        # Anchors outnumber channels, which tells the layout apart from a transposed export.
        self.channels_first = output.shape[1] < output.shape[2]

    def decode(self, fetch: Any, min_score: float) -> Decoded:
        """Best class per anchor, thresholded in integer units before dequantizing survivors."""
        raw = np.asarray(fetch(self.spec))[0]
        rows = raw if self.channels_first else raw.T  # (4+C, N)
        cls = rows[4:]
        # max over classes is a cheap vectorized reduction; argmax only on the survivors.
        best_q = cls.max(axis=0)
        keep = np.flatnonzero(best_q >= _quantized_floor(self.spec, min_score))
        best = np.argmax(cls[:, keep], axis=0)
        scores = _dequantize(best_q[keep], self.spec)
        xywh = _dequantize(rows[:4, keep].T, self.spec)
        boxes = _xywh_to_xyxy(np.ascontiguousarray(xywh), self.in_w, self.in_h)
        ok = scores >= min_score
        return Decoded(boxes[ok], scores[ok], best[ok].astype(np.int64))


class YoloV5Decoder:
    """YOLOv5: 4 box columns, objectness, then C class probabilities; score = obj x class."""

    family = "yolov5"

    def __init__(self, output: TensorSpec, input_size: tuple[int, int]) -> None:
        self.spec = output
        self.in_w, self.in_h = input_size
        self.anchors_first = output.shape[1] > output.shape[2]

    def decode(self, fetch: Any, min_score: float) -> Decoded:
        """Objectness pre-filter (class probability <= 1), then best class per candidate."""
        raw = np.asarray(fetch(self.spec))[0]
        rows = raw if self.anchors_first else raw.T  # (N, 5+C)
        obj_q = rows[:, 4]
        cand = np.nonzero(obj_q >= _quantized_floor(self.spec, min_score))[0]
        sub = _dequantize(rows[cand], self.spec)
        conf = sub[:, 5:] * sub[:, 4:5]
        best = np.argmax(conf, axis=1)
        scores = conf[np.arange(best.size), best]
        ok = scores >= min_score
        boxes = _xywh_to_xyxy(np.ascontiguousarray(sub[ok, :4]), self.in_w, self.in_h)
        return Decoded(boxes, scores[ok].astype(np.float32), best[ok].astype(np.int64))
