"""Snapshots: a camera's last processed frame as an annotated JPEG (boxes, labels, scores,
track ids, zones, lines: drawn as in annotated video), published retained on
`<base>/<camera>/snapshot`, on request and every `homeassistant.snapshot_interval`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2

from edge_agent.camera.worker import LastFrame
from edge_agent.camera.zones import LineConfig, ZoneConfig
from edge_agent.publish.payloads import OutMessage, Topics, new_id
from edge_agent.tools.annotate import (
    _build_scene,
    _draw_boxes,
    _draw_lines,
    _draw_zones,
    _header,
    _Style,
)

JPEG_QUALITY = 85


@dataclass(frozen=True)
class Snapshot:
    """One encoded snapshot and what it shows."""

    camera: str
    jpeg: bytes
    frame: int
    ts: float
    width: int
    height: int
    detections: int

    def message(self, topics: Topics) -> OutMessage:
        """The retained snapshot message (raw JPEG bytes)."""
        topic = topics.snapshot(self.camera)
        return OutMessage(new_id(), topic, self.jpeg, "snapshot", 1, True)

    def summary(self, topics: Topics) -> dict[str, object]:
        """The fields of a `snapshot` command's result."""
        return {
            "camera": self.camera,
            "topic": topics.snapshot(self.camera),
            "frame": self.frame,
            "frame_ts": round(self.ts, 3),
            "bytes": len(self.jpeg),
            "width": self.width,
            "height": self.height,
            "detections": self.detections,
        }


def render(
    camera: str,
    last: LastFrame,
    labels: Sequence[str],
    zones: Mapping[str, ZoneConfig],
    lines: Mapping[str, LineConfig],
) -> Snapshot:
    """Draw `last` (on a copy: the pipeline may still hold the frame) and encode it."""
    frame = last.frame
    size = (frame.width, frame.height)
    canvas = frame.image.copy()
    style = _Style.for_height(frame.height)
    scene = _build_scene(zones, lines, size, size)
    _draw_zones(canvas, scene, None, style)
    _draw_lines(canvas, scene, None, style)
    _draw_boxes(canvas, last.dets, labels, style)
    _header(canvas, frame.index, None, not last.detected, style)
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return Snapshot(
        camera, buf.tobytes(), frame.index, frame.ts, frame.width, frame.height, len(last.dets)
    )


class Every:
    """A period on the monotonic clock (0 = never)."""

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self._next = now + interval

    def due(self, now: float) -> bool:
        """True once per elapsed period."""
        if self.interval <= 0 or now < self._next:
            return False
        self._next += self.interval
        if self._next <= now:  # fell behind (a long stop): no burst of catch-up periods
            self._next = now + self.interval
        return True
