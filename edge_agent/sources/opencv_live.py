"""Live cameras through OpenCV: USB/V4L2 devices and RTSP/HTTP streams, with reconnects."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np

from edge_agent.config import schema
from edge_agent.errors import SourceError
from edge_agent.types import Frame

log = logging.getLogger(__name__)


def _redact(url: str) -> str:
    """Hide credentials in `scheme://user:pass@host` URLs before logging."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class _OpenCvLive:
    """Shared logic: open, read with reconnect on failure, count frames from 0."""

    live = True

    def __init__(self, camera: str, reconnect_delay: float) -> None:
        self.camera = camera
        self.reconnect_delay = reconnect_delay
        self._cap: cv2.VideoCapture | None = None
        self._index = 0
        self._closed = threading.Event()
        self.reconnects = 0

    def _capture(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def _describe(self) -> str:
        raise NotImplementedError

    def open(self) -> None:
        """Open the device or stream once; failing here is a configuration error."""
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self._describe()}")
        self._cap = cap
        log.info("camera %s: opened %s", self.camera, self._describe())

    def read(self) -> Frame | None:
        """Next frame; a failed read reopens the device after a delay (never returns None)."""
        while not self._closed.is_set():
            if self._cap is not None:
                ok, image = self._cap.read()
                if ok and image is not None:
                    frame = Frame(
                        self.camera, self._index, time.time(), np.asarray(image, np.uint8)
                    )
                    self._index += 1
                    return frame
                log.warning(
                    "camera %s: read failed on %s; reconnecting", self.camera, self._describe()
                )
                self._cap.release()
                self._cap = None
            self._closed.wait(self.reconnect_delay)
            if self._closed.is_set():
                break
            cap = self._capture()
            self.reconnects += 1
            if cap.isOpened():
                self._cap = cap
            else:
                cap.release()
        return None

    def close(self) -> None:
        """Stop reconnect attempts and release the capture."""
        self._closed.set()
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class V4l2Source(_OpenCvLive):
    """A USB/V4L2 camera."""

    def __init__(self, camera: str, cfg: schema.V4l2Source, start_ts: float) -> None:
        super().__init__(camera, reconnect_delay=2.0)
        self.cfg = cfg

    def _describe(self) -> str:
        return f"V4L2 device {self.cfg.device}"

    def _capture(self) -> cv2.VideoCapture:
        device = self.cfg.device
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if self.cfg.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
        if self.cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        if self.cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        return cap


class StreamSource(_OpenCvLive):
    """An RTSP or HTTP stream decoded by FFmpeg."""

    def __init__(self, camera: str, cfg: schema.RtspSource, start_ts: float) -> None:
        super().__init__(camera, reconnect_delay=cfg.reconnect_delay)
        self.cfg = cfg

    def _describe(self) -> str:
        return f"stream {_redact(self.cfg.url)}"

    def _capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.cfg.url, cv2.CAP_FFMPEG)
        # Keep the decoder's buffer short so frames are fresh.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap
