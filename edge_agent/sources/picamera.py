"""Raspberry Pi camera modules through picamera2 (imported only when such a camera is used)."""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from edge_agent.config.schema import Picamera2Source
from edge_agent.errors import SourceError
from edge_agent.types import Frame

log = logging.getLogger(__name__)


class PiCameraSource:
    """Captures BGR frames from the camera's main stream."""

    live = True

    def __init__(self, camera: str, cfg: Picamera2Source, start_ts: float) -> None:
        self.camera = camera
        self.cfg = cfg
        self._cam: Any = None
        self._index = 0

    def open(self) -> None:
        """Import picamera2, configure a video stream and start it."""
        try:
            module = importlib.import_module("picamera2")
        except ImportError:
            raise SourceError(
                "picamera2 is not installed: on Raspberry Pi OS run "
                "'sudo apt install python3-picamera2' or pip install 'edge-agent[pi]'"
            ) from None
        try:
            cam = module.Picamera2(self.cfg.camera_num)
            # picamera2's "RGB888" is stored B,G,R per pixel: already OpenCV's order.
            main = {"size": (self.cfg.width, self.cfg.height), "format": "RGB888"}
            controls: dict[str, Any] = {}
            if self.cfg.fps:
                period = int(1_000_000 / self.cfg.fps)
                controls["FrameDurationLimits"] = (period, period)
            cam.configure(cam.create_video_configuration(main=main, controls=controls))
            cam.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise SourceError(f"cannot start Pi camera {self.cfg.camera_num}: {exc}") from None
        self._cam = cam
        log.info(
            "camera %s: Pi camera %d at %dx%d",
            self.camera,
            self.cfg.camera_num,
            self.cfg.width,
            self.cfg.height,
        )

    def read(self) -> Frame | None:
        """Block for the next frame from the main stream."""
        if self._cam is None:
            return None
        image = self._cam.capture_array("main")
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        frame = Frame(self.camera, self._index, time.time(), image)
        self._index += 1
        return frame

    def close(self) -> None:
        """Stop and release the camera."""
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
