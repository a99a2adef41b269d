"""Motion gating: decide per frame whether the detector needs to run.

A cheap change detector on a small grayscale copy of the frame (downscale, blur, running-average
background, absdiff, threshold, masks, dilate, connected components) tells the pipeline when
something moves. The detector runs on the first frame, while anything moves, while tracks are
active, and on a keyframe at least every `keyframe_interval` seconds of frame time, so a static
scene costs a few milliseconds per frame instead of a model invocation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, Field

from edge_agent.config.base import Strict
from edge_agent.config.values import Seconds
from edge_agent.types import Image

log = logging.getLogger(__name__)

Unit = Annotated[float, Field(ge=0, le=1)]
Point = tuple[Unit, Unit]
Mat = cv2.typing.MatLike  # what OpenCV returns; uint8 single-channel here
FloatArray = npt.NDArray[np.float32]
Reason = Literal["first", "motion", "tracks", "keyframe", "disabled"]

BLUR = (5, 5)  # at the downscaled size: smooths sensor and compression noise, keeps objects
MAX_MASKS = 64
MAX_POLYGON_POINTS = 256


def _has_area(points: list[Point]) -> list[Point]:
    """Refuse a polygon whose points are all on one line (it would mask nothing)."""
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    area = abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))) / 2
    if area < 1e-9:
        raise ValueError("the polygon has no area (its points are on one line)")
    return points


Polygon = Annotated[
    list[Point],
    Field(min_length=3, max_length=MAX_POLYGON_POINTS),
    AfterValidator(_has_area),
]


class MotionConfig(Strict):
    """The `motion:` section of a camera: when the detector may skip a frame."""

    enabled: bool = Field(True, description="false: the detector runs on every frame")
    threshold: int = Field(25, ge=1, le=255, description="pixel difference (0..255) that counts")
    min_area: float = Field(
        0.002, ge=0, le=1, description="fraction of the frame a moving region must cover"
    )
    keyframe_interval: Seconds = Field(
        10.0, gt=0, le=86_400, description="the detector runs at least this often (frame time)"
    )
    masks: list[Polygon] = Field(
        default_factory=list,
        max_length=MAX_MASKS,
        description="normalized polygons [[x, y], ...] whose motion is ignored",
    )
    width: int = Field(
        320, ge=32, le=1920, description="about the width of the analysed copy (whole factor)"
    )
    background_time: Seconds = Field(
        0.5, gt=0, le=3600, description="time constant of the running-average background"
    )
    dilate: int = Field(2, ge=0, le=16, description="3x3 dilations that join nearby changes")
    off_delay: Seconds = Field(
        2.0, ge=0, le=3600, description="motion reads OFF after this long without motion"
    )
    lighting_area: float = Field(
        0.5, gt=0, le=1, description="changed fraction treated as a lighting change"
    )


_NO_BOXES: FloatArray = np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one frame.

    run_detector: whether to run the detector; reason: why (None when it is skipped);
    motion: the debounced ON/OFF state (ON at once, OFF after `off_delay` without motion);
    area: fraction of the frame covered by moving regions on this frame; boxes: (N,4) float32
    xyxy normalized 0..1 of those regions; lighting: this frame changed so much (more than
    `lighting_area`) that it was taken as a lighting change, not as motion.
    """

    run_detector: bool
    reason: Reason | None
    motion: bool
    area: float = 0.0
    boxes: FloatArray = field(default_factory=lambda: _NO_BOXES)
    lighting: bool = False


@dataclass(frozen=True)
class _Change:
    """The moving regions of one frame."""

    area: float = 0.0
    boxes: FloatArray = field(default_factory=lambda: _NO_BOXES)
    lighting: bool = False

    @property
    def moving(self) -> bool:
        return len(self.boxes) > 0


def _to_gray(image: Image) -> Mat:
    """A grayscale view or copy of a BGR, BGRA or single-channel uint8 frame."""
    if image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"expected a non-empty uint8 image, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        if image.shape[2] == 1:
            return image[:, :, 0]
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(image, code)
    raise ValueError(f"expected an HxW or HxWxC image, got shape {image.shape}")


class MotionGate:
    """Decides per frame whether the detector runs. Not thread-safe: one per camera."""

    def __init__(self, cfg: MotionConfig, fps_hint: float) -> None:
        self.cfg = cfg
        # Frame interval used when timestamps do not advance (or are not finite).
        ok = math.isfinite(fps_hint) and fps_hint > 0
        self._frame_dt = 1.0 / fps_hint if ok else 0.1
        self._kernel = np.ones((3, 3), np.uint8)
        self._reset()

    def _reset(self) -> None:
        self._frame_shape: tuple[int, ...] | None = None
        self._size = (0, 0)  # (width, height) of the analysed copy
        self._crop = (0, 0)  # (rows, columns) of the frame that shrink by a whole factor
        self._keep: Image | None = None  # 255 where motion counts, 0 under a mask
        self._min_pixels = 0.0
        self._background: FloatArray | None = None
        self._last_ts = -math.inf
        self._last_run = -math.inf
        self._last_motion = -math.inf
        self._motion = False

    def check(self, image: Image, ts: float, tracks_active: bool) -> Decision:
        """Decide for one HxWx3 BGR uint8 frame taken at `ts` seconds (frame time)."""
        if not self.cfg.enabled:
            return Decision(True, "disabled", False)
        gray = _to_gray(image)
        ts = self._clock(ts)
        background = self._background
        if background is None or image.shape[:2] != self._frame_shape:
            self._start(gray, image.shape[:2])
            self._last_ts = ts
            return self._decide(ts, "first", _Change())
        change = self._compare(self._shrink(gray), background, ts - self._last_ts)
        self._last_ts = ts
        reason: Reason | None = None
        if change.moving:
            reason = "motion"
        elif tracks_active:
            reason = "tracks"
        elif change.lighting or ts - self._last_run >= self.cfg.keyframe_interval:
            reason = "keyframe"  # a lighting change shows a new scene: look at it once
        return self._decide(ts, reason, change)

    def _clock(self, ts: float) -> float:
        """Frame time, repaired: a non-finite ts follows the last one; a jump back restarts."""
        if not math.isfinite(ts):
            return self._last_ts + self._frame_dt if math.isfinite(self._last_ts) else 0.0
        if ts < self._last_ts:
            # A replay that loops or a clock set back: the timers would wait for a time that
            # has passed, so start over (the next frame is treated as the first).
            log.debug(
                "frame time went back from %.3f to %.3f: motion gate restarts", self._last_ts, ts
            )
            self._reset()
        return ts

    def _decide(self, ts: float, reason: Reason | None, change: _Change) -> Decision:
        if change.moving:
            self._last_motion = ts
            self._motion = True
        elif self._motion and ts - self._last_motion >= self.cfg.off_delay:
            self._motion = False
        if reason is not None:
            self._last_run = ts
        return Decision(
            reason is not None, reason, self._motion, change.area, change.boxes, change.lighting
        )

    def _start(self, gray: Mat, shape: tuple[int, ...]) -> None:
        """Size the analysed copy and the mask for this frame size; take it as background."""
        if self._frame_shape is not None:
            log.info(
                "frame size changed from %s to %s: motion gate restarts", self._frame_shape, shape
            )
        height, width = shape
        # A whole shrink factor takes OpenCV's fast INTER_AREA path (768 -> 384 costs a third
        # of 768 -> 320), so `width` is met as closely as a whole factor allows; the last
        # factor-1 rows and columns at most are left out (1366x768 -> 1364x768 -> 341x192).
        factor = max(1, min(round(width / self.cfg.width), width, height))
        small_w, small_h = width // factor, height // factor
        self._crop = (small_h * factor, small_w * factor)
        self._frame_shape = shape
        self._size = (small_w, small_h)
        self._min_pixels = self.cfg.min_area * small_w * small_h
        self._keep = self._mask(small_w, small_h)
        self._background = self._shrink(gray).astype(np.float32)

    def _mask(self, width: int, height: int) -> Image | None:
        """255 outside every mask polygon, 0 inside, at the analysed size (None: no masks)."""
        if not self.cfg.masks:
            return None
        keep = np.full((height, width), 255, np.uint8)
        scale = np.array([width, height], np.float64)
        polygons = [np.round(np.array(p) * scale).astype(np.int32) for p in self.cfg.masks]
        cv2.fillPoly(keep, polygons, 0)
        return keep

    def _shrink(self, gray: Mat) -> Mat:
        rows, cols = self._crop
        small = cv2.resize(gray[:rows, :cols], self._size, interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(small, BLUR, 0)

    def _compare(self, small: Mat, background: FloatArray, dt: float) -> _Change:
        """Moving regions of `small` against the background, then learn it into the background."""
        diff = cv2.absdiff(small, cv2.convertScaleAbs(background))
        _, changed = cv2.threshold(diff, self.cfg.threshold, 255, cv2.THRESH_BINARY)
        if self._keep is not None:
            changed = cv2.bitwise_and(changed, self._keep)
        total = small.size
        count = cv2.countNonZero(changed)
        if count >= self.cfg.lighting_area * total:
            # A light switched on, auto exposure, an IR switch: everything "changed" at once.
            # Restart the background from this frame instead of reporting motion for seconds.
            self._background = small.astype(np.float32)
            return _Change(area=count / total, lighting=True)
        dt = dt if dt > 0 else self._frame_dt
        rate = 1.0 - math.exp(-dt / self.cfg.background_time)
        cv2.accumulateWeighted(small, background, rate)
        if count == 0:
            return _Change()  # the static-scene fast path: no components to label
        return self._regions(changed, total)

    def _regions(self, changed: Mat, total: int) -> _Change:
        """Connected moving regions at least `min_area` large, as normalized boxes."""
        if self.cfg.dilate:
            changed = cv2.dilate(changed, self._kernel, iterations=self.cfg.dilate)
        _, _, stats, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
        stats = stats[1:]  # label 0 is the unchanged background
        big = stats[stats[:, cv2.CC_STAT_AREA] >= max(self._min_pixels, 1)]
        if len(big) == 0:
            return _Change()
        width, height = self._size
        x, y = big[:, cv2.CC_STAT_LEFT], big[:, cv2.CC_STAT_TOP]
        w, h = big[:, cv2.CC_STAT_WIDTH], big[:, cv2.CC_STAT_HEIGHT]
        boxes = np.stack([x / width, y / height, (x + w) / width, (y + h) / height], axis=1)
        area = float(big[:, cv2.CC_STAT_AREA].sum()) / total
        return _Change(area=area, boxes=boxes.astype(np.float32))
