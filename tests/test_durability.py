"""Issue acceptance: nothing is lost across broker restarts, long outages and a killed agent.

Every test starts its own mosquitto. Subscribers use persistent sessions on brokers with
persistence, so they miss nothing while a broker is down: what they receive is what the agent
delivered.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    IMAGES,
    SSD,
    SSD_LABELS,
    VIDEO,
    AgentProcess,
    Broker,
    Subscriber,
    TcpProxy,
    base_config,
    write_config,
)

MAX_INFLIGHT = 20

# A whole replay of the person clip with SSD: about a minute on a Pi-class CPU. The limit only
# catches a hang; it is no speed assertion.
RUN_LIMIT = 300


def _video_config(port: int, device: str, **source: Any) -> dict[str, Any]:
    cfg = base_config(
        port,
        SSD,
        SSD_LABELS,
        {
            "lobby": {
                "source": {"type": "video", "path": str(VIDEO), **source},
                "publish_empty": True,
            },
        },
    )
    cfg["device_id"] = device
    cfg["mqtt"]["max_inflight"] = MAX_INFLIGHT
    return cfg


def _detections(sub: Subscriber, device: str) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on(f"{device}/lobby/detections")]


def _check_order_and_duplicates(bodies: list[dict[str, Any]], outages: int) -> list[int]:
    """In order per camera; a duplicate re-uses its id and stays within the in-flight window."""
    frames = [b["frame"] for b in bodies]
    ids_by_frame: dict[int, set[str]] = {}
    for b in bodies:
        ids_by_frame.setdefault(b["frame"], set()).add(b["id"])
    assert all(len(ids) == 1 for ids in ids_by_frame.values()), "a re-send changed its id"
    first_seen = list(dict.fromkeys(frames))
    assert first_seen == sorted(first_seen), "frames arrived out of order"
    duplicates = sum(n - 1 for n in Counter(frames).values())
    # At most one window re-sent by the agent and one by the broker per outage.
    assert duplicates <= 2 * MAX_INFLIGHT * outages, duplicates
    return first_seen


def test_broker_restart_mid_stream(tmp: Path) -> None:
    broker = Broker(persistent=True).start()
    sub = Subscriber(broker.port, "edge/restart-1/#", client_id="restart-1-sub")
    agent = AgentProcess(write_config(tmp, _video_config(broker.port, "restart-1")))
    try:
        assert sub.wait_for(lambda s: len(_detections(s, "restart-1")) > 150, 60)
        broker.stop()
        time.sleep(2)
        broker.start()
        assert agent.wait(RUN_LIMIT) == 0, agent.output[-2000:]
        assert "connection to broker lost" in agent.output
        assert sub.wait_for(
            lambda s: len({b["frame"] for b in _detections(s, "restart-1")}) >= 1394, 30
        )
        frames = _check_order_and_duplicates(_detections(sub, "restart-1"), outages=1)
        assert frames == list(range(1394))
    finally:
        agent.kill()
        sub.close()
        broker.stop()


def test_sixty_second_outage_while_replaying(tmp: Path) -> None:
    broker = Broker(persistent=True).start()
    sub = Subscriber(broker.port, "edge/outage-1/#", client_id="outage-1-sub")
    cfg = _video_config(broker.port, "outage-1", realtime=True)
    cfg["runtime"] = {"shutdown_timeout": 30}
    agent = AgentProcess(write_config(tmp, cfg))
    try:
        assert sub.wait_for(lambda s: len(_detections(s, "outage-1")) > 50, 30)
        broker.stop()
        time.sleep(60)  # the replay runs on at 10 fps: ~600 frames while the broker is away
        assert agent.proc.poll() is None
        broker.start()
        time.sleep(8)
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, agent.output[-2000:]
        counters = _final_counters(agent.output)
        processed = counters["frames.processed.lobby"]
        assert processed > 650
        assert sub.wait_for(
            lambda s: len({b["frame"] for b in _detections(s, "outage-1")}) >= processed, 30
        )
        frames = _check_order_and_duplicates(_detections(sub, "outage-1"), outages=1)
        assert len(frames) == processed
        assert (
            counters.get("frames.skipped.lobby", 0) + processed == counters["frames.captured.lobby"]
        )
        assert not any(k.startswith("outbox.dropped") for k in counters)
    finally:
        agent.kill()
        sub.close()
        broker.stop()


def _final_counters(output: str) -> dict[str, int]:
    match = re.findall(r"stopped; counters (\{.*\})", output)
    assert match, output[-2000:]
    import ast

    parsed: dict[str, int] = ast.literal_eval(match[-1])
    return parsed


def test_kill9_loses_nothing_committed(broker: Broker, tmp: Path) -> None:
    proxy = TcpProxy(broker.port)  # down: everything piles up in the outbox
    cfg = _video_config(proxy.port, "kill-1")
    path = write_config(tmp, cfg)
    first = AgentProcess(path, "--log-level", "debug")
    try:
        assert first.wait_for_line(", detections)", 60, times=400)
        first.proc.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    # Every committed detection (camera state messages are committed too, on another topic).
    committed = set(
        re.findall(r"committed ([0-9a-f]{32}) to outbox \(seq \d+, detections\)", first.output)
    )
    assert len(committed) >= 400
    sub = Subscriber(broker.port, "edge/kill-1/#")
    proxy.up()
    second = AgentProcess(path, "--log-level", "debug")
    try:
        assert second.wait(RUN_LIMIT) == 0, second.output[-2000:]
        assert re.search(r"outbox holds \d+ messages .* from a previous run", second.output)
        received = {m.json()["id"] for m in sub.on("kill-1/lobby/detections")}
        sub.wait_for(
            lambda s: committed <= {m.json()["id"] for m in s.on("kill-1/lobby/detections")}, 20
        )
        received = {m.json()["id"] for m in sub.on("kill-1/lobby/detections")}
        assert committed - received == set()
        # Replayed first, with the original capture timestamps.
        bodies = [m.json() for m in sub.on("kill-1/lobby/detections")]
        old = [b for b in bodies if b["id"] in committed]
        assert [b["frame"] for b in old] == sorted(b["frame"] for b in old)
        assert bodies[0]["id"] in committed
    finally:
        second.kill()
        sub.close()
        proxy.down()


def test_outage_longer_than_the_outbox(broker: Broker, tmp: Path) -> None:
    proxy = TcpProxy(broker.port)
    cfg = _video_config(proxy.port, "full-1")
    cfg["cameras"]["lobby"]["detect"] = {"min_score": 0.3}
    cfg["cameras"]["lobby"]["samples"] = {
        "enabled": True,
        "min_score": 0.3,
        "max_score": 0.6,
        "max_per_minute": 10000,
        "max_side": 1280,
        "jpeg_quality": 95,
    }
    cfg["outbox"]["max_bytes"] = "3MB"
    agent = AgentProcess(write_config(tmp, cfg))
    sub = Subscriber(broker.port, "edge/full-1/#")
    try:
        assert agent.wait_for_line("outbox full", 60)
        rss_early = agent.rss_kib()
        assert agent.wait_for_line("all cameras finished", RUN_LIMIT)
        rss_late = agent.rss_kib()
        proxy.up()
        assert agent.wait(RUN_LIMIT) == 0, agent.output[-2000:]
        counters = _final_counters(agent.output)
        dropped_samples = counters.get("outbox.dropped.samples", 0)
        published = counters["samples.published.lobby"]
        assert dropped_samples > 0 and published > dropped_samples
        assert counters.get("outbox.dropped.detections", 0) == 0  # detections go last
        sub.wait_for(lambda s: len(s.on("full-1/stats")) >= 1, 20)
        samples = sub.on("full-1/lobby/samples")
        payload_bytes = sum(len(m.payload) for m in samples)
        assert len(samples) == published - dropped_samples
        assert payload_bytes <= 3_000_000
        assert len({m.json()["frame"] for m in sub.on("full-1/lobby/detections")}) == 1394
        reported = sub.on("full-1/stats")[-1].json()["counters"]
        assert reported["outbox.dropped.samples"] > 0  # the drop is reported over MQTT
        growth_mib = (rss_late - rss_early) / 1024
        print(
            f"\nRSS early {rss_early / 1024:.1f} MiB, late {rss_late / 1024:.1f} MiB, "
            f"growth {growth_mib:.1f} MiB; samples published {published}, "
            f"dropped {dropped_samples}"
        )
        assert growth_mib < 20, "memory grew with the backlog"
    finally:
        agent.kill()
        sub.close()
        proxy.down()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_protocol_versions(broker: Broker, tmp: Path, protocol: str) -> None:
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {"stills": {"source": {"type": "images", "path": str(IMAGES)}, "publish_empty": True}},
    )
    cfg["device_id"] = f"proto-{protocol.replace('.', '')}"
    cfg["mqtt"]["protocol"] = protocol
    cfg["mqtt"]["message_expiry"] = "1h"
    sub = Subscriber(broker.port, f"edge/{cfg['device_id']}/#")
    agent = AgentProcess(write_config(tmp, cfg))
    try:
        assert agent.wait(60) == 0, agent.output[-2000:]
        assert f"(MQTT {protocol})" in agent.output
        sub.wait_for(lambda s: len(s.on("stills/detections")) >= 5, 10)
        assert len(s_frames := {m.json()["frame"] for m in sub.on("stills/detections")}) == 5, (
            s_frames
        )
    finally:
        agent.kill()
        sub.close()
