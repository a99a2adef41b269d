"""Issue acceptance (supervisor, signals): cameras are retried, reported and never take the
agent down; signals do what the README says. Real broker, real MJPEG stream server, real
models; the agent runs as a subprocess through the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.helpers import (
    IMAGES,
    SSD,
    SSD_LABELS,
    AgentProcess,
    Broker,
    Subscriber,
    base_config,
    free_port,
    write_config,
)
from tests.streams import MjpegServer

DEVICE = "sup-dev"


def _config(port: int, cameras: dict[str, Any], **runtime: Any) -> dict[str, Any]:
    cfg = base_config(port, SSD, SSD_LABELS, cameras)
    cfg["device_id"] = DEVICE
    cfg["runtime"] = {"stats_interval": 1, "retry_max_delay": 2, **runtime}
    return cfg


def _stream(url: str, frame_timeout: float = 2.0) -> dict[str, Any]:
    return {
        "source": {
            "type": "rtsp",
            "url": url,
            "frame_timeout": frame_timeout,
            "reconnect_delay": 0.5,
        },
        "publish_empty": True,
    }


def _looping_images() -> dict[str, Any]:
    return {
        "source": {"type": "images", "path": str(IMAGES), "realtime": True, "loop": True, "fps": 4},
        "publish_empty": True,
    }


def _states(sub: Subscriber, camera: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.on(f"{DEVICE}/{camera}/state")]


def _last_state(sub: Subscriber, camera: str) -> str:
    states = _states(sub, camera)
    return str(states[-1]["state"]) if states else ""


def _frames(sub: Subscriber, camera: str) -> int:
    return len(sub.on(f"{DEVICE}/{camera}/detections"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_stream_retried_through_outages_while_other_camera_runs(tmp: Path) -> None:
    """Down at start, stalled, stopped, restarted: the camera is retried each time, its state
    is published (retained) with the reason, and the other camera never stops."""
    broker = Broker().start()
    server = MjpegServer(fps=8, frames=40, port=free_port())
    sub = Subscriber(broker.port, f"edge/{DEVICE}/#")
    cams = {"net": _stream(server.url), "replay": _looping_images()}
    agent = AgentProcess(write_config(tmp, _config(broker.port, cams)))
    try:
        # 1. down at start: retrying with the reason, the replay camera runs on
        assert sub.wait_for(lambda s: _last_state(s, "net") == "retrying", 30), agent.output
        retrying = _states(sub, "net")[-1]
        assert "127.0.0.1" in retrying["reason"] and retrying["next_attempt"] > 0
        assert sub.wait_for(lambda s: _frames(s, "replay") >= 5, 30)
        assert agent.proc.poll() is None
        # 2. the stream comes up: running, frames flow
        server.start()
        assert sub.wait_for(lambda s: _last_state(s, "net") == "running", 30), agent.output
        assert sub.wait_for(lambda s: _frames(s, "net") >= 10, 30)
        # 3. stalled (connected, no frames): reconnected after frame_timeout
        server.stall()
        stalled_at = time.monotonic()
        assert sub.wait_for(lambda s: _last_state(s, "net") == "retrying", 30), agent.output
        noticed = time.monotonic() - stalled_at
        assert "no frame" in _states(sub, "net")[-1]["reason"], _states(sub, "net")[-1]
        server.resume()
        assert sub.wait_for(lambda s: _last_state(s, "net") == "running", 30), agent.output
        # 4. stopped mid-run, then restarted on the same port
        before = _frames(sub, "net")
        server.stop()
        assert sub.wait_for(lambda s: _last_state(s, "net") == "retrying", 30), agent.output
        server.start()
        assert sub.wait_for(lambda s: _last_state(s, "net") == "running", 30), agent.output
        assert sub.wait_for(lambda s: _frames(s, "net") > before + 5, 30)
        # the stats carry every camera's state
        stats = [m.json() for m in sub.on(f"{DEVICE}/stats")]
        assert stats and set(stats[-1]["cameras"]) == {"net", "replay"}
        assert stats[-1]["counters"].get("camera.retries.net", 0) >= 3
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output[-3000:]
        assert _last_state(sub, "net") == "stopped"
        print(f"\nstall noticed after {noticed:.1f} s (frame_timeout 2 s)")
        assert "Traceback" not in agent.output
    finally:
        agent.kill()
        server.stop()
        sub.close()
        broker.stop()


def test_retrying_agent_is_idle_and_shutdown_is_prompt(tmp: Path) -> None:
    """Broker unreachable and stream down: the agent retries both using < 2% of a core, and
    SIGTERM ends it promptly with exit 0."""
    dead_broker = free_port()
    cfg = _config(dead_broker, {"net": _stream(f"http://127.0.0.1:{free_port()}/x.mjpg")})
    cfg["runtime"]["shutdown_timeout"] = 1
    agent = AgentProcess(write_config(tmp, cfg))
    try:
        assert agent.wait_for_line("retrying", 30), agent.output
        time.sleep(2)
        cpu0, t0 = _cpu_seconds(agent.proc.pid), time.monotonic()
        time.sleep(10)
        share = (_cpu_seconds(agent.proc.pid) - cpu0) / (time.monotonic() - t0)
        print(f"\nretrying agent: {share * 100:.2f}% of one core")
        assert share < 0.02, share
        start = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output[-3000:]
        assert time.monotonic() - start < 8
    finally:
        agent.kill()


def test_capture_blocked_in_io_does_not_delay_shutdown(tmp: Path) -> None:
    """A stream that stalls with a long frame_timeout leaves the capture thread blocked in
    I/O: SIGTERM still ends the agent within about 2 s plus the delivery it does."""
    broker = Broker().start()
    server = MjpegServer(fps=8, frames=20).start()
    cfg = _config(broker.port, {"net": _stream(server.url, frame_timeout=120)})
    cfg["runtime"]["shutdown_timeout"] = 2
    agent = AgentProcess(write_config(tmp, cfg))
    try:
        assert agent.wait_for_line("camera net: running", 30), agent.output
        server.stall()
        time.sleep(3)
        start = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output[-3000:]
        took = time.monotonic() - start
        print(f"\nshutdown with capture blocked in I/O: {took:.1f} s")
        assert took < 6, agent.output[-2000:]
    finally:
        agent.kill()
        server.stop()
        broker.stop()


def test_sighup_rereads_config_and_second_signal_exits_at_once(tmp: Path) -> None:
    broker = Broker().start()
    sub = Subscriber(broker.port, f"edge/{DEVICE}/#")
    cfg = _config(broker.port, {"replay": _looping_images()})
    path = write_config(tmp, cfg)
    agent = AgentProcess(path)
    try:
        assert sub.wait_for(lambda s: _frames(s, "replay") >= 3, 30), agent.output
        good = path.read_text()
        path.write_text(good.replace("replay:", "replay:\n    bogus_key: 1", 1))
        agent.proc.send_signal(signal.SIGHUP)
        assert agent.wait_for_line("config reload refused", 10), agent.output
        line = next(x for x in agent.lines if "config reload refused" in x)
        assert f"{path}:" in line and "bogus_key" in line and "unknown key" in line
        path.write_text(good.replace("fps: 4", "fps: 5"))
        agent.proc.send_signal(signal.SIGHUP)
        assert agent.wait_for_line("config reloaded: cameras changed", 30), agent.output
        count = _frames(sub, "replay")
        assert sub.wait_for(lambda s: _frames(s, "replay") > count + 2, 30)
        assert agent.proc.poll() is None  # SIGHUP no longer kills it (was exit 129)
        # broker gone: the first SIGTERM waits for delivery, the second ends it at once
        broker.stop()
        time.sleep(1)
        agent.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        start = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        code = agent.wait(10)
        assert time.monotonic() - start < 3
        assert code == 128 + signal.SIGTERM, agent.output[-2000:]
        assert agent.count("second SIGTERM: exiting now") == 1
        assert "Traceback" not in agent.output
    finally:
        agent.kill()
        sub.close()
        broker.stop()


def test_camera_failed_by_user_error_is_not_exit_zero(tmp: Path) -> None:
    """A camera that cannot work whatever the retries (picamera2 not installed here) is
    `failed`; the replay camera beside it runs to the end; the run exits 2, not 0."""
    broker = Broker().start()
    sub = Subscriber(broker.port, f"edge/{DEVICE}/#")
    replay = {"source": {"type": "images", "path": str(IMAGES)}, "publish_empty": True}
    cams = {"pi": {"source": {"type": "picamera2"}}, "replay": replay}
    agent = AgentProcess(write_config(tmp, _config(broker.port, cams)))
    try:
        assert agent.wait(300) == 2, agent.output[-3000:]
        images = len([p for p in IMAGES.iterdir() if p.is_file()])
        assert sub.wait_for(lambda s: _frames(s, "replay") == images, 10)
        assert sub.wait_for(lambda s: _last_state(s, "pi") == "failed", 10)
        assert "picamera2 is not installed" in _states(sub, "pi")[-1]["reason"]
        assert "Traceback" not in agent.output
    finally:
        agent.kill()
        sub.close()
        broker.stop()
