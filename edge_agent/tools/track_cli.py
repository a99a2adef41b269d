"""`edge-agent track`: run the tracker over a MOTChallenge detection file, write its tracks.

    edge-agent track --detections det.txt --out tracks.txt [--config track.yaml] [--size WxH]

Input rows are `frame,id,x,y,w,h,score,...` in pixels (id ignored); output rows are the same
format with the track id, one row per tracked box. The frame size comes from `--size`, else a
`seqinfo.ini` next to the file (or one folder up, the MOTChallenge layout), else the largest
box extent. Bad input is one `file:line: message` (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edge_agent.errors import UserError
from edge_agent.track import TrackConfig, Tracker
from edge_agent.track.mot import format_rows, frames, image_size, read_mot

log = logging.getLogger(__name__)
FPS = 25.0  # timestamps for `buffer_seconds` when the file has only frame numbers


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `track` on the CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "track", help="track boxes of a MOTChallenge detection file", description=__doc__
    )
    p.add_argument("--detections", required=True, type=Path, help="MOT detections (det.txt)")
    p.add_argument("--out", required=True, type=Path, help="MOT tracks to write")
    p.add_argument("--config", type=Path, help="YAML with the `track:` settings")
    p.add_argument("--size", help="frame size WIDTHxHEIGHT in pixels")
    p.add_argument("--fps", type=float, default=FPS, help="frame rate for timestamps")
    return p


def load_track_config(path: Path | None) -> TrackConfig:
    """The tracker settings from a YAML file (a `track:` mapping or the bare settings)."""
    if path is None:
        return TrackConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError("file not found (--config)", where=str(path)) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read: {exc}", where=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("track"), dict):
        data = data["track"]
    if not isinstance(data, dict):
        raise UserError("expected a mapping of track settings", where=str(path))
    try:
        return TrackConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "track"
        raise UserError(f"{key}: {first['msg']}", where=str(path)) from None


def run(args: argparse.Namespace) -> int:
    """Track every frame of `--detections` into `--out`; 0 on success."""
    if not 0 < args.fps <= 1000:
        raise UserError("must be 0..1000", where=f"--fps {args.fps:g}")
    cfg = load_track_config(args.config)
    rows = read_mot(args.detections)
    size = image_size(args.detections, args.size, rows)
    tracker = Tracker(cfg)
    lines: list[str] = []
    seq = list(frames(rows, size))
    for frame, dets in _progress(seq, sys.stderr.isatty()):
        lines += format_rows(frame, tracker.update(dets, frame / args.fps, frame).detections, size)
    try:
        args.out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write: {exc.strerror}", where=str(args.out)) from None
    ids = {line.split(",", 2)[1] for line in lines}
    log.info("%d frames, %d boxes, %d tracks -> %s", len(seq), len(lines), len(ids), args.out)
    return 0


def _progress(seq: list[Any], show: bool) -> Any:
    """The frames, with a rich progress bar on a terminal."""
    if not show:
        return seq
    from rich.progress import track

    return track(seq, description="tracking", transient=True)
