"""systemd's notify protocol: readiness, status, watchdog fed only by fresh heartbeats; the
unit file passes `systemd-analyze verify`. A real unix datagram socket stands in for systemd."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent import supervisor
from edge_agent.config.loader import load_config
from edge_agent.health import Counters
from edge_agent.notify import Notifier
from edge_agent.pipeline import FrameSlot
from edge_agent.runtime import Agent
from edge_agent.supervisor import CameraRunner
from edge_agent.types import Frame
from tests.helpers import IMAGES, ROOT, SSD, SSD_LABELS, Broker, base_config, write_config


def _looping_images() -> dict[str, Any]:
    """A camera replaying the shared images at 5 fps forever (it keeps the agent running)."""
    return {
        "source": {"type": "images", "path": str(IMAGES), "realtime": True, "loop": True, "fps": 5}
    }


class Listener:
    """A bound SOCK_DGRAM socket, as systemd's notify socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, dict[str, str]]] = []

    def drain(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        """Read datagrams for `seconds`; every message so far (time, fields)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.got.append((time.monotonic(), fields))
        return self.got

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_messages_reach_the_socket(tmp_path: Path, abstract: bool) -> None:
    name = f"\0edge-agent-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    listener = Listener(name)
    try:
        env = {"NOTIFY_SOCKET": "@" + name[1:] if abstract else name}
        notifier = Notifier(env)
        assert notifier.enabled
        notifier.ready("frames cam 0; 0 messages undelivered")
        notifier.ready("again")  # READY=1 is sent once
        notifier.status("a  status\nline")
        notifier.stopping("stopping")
        notifier.close()
        got = [fields for _, fields in listener.drain(0.5)]
    finally:
        listener.close()
    assert got == [
        {"READY": "1", "STATUS": "frames cam 0; 0 messages undelivered"},
        {"STATUS": "a status line"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_nothing_happens_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.send(READY="1")
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog(0.0, {"detect-0": 0.0})


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], interval: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/run/x", **env}).watchdog_interval == interval


def test_watchdog_is_fed_only_while_every_heartbeat_is_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listener = Listener(str(tmp_path / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"})
    fresh = {"detect-0": 0.1, "post-cam": 0.1, "encoder": 0.9}
    hung = {**fresh, "detect-0": 2.5}  # over half the 4 s timeout
    try:
        with caplog.at_level(logging.ERROR, logger="edge_agent.notify"):
            sent = [
                notifier.watchdog(0.0, fresh),
                notifier.watchdog(0.5, fresh),  # not due yet (every quarter of the timeout)
                notifier.watchdog(1.0, fresh),
                notifier.watchdog(2.0, hung),
                notifier.watchdog(3.0, hung),  # still hung: no ping, not logged again
                notifier.watchdog(3.5, fresh),  # recovered
            ]
        got = listener.drain(0.3)
    finally:
        listener.close()
    assert sent == [True, False, True, False, False, True]
    assert [fields for _, fields in got] == [{"WATCHDOG": "1"}] * 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["watchdog not fed: no heartbeat from detect-0 (2 s); systemd will restart"]


def test_the_agent_tells_systemd_ready_pings_and_stopping(broker: Broker, tmp_path: Path) -> None:
    """The real agent with NOTIFY_SOCKET and WATCHDOG_USEC set: READY=1 with a status once the
    camera delivered its first frame, WATCHDOG=1 every quarter of the timeout while it runs,
    STOPPING=1 on SIGTERM, exit 0."""
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "door": {
                "source": {
                    "type": "images",
                    "path": str(IMAGES),
                    "realtime": True,
                    "loop": True,
                    "fps": 5,
                }
            }
        },
    )
    cfg["device_id"] = "notify-test"
    path = str(tmp_path / "notify")
    listener = Listener(path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(write_config(tmp_path, cfg))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        listener.drain(12.0)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        listener.drain(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    kinds = [next(iter(fields)) for _, fields in listener.got]
    assert kinds.count("READY") == 1 and kinds[-1] == "STOPPING"
    ready = next(fields for _, fields in listener.got if "READY" in fields)
    assert ready["STATUS"].startswith("frames door ")
    pings = [t for t, fields in listener.got if "WATCHDOG" in fields]
    assert len(pings) >= 10  # about every 0.5 s for 12 s, minus the start
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    # About every half timeout (0.5 s plus the main loop's 0.2 s tick), never the 2 s timeout.
    assert gaps[len(gaps) // 2] <= 1.0 and gaps[-1] < 2.0, gaps


def test_unit_file_verifies() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is needed to check the unit"
    unit = ROOT / "systemd" / "edge-agent.service"
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # The unit names the installed paths; only problems in the unit itself fail the check.
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "/opt/edge-agent" not in line and "edge-agent.service" in line
    ]
    assert not problems, problems
    text = unit.read_text()
    for key in ("Type=notify", "WatchdogSec=", "NotifyAccess=main", "StartLimitBurst="):
        assert key in text, key


def test_a_hung_detector_stops_the_watchdog_while_the_process_stays_up(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent in this process with its detector made to block in a frame (a hook around the
    real model's call): pings stop within the watchdog interval, the agent's main loop goes on
    (systemd, not the agent, decides to restart), and pings resume once the detector returns."""
    cfg = base_config(broker.port, SSD, SSD_LABELS, {"door": _looping_images()})
    cfg["device_id"] = "hang-test"
    agent = Agent(load_config(write_config(tmp_path, cfg)))
    path = str(tmp_path / "notify")
    listener = Listener(path)
    agent.notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    agent.prepare()
    assert agent.threads is not None
    detector = agent.threads.detect[0].detector
    hang, release, hung = threading.Event(), threading.Event(), threading.Event()
    real = detector.detect_arrays

    def detect_arrays(image: Any) -> Any:
        if hang.is_set():
            hung.set()
            release.wait(60)
        return real(image)

    detector.detect_arrays = detect_arrays  # type: ignore[method-assign]
    runner = threading.Thread(target=agent.run, daemon=True)
    caplog.set_level(logging.ERROR, "edge_agent.notify")
    runner.start()
    try:
        listener.drain(5.0)
        hang.set()
        assert hung.wait(10), "the detector never got a frame"
        hung_at = time.monotonic()
        listener.drain(5.0)
        alive_while_hung = runner.is_alive() and not agent.stop.is_set()
        release.set()
        listener.drain(3.0)
    finally:
        release.set()
        agent.signalled.set()
        agent.stop.set()
        runner.join(60)
        listener.close()
    pings = [t for t, fields in listener.got if "WATCHDOG" in fields]
    before = [t for t in pings if t < hung_at]
    during = [t for t in pings if hung_at <= t < hung_at + 5.0]
    after = [t for t in pings if t >= hung_at + 5.0]
    assert len(before) >= 5 and alive_while_hung
    # Pings stop within the 2 s timeout of the hang's start (the heartbeat is stale after the
    # 1 s half-timeout; a ping already due may still go out): systemd would restart.
    assert all(t - hung_at < 2.0 for t in during), [round(t - hung_at, 2) for t in during]
    assert after, "pings did not resume after the detector returned"
    errors = [r.getMessage() for r in caplog.records if "watchdog not fed" in r.getMessage()]
    assert len(errors) == 1 and "detect-0" in errors[0], errors
    assert not runner.is_alive()


class _Blocking:
    """A live source whose reads block until released (a driver stuck in I/O)."""

    fps = 10.0

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def open(self) -> None:
        """Nothing to open."""

        self.reads = 0

    def read(self) -> Frame | None:
        """One frame, then block until released, then end."""
        self.reads += 1
        if self.reads == 1:
            return Frame("gate", 0, time.time(), np.zeros((8, 8, 3), np.uint8))
        self.release.wait(30)
        return None

    def close(self) -> None:
        """Nothing to close."""


def test_a_capture_stuck_beyond_healing_stops_the_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blocked capture is first abandoned and reconnected by its supervisor (no restart
    needed); once every attempt is blocked, the camera counts as stuck and the watchdog,
    fed with its age, is no longer pinged."""
    monkeypatch.setattr(supervisor, "STALL_GRACE", 0.1)
    release, stop = threading.Event(), threading.Event()
    states: list[str] = []
    runner = CameraRunner(
        "gate",
        lambda: _Blocking(release),  # type: ignore[arg-type, return-value]
        FrameSlot("gate", True, 1, Counters(), threading.Event()),
        Counters(),
        stop,
        lambda _n, status: states.append(status.state),
        (0.1, 0.1),
        0.2,
    )
    runner.start(_Blocking(release), opened=True)  # type: ignore[arg-type]
    listener = Listener("\0edge-agent-stuck-test")
    notifier = Notifier({"NOTIFY_SOCKET": "@edge-agent-stuck-test", "WATCHDOG_USEC": "2000000"})
    sent = [notifier.watchdog(time.monotonic(), {})]  # healthy: a ping
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runner.check_stalled(time.monotonic())
            stuck = runner.stuck_age(time.monotonic())
            if stuck is not None and stuck > 1.5:  # past the 1 s half-timeout
                break
            time.sleep(0.1)
        now = time.monotonic() + 1.0  # the next ping is due
        stuck = runner.stuck_age(now)
        abandoned = len([t for t in runner.threads if t.is_alive()])
        sent.append(notifier.watchdog(now, {"capture-gate": stuck or 0.0}))
        states_while_stuck = list(states)
    finally:
        release.set()
        stop.set()
        runner.join(time.monotonic() + 5)
        listener.close()
    assert stuck is not None and stuck > 1.5, states
    assert abandoned > supervisor.MAX_ABANDONED
    assert sent == [True, False]
    # Each blocked attempt was abandoned and reconnected (retrying), and it stays `running`.
    assert "retrying" in states_while_stuck and states_while_stuck[-1] == "running"
