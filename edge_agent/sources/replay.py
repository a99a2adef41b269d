"""Replay sources: video files and image folders, deterministic unless `realtime` is set.

Damaged input never ends a replay early and never renumbers it: a frame the decoder cannot
produce is skipped, counted in `frames.corrupt.<camera>` and logged (rate-limited), and the
frames after it keep their position in the file as `frame` (so `ts` stays true to the file).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config.schema import ImagesSource, VideoSource
from edge_agent.errors import SourceError
from edge_agent.health import Counters
from edge_agent.types import Frame, Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# FFmpeg (via OpenCV) fails one read() per damaged packet and keeps going, and fails every read()
# at the end of the data without progress; so failed reads are bounded by the frames the
# container says remain, plus this slack for containers whose count is an estimate.
READ_SLACK = 8
UNKNOWN_COUNT_BUDGET = 250  # failed reads in a row tolerated when the container has no count
# After damage the decoder's frame threads can still deliver frames decoded before it, out of
# order or after a silent jump, so this many frames are placed by their timestamp.
VERIFY_FRAMES = 32
TAIL_TOLERANCE = 1  # frame counts of some containers are estimates, off by one
DAMAGE_LOG_INTERVAL = 10.0  # seconds between damage warnings of one camera


class _Pacer:
    """Sleeps so frame i is released at start + i / fps (realtime replay). The clock starts
    at the first frame read, not at open: loading the model and connecting take seconds, and
    a clock started earlier would release a burst of overdue frames with timestamps in the
    past."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.start: float | None = None  # monotonic time of frame 0
        self.wall = 0.0  # epoch time of frame 0

    def wait(self, index: int) -> None:
        """Sleep until frame `index` is due (the first call starts the clock)."""
        if self.start is None:
            offset = index / self.fps  # a resumed or looped source keeps its numbering
            self.start, self.wall = time.monotonic() - offset, time.time() - offset
        delay = self.start + index / self.fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def ts(self, index: int) -> float:
        """Epoch time at which frame `index` is released."""
        return self.wall + index / self.fps


class _DamageLog:
    """Counts damaged frames and warns once per stretch, at most once per `interval`; the
    stretches in between are summed into one line, so a badly damaged file cannot flood the log."""

    def __init__(self, camera: str, what: Path, counters: Counters, interval: float) -> None:
        self._prefix = f"camera {camera}: {what}"
        self._counter = f"frames.corrupt.{camera}"
        self._counters = counters
        self._interval = interval
        self._last_warning = -interval
        self._held_first = -1  # first frame of the stretches not reported yet (-1: none)
        self._held_frames = 0
        self._held_stretches = 0

    def damaged(self, first: int, last: int) -> None:
        """Count frames first..last as damaged and warn (or hold the warning)."""
        frames = last - first + 1
        if not self._admit(first, frames):
            return
        if frames == 1:
            log.warning("%s: frame %d damaged or unreadable; skipped", self._prefix, first)
        else:
            log.warning(
                "%s: frames %d-%d damaged or unreadable; skipped (%d frames)",
                self._prefix,
                first,
                last,
                frames,
            )

    def missing(self, first: int, frames: int, count: int) -> None:
        """Count frames the container lists but the decoder never produced (from `first`: the
        index the next frame would have had) and warn (or hold the warning)."""
        if self._admit(first, frames):
            log.warning(
                "%s: %d of the %d frames in the file could not be decoded (truncated or "
                "damaged file); last frame read: %d",
                self._prefix,
                frames,
                count,
                first - 1,
            )

    def _admit(self, first: int, frames: int) -> bool:
        """Count the frames; True when a warning is due now (held stretches reported first)."""
        self._counters.inc(self._counter, frames)
        now = time.monotonic()
        if now - self._last_warning < self._interval:
            if self._held_first < 0:
                self._held_first = first
            self._held_frames += frames
            self._held_stretches += 1
            return False
        self._last_warning = now
        self.flush()
        return True

    def flush(self) -> None:
        """Report the held stretches, if any."""
        if self._held_first >= 0:
            log.warning(
                "%s: %d more damaged frames skipped (%d stretches) from frame %d on",
                self._prefix,
                self._held_frames,
                self._held_stretches,
                self._held_first,
            )
            self._held_first, self._held_frames, self._held_stretches = -1, 0, 0


class VideoFileSource:
    """A video file; `frame` = position in the file, `ts` = run start + frame / container fps.

    Happy path: one `cap.read()` per frame and nothing else. After a failed read the file is
    read on (bounded by the container's frame count) and the next good frame is placed by its
    timestamp, so the damaged frames leave a counted gap in the indexes.
    """

    def __init__(
        self,
        camera: str,
        cfg: VideoSource,
        start_ts: float,
        *,
        counters: Counters | None = None,
    ) -> None:
        self.camera = camera
        self.cfg = cfg
        self.start_ts = start_ts
        self.live = cfg.realtime
        self.counters = counters if counters is not None else Counters()
        self._damage = _DamageLog(camera, cfg.path, self.counters, DAMAGE_LOG_INTERVAL)
        self._cap: cv2.VideoCapture | None = None
        self._next = 0  # index of the next frame expected
        self._base = 0  # index of this pass's frame 0 (loop passes continue the numbering)
        self._count = 0  # frames in the file per the container (0: unknown)
        self._verify = 0  # frames still to place by timestamp after damage
        self._fps = 0.0
        self._pacer: _Pacer | None = None
        self.total: int | None = None  # frames in the file, for progress (None when looping)

    def open(self) -> None:
        """Open the file and prove it decodes by reading one frame."""
        path = self.cfg.path
        if not path.is_file():
            raise SourceError(f"video file not found: {path}")
        cap = cv2.VideoCapture(str(path))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
        if not cap.isOpened() or not self._probe(cap, count):
            cap.release()
            raise SourceError(f"cannot decode video file {path} (not a readable video)")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 0 < fps < 1000 else 25.0
        self._count = max(count, 0)
        self.total = self._count if self._count > 0 and not self.cfg.loop else None
        self._cap = cap
        self._pacer = _Pacer(self._fps) if self.cfg.realtime else None
        log.info("camera %s: video %s at %.2f fps, %d frames", self.camera, path, self._fps, count)

    @staticmethod
    def _probe(cap: cv2.VideoCapture, count: int) -> bool:
        """True when some frame decodes (the first ones may be damaged)."""
        budget = count if count > 0 else UNKNOWN_COUNT_BUDGET
        return any(cap.grab() for _ in range(budget + READ_SLACK))

    def read(self) -> Frame | None:
        """Next decodable frame; damaged frames are skipped and counted; at the end of the
        file None, or frame 0 again when `loop` is set (the numbering continues)."""
        cap = self._cap
        if cap is None:
            raise SourceError("source is not open")
        ok, image = cap.read()
        if ok and not self._verify:
            index = self._next  # healthy file: no property reads on this path
        else:
            placed = self._recover(cap, ok, image)
            if placed is None:
                return None
            index, image = placed
        self._next = index + 1
        if self._pacer is not None:
            self._pacer.wait(index)
        ts = self._pacer.ts(index) if self._pacer is not None else self.start_ts + index / self._fps
        return Frame(self.camera, index, ts, np.asarray(image, np.uint8))

    def _recover(
        self, cap: cv2.VideoCapture, ok: bool, image: cv2.typing.MatLike
    ) -> tuple[int, cv2.typing.MatLike] | None:
        """Read past failed reads and place the next good frame by its timestamp."""
        early = 0  # frames in a row that came out behind the numbering
        while True:
            if not ok:
                ok, image = self._read_past_damage(cap)
                if not ok:
                    if not self._end_pass(cap):
                        return None
                    ok, image = cap.read()
                    continue
                self._verify = VERIFY_FRAMES
            index = self._base + round(cap.get(cv2.CAP_PROP_POS_MSEC) * self._fps / 1000.0)
            if index < self._next and early < VERIFY_FRAMES:
                # Decoded before the damage but delivered after a later frame: its place in
                # the numbering is taken (and already counted as a gap), so it is dropped.
                early += 1
                ok, image = cap.read()
                continue
            if index > self._next:
                self._damage.damaged(self._next, index - 1)
                self._verify = VERIFY_FRAMES
            else:
                # In sequence, or timestamps that never catch up: count frames from here on.
                index = self._next
                self._verify = max(self._verify - 1, 0)
            return index, image

    def _read_past_damage(self, cap: cv2.VideoCapture) -> tuple[bool, cv2.typing.MatLike]:
        """Read on after a failed read until a frame decodes or the data is exhausted."""
        if self._count > 0:
            budget = max(self._count - (self._next - self._base), 0) + READ_SLACK
        else:
            budget = UNKNOWN_COUNT_BUDGET
        for _ in range(budget):
            ok, image = cap.read()
            if ok:
                return True, image
        return False, np.empty((0, 0, 3), np.uint8)

    def _end_pass(self, cap: cv2.VideoCapture) -> bool:
        """Account for frames the container lists but the decoder never produced, then restart
        the file when looping. False when the replay is over (a pass that yielded no frame ends
        a looping replay too, instead of spinning on an undecodable file)."""
        produced = self._next > self._base
        missing = self._count - (self._next - self._base)
        if missing > TAIL_TOLERANCE:
            self._damage.missing(self._next, missing, self._count)
            self._next = self._base + self._count
        if not self.cfg.loop or not produced:
            self._damage.flush()
            if self.cfg.loop:
                log.error(
                    "camera %s: %s: no decodable frame in a whole pass", self.camera, self.cfg.path
                )
            return False
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._base = self._next
        # Frames after the seek are placed by timestamp for a while too: cheap, once a pass.
        self._verify = VERIFY_FRAMES
        return True

    def close(self) -> None:
        """Release the decoder."""
        self._damage.flush()
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _jpeg_truncated(data: bytes) -> bool:
    """True when a JPEG's markers run past its end or its scan has no end-of-image marker.

    OpenCV decodes such a file partially (the missing rows grey) from a path, and refuses it
    from memory; both are a frame that is not what the camera saw, so it is treated as damaged.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False  # not the marker structure this check understands: the decoder judges
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1  # fill byte
        elif marker == 0xDA:
            # Inside entropy-coded data every 0xFF is followed by 0x00 or a restart marker,
            # so the first FFD9 after the scan header is the real end of the image.
            return data.find(b"\xff\xd9", pos) < 0
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:
            pos += 2  # markers without a length field
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return True


def load_image(path: Path) -> tuple[Image | None, str]:
    """Decode one image file as BGR; (None, reason) when it cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__
    if not data:
        return None, "empty file"
    if data[:2] == b"\xff\xd8" and _jpeg_truncated(data):
        return None, "truncated JPEG (no end-of-image marker)"
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        decoded = None
    if decoded is None:
        return None, "not a decodable image"
    return np.asarray(decoded, np.uint8), ""


class ImageFolderSource:
    """Images in a folder, sorted by name; `ts` = run start + position / `fps`.

    Only regular files with an image suffix are positions (a directory named x.jpg is not).
    An unreadable file (empty, truncated, undecodable, no permission, deleted since the
    listing) is skipped: logged once per file, counted in `unreadable` and `frames.corrupt`.
    """

    def __init__(
        self,
        camera: str,
        cfg: ImagesSource,
        start_ts: float,
        *,
        counters: Counters | None = None,
    ) -> None:
        self.camera = camera
        self.cfg = cfg
        self.start_ts = start_ts
        self.live = cfg.realtime
        self.counters = counters if counters is not None else Counters()
        self._files: list[Path] = []
        self._index = 0
        self._pacer: _Pacer | None = None
        self._reported: set[Path] = set()
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
        """Next readable image; unreadable files are logged, counted and skipped. A looping
        replay in which no file is readable ends instead of spinning."""
        files = self._files
        for _ in range(len(files)):
            if self._index >= len(files) and not self.cfg.loop:
                return None
            path = files[self._index % len(files)]
            index = self._index
            self._index += 1
            image, reason = load_image(path)
            if image is None:
                self._skip(path, reason)
                continue
            if self._pacer is not None:
                self._pacer.wait(index)
            pacer = self._pacer
            ts = pacer.ts(index) if pacer is not None else self.start_ts + index / self.cfg.fps
            return Frame(self.camera, index, ts, image)
        if files and self.cfg.loop:
            log.error(
                "camera %s: no readable image in %s; replay ended", self.camera, self.cfg.path
            )
        return None

    def _skip(self, path: Path, reason: str) -> None:
        self.unreadable += 1
        self.counters.inc(f"frames.corrupt.{self.camera}")
        if path not in self._reported:  # a looping replay names each bad file once
            self._reported.add(path)
            log.warning("camera %s: cannot read image %s (%s); skipped", self.camera, path, reason)

    def close(self) -> None:
        """Nothing to release."""
        self._files = []
