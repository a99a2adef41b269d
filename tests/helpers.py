"""Test helpers: a private mosquitto, a collecting subscriber, and running the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_AGENT_SHARED", ROOT.parent / "shared"))
MODELS = SHARED / "models"
MEDIA = SHARED / "media"
VIDEO = MEDIA / "video" / "one-by-one-person-detection.mp4"
IMAGES = MEDIA / "images"

SSD = MODELS / "ssd_mobilenet_v1_coco_quant" / "detect.tflite"
SSD_LABELS = MODELS / "ssd_mobilenet_v1_coco_quant" / "labelmap.txt"
YOLOV8 = MODELS / "yolov8n_coco_int8_640" / "yolov8n_full_integer_quant.tflite"
YOLO_LABELS = MODELS / "yolov8n_coco_int8_640" / "coco80_labels.txt"


def mosquitto_binary() -> str:
    """Path of the mosquitto broker; raises (the test fails, never skips) when absent."""
    override = os.environ.get("EDGE_AGENT_MOSQUITTO")  # lets CI prove a missing broker fails
    if override:
        candidates = [override]
    else:
        candidates = [
            shutil.which("mosquitto") or "",
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
    found = next((p for p in candidates if p and Path(p).exists()), None)
    if found is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    return found


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """A mosquitto process on a private port; can be stopped and started again."""

    def __init__(
        self, port: int | None = None, extra_conf: str = "", persistent: bool = False
    ) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edge-agent-broker-"))
        self.dir.chmod(0o777)  # mosquitto started as root drops to its own user
        self.conf = self.dir / "mosquitto.conf"
        # Persistence keeps subscriber sessions (and their queued QoS 1 messages) across a
        # broker restart, so a test subscriber misses nothing while the broker is down.
        persistence = (
            f"persistence true\npersistence_location {self.dir}/\nautosave_interval 1\n"
            if persistent
            else "persistence false\n"
        )
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 100000\n" + persistence + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        """Start and wait until the port accepts connections."""
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        """Terminate the broker."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Received:
    """One message as a subscriber saw it."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        """Payload parsed as JSON."""
        return json.loads(self.payload)


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    """Poll predicate until true or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@dataclass
class Subscriber:
    """Collects every message on `topic` from a broker (QoS 1)."""

    port: int
    topic: str = "#"
    messages: list[Received] = field(default_factory=list)
    client_id: str = ""  # set for a persistent session (clean_session false)
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed: queue.Queue[bool] = queue.Queue()
        if self.client_id:
            self.client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False
            )
        else:
            self.client = paho.Client(CallbackAPIVersion.VERSION2)
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.put(True)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self._subscribed.get(timeout=10)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))

    def on(self, suffix: str) -> list[Received]:
        """Messages whose topic ends with suffix."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Poll until predicate(self) is true."""
        return wait_until(lambda: predicate(self), timeout, 0.05)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def write_config(folder: Path, config: dict[str, Any], name: str = "agent.yaml") -> Path:
    """Write a config dict as YAML and return its path."""
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def base_config(
    port: int, model: Path, labels: Path | None, cameras: dict[str, Any]
) -> dict[str, Any]:
    """A minimal config for the test broker."""
    model_cfg: dict[str, Any] = {"path": str(model)}
    if labels is not None:
        model_cfg["labels"] = str(labels)
    return {
        "device_id": "test-dev",
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "topic_prefix": "edge",
            "reconnect_min_delay": 1,
            "reconnect_max_delay": 2,
        },
        "model": model_cfg,
        "cameras": cameras,
        "outbox": {"path": str(Path(tempfile.mkdtemp(prefix="edge-agent-outbox-")) / "o.db")},
        "log": {"level": "info", "format": "text"},
    }


def cli(
    *args: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m edge_agent ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def start_agent(config: Path, *extra: str) -> subprocess.Popen[str]:
    """Start `edge-agent run` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


class TcpProxy:
    """Forwards 127.0.0.1:port to a broker; `down()` closes the port and every connection.

    From the agent's side this is exactly a broker that is unreachable (connection refused)
    or that dropped every client, while the real broker and the test's subscriber stay up.
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target = target_port
        self.port = port or free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> TcpProxy:
        """Start accepting and forwarding."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        """Stop listening and cut every forwarded connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns = []


class AgentProcess:
    """`edge-agent run` in the background, its output collected line by line."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def count(self, text: str) -> int:
        """Lines containing text."""
        return sum(1 for line in list(self.lines) if text in line)

    def wait_for_line(self, text: str, timeout: float, times: int = 1) -> bool:
        """Wait until `times` lines contain text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(text) >= times:
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)
                return self.count(text) >= times
            time.sleep(0.05)
        return False

    def rss_kib(self) -> int:
        """Resident memory of the agent process, KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def wait(self, timeout: float) -> int:
        """Exit code (raises on timeout)."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL if still running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Run:
    """What one `edge-agent run` to the end published (its exit, every message, the final
    counters)."""

    proc: subprocess.CompletedProcess[str]
    sub: Subscriber

    def bodies(self, suffix: str) -> list[Any]:
        """Parsed payloads of the messages on topics ending with suffix, in arrival order."""
        return [m.json() for m in self.sub.on(suffix)]

    @property
    def counters(self) -> dict[str, int]:
        """Counters of the last stats message (sent after every other message at exit)."""
        stats = self.bodies("/stats")
        return dict(stats[-1]["counters"]) if stats else {}


def run_to_end(port: int, folder: Path, cfg: dict[str, Any], timeout: float = 600) -> Run:
    """Run the agent on `cfg` (replay sources) until it exits, collecting what it publishes
    on its device's topics; fails the test unless it exits 0 and says offline."""
    sub = Subscriber(port, f"{cfg['mqtt']['topic_prefix']}/{cfg['device_id']}/#")
    try:
        proc = cli("run", "--config", str(write_config(folder, cfg)), timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sub.wait_for(
            lambda s: any(m.payload == b"offline" and not m.retain for m in s.on("/status")), 10
        )
    finally:
        sub.close()
    return Run(proc, sub)
