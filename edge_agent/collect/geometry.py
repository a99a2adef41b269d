"""Boxes from a samples message (normalized to the captured frame) -> pixels of a stored image.

The stored JPEG may be smaller than the frame (the device's `max_side`), and in crops mode it
shows only a padded region of the frame. A box normalized to the frame maps to the full image
by scaling with the image's own size; to a crop by moving it to the region's origin, scaling
by the crop's pixels per frame unit, and clipping to the crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]
# A detection belongs to a crop when at least this fraction of its area lies in the crop's
# region (or when the crop carries its tracker id): neighbours that only touch it do not.
MIN_INSIDE = 0.5


@dataclass(frozen=True)
class PixelBox:
    """One detection in pixels of a stored image: corners, label, score."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    score: float

    @property
    def width(self) -> float:
        """Width in pixels."""
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        """Height in pixels."""
        return self.y2 - self.y1


def label_of(det: dict[str, Any]) -> str:
    """The category name of a detection (an empty label gets a name from its class id)."""
    label = str(det.get("label") or "")
    return label if label else f"class_{det.get('class_id', 0)}"


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(a: Box, b: Box) -> Box:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def in_crop(box: Box, region: Box, same_track: bool) -> bool:
    """Whether a detection (normalized box) is shown by a crop of the frame."""
    inside = _area(_intersection(box, region))
    if inside <= 0.0:
        return False
    area = _area(box)
    return same_track or area <= 0.0 or inside / area >= MIN_INSIDE


def to_pixels(
    box: Box, width: int, height: int, region: Box | None = None
) -> tuple[float, float, float, float] | None:
    """A frame-normalized box in pixels of an image showing `region` of the frame, clipped."""
    # region None: the image shows the whole frame. None is returned when nothing is left.
    rx1, ry1, rx2, ry2 = region if region is not None else (0.0, 0.0, 1.0, 1.0)
    sx, sy = width / (rx2 - rx1), height / (ry2 - ry1)
    x1 = min(max((box[0] - rx1) * sx, 0.0), float(width))
    y1 = min(max((box[1] - ry1) * sy, 0.0), float(height))
    x2 = min(max((box[2] - rx1) * sx, 0.0), float(width))
    y2 = min(max((box[3] - ry1) * sy, 0.0), float(height))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def picture_boxes(
    detections: list[dict[str, Any]],
    width: int,
    height: int,
    region: Box | None,
    tracker_id: int | None = None,
) -> list[PixelBox]:
    """Every detection shown by one stored image, in its pixels."""
    out = []
    for det in detections:
        box = (
            float(det["box"][0]),
            float(det["box"][1]),
            float(det["box"][2]),
            float(det["box"][3]),
        )
        if region is not None:
            same = tracker_id is not None and det.get("tracker_id") == tracker_id
            if not in_crop(box, region, same):
                continue
        pixels = to_pixels(box, width, height, region)
        if pixels is not None:
            out.append(PixelBox(*pixels, label_of(det), float(det["score"])))
    return out
