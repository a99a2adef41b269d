"""Delivery through the brokers fleets run besides a lone Mosquitto: NATS (MQTT listener),
RabbitMQ (MQTT plugin), and a Mosquitto site broker bridged to a central Mosquitto; and the
MQTT 5 -> 3.1.1 fallback that the first two need (they speak only MQTT 3.1.1)."""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config.schema import MqttConfig
from edge_agent.health import Counters
from edge_agent.publish.fallback import COUNTER, ProtocolFallback
from tests.brokers import SETUPS, Setup
from tests.helpers import (
    SSD,
    SSD_LABELS,
    VIDEO,
    AgentProcess,
    Subscriber,
    base_config,
    write_config,
)

CLIP_FRAMES = 120  # 12 s at the video's 10 fps: long enough to span a broker restart
FIRST = 20  # detections received before the broker is stopped
DOWN = 3.0  # seconds the broker stays down while the agent keeps producing

# -- the fallback decision -------------------------------------------------------------------


@dataclass
class _Conn:
    """What the fallback adjusts: the publisher's config, guard and inbox."""

    cfg: MqttConfig
    guard: Any = field(default_factory=lambda: SimpleNamespace(v5=True))
    inbox: Any = field(default_factory=lambda: SimpleNamespace(v5=True))


# Steps: "5"/"3.1.1" an attempt must use that protocol; "connack=N" the broker answered N;
# "closed" before a CONNACK, "dropped" after one; "retry"/"backoff" the attempt failed and the
# fallback says to try again at once and quietly, or not.
CLOSED = "5 closed backoff 5 closed backoff 5 closed retry"  # three in a row, then a probe
FALLBACK_CASES = [
    # (case, configured, steps, protocol of the next attempt, switches)
    ("connack_unsupported_version", "5", "5 connack=132 retry 3.1.1 connack=0", "3.1.1", 1),
    ("closed_unanswered_then_311_accepted", "5", f"{CLOSED} 3.1.1 connack=0", "3.1.1", 1),
    ("probe_answered_with_a_refusal_is_311", "5", f"{CLOSED} 3.1.1 connack=135", "3.1.1", 1),
    # A broker starting or stopping may close a connection or two: not evidence.
    ("one_or_two_closes_are_not_evidence", "5", "5 closed backoff 5 closed backoff", "5", 0),
    (
        "an_answer_starts_the_count_again",
        "5",
        "5 closed backoff 5 closed backoff 5 connack=5 backoff 5 closed backoff",
        "5",
        0,
    ),
    (
        "broker_restart_after_v5_never_downgrades",
        "5",
        "5 connack=0 dropped 5 closed backoff 5 closed backoff 5 closed backoff 5 connack=0",
        "5",
        0,
    ),
    ("network_errors_never_downgrade", "5", "5 backoff 5 backoff", "5", 0),
    # The broker went away between the MQTT 5 attempt and the probe.
    ("probe_unreachable_goes_back_to_5", "5", f"{CLOSED} 3.1.1 backoff", "5", 0),
    # E.g. TLS without the client certificate the broker wants: both closed, never a switch.
    (
        "probe_closed_too_goes_back_to_5",
        "5",
        f"{CLOSED} 3.1.1 closed backoff {CLOSED}",
        "3.1.1",  # a probe again, three closes later
        0,
    ),
    ("probe_refused_as_unsupported", "5", f"{CLOSED} 3.1.1 connack=132 backoff", "5", 0),
    ("configured_311_is_left_alone", "3.1.1", "3.1.1 closed backoff 3.1.1", "3.1.1", 0),
    (
        "fallen_back_stays_311_across_restarts",
        "5",
        "5 connack=132 retry 3.1.1 connack=0 dropped 3.1.1 closed backoff",
        "3.1.1",
        1,
    ),
]


def _play(fallback: ProtocolFallback, conn: _Conn, steps: str) -> None:
    for step in steps.split():
        if step in ("5", "3.1.1"):
            fallback.apply(conn)
            assert conn.cfg.protocol == step, steps
            assert conn.guard.v5 == conn.inbox.v5 == (step == "5")
        elif step.startswith("connack="):
            fallback.connack(int(step.removeprefix("connack=")))
        elif step in ("closed", "dropped"):
            fallback.disconnected(accepted=step == "dropped")
        else:
            assert fallback.retry_now() is (step == "retry"), steps


@pytest.mark.parametrize(
    ("configured", "steps", "protocol", "switches"),
    [case[1:] for case in FALLBACK_CASES],
    ids=[case[0] for case in FALLBACK_CASES],
)
def test_fallback_decision(
    configured: str,
    steps: str,
    protocol: str,
    switches: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = MqttConfig.model_validate({"protocol": configured, "port": 1884})
    counters = Counters()
    fallback = ProtocolFallback(cfg, counters)
    with caplog.at_level(logging.WARNING, logger="edge_agent.publish.fallback"):
        _play(fallback, _Conn(cfg), steps)
    assert fallback.protocol == protocol
    assert counters.get(COUNTER) == switches
    said = [r.getMessage() for r in caplog.records if "does not speak MQTT 5" in r.getMessage()]
    assert len(said) == switches
    assert all("127.0.0.1:1884" in line and "MQTT 3.1.1" in line for line in said)


# -- delivery through each broker setup ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One broker setup and what the agent must show on it."""

    setup: str
    fallbacks: int  # mqtt.protocol_fallback expected (MQTT 3.1.1-only brokers: 1)
    agent_sees_restart: bool  # the restarted broker is the agent's own


CASES = [Case("nats", 1, True), Case("rabbitmq", 1, True), Case("bridge", 0, False)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first CLIP_FRAMES frames of the shared video, at its frame rate."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    cap = cv2.VideoCapture(str(VIDEO))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer: Any = None
    for _ in range(CLIP_FRAMES):
        ok, frame = cap.read()
        assert ok, "the shared video is shorter than the clip"
        if writer is None:
            size = (frame.shape[1], frame.shape[0])
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
        writer.write(frame)
    writer.release()
    cap.release()
    return path


def retained(port: int, topic: str, timeout: float = 5.0) -> bytes | None:
    """The retained message on `topic`, as a new subscriber receives it (None: none)."""
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, msg: got.put(bytes(msg.payload)) if msg.retain else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return got.get(timeout=timeout)
    except queue.Empty:
        return None
    finally:
        client.disconnect()
        client.loop_stop()


def wait_retained(port: int, topic: str, want: bytes, timeout: float) -> bytes | None:
    """Poll the retained message until it is `want`; the last one seen."""
    deadline = time.monotonic() + timeout
    seen = retained(port, topic)
    while seen != want and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = retained(port, topic)
    return seen


def agent_config(setup: Setup, device: str, clip: Path, loop: bool) -> dict[str, Any]:
    """The clip replayed at its own speed, a message for every frame, MQTT 5 as default."""
    source = {"type": "video", "path": str(clip), "realtime": True, "loop": loop}
    cfg = base_config(
        setup.agent_port, SSD, SSD_LABELS, {"clip": {"source": source, "publish_empty": True}}
    )
    cfg["device_id"] = device
    return cfg


def _finished(sub: Subscriber) -> bool:
    """The final stats and then `offline` arrived."""
    statuses = sub.on("/status")
    return bool(sub.on("/stats")) and bool(statuses) and statuses[-1].payload == b"offline"


def stream_across_restart(setup: Setup, case: Case, clip: Path, tmp: Path) -> dict[str, Any]:
    """Replay the clip, restart the target broker mid-stream; what the subscriber got."""
    device = f"brokers-{case.setup}"
    status = f"edge/{device}/status"
    sub = Subscriber(setup.subscriber_port, f"edge/{device}/#", client_id=f"{device}-watcher")
    sub.client.reconnect_delay_set(1, 1)  # back soon after the broker restarts
    agent = AgentProcess(write_config(tmp, agent_config(setup, device, clip, loop=False)))
    try:
        assert sub.wait_for(lambda s: len(s.on("/detections")) >= FIRST, 120), agent.output
        online = retained(setup.subscriber_port, status)
        down_at = time.time()
        setup.stop_target()
        time.sleep(DOWN)
        assert agent.proc.poll() is None, agent.output
        restart = setup.start_target()
        up_at = time.time()
        assert agent.wait(300) == 0, agent.output
        assert sub.wait_for(_finished, 60), agent.output
        offline = retained(setup.subscriber_port, status)
    finally:
        agent.kill()
        sub.close()
    return {
        "detections": [m.json() for m in sub.on("/detections")],
        "counters": sub.on("/stats")[-1].json()["counters"],
        "output": agent.output,
        "online": online,
        "offline": offline,
        "down": (down_at, up_at),
        "restart": restart,
    }


def last_will(setup: Setup, case: Case, clip: Path, tmp: Path) -> tuple[bytes | None, ...]:
    """Retained status while a looping agent runs, then after `kill -9` of it."""
    device = f"brokers-{case.setup}-will"
    status = f"edge/{device}/status"
    cfg = agent_config(setup, device, clip, loop=True)
    agent = AgentProcess(write_config(tmp, cfg, "will.yaml"))
    try:
        assert agent.wait_for_line("connected to broker", 120), agent.output
        online = wait_retained(setup.subscriber_port, status, b"online", 30)
        agent.proc.kill()
        agent.proc.wait(10)
        return online, wait_retained(setup.subscriber_port, status, b"offline", 30)
    finally:
        agent.kill()


def check_delivery(run: dict[str, Any], case: Case) -> int:
    """Every frame's message arrived, in frame order, once by id; returns the re-sends."""
    detections, counters = run["detections"], run["counters"]
    by_id = {d["id"]: d["frame"] for d in detections}
    frames = [d["frame"] for d in detections]
    firsts = list(dict.fromkeys(frames))
    assert len(firsts) == len(by_id), "two messages with different ids for one frame"
    assert firsts == sorted(firsts), "out of frame order"
    skipped = counters.get("frames.skipped.clip", 0)  # live replay: frames dropped when behind
    assert counters["frames.processed.clip"] + skipped == CLIP_FRAMES, counters
    if not skipped:
        assert firsts == list(range(CLIP_FRAMES))
    assert len(by_id) == counters["frames.processed.clip"], "a processed frame was lost"
    assert counters["mqtt.queued.detections"] == counters["mqtt.delivered.detections"]
    assert counters["mqtt.delivered.detections"] == len(by_id)
    down_at, up_at = run["down"]
    assert any(down_at < d["ts"] < up_at for d in detections), "nothing produced while down"
    return len(detections) - len(by_id)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.setup for c in CASES])
def test_delivery_across_broker_restart(case: Case, clip: Path, tmp: Path) -> None:
    setup = SETUPS[case.setup]()
    began = time.monotonic()
    try:
        started = setup.start()
        run = stream_across_restart(setup, case, clip, tmp)
        resent = check_delivery(run, case)
        assert (run["online"], run["offline"]) == (b"online", b"offline")
        assert run["counters"].get(COUNTER, 0) == case.fallbacks
        assert sum("does not speak MQTT 5" in line for line in run["output"].splitlines()) == (
            case.fallbacks
        )
        assert ("connection to broker lost" in run["output"]) == case.agent_sees_restart
        assert "Traceback" not in run["output"]
        will = last_will(setup, case, clip, tmp)
        assert will == (b"online", b"offline")
    finally:
        setup.close()
    print(
        f"\n[{case.setup}] start {started:.1f}s, restart {run['restart']:.1f}s, "
        f"{len(run['detections'])} detections messages ({resent} re-sent, deduplicated by id), "
        f"skipped frames {run['counters'].get('frames.skipped.clip', 0)}, "
        f"test {time.monotonic() - began:.1f}s"
    )
