"""Second stage: classify each detection's crop with a TFLite classification model."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config.schema import ClassifyConfig, MeanStd
from edge_agent.detect.interpreter import load_model
from edge_agent.detect.labels import embedded_labels, fit_labels, read_label_file
from edge_agent.errors import ModelError
from edge_agent.preprocess import InputPlan, Normalize, prepare
from edge_agent.types import Detection, Image

log = logging.getLogger(__name__)


def crop(image: Image, box: tuple[float, float, float, float], padding: float) -> Image:
    """The pixels under a normalized box, grown by `padding` x its size on each side."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * padding, (y2 - y1) * padding
    left, top = max(0, int((x1 - pad_x) * w)), max(0, int((y1 - pad_y) * h))
    right = min(w, max(left + 1, int(np.ceil((x2 + pad_x) * w))))
    bottom = min(h, max(top + 1, int(np.ceil((y2 + pad_y) * h))))
    return image[top:bottom, left:right]


def _probabilities(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Outputs that already look like probabilities pass; logits go through softmax."""
    if values.min() >= 0 and abs(float(values.sum()) - 1.0) < 0.05:
        return values
    shifted = np.exp(values - values.max())
    probs: npt.NDArray[np.float32] = (shifted / shifted.sum()).astype(np.float32)
    return probs


class Classifier:
    """Runs on the inference thread (not thread-safe), one crop at a time."""

    def __init__(self, cfg: ClassifyConfig) -> None:
        self.cfg = cfg
        self.model = load_model(cfg.model, cfg.threads)
        inputs, outputs = self.model.inputs, self.model.outputs
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 1:
            seen = [i.describe() for i in inputs] + [o.describe() for o in outputs]
            raise ModelError(
                f"expected one image input and one score output, found {seen}", where=str(cfg.model)
            )
        self.input, self.output = inputs[0], outputs[0]
        count = int(np.prod(self.output.shape))
        raw = read_label_file(cfg.labels) if cfg.labels else embedded_labels(cfg.model)
        where = str(cfg.labels or cfg.model)
        self.labels = fit_labels(raw, count, where) if raw else [f"class_{i}" for i in range(count)]
        _, height, width, _ = self.input.shape
        self.plan = InputPlan(
            width, height, self.input.dtype, False, cfg.input.color == "rgb", self._normalize()
        )
        self.wanted = set(cfg.on_labels) if cfg.on_labels is not None else None
        log.info(
            "classifier %s: input %s, %d classes", cfg.model.name, self.input.describe(), count
        )

    def _normalize(self) -> Normalize:
        norm = self.cfg.input.normalize
        if isinstance(norm, MeanStd):
            return (norm.mean, norm.std)
        if self.input.dtype.kind in "iu":
            return "raw"
        return "0..1" if norm == "auto" else norm

    def top(self, image: Image, box: tuple[float, float, float, float]) -> tuple[str, float]:
        """Best (label, probability) for the crop under box."""
        tensor, _ = prepare(np.ascontiguousarray(crop(image, box, self.cfg.padding)), self.plan)
        interp = self.model.interpreter
        interp.set_tensor(self.input.index, tensor)
        interp.invoke()
        values: npt.NDArray[Any] = interp.get_tensor(self.output.index).reshape(-1)
        if self.output.quantized:
            values = (values.astype(np.float32) - self.output.zero_point) * self.output.scale
        probs = _probabilities(values.astype(np.float32))
        best = int(np.argmax(probs))
        return self.labels[best], float(probs[best])

    def apply(self, image: Image, detections: tuple[Detection, ...]) -> tuple[Detection, ...]:
        """Detections with `classification` set where a wanted label passes min_score."""
        out = []
        for det in detections:
            if self.wanted is None or det.label in self.wanted:
                label, score = self.top(image, det.box)
                if score >= self.cfg.min_score:
                    det = dataclasses.replace(det, classification=(label, score))
            out.append(det)
        return tuple(out)
