"""Privacy before encoding: masks blacked out, faces blurred, or only the boxes' crops sent.

Runs on the encoder thread, on a copy: the captured frame is never changed. A face model
that fails makes the sample fail (PrivacyError): it is dropped and counted, never sent as is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.sampling.config import FaceBlur, Privacy
from edge_agent.types import Image

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
MAX_CROPS = 32  # per sample; the highest-scoring boxes first
MIN_HEAD_PX = 16  # head areas smaller than this hold no recognisable face


class PrivacyError(Exception):
    """The sample could not be made private (it must not be published)."""


class FaceFinder(Protocol):
    """Finds faces: (N,4) normalized xyxy boxes."""

    def find(self, image: Image) -> FloatArray:
        """Face boxes in a BGR frame."""
        ...


class ModelFaces:
    """A face detector model (BlazeFace-style anchors, or any detector family) as a finder."""

    def __init__(self, cfg: FaceBlur) -> None:
        # Imported here: only cameras with blur_faces load a second model.
        from edge_agent.config.schema import ModelConfig
        from edge_agent.detect.detector import Detector

        model = ModelConfig(path=cfg.model, labels=cfg.labels, threads=cfg.threads)
        self.detector = Detector(model, cfg.min_score)

    def find(self, image: Image) -> FloatArray:
        """Face boxes in a BGR frame."""
        dets, _ = self.detector.detect_arrays(image)
        return dets.xyxy


@dataclass
class Private:
    """A frame made private: the full image, or crops (region normalized, tracker id, pixels)."""

    image: Image | None
    crops: list[tuple[tuple[float, float, float, float], int | None, Image]] = field(
        default_factory=list
    )
    masks: int = 0
    faces: int = 0


def _pixels(box: npt.ArrayLike, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = np.asarray(box, np.float64) * [width, height, width, height]
    return (
        max(0, int(np.floor(x1))),
        max(0, int(np.floor(y1))),
        min(width, int(np.ceil(x2))),
        min(height, int(np.ceil(y2))),
    )


def _padded(box: npt.ArrayLike, pad: float) -> FloatArray:
    x1, y1, x2, y2 = np.asarray(box, np.float32)
    dx, dy = (x2 - x1) * pad, (y2 - y1) * pad
    out: FloatArray = np.clip([x1 - dx, y1 - dy, x2 + dx, y2 + dy], 0, 1).astype(np.float32)
    return out


def _head_square(box: npt.ArrayLike, width: int, height: int) -> tuple[int, int, int, int]:
    """A square as wide as the box, at its top (from a little above it)."""
    x1, y1, x2, _ = np.asarray(box, np.float64) * [width, height, width, height]
    side = x2 - x1
    top = y1 - 0.05 * side
    centre = (x1 + x2) / 2
    return _pixels(
        [
            (centre - side / 2) / width,
            top / height,
            (centre + side / 2) / width,
            (top + side) / height,
        ],
        width,
        height,
    )


def blur_region(image: Image, x1: int, y1: int, x2: int, y2: int) -> None:
    """Make a region unrecognisable in place: reduced to 4x4 cells, then smoothed (a plain
    Gaussian of a small kernel can leave a face readable)."""
    w, h = x2 - x1, y2 - y1
    if w < 2 or h < 2:
        return
    roi = image[y1:y2, x1:x2]
    small = cv2.resize(roi, (4, 4), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    k = max(3, (min(w, h) // 4) | 1)
    image[y1:y2, x1:x2] = cv2.GaussianBlur(coarse, (k, k), 0)


class PrivacyFilter:
    """One camera's privacy settings, applied to a frame and its boxes."""

    def __init__(self, cfg: Privacy, faces: FaceFinder | None) -> None:
        self.cfg = cfg
        self.faces = faces

    @property
    def active(self) -> bool:
        """Whether anything is changed at all."""
        return bool(self.cfg.masks) or self.faces is not None or self.cfg.mode == "crops"

    def apply(
        self,
        frame: Image,
        boxes: FloatArray,
        scores: FloatArray,
        tracker_ids: list[int | None],
        heads: FloatArray | None = None,
    ) -> Private:
        """The frame (or its crops) with masks and face blur applied; PrivacyError when the
        face model fails. `heads`: boxes (normalized) whose top is searched for faces too."""
        height, width = frame.shape[:2]
        image = frame.copy() if self.active else frame
        faces = self._faces(frame, heads if heads is not None else np.zeros((0, 4), np.float32))
        pad = self.cfg.blur_faces.padding if self.cfg.blur_faces is not None else 0.0
        for face in faces:
            blur_region(image, *_pixels(_padded(face, pad), width, height))
        # Masks last: a blurred face next to a mask must not smear pixels into it.
        for polygon in self.cfg.masks:
            points = np.round(np.asarray(polygon) * [width, height]).astype(np.int32)
            cv2.fillPoly(image, [points], (0, 0, 0))
        out = Private(image, masks=len(self.cfg.masks), faces=len(faces))
        if self.cfg.mode == "crops":
            out.image, out.crops = None, self._crops(image, boxes, scores, tracker_ids)
        return out

    def _faces(self, frame: Image, heads: FloatArray) -> FloatArray:
        if self.faces is None:
            return np.zeros((0, 4), np.float32)
        height, width = frame.shape[:2]
        found = []
        try:
            found.append(self.faces.find(frame))
            # A short-range face model misses faces that are small in the frame: search the
            # head area of each person box (a square at its top) at the model's scale too.
            for x1, y1, x2, y2 in (_head_square(b, width, height) for b in heads):
                if x2 - x1 >= MIN_HEAD_PX and y2 - y1 >= MIN_HEAD_PX:
                    local = self.faces.find(frame[y1:y2, x1:x2])
                    scale = np.array([x2 - x1, y2 - y1] * 2, np.float32)
                    offset = np.array([x1, y1] * 2, np.float32)
                    size = np.array([width, height] * 2, np.float32)
                    found.append((local * scale + offset) / size)
        except Exception as exc:  # any failure of the model: the sample must not leave as is
            raise PrivacyError(f"face model failed: {exc}") from exc
        return np.concatenate([np.reshape(f, (-1, 4)) for f in found]).astype(np.float32)

    def _crops(
        self, image: Image, boxes: FloatArray, scores: FloatArray, tracker_ids: list[int | None]
    ) -> list[tuple[tuple[float, float, float, float], int | None, Image]]:
        height, width = image.shape[:2]
        crops = []
        for i in np.argsort(-scores, kind="stable")[:MAX_CROPS]:
            x1, y1, x2, y2 = _pixels(_padded(boxes[i], self.cfg.padding), width, height)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            region = (x1 / width, y1 / height, x2 / width, y2 / height)
            crops.append((region, tracker_ids[i], image[y1:y2, x1:x2].copy()))
        return crops
