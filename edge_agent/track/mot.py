"""MOTChallenge text files: `frame,id,x,y,w,h,score,...` with pixel boxes, one box a line."""

from __future__ import annotations

import configparser
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.core.detections import Detections
from edge_agent.errors import UserError

MAX_FRAME = 10_000_000  # a frame number past this is a corrupted file, not a long video


@dataclass(frozen=True)
class MotRows:
    """The rows of one MOT file as arrays: frame (N,), id (N,), xywh (N,4) pixels, score (N,)."""

    frame: npt.NDArray[np.int64]
    ids: npt.NDArray[np.int64]
    xywh: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]


def _parse_line(text: str, where: str) -> tuple[int, int, list[float], float]:
    """One row as (frame, id, xywh, score); UserError naming `where` when malformed."""
    fields = [f.strip() for f in text.replace(" ", ",").split(",") if f.strip()]
    if len(fields) < 6:
        raise UserError(
            f"expected frame,id,x,y,w,h[,score,...], got {len(fields)} fields", where=where
        )
    try:
        nums = [float(f) for f in fields[:7]]
    except ValueError:
        raise UserError(f"not a number in {text.strip()[:60]!r}", where=where) from None
    if not all(math.isfinite(n) for n in nums):
        raise UserError("numbers must be finite", where=where)
    frame, ident, x, y, w, h = nums[:6]
    score = nums[6] if len(nums) > 6 else 1.0
    if frame != int(frame) or not 0 <= frame <= MAX_FRAME:
        raise UserError(
            f"frame must be a whole number 0..{MAX_FRAME}, got {fields[0]}", where=where
        )
    if w <= 0 or h <= 0:
        raise UserError(f"box width and height must be > 0, got {w:g}x{h:g}", where=where)
    return int(frame), int(ident), [x, y, w, h], score


def read_mot(path: Path) -> MotRows:
    """Every row of a MOT file; UserError naming file:line for the first bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read: {exc}", where=str(path)) from None
    rows = [
        _parse_line(line, f"{path}:{n}")
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return MotRows(
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.float64).reshape(-1, 4),
        np.array([r[3] for r in rows], np.float64),
    )


def image_size(path: Path, size: str | None, rows: MotRows) -> tuple[float, float]:
    """Frame width and height: `--size WxH`, else seqinfo.ini next to (or above) the file,
    else the largest box extent (boxes only need a common scale)."""
    if size:
        try:
            w, h = (float(v) for v in size.lower().split("x"))
        except ValueError:
            raise UserError(
                "expected WIDTHxHEIGHT, e.g. 1920x1080", where=f"--size {size}"
            ) from None
        if not (0 < w <= 1e6 and 0 < h <= 1e6):
            raise UserError("width and height must be 1..1000000", where=f"--size {size}")
        return w, h
    for ini in (path.parent / "seqinfo.ini", path.parent.parent / "seqinfo.ini"):
        if ini.is_file():
            parser = configparser.ConfigParser()
            try:
                parser.read(ini, encoding="utf-8")
                return float(parser["Sequence"]["imWidth"]), float(parser["Sequence"]["imHeight"])
            except (KeyError, ValueError, configparser.Error) as exc:
                raise UserError(f"no usable imWidth/imHeight: {exc}", where=str(ini)) from None
    if not len(rows.frame):
        return 1.0, 1.0
    far = rows.xywh[:, :2] + rows.xywh[:, 2:]
    return float(max(far[:, 0].max(), 1.0)), float(max(far[:, 1].max(), 1.0))


def frames(rows: MotRows, size: tuple[float, float]) -> Iterator[tuple[int, Detections]]:
    """Every frame from the first to the last (empty ones too) as normalized Detections."""
    if not len(rows.frame):
        return
    order = np.argsort(rows.frame, kind="stable")
    frame, xywh, score = rows.frame[order], rows.xywh[order], rows.score[order]
    scale = np.array([size[0], size[1], size[0], size[1]])
    xyxy = (np.hstack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]) / scale).astype(np.float32)
    scores = np.clip(score, 0.0, 1.0).astype(np.float32)
    first, last = int(frame[0]), int(frame[-1])
    starts = np.searchsorted(frame, np.arange(first, last + 2))
    for k, f in enumerate(range(first, last + 1)):
        sl = slice(starts[k], starts[k + 1])
        yield f, Detections(xyxy[sl], scores[sl], np.zeros(sl.stop - sl.start, np.int64))


def format_rows(frame: int, dets: Detections, size: tuple[float, float]) -> list[str]:
    """The tracked boxes of a frame as MOT lines (boxes without a track are left out)."""
    w, h = size
    lines = []
    for (x1, y1, x2, y2), s, tid in zip(
        dets.xyxy.tolist(), dets.score.tolist(), dets.tracked.tolist(), strict=True
    ):
        if tid >= 0:
            box = f"{x1 * w:.2f},{y1 * h:.2f},{(x2 - x1) * w:.2f},{(y2 - y1) * h:.2f}"
            lines.append(f"{frame},{tid},{box},{s:.4f},-1,-1,-1")
    return lines
