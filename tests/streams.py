"""A test camera: an MJPEG-over-HTTP stream server that tests can stop, restart and stall.

`MjpegServer` serves `multipart/x-mixed-replace` JPEG frames of a real video clip at a fixed
rate on 127.0.0.1, the way cheap IP cameras do; OpenCV's FFmpeg backend reads it at
`server.url` (`http://127.0.0.1:PORT/stream.mjpg`). Faults a test can inject:

- `stop()`: the listener and every open connection are closed; new connections are refused.
- `restart()`: `stop()` then `start()` on the same port (a camera rebooting).
- `stall()`: connections stay open and new ones are accepted, but nothing is sent (not even
  the HTTP response header to new clients) until `resume()` - a camera that hangs.

Everything runs in daemon threads that check a stop Event at least every 0.2 s, so a test
that forgets `stop()` never hangs the session; use it as a context manager to be tidy.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import cv2

from tests.helpers import MEDIA

CLIP = MEDIA / "video" / "car-detection.mp4"
_POLL = 0.2  # seconds: how long any server loop may block before it rechecks the stop Event


@functools.lru_cache(maxsize=4)
def load_jpegs(
    video: Path = CLIP, count: int = 200, width: int = 640, quality: int = 80
) -> tuple[bytes, ...]:
    """The first `count` frames of `video`, scaled to `width` px wide, as JPEG bytes (cached:
    decoding is the slow part, and the result is immutable)."""
    cap = cv2.VideoCapture(str(video))
    jpegs: list[bytes] = []
    try:
        while len(jpegs) < count:
            ok, image = cap.read()
            if not ok:
                break
            height = round(image.shape[0] * width / image.shape[1])
            small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                jpegs.append(buf.tobytes())
    finally:
        cap.release()
    if not jpegs:
        raise RuntimeError(f"no frame could be decoded from {video}")
    return tuple(jpegs)


class MjpegServer:
    """An MJPEG-over-HTTP camera on 127.0.0.1 with fault injection (see the module docstring).

    fps: frames per second sent to each client. frames: how many clip frames to loop over.
    credentials: (user, password) to require HTTP Basic auth (401 otherwise).
    Counters (thread-safe reads): `connections` accepted, `clients_served` (got a 200 and the
    stream), `unauthorized` (got a 401), `frames_sent` (over all clients).
    """

    boundary = "edgeagentframe"
    path = "/stream.mjpg"

    def __init__(
        self,
        fps: float = 10.0,
        *,
        video: Path = CLIP,
        frames: int = 200,
        port: int = 0,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.fps = fps
        self.jpegs = load_jpegs(video, frames)
        self.port = port
        self.credentials = credentials
        self._lock = threading.Lock()
        self._counts = {"connections": 0, "clients_served": 0, "unauthorized": 0, "frames": 0}
        self._running = threading.Event()  # cleared while stalled
        self._running.set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> MjpegServer:
        """Listen (on a free port the first time, the same port afterwards) and serve."""
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Rebinding the same port on restart() while old connections sit in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(_POLL)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._stop = threading.Event()
        self._spawn(self._accept_loop, listener, self._stop)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; returns once new connections are refused
        and every server thread has ended (a thread spawned by an accept racing this call
        included: the loop re-reads the thread list until it is empty)."""
        self._stop.set()
        deadline = time.monotonic() + 10.0
        while True:
            with self._lock:
                conns = list(self._conns)
                alive = [t for t in self._threads if t.is_alive()]
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on this socket
            if not alive or time.monotonic() > deadline:
                break
            for thread in alive:
                thread.join(_POLL)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
        if self._listener is not None:
            self._listener.close()  # the accept thread closes it too; closing twice is fine
            self._listener = None

    def restart(self) -> None:
        """Stop, then serve again on the same port."""
        self.stop()
        self.start()

    def stall(self) -> None:
        """Keep accepting and holding connections, but send nothing until resume()."""
        self._running.clear()

    def resume(self) -> None:
        """Send frames again after stall()."""
        self._running.set()

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The stream URL without credentials."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    def url_with(self, user: str, password: str) -> str:
        """The stream URL with `user:password@` in it (not percent-encoded, as users type it)."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}{self.path}"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._count("connections")

    @property
    def clients_served(self) -> int:
        """Requests answered with 200 and a stream."""
        return self._count("clients_served")

    @property
    def unauthorized(self) -> int:
        """Requests answered with 401."""
        return self._count("unauthorized")

    @property
    def frames_sent(self) -> int:
        """JPEG parts written completely, over all clients."""
        return self._count("frames")

    @property
    def live_threads(self) -> int:
        """Server threads (accept loop and clients) still running."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def wait_frames(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least `count` frames have been sent in total; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.frames_sent < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # -- internals -------------------------------------------------------------------------

    def _count(self, name: str, add: int = 0) -> int:
        with self._lock:
            self._counts[name] += add
            return self._counts[name]

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="mjpeg-server")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()  # under the lock, so stop() never misses a thread being started

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                if stop.is_set():  # accepted while stop() ran: refuse it like a closed port
                    conn.close()
                    break
                conn.settimeout(_POLL)
                with self._lock:
                    self._conns.add(conn)
                    self._counts["connections"] += 1
                self._spawn(self._serve, conn, stop)
        except OSError:
            pass  # the listener was closed by stop()
        finally:
            listener.close()

    def _serve(self, conn: socket.socket, stop: threading.Event) -> None:
        try:
            request = _read_request(conn, stop)
            if request is None or not self._wait_running(stop):
                return
            error = self._check(request)
            if error:
                _send(conn, error.encode(), stop)
                return
            header = (
                "HTTP/1.0 200 OK\r\nServer: edge-agent-test\r\nCache-Control: no-cache\r\n"
                f"Content-Type: multipart/x-mixed-replace; boundary={self.boundary}\r\n\r\n"
            )
            if _send(conn, header.encode(), stop):
                self._count("clients_served", 1)
                self._stream(conn, stop)
        except OSError:
            pass  # the client went away or stop() shut the socket: both end this client
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _check(self, request: bytes) -> str:
        """An HTTP error response for a bad path or missing credentials, else ''."""
        lines = request.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) < 2 or parts[0] != "GET" or parts[1].split("?")[0] != self.path:
            return "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            if f"authorization: basic {token}".lower() not in (ln.lower() for ln in lines):
                self._count("unauthorized", 1)
                return (
                    'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm="camera"\r\n'
                    "Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
        return ""

    def _stream(self, conn: socket.socket, stop: threading.Event) -> None:
        index = 0
        due = time.monotonic()
        while self._wait_running(stop):
            jpeg = self.jpegs[index % len(self.jpegs)]
            part = (
                f"--{self.boundary}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(jpeg)}\r\n\r\n"
            ).encode()
            if not _send(conn, part + jpeg + b"\r\n", stop):
                return
            self._count("frames", 1)
            index += 1
            due = max(due + 1.0 / self.fps, time.monotonic())  # no burst after a stall
            stop.wait(max(0.0, due - time.monotonic()))

    def _wait_running(self, stop: threading.Event) -> bool:
        """Block while stalled; False once the server is stopping."""
        while not self._running.wait(_POLL):
            if stop.is_set():
                return False
        return not stop.is_set()


def _read_request(conn: socket.socket, stop: threading.Event) -> bytes | None:
    """The request head (up to the blank line), or None if the client left or we stop."""
    data = b""
    while b"\r\n\r\n" not in data:
        if stop.is_set() or len(data) > 16384:
            return None
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            return None
        data += chunk
    return data


def _send(conn: socket.socket, data: bytes, stop: threading.Event) -> bool:
    """Send everything, waiting for a slow reader but giving up when we stop."""
    view = memoryview(data)
    while view:
        if stop.is_set():
            return False
        try:
            sent = conn.send(view)
        except TimeoutError:
            continue
        view = view[sent:]
    return True
