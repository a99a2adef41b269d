"""Annotated video: one camera's frames with its boxes, zones and lines drawn, written to a file.

`edge-agent run CONFIG --annotate OUT.mp4` passes every frame of a replay camera through an
`Annotator`: boxes with label, score and `#track` in a colour per track, zones as translucent
polygons with their counts, counting lines with an arrow to their "in" side and their totals,
and a header with the frame number, the motion state and whether the detector ran.

The file is written with OpenCV's FFmpeg backend: `.mp4` as H.264 ('avc1') where an encoder
for it exists, else MPEG-4 part 2 ('mp4v'); `.avi` as Motion JPEG. The first frame fixes the
video's size; later frames of another size are resized to it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.camera.zones import LineConfig, ZoneConfig
from edge_agent.core.detections import NO_TRACK, Detections
from edge_agent.core.geometry import to_normalized, to_pixels
from edge_agent.errors import UserError
from edge_agent.types import Image

log = logging.getLogger(__name__)

Colour = tuple[int, int, int]
Size = tuple[int, int]  # (width, height) pixels
CODECS: dict[str, tuple[str, ...]] = {".mp4": ("avc1", "mp4v"), ".avi": ("MJPG",)}
ZONE_ALPHA = 0.3  # opacity of a zone's fill
DEFAULT_FPS = 25.0  # when the source reports no usable frame rate
FONT = cv2.FONT_HERSHEY_SIMPLEX
# What FFmpeg and OpenCV print on fd 2 when a codec cannot be opened (an expected miss when
# 'avc1' has no encoder): these lines are dropped, anything else printed meanwhile is kept.
_CODEC_NOISE = re.compile(rb"^\s*$|^\[[\w.]+ @ 0x[0-9a-f]+\]|^\[ ?(ERROR|WARN|INFO):|^OpenCV")


def _palette(n: int = 24) -> tuple[Colour, ...]:
    """n bright BGR colours; hues step by the golden ratio so neighbouring ids differ."""
    hue = (np.arange(n) * 0.618034 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hue, np.full(n, 200, np.uint8), np.full(n, 255, np.uint8)], axis=1)
    bgr = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]
    return tuple((int(b), int(g), int(r)) for b, g, r in bgr.tolist())


PALETTE = _palette()


def colour_of(track_id: int) -> Colour:
    """The colour of a track (the same id always gets the same colour)."""
    return PALETTE[track_id % len(PALETTE)]


@dataclass(frozen=True)
class _Style:
    """Text and stroke sizes for one output frame height."""

    scale: float
    thick: int
    pad: int

    @staticmethod
    def for_height(height: int) -> _Style:
        """Sizes that read the same at 480p and 1080p."""
        scale = max(0.4, height / 1080 * 0.8)
        return _Style(scale, max(1, round(height / 540)), max(2, round(height / 270)))


@dataclass(frozen=True, eq=False)
class _Fill:
    """The zones' fill over the frame box that holds them: colours and which pixels."""

    box: tuple[slice, slice]
    colours: Image
    mask: npt.NDArray[np.uint8]  # 255 inside a zone


@dataclass(frozen=True, eq=False)
class _Scene:
    """Zones and lines in pixels of the output frame; the zones' fill pre-rendered."""

    zones: tuple[tuple[str, npt.NDArray[np.int32], Colour], ...]
    lines: tuple[tuple[str, tuple[int, int], tuple[int, int], Colour], ...]
    fill: _Fill | None


def _pixels(points: Any, units: str, source: Size, out: Size) -> npt.NDArray[np.float64]:
    """Config points (normalized, or pixels of the source frame) -> pixels of the output."""
    norm = to_normalized(points, source) if units == "px" else np.asarray(points, np.float64)
    return to_pixels(norm, out)


def _build_scene(
    zones: Mapping[str, ZoneConfig], lines: Mapping[str, LineConfig], source: Size, out: Size
) -> _Scene:
    """Everything static about the zones and lines, for frames of size `source`."""
    polygons = tuple(
        (name, np.rint(_pixels(z.polygon, z.units, source, out)).astype(np.int32), PALETTE[i])
        for i, (name, z) in enumerate(zones.items())
    )
    segments = []
    for i, (name, ln) in enumerate(lines.items()):
        a, b = np.rint(_pixels(ln.points, ln.units, source, out)).astype(int).tolist()
        segments.append((name, (a[0], a[1]), (b[0], b[1]), PALETTE[-1 - i]))
    return _Scene(polygons, tuple(segments), _render_fill(polygons, out))


def _render_fill(
    polygons: Sequence[tuple[str, npt.NDArray[np.int32], Colour]], out: Size
) -> _Fill | None:
    """The zones filled in their colours, cropped to the part of the frame they cover."""
    if not polygons:
        return None
    corners = np.concatenate([p for _, p, _ in polygons])
    x0, y0 = np.clip(corners.min(axis=0), 0, out).tolist()
    x1, y1 = np.clip(corners.max(axis=0) + 1, 0, out).tolist()
    if x1 <= x0 or y1 <= y0:  # every zone lies outside the frame
        return None
    colours = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for _, points, colour in polygons:
        cv2.fillPoly(colours, [points - [x0, y0]], colour)
        cv2.fillPoly(mask, [points - [x0, y0]], 255)
    # Blending only this box of the frame, not the whole frame, keeps zones cheap.
    return _Fill((slice(y0, y1), slice(x0, x1)), colours, mask)


def _text(img: Image, text: str, x: int, y: int, colour: Colour, style: _Style) -> None:
    """`text` on a filled `colour` tag whose bottom-left is (x, y), kept inside the frame."""
    (w, h), base = cv2.getTextSize(text, FONT, style.scale, style.thick)
    h_img, w_img = img.shape[:2]
    x = min(max(x, 0), max(w_img - w - 2 * style.pad, 0))
    y = min(max(y, h + base + 2 * style.pad), h_img)
    cv2.rectangle(img, (x, y - h - base - 2 * style.pad), (x + w + 2 * style.pad, y), colour, -1)
    dark = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2] < 140
    ink = (255, 255, 255) if dark else (0, 0, 0)
    org = (x + style.pad, y - base - style.pad)
    cv2.putText(img, text, org, FONT, style.scale, ink, style.thick, cv2.LINE_AA)


def _draw_zones(img: Image, scene: _Scene, counts: Mapping[str, int] | None, s: _Style) -> None:
    """Translucent zone fills, outlines, and each zone's name and count at its top."""
    fill = scene.fill
    if fill is not None:
        roi = img[fill.box]
        mixed = cv2.addWeighted(roi, 1 - ZONE_ALPHA, fill.colours, ZONE_ALPHA, 0)
        cv2.copyTo(mixed, fill.mask, roi)  # in place: roi is a view of img (10x np.copyto)
    for name, points, colour in scene.zones:
        cv2.polylines(img, [points], True, colour, s.thick, cv2.LINE_AA)
        top = points[np.argmin(points[:, 1])]
        count = None if counts is None else counts.get(name)
        label = name if count is None else f"{name}: {count}"
        _text(img, label, int(top[0]), int(top[1]), colour, s)


def _draw_lines(
    img: Image, scene: _Scene, totals: Mapping[str, Mapping[str, int]] | None, s: _Style
) -> None:
    """Each line, an arrow from its middle to its "in" side, and its in/out totals."""
    reach = max(16.0, 0.07 * min(img.shape[:2]))
    for name, a, b, colour in scene.lines:
        cv2.line(img, a, b, colour, s.thick + 1, cv2.LINE_AA)
        ux, uy = b[0] - a[0], b[1] - a[1]
        length = math.hypot(ux, uy) or 1.0
        # (-uy, ux) points right of a -> b on screen (y down): the "in" side of the line.
        nx, ny = -uy / length * reach, ux / length * reach
        mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
        tip = (round(mx + nx), round(my + ny))
        cv2.arrowedLine(
            img, (round(mx), round(my)), tip, colour, s.thick + 1, cv2.LINE_AA, tipLength=0.3
        )
        cv2.putText(
            img, "in", (tip[0] + s.pad, tip[1]), FONT, s.scale, colour, s.thick, cv2.LINE_AA
        )
        n = None if totals is None else totals.get(name)
        label = name if n is None else f"{name} in {n.get('in', 0)} out {n.get('out', 0)}"
        _text(img, label, round(mx - nx), round(my - ny), colour, s)  # on the "out" side


def _draw_boxes(img: Image, dets: Detections, labels: Sequence[str], s: _Style) -> None:
    """Boxes with label, score and #track; colour by track (untracked: by label, thin)."""
    if not len(dets):
        return
    h, w = img.shape[:2]
    corners = np.rint(np.clip(dets.xyxy, 0, 1) * [w - 1, h - 1, w - 1, h - 1]).astype(np.int32)
    voted = dets.data.get("label_id")  # a track's voted label, steadier than this frame's
    ids = (dets.class_id if voted is None else voted).astype(np.int64).tolist()
    rows = zip(corners.tolist(), ids, dets.tracked.tolist(), dets.score.tolist(), strict=True)
    for (x1, y1, x2, y2), cid, tid, score in rows:
        tracked = tid != NO_TRACK
        colour = colour_of(tid if tracked else cid)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, s.thick + 1 if tracked else s.thick)
        name = labels[cid] if 0 <= cid < len(labels) else f"class_{cid}"
        _text(img, f"{name} {score:.2f}" + (f" #{tid}" if tracked else ""), x1, y1, colour, s)
    if dets.keypoints is not None:
        points = np.rint(dets.keypoints.reshape(-1, 2) * [w - 1, h - 1]).astype(int).tolist()
        for x, y in points:
            cv2.circle(img, (x, y), s.pad, (0, 255, 255), -1, cv2.LINE_AA)


def _header(img: Image, index: int, motion: bool | None, skipped: bool, s: _Style) -> None:
    """Frame number, motion ON/OFF (when known) and whether the detector ran."""
    parts = [f"frame {index}"]
    if motion is not None:
        parts.append(f"motion {'ON' if motion else 'OFF'}")
    parts.append("detector skipped" if skipped else "detector ran")
    _text(img, "  ".join(parts), 0, 0, (32, 32, 32), s)


@contextlib.contextmanager
def _quiet_codec_errors() -> Iterator[None]:
    """Hold back what FFmpeg/OpenCV print on fd 2 while a codec is tried; pass the rest on."""
    if sys.stderr is not None:
        sys.stderr.flush()  # what Python buffered belongs before the redirect
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to keep quiet
        yield
        return
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                held.seek(0)
                kept = [ln for ln in held.read().splitlines(True) if not _CODEC_NOISE.match(ln)]
                if kept:
                    os.write(2, b"".join(kept))
    finally:
        os.close(saved)


def _check_path(path: Path) -> None:
    """Refuse, before any work, a path a video cannot be written to."""
    where = str(path)
    if path.suffix.lower() not in CODECS:
        kind = repr(path.suffix) if path.suffix else "no extension"
        raise UserError(f"cannot write a video with {kind}: use .mp4 or .avi", where=where)
    folder = path.parent
    if path.is_dir():
        raise UserError("is a folder; give a video file name", where=where)
    if not folder.is_dir():
        raise UserError(f"folder {str(folder)!r} does not exist", where=where)
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError("no permission to write the video there", where=where)


def _open_writer(path: Path, fps: float, size: Size) -> tuple[Any, str]:
    """A VideoWriter for `path` with the first of its extension's codecs that opens."""
    codecs = CODECS[path.suffix.lower()]
    for codec in codecs:
        with _quiet_codec_errors():
            writer = cv2.VideoWriter(
                str(path), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*codec), fps, size
            )
        if writer.isOpened():
            return writer, codec
        writer.release()
        log.debug("codec %s is not available for %s", codec, path)
    raise UserError(
        f"cannot open a video writer (tried codec {', '.join(codecs)})", where=str(path)
    )


class _Progress:
    """A rich progress bar when stderr is a terminal, else a log line every 10%."""

    def __init__(self, name: str, total: int | None, fps: float) -> None:
        self._name, self._total = name, total
        # Without a total, one log line per minute of video.
        self._step = max(1, total // 10) if total else max(1, round(fps * 60))
        self._tty = sys.stderr is not None and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def update(self, done: int) -> None:
        """`done` frames are written."""
        if self._tty and self._bar is None:  # started at the first frame, not before
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(f"annotating {self._name}", total=self._total)
            self._bar.start()
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        elif done % self._step == 0 or done == self._total:
            of = f"/{self._total}" if self._total else ""
            log.info("annotated %d%s frames of %s", done, of, self._name)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.stop()
        self._tty, self._bar = False, None


class Annotator:
    """Draws one camera's frames with its detections, zones and lines; writes them to a video."""

    def __init__(
        self,
        path: Path,
        fps: float,
        labels: Sequence[str],
        zones: Mapping[str, ZoneConfig],
        lines: Mapping[str, LineConfig],
        total: int | None = None,
    ) -> None:
        """Check that `path` (.mp4 or .avi) can be written; the file opens at the first frame.

        total: the number of frames expected, for the progress display (None: unknown).
        """
        self.path = Path(path)
        _check_path(self.path)
        if not (math.isfinite(fps) and fps > 0):
            log.warning("%s: frame rate %r is unusable, writing at %g fps", path, fps, DEFAULT_FPS)
            fps = DEFAULT_FPS
        self.fps = float(fps)
        self.frames = 0
        self.codec: str | None = None
        self._labels, self._zones, self._lines = tuple(labels), dict(zones), dict(lines)
        self._progress = _Progress(self.path.name, total, self.fps)
        self._writer: Any = None
        self._size: Size | None = None
        self._style = _Style.for_height(1)
        self._scenes: dict[Size, _Scene] = {}  # by source frame size
        self._closed = False

    def _open(self, size: Size) -> Size:
        """Open the file for frames of `size`; the video keeps that size."""
        self._writer, self.codec = _open_writer(self.path, self.fps, size)
        self._size, self._style = size, _Style.for_height(size[1])
        log.info(
            "writing annotated video %s: %dx%d, %s, %g fps", self.path, *size, self.codec, self.fps
        )
        return size

    def _prepared(self, image: Image) -> tuple[Image, _Scene]:
        """A private copy of the frame at the video's size, and the scene for its size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image.dtype} {image.shape}")
        source: Size = (int(image.shape[1]), int(image.shape[0]))
        size = self._size or self._open(source)
        scene = self._scenes.get(source)
        if scene is None:
            if source != size:
                log.info("%s: %dx%d frames are resized to %dx%d", self.path, *source, *size)
            if len(self._scenes) >= 16:  # an image folder may bring a new size every frame
                self._scenes.clear()
            scene = self._scenes[source] = _build_scene(self._zones, self._lines, source, size)
        if source == size:
            return image.copy(), scene  # the pipeline may still use its frame: never draw on it
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return np.asarray(resized, np.uint8), scene

    def write(
        self,
        image: Image,
        dets: Detections,
        *,
        line_totals: Mapping[str, Mapping[str, int]] | None = None,
        zone_counts: Mapping[str, int] | None = None,
        motion: bool | None = None,
        skipped: bool = False,
    ) -> None:
        """Draw `dets`, the zones and lines on a copy of `image` and append it to the video.

        line_totals: per line {"in": n, "out": m}; zone_counts: objects per zone now;
        motion: the motion gate's state (None: no gate); skipped: the detector did not run.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the annotated video is already closed")
        canvas, scene = self._prepared(image)
        _draw_zones(canvas, scene, zone_counts, self._style)
        _draw_lines(canvas, scene, line_totals, self._style)
        _draw_boxes(canvas, dets, self._labels, self._style)
        _header(canvas, self.frames, motion, skipped, self._style)
        self._writer.write(canvas)
        self.frames += 1
        self._progress.update(self.frames)

    def close(self) -> None:
        """Finish the file (safe to call more than once)."""
        if self._closed:
            return
        self._closed = True
        self._progress.close()
        if self._writer is None:
            log.warning("%s: no frames to write, no video written", self.path)
            return
        self._writer.release()
        log.info("wrote %d annotated frames to %s", self.frames, self.path)

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
