"""Values that cross pipeline stages. Frozen, with units in the field docs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""An HxWx3 uint8 image in BGR channel order (OpenCV's convention)."""


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    index: 0-based position in the source (frame number for video, sorted position for images).
    ts: capture time, epoch seconds; for replay sources the run start plus the position in the
    file (realtime replay: the time the frame is released).
    image: HxWx3 uint8 BGR pixels.
    """

    camera: str
    index: int
    ts: float
    image: Image = field(repr=False)

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(self.image.shape[0])


@dataclass(frozen=True)
class Detection:
    """One detected object.

    box: (x_min, y_min, x_max, y_max), normalized 0..1 of the frame's width and height.
    score: detector confidence 0..1.
    class_id: index into the model's label list (background line already removed).
    keypoints: (x, y) pairs normalized 0..1 of the frame, for models that predict them
        (BlazeFace: right eye, left eye, nose tip, mouth, right ear, left ear).
    classification: (label, score 0..1) from a second-stage classifier on the crop, if any.
    """

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[tuple[float, float], ...] = ()
    classification: tuple[str, float] | None = None

    def to_json(self) -> dict[str, object]:
        """The detection as it appears in published payloads (rounded for size)."""
        out: dict[str, object] = {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, 4),
            "box": [round(v, 5) for v in self.box],
        }
        if self.keypoints:
            out["keypoints"] = [[round(x, 5), round(y, 5)] for x, y in self.keypoints]
        if self.classification is not None:
            label, score = self.classification
            out["classification"] = {"label": label, "score": round(score, 4)}
        return out


@dataclass(frozen=True)
class FrameResult:
    """What the detector found in one frame.

    raw: every decoded detection above the detector's global score floor, after NMS.
    detections: the camera's filtered view of raw (min_score, labels, per_label).
    inference_ms: preprocess + invoke + decode time, milliseconds.
    """

    frame: Frame
    raw: tuple[Detection, ...]
    detections: tuple[Detection, ...]
    inference_ms: float
