"""SSD models whose graph ends in the TFLite_Detection_PostProcess op (NMS is inside the model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.detect.interpreter import LoadedModel, TensorSpec
from edge_agent.errors import ModelError
from edge_agent.postprocess import Decoded

POSTPROCESS_OP = "TFLite_Detection_PostProcess"


def matches(outputs: list[TensorSpec]) -> bool:
    """Four float outputs: [1,K,4] boxes, two [1,K] (classes, scores) and a count."""
    if len(outputs) != 4:
        return False
    shapes = sorted((len(o.shape), o.shape[-1]) for o in outputs)
    ranks = [r for r, _ in shapes]
    return ranks in ([1, 2, 2, 3], [2, 2, 2, 3]) and any(
        len(o.shape) == 3 and o.shape[-1] == 4 for o in outputs
    )


def num_classes(model: LoadedModel) -> int | None:
    """Class count without background, read from the scores tensor feeding the postprocess op."""
    for op in model.ops:
        if op.get("op_name") == POSTPROCESS_OP and len(op["inputs"]) >= 2:
            spec = model.tensors.get(int(op["inputs"][1]))
            if spec is not None and len(spec.shape) == 3:
                return spec.shape[-1] - 1
    return None


class SsdDecoder:
    """Reads boxes/classes/scores/count, telling the outputs apart by shape and content."""

    family = "ssd"

    def __init__(self, outputs: list[TensorSpec]) -> None:
        if not matches(outputs):
            raise ModelError("outputs do not look like TFLite_Detection_PostProcess")
        self.boxes = next(o for o in outputs if len(o.shape) == 3)
        self.count = next(o for o in outputs if int(np.prod(o.shape)) == 1)
        # TF1 exports order (classes, scores); TF2 exports differ: decide by content per frame.
        self.pair = [o for o in outputs if o is not self.boxes and o is not self.count]

    def decode(self, fetch: Any, min_score: float) -> Decoded:
        """Decode one invoke's outputs; `fetch(spec)` returns that output's array."""
        boxes = np.asarray(fetch(self.boxes), np.float32).reshape(-1, 4)
        count = int(np.asarray(fetch(self.count)).reshape(-1)[0])
        first, second = (np.asarray(fetch(o), np.float32).reshape(-1) for o in self.pair)
        classes, scores = _classes_scores(first, second)
        n = max(0, min(count, boxes.shape[0]))
        keep = np.nonzero(scores[:n] >= min_score)[0]
        yx = boxes[keep]
        xyxy = np.stack([yx[:, 1], yx[:, 0], yx[:, 3], yx[:, 2]], axis=1) if keep.size else yx
        return Decoded(
            np.clip(xyxy, 0.0, 1.0).astype(np.float32),
            scores[keep],
            classes[keep].astype(np.int64),
        )


def _classes_scores(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Classes are whole numbers and may exceed 1; scores are fractions in 0..1."""
    a_int = bool(np.all(a == np.round(a))) and bool(np.any(a > 1) or not np.all(b == np.round(b)))
    b_int = bool(np.all(b == np.round(b))) and bool(np.any(b > 1) or not np.all(a == np.round(a)))
    if b_int and not a_int:
        return b, a
    return a, b
