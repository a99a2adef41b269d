"""Live cameras through OpenCV: USB/V4L2 devices and RTSP/HTTP streams.

Every OpenCV call on a capture runs on one daemon thread owned by that capture, and the caller
waits at most `frame_timeout` (+ a little) for it. So open() and read() return or raise
CameraUnavailable on time even when a backend ignores its own timeout (OpenCV's V4L2 backend
has no per-capture read timeout), close() never races a read in progress, and a capture stuck
in the kernel can never keep the agent from exiting. Retries belong to the supervisor.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import glob
import logging
import math
import os
import queue
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from edge_agent.config import schema
from edge_agent.errors import CameraUnavailable
from edge_agent.health import Counters
from edge_agent.redact import redact_url
from edge_agent.types import Frame

log = logging.getLogger(__name__)

_SLACK = 1.0  # seconds past frame_timeout before we stop waiting for OpenCV ourselves
_VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability): 104 bytes
_CAP_VIDEO_CAPTURE = 0x00000001
_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
_CAP_DEVICE_CAPS = 0x80000000
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_HTTP_HINTS = {401: "check the user and password in the URL", 404: "check the path in the URL"}
_LONG_WAIT = 5.0  # seconds: a read that failed after this long was waiting for data (a stall)


class _CaptureThread:
    """One daemon thread running jobs in order: the only thread that touches its capture."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        # Daemon: a call stuck in a driver or in FFmpeg must not keep the process alive.
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Queue `fn`; its result or exception lands in the returned Future."""
        future: Future[Any] = Future()
        self._jobs.put((fn, future))
        return future

    def stop(self) -> None:
        """Let the thread exit once the queued jobs are done."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            try:
                result = fn()
            except Exception as exc:  # handed to the waiting caller, who decides
                _settle(future, exc=exc)
            else:
                _settle(future, result=result)


def _settle(future: Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    """Complete a future unless close() already failed it (then the result is dropped)."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        # close() gave up on this call already: nobody will ever release what it opened.
        if isinstance(result, cv2.VideoCapture):
            result.release()


def _release_late(done: Future[Any]) -> None:
    """Release a capture whose open() finished after its caller stopped waiting."""
    late = None if done.cancelled() or done.exception() else done.result()
    if isinstance(late, cv2.VideoCapture):
        late.release()


class _OpenCvLive:
    """Shared logic: open and read on the capture thread with deadlines; index from 0."""

    live = True

    def __init__(self, camera: str, frame_timeout: float, counters: Counters | None) -> None:
        self.camera = camera
        self.frame_timeout = frame_timeout
        self.counters = counters or Counters()
        self._index = 0  # continues across close()/open(): frames count since creation
        self._lock = threading.Lock()
        self._cap: cv2.VideoCapture | None = None
        self._thread: _CaptureThread | None = None
        self._pending: Future[Any] | None = None

    def _describe(self) -> str:
        raise NotImplementedError

    def _preflight(self) -> None:
        """Checks that explain a failure better than OpenCV can (raise CameraUnavailable)."""

    def _capture(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def _explain_open_failure(self, elapsed: float) -> str:
        raise NotImplementedError

    def open(self) -> None:
        """Open the device or stream; raise CameraUnavailable (within ~frame_timeout) if not."""
        self.close()
        self._preflight()
        thread = _CaptureThread(f"opencv-{self.camera}")
        started = time.monotonic()
        try:
            cap = self._call(thread, self._open_capture, "open")
        except CameraUnavailable:
            thread.stop()
            raise
        if cap is None:
            thread.stop()
            reason = self._explain_open_failure(time.monotonic() - started)
            raise CameraUnavailable(f"{self._describe()}: {reason}")
        with self._lock:
            self._cap, self._thread = cap, thread
        log.info("camera %s: opened %s", self.camera, self._describe())

    def _open_capture(self) -> cv2.VideoCapture | None:
        cap = self._capture()
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def read(self) -> Frame:
        """Next frame; CameraUnavailable when the read fails or no frame within frame_timeout."""
        with self._lock:
            cap, thread = self._cap, self._thread
        if cap is None or thread is None:
            raise CameraUnavailable(f"{self._describe()}: not open")
        started = time.monotonic()
        ok, image = self._call(thread, cap.read, "read")
        if ok and image is not None:
            frame = Frame(self.camera, self._index, time.time(), np.asarray(image, np.uint8))
            self._index += 1
            return frame
        self.close()
        waited = time.monotonic() - started
        # A backend's own timeout (FFmpeg: frame_timeout; V4L2: OpenCV's select timeout).
        if waited >= min(0.9 * self.frame_timeout, _LONG_WAIT):
            self.counters.inc(f"camera.read_timeouts.{self.camera}")
            raise CameraUnavailable(f"{self._describe()}: no frame for {waited:.1f} s (stalled)")
        self.counters.inc(f"camera.read_errors.{self.camera}")
        raise CameraUnavailable(f"{self._describe()}: {self._read_failure()}")

    def _read_failure(self) -> str:
        return "read failed (stream ended or connection lost)"

    def _call(self, thread: _CaptureThread, fn: Callable[[], Any], what: str) -> Any:
        """Run `fn` on the capture thread; give up after frame_timeout + slack."""
        future = thread.submit(fn)
        with self._lock:
            self._pending = future
        try:
            return future.result(timeout=self.frame_timeout + _SLACK)
        except FutureTimeout:
            # The call is stuck inside OpenCV: abandon this thread and its capture (released
            # by the thread if the call ever returns) so the supervisor can retry.
            self.counters.inc(f"camera.hung.{self.camera}")
            log.warning(
                "camera %s: OpenCV %s on %s did not return within %g s; abandoning it",
                self.camera, what, self._describe(), self.frame_timeout + _SLACK,
            )  # fmt: skip
            self._abandon(thread, future)
            raise CameraUnavailable(
                f"{self._describe()}: {what} blocked for more than "
                f"{self.frame_timeout + _SLACK:g} s (device or driver hung)"
            ) from None
        finally:
            with self._lock:
                if self._pending is future:
                    self._pending = None

    def _abandon(self, thread: _CaptureThread, future: Future[Any]) -> None:
        future.add_done_callback(_release_late)  # an open() that completes after all
        with self._lock:
            cap = self._cap if self._thread is thread else None
            if cap is not None:
                self._cap = self._thread = None
        if cap is not None:
            thread.submit(cap.release)  # runs if and when the stuck call returns
        thread.stop()

    def close(self) -> None:
        """Release the capture. Idempotent, never blocks, safe from any thread: a read() in
        progress elsewhere raises CameraUnavailable at once."""
        with self._lock:
            cap, thread, pending = self._cap, self._thread, self._pending
            self._cap = self._thread = self._pending = None
        if pending is not None:
            _settle(pending, exc=CameraUnavailable(f"{self._describe()}: closed"))
        if thread is not None:
            if cap is not None:
                thread.submit(cap.release)  # after the call in progress, never during it
            thread.stop()


class V4l2Source(_OpenCvLive):
    """A USB/V4L2 camera."""

    def __init__(
        self,
        camera: str,
        cfg: schema.V4l2Source,
        start_ts: float,
        counters: Counters | None = None,
    ) -> None:
        super().__init__(camera, cfg.frame_timeout, counters)
        self.cfg = cfg
        # OpenCV's V4L2 backend waits OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT s (default 10) for each
        # frame, read once per process: match the first camera's frame_timeout; the deadline
        # in _call covers cameras with another one. (Not exercised here: no V4L2 hardware.)
        timeout = str(max(1, math.ceil(cfg.frame_timeout)))
        os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", timeout)
        device = cfg.device
        if isinstance(device, int) or device.isdigit():
            device = f"/dev/video{int(device)}"
        self.path = device
        self._card = ""

    def _describe(self) -> str:
        return f"V4L2 device {self.path}" + (f" ({self._card})" if self._card else "")

    def _preflight(self) -> None:
        self._card = ""  # stays empty when the checks fail
        self._card = _query_v4l2(self.path)

    def _capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.path, cv2.CAP_V4L2)
        if cap.isOpened():
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
                (cv2.CAP_PROP_FPS, self.cfg.fps),
            ):
                if value and not cap.set(prop, value):
                    log.warning("camera %s: %s refused property %d=%s", self.camera,
                                self._describe(), prop, value)  # fmt: skip
        return cap

    def _explain_open_failure(self, elapsed: float) -> str:
        return "OpenCV could not start capture (in use by another process, or unsupported format)"

    def _read_failure(self) -> str:
        if not os.path.exists(self.path):
            return "read failed: the device disappeared (unplugged or USB reset)"
        return "read failed (device error or USB bandwidth)"


def _query_v4l2(path: str) -> str:
    """The card name of a V4L2 capture device; CameraUnavailable saying why it is not one."""
    if not os.path.exists(path):
        present = ", ".join(sorted(glob.glob("/dev/video*"), key=_natural)) or "none"
        raise CameraUnavailable(
            f"V4L2 device {path} does not exist (not plugged in or not enumerated yet; "
            f"video devices present: {present})"
        )
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except PermissionError:
        raise CameraUnavailable(
            f"permission denied on {path} (add the service user to the 'video' group)"
        ) from None
    except OSError as exc:
        raise CameraUnavailable(f"cannot open V4L2 device {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise CameraUnavailable(f"{path} is not a device file (expected /dev/videoN)")
        buf = bytearray(104)
        try:
            fcntl.ioctl(fd, _VIDIOC_QUERYCAP, buf)
        except OSError as exc:
            why = "not a V4L2 video device" if exc.errno in (errno.ENOTTY, errno.EINVAL) else ""
            raise CameraUnavailable(
                f"{path} is {why or 'unusable'} (VIDIOC_QUERYCAP: {exc.strerror})"
            ) from None
    finally:
        os.close(fd)
    card = buf[16:48].split(b"\0", 1)[0].decode("utf-8", "replace")
    caps, device_caps = struct.unpack_from("<II", buf, 84)
    if caps & _CAP_DEVICE_CAPS:
        caps = device_caps  # what this node can do, not the whole driver
    if not caps & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE):
        raise CameraUnavailable(
            f"V4L2 device {path} ({card}) has no video capture (a metadata or output node; "
            "USB cameras usually capture on the first of their /dev/videoN nodes)"
        )
    return card


def _natural(path: str) -> tuple[int, str]:
    digits = path.removeprefix("/dev/video")
    return (int(digits), "") if digits.isdigit() else (1 << 30, path)


class StreamSource(_OpenCvLive):
    """An RTSP or HTTP stream decoded by FFmpeg."""

    def __init__(
        self,
        camera: str,
        cfg: schema.RtspSource,
        start_ts: float,
        counters: Counters | None = None,
    ) -> None:
        super().__init__(camera, cfg.frame_timeout, counters)
        self.cfg = cfg
        # OpenCV serializes every FFmpeg open in the process unless told FFmpeg is thread-safe
        # (the bundled one is): then one hung camera delays every other camera's reconnect by
        # its whole open timeout. OpenCV reads this at each open; setdefault respects a user's.
        os.environ.setdefault("OPENCV_FFMPEG_IS_THREAD_SAFE", "1")

    def _describe(self) -> str:
        return f"stream {redact_url(self.cfg.url)}"

    def _capture(self) -> cv2.VideoCapture:
        # Measured with this OpenCV build: both timeouts are honoured by the FFmpeg backend
        # (open and a stalled read both give up within ~5 ms of the value).
        ms = max(1, round(self.frame_timeout * 1000))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(self.cfg.url, cv2.CAP_FFMPEG, params)

    def _explain_open_failure(self, elapsed: float) -> str:
        if elapsed >= 0.9 * self.frame_timeout:
            return f"timed out after {self.frame_timeout:g} s (camera down, booting or hung)"
        budget = min(2.0, max(0.5, self.frame_timeout - elapsed))
        return _probe(self.cfg.url, budget)


def _probe(url: str, timeout: float) -> str:
    """Why FFmpeg failed, found by connecting ourselves (never says the credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
    except ValueError:
        return "invalid port in the URL"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    # The messages never repeat host or port: with a raw '/' in a password urlsplit takes
    # part of it for the host, and the caller's prefix already names the (redacted) URL.
    except socket.gaierror:
        return "cannot resolve the host name (DNS, or a typo)"
    except ConnectionRefusedError:
        return "connection refused (camera down, booting, or wrong port)"
    except TimeoutError:
        return f"no answer to a TCP connect within {timeout:g} s (unreachable?)"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    with sock:
        status = _http_status(sock, url) if parts.scheme == "http" else None
    if status is not None and status[0] != 200:
        code, reason = status
        return f"HTTP {code} {reason}" + (f" ({_HTTP_HINTS[code]})" if code in _HTTP_HINTS else "")
    return "connected, but FFmpeg found no playable video (check the path, credentials, codec)"


def _http_status(sock: socket.socket, url: str) -> tuple[int, str] | None:
    """Status code and reason of a GET for `url` on a connected socket, or None."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.0\r\nHost: {parts.hostname}\r\n"
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        head += f"Authorization: Basic {base64.b64encode(token.encode()).decode()}\r\n"
    try:
        sock.sendall((head + "\r\n").encode())
        line = sock.makefile("rb").readline(256).decode("latin-1").split(None, 2)
        return int(line[1]), (line[2].strip() if len(line) > 2 else "")
    except (OSError, ValueError, IndexError):
        return None
