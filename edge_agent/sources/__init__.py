"""Frame sources (camera backends) behind one protocol, created through a lazy registry."""

from __future__ import annotations

import importlib
from typing import Protocol

from edge_agent.config.schema import CameraConfig
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
        """Open the device or file; raise SourceError with a clear message if it cannot be used."""

    def read(self) -> Frame | None:
        """Block for the next frame; None when a finite source is exhausted."""

    def close(self) -> None:
        """Release the device or file."""


def create_source(camera: str, cfg: CameraConfig, start_ts: float) -> FrameSource:
    """Instantiate the backend named by `cfg.source.type` (lazy import)."""
    module_name, cls_name = REGISTRY[cfg.source.type].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    source: FrameSource = cls(camera, cfg.source, start_ts)
    return source
