"""Acceptance: a broker away at start or going away loses nothing; signals stop cleanly."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.helpers import (
    IMAGES,
    SSD,
    SSD_LABELS,
    VIDEO,
    Broker,
    Subscriber,
    TcpProxy,
    base_config,
    start_agent,
    write_config,
)

N_IMAGES = len([p for p in IMAGES.iterdir() if p.is_file()])


def _frames(sub: Subscriber, device: str, camera: str) -> list[int]:
    return [m.json()["frame"] for m in sub.on(f"{device}/{camera}/detections")]


def test_broker_down_at_start_then_delivers(broker: Broker, tmp: Path) -> None:
    proxy = TcpProxy(broker.port)  # not listening yet: connection refused, like a dead broker
    sub = Subscriber(broker.port, "edge/down-1/#")
    cfg = base_config(
        proxy.port,
        SSD,
        SSD_LABELS,
        {
            "stills": {"source": {"type": "images", "path": str(IMAGES)}, "publish_empty": True},
        },
    )
    cfg["device_id"] = "down-1"
    agent = start_agent(write_config(tmp, cfg))
    try:
        time.sleep(6)  # several reconnect attempts with backoff
        assert agent.poll() is None, "agent exited while the broker was down"
        assert sub.on("detections") == []
        proxy.up()
        assert agent.wait(60) == 0
        sub.wait_for(lambda s: len(_frames(s, "down-1", "stills")) >= N_IMAGES, 10)
        assert sorted(_frames(sub, "down-1", "stills")) == list(range(N_IMAGES))
        output = agent.stdout.read() if agent.stdout else ""
        assert "Traceback" not in output
        assert output.count("connected to broker") == 1
    finally:
        agent.kill()
        proxy.down()
        sub.close()


def test_real_broker_absent_at_start_then_started(tmp: Path) -> None:
    """The literal case: no broker process at all on the port, then mosquitto starts."""
    broker = Broker(persistent=True).start()
    sub = Subscriber(broker.port, "edge/down-2/#", client_id="down-2-watcher")
    sub.close()
    broker.stop()  # the subscriber's session (and subscription) is saved to disk
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "stills": {"source": {"type": "images", "path": str(IMAGES)}, "publish_empty": True},
        },
    )
    cfg["device_id"] = "down-2"
    agent = start_agent(write_config(tmp, cfg))
    sub = None
    try:
        time.sleep(5)
        assert agent.poll() is None, "agent exited while the broker was down"
        broker.start()
        assert agent.wait(60) == 0
        sub = Subscriber(broker.port, "edge/down-2/#", client_id="down-2-watcher")
        sub.wait_for(lambda s: len(_frames(s, "down-2", "stills")) >= N_IMAGES, 10)
        assert sorted(_frames(sub, "down-2", "stills")) == list(range(N_IMAGES))
    finally:
        agent.kill()
        if sub is not None:
            sub.close()
        broker.stop()


def test_connection_cut_mid_stream_loses_nothing(broker: Broker, tmp: Path) -> None:
    proxy = TcpProxy(broker.port).up()
    sub = Subscriber(broker.port, "edge/cut-1/#")
    cfg = base_config(
        proxy.port,
        SSD,
        SSD_LABELS,
        {
            "lobby": {"source": {"type": "video", "path": str(VIDEO)}, "publish_empty": True},
        },
    )
    cfg["device_id"] = "cut-1"
    agent = start_agent(write_config(tmp, cfg))
    try:
        assert sub.wait_for(lambda s: len(_frames(s, "cut-1", "lobby")) > 100, 60)
        proxy.down()
        time.sleep(3)
        proxy.up()
        assert agent.wait(300) == 0
        output = agent.stdout.read() if agent.stdout else ""
        assert "connection to broker lost" in output  # the cut really happened
        sub.wait_for(lambda s: len(set(_frames(s, "cut-1", "lobby"))) >= 1394, 20)
        frames = _frames(sub, "cut-1", "lobby")
        assert sorted(set(frames)) == list(range(1394))
        # In order per camera, apart from re-sends of what was in flight when the link broke.
        firsts = list(dict.fromkeys(frames))
        assert firsts == sorted(firsts)
    finally:
        agent.kill()
        proxy.down()
        sub.close()


def test_sigterm_stops_cleanly(broker: Broker, tmp: Path) -> None:
    sub = Subscriber(broker.port, "edge/term-1/#")
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "lobby": {
                "source": {"type": "video", "path": str(VIDEO), "realtime": True, "loop": True},
                "publish_empty": True,
            },
        },
    )
    cfg["device_id"] = "term-1"
    agent = start_agent(write_config(tmp, cfg))
    try:
        assert sub.wait_for(lambda s: len(_frames(s, "term-1", "lobby")) >= 5, 30)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
        output = agent.stdout.read() if agent.stdout else ""
        assert "Traceback" not in output
        sub.wait_for(lambda s: any(m.payload == b"offline" for m in s.on("term-1/status")), 5)
        statuses = [m.payload for m in sub.on("term-1/status")]
        assert statuses[-1] == b"offline" and b"online" in statuses
        stats = sub.on("term-1/stats")
        assert stats, "final stats message missing"
        counters = stats[-1].json()["counters"]
        processed = counters["frames.processed.lobby"]
        # Everything captured was processed and every processed frame was published.
        assert processed == counters["frames.captured.lobby"] - counters.get(
            "frames.skipped.lobby", 0
        )
        assert len(_frames(sub, "term-1", "lobby")) == processed
    finally:
        agent.kill()
        sub.close()
