"""Raspberry Pi camera modules through picamera2 (imported only when such a camera is used)."""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import numpy as np

from edge_agent.config.schema import Picamera2Source
from edge_agent.errors import CameraUnavailable, SourceError
from edge_agent.health import Counters
from edge_agent.types import Frame

log = logging.getLogger(__name__)


class PiCameraSource:
    """Captures BGR frames from the camera's main stream."""

    live = True

    def __init__(
        self,
        camera: str,
        cfg: Picamera2Source,
        start_ts: float,
        counters: Counters | None = None,
    ) -> None:
        self.camera = camera
        self.cfg = cfg
        self._cam: Any = None
        self._index = 0

    def open(self) -> None:
        """Import picamera2, configure a video stream and start it. A missing picamera2 is
        the user's to fix; a camera that is busy or not detected may come back."""
        try:
            module = importlib.import_module("picamera2")
        except ImportError:
            raise SourceError(
                "picamera2 is not installed: on Raspberry Pi OS run "
                "'sudo apt install python3-picamera2' or pip install 'edge-agent[pi]'"
            ) from None
        cam = None
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
            self._release(cam)
            raise CameraUnavailable(
                f"cannot start Pi camera {self.cfg.camera_num}: {exc} (is it connected, and "
                "not used by another program?)"
            ) from None
        self._cam = cam
        log.info(
            "camera %s: Pi camera %d at %dx%d",
            self.camera,
            self.cfg.camera_num,
            self.cfg.width,
            self.cfg.height,
        )

    def read(self) -> Frame | None:
        """The next frame from the main stream, waiting at most `frame_timeout`."""
        if self._cam is None:
            raise CameraUnavailable("Pi camera is not open")
        try:
            # wait=False returns a job, so the wait below can time out instead of blocking.
            job = self._cam.capture_array("main", wait=False)
            image = (
                job if isinstance(job, np.ndarray) else self._cam.wait(job, self.cfg.frame_timeout)
            )
        except TimeoutError:
            raise CameraUnavailable(
                f"Pi camera {self.cfg.camera_num}: no frame for {self.cfg.frame_timeout:g} s"
            ) from None
        except (RuntimeError, OSError) as exc:
            raise CameraUnavailable(f"Pi camera {self.cfg.camera_num}: {exc}") from None
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        frame = Frame(self.camera, self._index, time.time(), image)
        self._index += 1
        return frame

    def close(self) -> None:
        """Stop and release the camera."""
        cam, self._cam = self._cam, None
        self._release(cam)

    def _release(self, cam: Any) -> None:
        if cam is None:
            return
        try:
            cam.stop()
            cam.close()
        except (RuntimeError, OSError) as exc:
            log.warning("camera %s: releasing the Pi camera failed: %s", self.camera, exc)
