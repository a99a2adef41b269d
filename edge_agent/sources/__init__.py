"""Frame sources (camera backends) behind one protocol, created through a lazy registry."""

from __future__ import annotations

import importlib
from typing import Protocol

from edge_agent.config.schema import CameraConfig
from edge_agent.health import Counters
from edge_agent.types import Frame

# type -> "module:Class"; imported only when a camera uses it, so `import edge_agent`
# never needs picamera2 or a camera device.
REGISTRY: dict[str, str] = {
    "video": "edge_agent.sources.replay:VideoFileSource",
    "images": "edge_agent.sources.replay:ImageFolderSource",
    "v4l2": "edge_agent.sources.opencv_live:V4l2Source",
    "rtsp": "edge_agent.sources.opencv_live:StreamSource",
    "picamera2": "edge_agent.sources.picamera:PiCameraSource",
}


class FrameSource(Protocol):
    """A camera or replay. `read()` returns None at the end of a finite source."""

    live: bool
    """True when frames arrive in real time and only the newest one matters."""

    def open(self) -> None:
        """Open the device or file. Raise SourceError for what a restart cannot fix (missing
        replay file, picamera2 not installed) and CameraUnavailable for what may come back
        (device not yet enumerated, stream down): the supervisor retries the latter."""

    def read(self) -> Frame | None:
        """Block for the next frame; None when a finite source is exhausted. A live source
        raises CameraUnavailable when the device fails or no frame arrives within its
        `frame_timeout`; it never reconnects by itself (the supervisor owns retries)."""

    def close(self) -> None:
        """Release the device or file."""


def create_source(
    camera: str, cfg: CameraConfig, start_ts: float, counters: Counters | None = None
) -> FrameSource:
    """Instantiate the backend named by `cfg.source.type` (lazy import)."""
    module_name, cls_name = REGISTRY[cfg.source.type].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    source: FrameSource = cls(camera, cfg.source, start_ts, counters=counters or Counters())
    return source
