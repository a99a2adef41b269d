"""The detector: model + input plan + decoder + labels, one `detect(image)` per frame."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.config.schema import MeanStd, ModelConfig
from edge_agent.core.detections import Detections
from edge_agent.detect import anchors, ssd, yolo
from edge_agent.detect.interpreter import LoadedModel, TensorSpec, load_model
from edge_agent.detect.labels import embedded_labels, fit_labels, read_label_file
from edge_agent.detect.metadata import read_normalization
from edge_agent.errors import ModelError
from edge_agent.postprocess import Decoded, nms
from edge_agent.preprocess import LETTERBOX_PAD, InputPlan, Normalize, prepare
from edge_agent.types import Detection, Image

log = logging.getLogger(__name__)

FAMILIES = ("ssd", "yolov8", "yolov5", "blazeface")
# Conventions of each family's training pipeline, used where the model cannot tell us.
FAMILY_FLOAT_NORMALIZE: dict[str, Normalize] = {
    "ssd": "-1..1",
    "yolov8": "0..1",
    "yolov5": "0..1",
    "blazeface": "-1..1",
}
FAMILY_LETTERBOX = {"ssd": False, "yolov8": True, "yolov5": True, "blazeface": True}
# Letterbox bars: Ultralytics trains with grey 114; MediaPipe pads with 0 in [-1,1] space.
FAMILY_PAD = {"blazeface": 128}
FAMILY_NMS_IOU = {"blazeface": 0.3}
DEFAULT_NMS_IOU = 0.45


class Decoder(Protocol):
    """One model family's output decoder."""

    family: str

    def decode(self, fetch: Any, min_score: float) -> Decoded: ...


@dataclass(frozen=True)
class ModelSummary:
    """What was chosen at load time, for logs and `check-config`-style reports."""

    family: str
    runtime: str
    input: str
    outputs: tuple[str, ...]
    num_classes: int
    letterbox: bool
    normalize: str


def detect_family(outputs: list[TensorSpec], num_labels: int | None) -> str:
    """Tell the model family from its output signature; ModelError if none fits."""
    if ssd.matches(outputs):
        return "ssd"
    if yolo.matches_v8(outputs):
        return "yolov5" if yolo.v5_columns(outputs, num_labels) else "yolov8"
    if anchors.split_outputs(outputs) is not None:
        return "blazeface"
    seen = ", ".join(o.describe() for o in outputs) or "none"
    raise ModelError(
        f"unsupported output signature ({seen}); known formats: "
        "ssd (TFLite_Detection_PostProcess: 4 outputs), yolov8 ([1,4+C,N]), yolov5 ([1,N,5+C]), "
        "blazeface (anchors: [1,N,4+2K] + [1,N,C])"
    )


class Detector:
    """Runs one model on frames. Not thread-safe: use from one thread."""

    def __init__(
        self, cfg: ModelConfig, min_score: float, model: LoadedModel | None = None
    ) -> None:
        self.cfg = cfg
        self.min_score = min_score
        self.model: LoadedModel = model or load_model(
            cfg.path, cfg.threads, cfg.delegate, cfg.exact
        )
        if len(self.model.inputs) != 1 or len(self.model.inputs[0].shape) != 4:
            shapes = [i.describe() for i in self.model.inputs]
            raise ModelError(f"expected one NHWC image input, found {shapes}", where=str(cfg.path))
        self.input = self.model.inputs[0]
        raw_labels = self._raw_labels()
        self.family = self._family(len(raw_labels) if raw_labels else None)
        self.decoder = self._decoder()
        self.labels = self._labels(raw_labels)
        self.plan = self._plan()
        self._outputs: dict[int, npt.NDArray[Any]] = {}
        info = self.summary()
        log.info(
            "model %s: format %s (%s), input %s, %d classes, resize %s, input values %s",
            cfg.path.name,
            info.family,
            "configured" if cfg.format != "auto" else "detected",
            info.input,
            info.num_classes,
            "letterbox" if info.letterbox else "stretch",
            info.normalize,
        )

    def _raw_labels(self) -> list[str] | None:
        embedded = embedded_labels(self.cfg.path)
        if self.cfg.labels is None:
            return embedded
        labels = read_label_file(self.cfg.labels)
        if embedded is not None and fit_labels(labels, None, "") != embedded:
            log.warning(
                "labels file %s (%d names) differs from the %d class names embedded in %s; "
                "using the file",
                self.cfg.labels,
                len(labels),
                len(embedded),
                self.cfg.path.name,
            )
        return labels

    def _family(self, num_labels: int | None) -> str:
        if self.cfg.format != "auto":
            return self.cfg.format
        try:
            return detect_family(self.model.outputs, num_labels)
        except ModelError as exc:
            raise ModelError(exc.message, where=str(self.cfg.path)) from None

    def _decoder(self) -> Decoder:
        outs = self.model.outputs
        size = (self.input.shape[2], self.input.shape[1])
        try:
            if self.family == "ssd":
                return ssd.SsdDecoder(outs)
            if self.family == "blazeface":
                grid = self.cfg.anchors
                return anchors.AnchorDecoder(outs, size, grid.strides, grid.anchors_per_layer)
            if not yolo.matches_v8(outs):
                raise ModelError("expected one rank-3 output")
            cls = yolo.YoloV5Decoder if self.family == "yolov5" else yolo.YoloV8Decoder
            return cls(outs[0], size)
        except ModelError as exc:
            seen = ", ".join(o.describe() for o in outs)
            raise ModelError(
                f"format {self.family!r} does not fit the outputs ({seen}): {exc.message}",
                where=str(self.cfg.path),
            ) from None

    def _num_classes(self) -> int | None:
        if self.family == "ssd":
            return ssd.num_classes(self.model)
        if self.family == "blazeface":
            split = anchors.split_outputs(self.model.outputs)
            return split[1].shape[2] if split else None
        channels = min(self.model.outputs[0].shape[1:])
        return channels - (5 if self.family == "yolov5" else 4)

    def _labels(self, raw: list[str] | None) -> list[str]:
        count = self._num_classes()
        if raw is None:
            log.warning("no labels for %s: classes are reported as class_<id>", self.cfg.path)
            return [f"class_{i}" for i in range(count or 0)]
        where = str(self.cfg.labels or self.cfg.path)
        return fit_labels(raw, count, where)

    def _plan(self) -> InputPlan:
        _, height, width, _ = self.input.shape
        resize = self.cfg.input.resize
        letterbox = FAMILY_LETTERBOX[self.family] if resize == "auto" else resize == "letterbox"
        return InputPlan(
            width,
            height,
            self.input.dtype,
            letterbox,
            self.cfg.input.color == "rgb",
            self._normalize(),
            FAMILY_PAD.get(self.family, LETTERBOX_PAD),
            exact=self.cfg.exact,
        )

    def _normalize(self) -> Normalize:
        norm = self.cfg.input.normalize
        if isinstance(norm, MeanStd):
            return (norm.mean, norm.std)
        if self.input.dtype.kind in "iu":
            return "raw"  # integer inputs: the model's quantization already encodes the scaling
        convention = FAMILY_FLOAT_NORMALIZE[self.family]
        if norm == "auto":
            stated = read_normalization(self.cfg.path)
            if stated is not None:
                log.info(
                    "input normalization from the model's metadata: mean %s, std %s",
                    stated[0],
                    stated[1],
                )
                return stated
            return convention
        if norm == "0..255" and convention != "0..255":
            log.warning(
                "model %s takes %s input but is fed raw 0..255 pixels (model.input.normalize); "
                "%s models are trained on %s input: if detections look wrong, set "
                "model.input.normalize: %s (or auto)",
                self.cfg.path.name,
                self.input.dtype.name,
                self.family,
                convention,
                convention,
            )
        return norm

    def summary(self) -> ModelSummary:
        """What was detected and chosen for this model."""
        return ModelSummary(
            family=self.family,
            runtime=self.model.runtime,
            input=self.input.describe(),
            outputs=tuple(o.describe() for o in self.model.outputs),
            num_classes=len(self.labels),
            letterbox=self.plan.letterbox,
            normalize=str(self.plan.normalize),
        )

    def label(self, class_id: int) -> str:
        """Label for a class index (out-of-range ids get a synthetic name)."""
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else f"class_{class_id}"

    def detect_arrays(self, image: Image) -> tuple[Detections, float]:
        """Detections in a BGR frame as arrays (after NMS, above min_score; boxes normalized
        to the frame) and the time it took in ms."""
        start = time.perf_counter()
        tensor, transform = prepare(image, self.plan)
        interp = self.model.interpreter
        interp.set_tensor(self.input.index, tensor)
        interp.invoke()
        decoded = self.decoder.decode(lambda spec: interp.get_tensor(spec.index), self.min_score)
        # SSD models suppress overlaps in the model (at their own IoU); a configured nms_iou
        # adds a pass at that IoU (duplicate boxes of one object make duplicate tracks).
        if self.family != "ssd" or self.cfg.nms_iou is not None:
            decoded = nms(decoded, self.nms_iou, self.cfg.max_detections)
        kps = (
            transform.points_to_frame(decoded.keypoints) if decoded.keypoints is not None else None
        )
        dets = Detections(
            np.asarray(transform.to_frame(decoded.boxes), np.float32).reshape(-1, 4),
            np.asarray(decoded.scores, np.float32),
            np.asarray(decoded.class_ids, np.int64),
            keypoints=None if kps is None else np.asarray(kps, np.float32),
        )
        return dets, (time.perf_counter() - start) * 1000.0

    def detect(self, image: Image) -> tuple[tuple[Detection, ...], float]:
        """Detections in a BGR frame as objects (see detect_arrays) and the time in ms."""
        dets, ms = self.detect_arrays(image)
        return self.to_objects(dets), ms

    def to_objects(self, dets: Detections) -> tuple[Detection, ...]:
        """One Detection object per box, labelled (for payloads built per box)."""
        kps = dets.keypoints
        return tuple(
            Detection(self.label(int(c)), int(c), float(s), _box(b), _points(kps, i))
            for i, (b, s, c) in enumerate(zip(dets.xyxy, dets.score, dets.class_id, strict=True))
        )

    @property
    def nms_iou(self) -> float:
        """Configured NMS IoU, else the family's default."""
        if self.cfg.nms_iou is not None:
            return self.cfg.nms_iou
        return FAMILY_NMS_IOU.get(self.family, DEFAULT_NMS_IOU)


def _points(kps: npt.NDArray[np.float32] | None, i: int) -> tuple[tuple[float, float], ...]:
    if kps is None:
        return ()
    return tuple((float(x), float(y)) for x, y in kps[i])


def _box(b: npt.NDArray[np.float32]) -> tuple[float, float, float, float]:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
