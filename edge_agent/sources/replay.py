"""Replay sources: video files and image folders, deterministic unless `realtime` is set."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config.schema import ImagesSource, VideoSource
from edge_agent.errors import SourceError
from edge_agent.types import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class _Pacer:
    """Sleeps so frame i is released at start + i / fps (realtime replay)."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.start = time.monotonic()

    def wait(self, index: int) -> None:
        delay = self.start + index / self.fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class VideoFileSource:
    """A video file; `ts` = run start + frame index / container fps."""

    def __init__(self, camera: str, cfg: VideoSource, start_ts: float) -> None:
        self.camera = camera
        self.cfg = cfg
        self.start_ts = start_ts
        self.live = cfg.realtime
        self._cap: cv2.VideoCapture | None = None
        self._index = 0
        self._fps = 0.0
        self._pacer: _Pacer | None = None
        self.total: int | None = None  # frames in the file, for progress (None when looping)

    def open(self) -> None:
        """Open the file and prove it decodes by reading its first frame position."""
        path = self.cfg.path
        if not path.is_file():
            raise SourceError(f"video file not found: {path}")
        cap = cv2.VideoCapture(str(path))
        ok = cap.isOpened() and cap.grab()
        if not ok:
            cap.release()
            raise SourceError(f"cannot decode video file {path} (not a readable video)")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 0 < fps < 1000 else 25.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total = count if count > 0 and not self.cfg.loop else None
        self._cap = cap
        self._pacer = _Pacer(self._fps) if self.cfg.realtime else None
        log.info("camera %s: video %s at %.2f fps", self.camera, path, self._fps)

    def read(self) -> Frame | None:
        """Next decoded frame, restarting at the end when `loop` is set."""
        if self._cap is None:
            raise SourceError("source is not open")
        ok, image = self._cap.read()
        if not ok and self.cfg.loop and self._index > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        if not ok:
            return None
        if self._pacer is not None:
            self._pacer.wait(self._index)
        frame = Frame(
            self.camera,
            self._index,
            self.start_ts + self._index / self._fps,
            np.asarray(image, np.uint8),
        )
        self._index += 1
        return frame

    def close(self) -> None:
        """Release the decoder."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource:
    """Images in a folder, sorted by name; `ts` = run start + position / `fps`."""

    def __init__(self, camera: str, cfg: ImagesSource, start_ts: float) -> None:
        self.camera = camera
        self.cfg = cfg
        self.start_ts = start_ts
        self.live = cfg.realtime
        self._files: list[Path] = []
        self._index = 0
        self._pacer: _Pacer | None = None
        self.unreadable = 0
        self.total: int | None = None

    def open(self) -> None:
        """List the folder's images (files directly in it)."""
        folder = self.cfg.path
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self._files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self._files:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self._pacer = _Pacer(self.cfg.fps) if self.cfg.realtime else None
        self.total = None if self.cfg.loop else len(self._files)
        log.info("camera %s: %d images in %s", self.camera, len(self._files), folder)

    def read(self) -> Frame | None:
        """Next readable image; unreadable files are logged, counted and skipped."""
        while True:
            position = self._index % len(self._files) if self._files else 0
            if not self._files or (self._index >= len(self._files) and not self.cfg.loop):
                return None
            path = self._files[position]
            index = self._index
            self._index += 1
            decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if decoded is None:
                self.unreadable += 1
                log.error("camera %s: cannot decode image %s; skipped", self.camera, path)
                continue
            if self._pacer is not None:
                self._pacer.wait(index)
            return Frame(
                self.camera,
                index,
                self.start_ts + index / self.cfg.fps,
                np.asarray(decoded, np.uint8),
            )

    def close(self) -> None:
        """Nothing to release."""
        self._files = []
