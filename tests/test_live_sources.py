"""Live OpenCV sources against a real MJPEG-over-HTTP server that tests stop, stall and restart,
and V4L2 device checks against real device nodes (/dev/null, a root-only node, missing ones)."""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.schema import CameraConfig
from edge_agent.errors import CameraUnavailable
from edge_agent.health import Counters
from edge_agent.redact import redact_url
from edge_agent.sources import create_source
from edge_agent.sources.opencv_live import StreamSource, V4l2Source
from tests.streams import MjpegServer

TIMEOUT = 2.0  # frame_timeout of every stream test: short, still far above a frame interval
PASSWORD = "p@ss"  # with an '@' in it: a naive "split at the first @" redaction leaks "ss"


@pytest.fixture
def server() -> Iterator[MjpegServer]:
    """A 10 fps MJPEG camera on a free port."""
    with MjpegServer(fps=10) as srv:
        yield srv


def stream(url: str, counters: Counters | None = None) -> StreamSource:
    """An `rtsp`-type source (any FFmpeg URL) with the short test timeout."""
    cfg = CameraConfig.model_validate(
        {"source": {"type": "rtsp", "url": url, "frame_timeout": TIMEOUT}}
    )
    source = create_source("cam", cfg, 0.0, counters)
    assert isinstance(source, StreamSource)
    return source


def v4l2(
    device: str | int, counters: Counters | None = None, frame_timeout: float = TIMEOUT
) -> V4l2Source:
    """A `v4l2` source on `device`."""
    cfg = CameraConfig.model_validate(
        {"source": {"type": "v4l2", "device": device, "frame_timeout": frame_timeout}}
    )
    source = create_source("usb", cfg, 0.0, counters)
    assert isinstance(source, V4l2Source)
    return source


def timed(fn: Callable[[], Any]) -> tuple[CameraUnavailable, float]:
    """The CameraUnavailable `fn` raises, and how long it took to raise it."""
    started = time.monotonic()
    with pytest.raises(CameraUnavailable) as info:
        fn()
    return info.value, time.monotonic() - started


def read_until_failure(source: StreamSource, limit: int = 100) -> None:
    """Read (frames still buffered are fine) until the source raises."""
    for _ in range(limit):
        source.read()
    raise AssertionError(f"{limit} frames read, no CameraUnavailable")


def test_frames_arrive_with_increasing_index(server: MjpegServer) -> None:
    source = stream(server.url)
    source.open()
    before = time.time()
    frames = [source.read() for _ in range(15)]
    source.close()
    assert [f.index for f in frames] == list(range(15))
    assert all(f.image.shape == (360, 640, 3) and f.image.dtype.name == "uint8" for f in frames)
    stamps = [f.ts for f in frames]
    assert stamps == sorted(stamps) and before - 1 <= stamps[0] <= stamps[-1] <= time.time()
    # 15 frames at 10 fps: real pacing, not a burst from a buffer
    assert stamps[-1] - stamps[0] > 0.8
    assert server.clients_served == 1


@pytest.mark.parametrize(
    ("fault", "expected", "bound"),
    [
        # the camera is off: nothing listens on the port
        ("stopped", "connection refused (camera down, booting, or wrong port)", 1.0),
        # the camera accepts the connection and never answers (hung, or still booting)
        ("stalled", f"timed out after {TIMEOUT:g} s (camera down, booting or hung)", TIMEOUT + 2),
        # a wrong path: the server answers 404
        ("wrong_path", "HTTP 404 Not Found (check the path in the URL)", 1.0),
    ],
)
def test_open_fails_clearly_and_on_time(
    server: MjpegServer, fault: str, expected: str, bound: float
) -> None:
    url = server.url
    if fault == "stopped":
        server.stop()
    elif fault == "stalled":
        server.stall()
    else:
        url = url.replace("stream.mjpg", "nothing.mjpg")
    source = stream(url)
    error, elapsed = timed(source.open)
    assert str(error) == f"stream {url}: {expected}"  # no credentials to hide in this URL
    assert elapsed < bound, f"open took {elapsed:.2f} s"
    source.close()


def test_stall_mid_read_raises_after_frame_timeout(server: MjpegServer) -> None:
    counters = Counters()
    source = stream(server.url, counters)
    source.open()
    source.read()
    server.stall()
    error, elapsed = timed(lambda: read_until_failure(source))
    assert re.search(r": no frame for 2\.\d s \(stalled\)$", str(error)), str(error)
    # measured 2.00-2.09 s here: FFmpeg honours its read timeout; our own deadline never fires
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + 2.0, f"read raised after {elapsed:.2f} s"
    assert counters.get("camera.read_timeouts.cam") == 1
    assert counters.get("camera.hung.cam") == 0


def test_server_stopped_mid_stream_raises_promptly(server: MjpegServer) -> None:
    counters = Counters()
    source = stream(server.url, counters)
    source.open()
    source.read()
    server.stop()
    error, elapsed = timed(lambda: read_until_failure(source))
    assert "read failed (stream ended or connection lost)" in str(error)
    assert elapsed < TIMEOUT / 2, f"read took {elapsed:.2f} s: it waited for the timeout"
    assert counters.get("camera.read_errors.cam") == 1
    timed(source.read)  # closed by the failure: reading again fails at once, never hangs


def test_reopen_after_restart_continues_indexes(server: MjpegServer) -> None:
    source = stream(server.url)
    source.open()
    first = [source.read().index for _ in range(5)]
    server.restart()
    timed(lambda: read_until_failure(source))
    source.close()
    source.close()  # idempotent
    source.open()
    after = [source.read().index for _ in range(5)]
    source.close()
    assert first == [0, 1, 2, 3, 4]
    # indexes count frames since the source was created, across close()/open()
    assert after == list(range(after[0], after[0] + 5)) and after[0] > first[-1]
    assert server.clients_served == 2


def test_close_from_another_thread_ends_a_blocked_read(server: MjpegServer) -> None:
    """The supervisor stops a camera while its thread waits for a frame: no 2 s delay."""
    source = stream(server.url)
    source.open()
    source.read()
    server.stall()
    threading.Timer(0.5, source.close).start()
    error, elapsed = timed(lambda: read_until_failure(source))
    assert str(error).endswith(": closed")
    assert elapsed < 1.5, f"read returned {elapsed:.2f} s after it started (close at 0.5 s)"


def test_a_stalled_camera_does_not_delay_another_cameras_open() -> None:
    """OpenCV serializes FFmpeg opens process-wide unless told FFmpeg is thread-safe: then one
    hung camera would hold every other camera's (re)connect for its whole open timeout."""
    with MjpegServer(fps=10) as hung, MjpegServer(fps=10) as healthy:
        hung.stall()
        stuck, ok = stream(hung.url), stream(healthy.url)
        errors: list[BaseException] = []
        blocker = threading.Thread(target=lambda: _catch(stuck.open, errors))
        blocker.start()
        time.sleep(0.3)  # the hung open is in progress
        started = time.monotonic()
        ok.open()
        elapsed = time.monotonic() - started
        assert ok.read().index == 0
        ok.close()
        blocker.join(TIMEOUT + 3)
        assert len(errors) == 1 and isinstance(errors[0], CameraUnavailable)
        assert elapsed < TIMEOUT / 2, f"healthy open waited {elapsed:.2f} s for the hung one"


def _catch(fn: Callable[[], Any], into: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:  # the test asserts on it
        into.append(exc)


def test_credentials_never_shown(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The password is in no error, no log record and nothing OpenCV/FFmpeg print on fd 2,
    whatever goes wrong."""
    caplog.set_level(logging.DEBUG)
    with MjpegServer(fps=10, credentials=("user", PASSWORD)) as server:
        url = server.url_with("user", PASSWORD)
        source = stream(url)
        source.open()  # so FFmpeg did send the credentials: the server requires them
        assert source.read().index == 0
        errors = [timed(lambda: _stall_and_read(server, source))[0]]
        server.resume()
        errors.append(timed(stream(server.url_with("user", "wr@ng-" + PASSWORD)).open)[0])
        server.stall()
        errors.append(timed(source.open)[0])
        server.stop()
        errors.append(timed(source.open)[0])
    texts = [str(e) for e in errors]
    assert [t.split(": ", 1)[0] for t in texts] == [f"stream {redact_url(url)}"] * 4
    assert "***@127.0.0.1" in texts[0]
    assert "stalled" in texts[0]
    assert texts[1].endswith("HTTP 401 Unauthorized (check the user and password in the URL)")
    assert "timed out" in texts[2] and "connection refused" in texts[3]
    assert server.unauthorized >= 1 and server.clients_served == 1
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "opened stream" in logs
    native = capfd.readouterr().err  # what OpenCV and FFmpeg print themselves (journald)
    for where, text in [*(("error", t) for t in texts), ("log", logs), ("stderr", native)]:
        for leak in (PASSWORD, "ss@127", "user:"):
            assert leak not in text, f"{leak!r} leaked in the {where}: {text}"


def _stall_and_read(server: MjpegServer, source: StreamSource) -> None:
    server.stall()
    read_until_failure(source)


@pytest.fixture
def node_dir() -> Iterator[Path]:
    """A folder user `nobody` can enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="edge-agent-dev-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (
            "/dev/video57",
            "V4L2 device /dev/video57 does not exist (not plugged in or not enumerated yet;",
        ),
        (57, "V4L2 device /dev/video57 does not exist"),  # an index means /dev/videoN
        ("/dev/null", "/dev/null is not a V4L2 video device (VIDIOC_QUERYCAP: "),
        ("REGULAR_FILE", "is not a device file (expected /dev/videoN)"),
    ],
)
def test_v4l2_device_problems(node_dir: Path, device: str | int, expected: str) -> None:
    if device == "REGULAR_FILE":
        device = str(node_dir / "video0")
        Path(device).write_bytes(b"not a camera")
    source = v4l2(device)
    error, elapsed = timed(source.open)
    assert expected in str(error)
    assert elapsed < 0.5
    timed(source.read)  # never opened: fails at once
    source.close()


def test_v4l2_permission_denied(node_dir: Path) -> None:
    """A device node the service user may not open. We are root, who may open anything, so
    the open runs in a forked child that first drops to user `nobody` with os.setresuid."""
    node = node_dir / "video0"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a real char device, root-only
    source = v4l2(str(node))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        message = "opened?!"
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            source.open()
        except CameraUnavailable as exc:
            message = str(exc)
        except BaseException as exc:
            message = f"unexpected {exc!r}"
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert message == f"permission denied on {node} (add the service user to the 'video' group)"


def test_v4l2_read_that_ignores_its_timeout_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV's V4L2 backend has no per-capture read timeout (a fixed 10 s select by default):
    a fake device whose read blocks must still raise within frame_timeout + 1 s, count
    `camera.hung`, and be released once the read returns."""
    release = threading.Event()
    fake = _BlockingCapture(release)
    monkeypatch.setattr(V4l2Source, "_preflight", lambda self: None)
    monkeypatch.setattr(V4l2Source, "_capture", lambda self: fake)
    counters = Counters()
    source = v4l2("/dev/video0", counters, frame_timeout=1.0)
    source.open()
    error, elapsed = timed(source.read)
    assert "read blocked for more than 2 s (device or driver hung)" in str(error)
    assert 1.8 <= elapsed <= 3.0
    assert counters.get("camera.hung.usb") == 1
    assert not fake.released  # still inside read(): releasing now could crash OpenCV
    source.close()
    release.set()
    deadline = time.monotonic() + 5
    while not fake.released and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.released


class _BlockingCapture:
    """A cv2.VideoCapture stand-in (hardware fake) whose read() blocks until released."""

    def __init__(self, unblock: threading.Event) -> None:
        self.unblock = unblock
        self.released = False

    def isOpened(self) -> bool:  # OpenCV's name
        return True

    def read(self) -> tuple[bool, None]:
        self.unblock.wait(30)
        return False, None

    def release(self) -> None:
        self.released = True


def test_server_is_bounded_and_refuses_after_stop() -> None:
    """The test server itself: counters, refusal after stop(), same port after restart()."""
    with MjpegServer(fps=20) as server:
        port = server.port
        source = stream(server.url)
        source.open()
        for _ in range(5):
            source.read()
        assert server.wait_frames(5) and server.connections == 1
        server.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        server.restart()
        assert server.port == port
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        source.close()
    assert server.live_threads == 0, f"{server.live_threads} server threads left running"
