"""Turn a BGR frame into the model's input tensor, and map boxes back to the frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.types import Image

LETTERBOX_PAD = 114  # Ultralytics' pad value; models trained with it expect it at inference.

Normalize = Literal["raw", "0..255", "0..1", "-1..1"] | tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Transform:
    """How a frame was placed in the input tensor.

    scale_x/scale_y: input pixels per frame pixel; pad_x/pad_y: offset in input pixels;
    in_w/in_h: input tensor size; src_w/src_h: frame size, all in pixels.
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    in_w: int
    in_h: int
    src_w: int
    src_h: int

    def to_frame(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map (N,4) xyxy boxes normalized to the input tensor onto 0..1 of the frame."""
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] * self.in_w - self.pad_x) / (self.scale_x * self.src_w)
        out[:, 1::2] = (boxes[:, 1::2] * self.in_h - self.pad_y) / (self.scale_y * self.src_h)
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def points_to_frame(self, points: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map (..., 2) xy points normalized to the input tensor onto 0..1 of the frame."""
        out = np.empty_like(points)
        out[..., 0] = (points[..., 0] * self.in_w - self.pad_x) / (self.scale_x * self.src_w)
        out[..., 1] = (points[..., 1] * self.in_h - self.pad_y) / (self.scale_y * self.src_h)
        np.clip(out, 0.0, 1.0, out=out)
        return out


@dataclass(frozen=True)
class InputPlan:
    """Everything needed to build the input tensor: size, dtype, resize and value mapping."""

    width: int
    height: int
    dtype: np.dtype[Any]
    letterbox: bool
    rgb: bool
    normalize: Normalize
    pad: int = LETTERBOX_PAD  # pixel value of letterbox bars
    # Bit-exact bilinear resize: OpenCV's SIMD INTER_LINEAR rounds differently on ARM (NEON)
    # and x86, by one level in a third of the pixels; INTER_LINEAR_EXACT is the same everywhere.
    exact: bool = False

    @property
    def interpolation(self) -> int:
        """The cv2 resize flag for this plan."""
        return cv2.INTER_LINEAR_EXACT if self.exact else cv2.INTER_LINEAR


def place(image: Image, plan: InputPlan) -> tuple[Image, Transform]:
    """Resize (stretch or letterbox, bilinear) and convert colour order; returns uint8 pixels."""
    src_h, src_w = image.shape[:2]
    if plan.letterbox:
        ratio = min(plan.width / src_w, plan.height / src_h)
        new_w, new_h = max(1, round(src_w * ratio)), max(1, round(src_h * ratio))
        pad_x, pad_y = (plan.width - new_w) // 2, (plan.height - new_h) // 2
        canvas = np.full((plan.height, plan.width, 3), plan.pad, dtype=np.uint8)
        resized = cv2.resize(image, (new_w, new_h), interpolation=plan.interpolation)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
        placed = canvas
        transform = Transform(
            new_w / src_w, new_h / src_h, pad_x, pad_y, plan.width, plan.height, src_w, src_h
        )
    else:
        stretched = cv2.resize(image, (plan.width, plan.height), interpolation=plan.interpolation)
        placed = np.asarray(stretched, np.uint8)
        transform = Transform(
            plan.width / src_w, plan.height / src_h, 0, 0, plan.width, plan.height, src_w, src_h
        )
    if plan.rgb:
        placed = np.asarray(cv2.cvtColor(placed, cv2.COLOR_BGR2RGB), np.uint8)
    return placed, transform


def to_tensor(pixels: Image, plan: InputPlan) -> npt.NDArray[Any]:
    """Map uint8 pixels to the input dtype and value range, with a batch axis."""
    if plan.dtype == np.uint8:
        out: npt.NDArray[Any] = pixels
    elif plan.dtype == np.int8:
        # Integer inputs are calibrated so the pixel range fills the type: pixel - 128.
        out = (pixels ^ np.uint8(0x80)).view(np.int8)
    else:
        out = _normalize_float(pixels, plan.normalize).astype(plan.dtype, copy=False)
    return out[np.newaxis]


def _normalize_float(pixels: Image, normalize: Normalize) -> npt.NDArray[np.float32]:
    values = pixels.astype(np.float32)
    if normalize == "0..1":
        return values * np.float32(1 / 255)
    if normalize == "-1..1":
        return values * np.float32(1 / 127.5) - np.float32(1.0)
    if isinstance(normalize, tuple):
        mean = np.asarray(normalize[0], dtype=np.float32)
        std = np.asarray(normalize[1], dtype=np.float32)
        return (values - mean) / std
    return values


def prepare(image: Image, plan: InputPlan) -> tuple[npt.NDArray[Any], Transform]:
    """Frame -> (input tensor with batch axis, transform back to the frame)."""
    pixels, transform = place(image, plan)
    return to_tensor(pixels, plan), transform
