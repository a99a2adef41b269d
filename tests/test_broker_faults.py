"""Issue acceptance (broker limits, refusals, poison messages, a duplicate client id): a
private mosquitto configured with each fault; the agent replays the shared images through the
real CLI. Nothing accepted into the outbox is lost or stuck behind another message, every
refusal and quarantine is counted by reason, the status does not flap."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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

N_IMAGES = len([p for p in IMAGES.iterdir() if p.is_file()])
SAMPLES = {"enabled": True, "min_score": 0.05, "max_score": 0.99, "max_per_minute": 100}


def _config(port: int, device: str, **mqtt: Any) -> dict[str, Any]:
    cam = {
        "source": {"type": "images", "path": str(IMAGES)},
        "publish_empty": True,
        "samples": {**SAMPLES, "max_side": 1280, "jpeg_quality": 95},
    }
    cfg = base_config(port, SSD, SSD_LABELS, {"lobby": cam})
    cfg["device_id"] = device
    cfg["mqtt"].update(mqtt)
    return cfg


def _final_stats(sub: Subscriber, device: str) -> dict[str, int]:
    stats = [m.json() for m in sub.on(f"{device}/stats")]
    assert stats, "no stats message"
    counters: dict[str, int] = stats[-1]["counters"]
    return counters


@dataclass
class LimitCase:
    """A broker size limit and how the agent learns it."""

    name: str
    broker_conf: str
    mqtt: dict[str, Any] = field(default_factory=dict)
    samples_arrive: bool = True  # re-encoded to fit (else quarantined as too large)
    max_connects: int = 1


LIMIT_CASES = [
    # MQTT 5: the broker announces its Maximum Packet Size in CONNACK.
    LimitCase("v5-announced", "max_packet_size 40000\n"),
    # MQTT 3.1.1 cannot announce it: the user states it.
    LimitCase(
        "v311-configured",
        "max_packet_size 40000\n",
        {"protocol": "3.1.1", "max_message_bytes": 40000},
    ),
    # So small that no sample fits even re-encoded: samples are quarantined, not sent.
    LimitCase("v5-tiny", "max_packet_size 1500\n", samples_arrive=False),
    # Nothing tells the agent: samples kill the connection until they are quarantined.
    LimitCase(
        "v311-unannounced-poison",
        "max_packet_size 40000\n",
        {"protocol": "3.1.1", "quarantine_after": 2},
        samples_arrive=False,
        max_connects=4 * N_IMAGES + 2,  # at most quarantine_after + 2 per poison message
    ),
]


@pytest.mark.parametrize("case", LIMIT_CASES, ids=lambda c: c.name)
def test_broker_size_limits(case: LimitCase, tmp: Path) -> None:
    broker = Broker(extra_conf=case.broker_conf).start()
    device = f"lim-{case.name}"
    sub = Subscriber(broker.port, f"edge/{device}/#")
    agent = AgentProcess(write_config(tmp, _config(broker.port, device, **case.mqtt)))
    try:
        assert agent.wait(240) == 0, agent.output[-3000:]
        assert sub.wait_for(lambda s: len(s.on(f"{device}/status")) >= 2, 10)
        bodies = [m.json() for m in sub.on(f"{device}/lobby/detections")]
        first = list(dict.fromkeys(b["frame"] for b in bodies))
        assert first == list(range(N_IMAGES)), first  # every detection, in order, none stuck
        # re-sends after a dropped connection are allowed, with the same id
        assert len({b["id"] for b in bodies}) == N_IMAGES
        if case.max_connects == 1:
            assert len(bodies) == N_IMAGES
        counters = _final_stats(sub, device)
        samples = [m.json() for m in sub.on(f"{device}/lobby/samples")]
        sampled = counters.get("samples.published.lobby", 0)
        assert sampled >= 3, counters
        if case.samples_arrive:
            assert len({s["id"] for s in samples}) == sampled
            assert counters.get("mqtt.resized.samples", 0) >= 1, counters
            assert all(len(m.payload) < 40000 for m in sub.on(f"{device}/lobby/samples"))
        else:
            assert samples == []
            assert counters.get("outbox.quarantined.samples", 0) == sampled, counters
        assert counters.get("mqtt.connects", 0) <= case.max_connects, counters
        statuses = [m.payload for m in sub.on(f"{device}/status")]
        if case.max_connects == 1:
            assert statuses == [b"online", b"offline"], statuses  # no flapping
        assert "Traceback" not in agent.output
    finally:
        agent.kill()
        sub.close()
        broker.stop()


@pytest.mark.parametrize("qos", [1, 2])
def test_broker_refusals_are_counted_not_delivered(qos: int, tmp: Path) -> None:
    """An ACL that denies the detections topic: MQTT 5 reason codes (PUBACK for QoS 1, PUBREC
    for QoS 2) are refusals, counted by kind and reason and logged once a minute at most."""
    device = f"acl-{qos}"
    broker = Broker()
    acl, pw = broker.dir / "acl", broker.dir / "passwd"  # readable by mosquitto's own user
    acl.write_text(
        f"user agent\ntopic write edge/{device}/status\ntopic write edge/{device}/stats\n"
        f"topic write edge/{device}/lobby/state\n\npattern read #\n"
    )
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "agent", "pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "reader", "pw"], check=True)
    for path in (acl, pw):
        path.chmod(0o644)
    conf = broker.conf.read_text().replace("allow_anonymous true\n", "")
    broker.conf.write_text(conf + f"allow_anonymous false\npassword_file {pw}\nacl_file {acl}\n")
    broker.start()
    sub = Subscriber(broker.port, f"edge/{device}/#", username="reader", password="pw")
    cfg = _config(broker.port, device, qos=qos, username="agent")
    cfg["cameras"]["lobby"]["samples"]["enabled"] = False
    agent = AgentProcess(write_config(tmp, cfg), env={"EDGE_AGENT_MQTT_PASSWORD": "pw"})
    try:
        assert agent.wait(300) == 0, agent.output[-3000:]
        assert sub.wait_for(lambda s: len(s.on(f"{device}/stats")) >= 1, 10)
        assert sub.on(f"{device}/lobby/detections") == []
        counters = _final_stats(sub, device)
        assert counters.get("mqtt.rejected.detections", 0) == N_IMAGES, counters
        assert counters.get("mqtt.rejected.detections.not_authorized", 0) == N_IMAGES
        assert counters.get("mqtt.delivered.detections", 0) == 0, counters
        assert counters.get("outbox.quarantined.detections", 0) == N_IMAGES, counters
        # rate-limited: the first refusal is logged, the rest are summarised
        lines = [x for x in agent.lines if "broker refused detections message" in x]
        assert len(lines) == 2, agent.output[-3000:]
        assert "4 more refused detections in the last minute" in lines[1]
    finally:
        agent.kill()
        sub.close()
        broker.stop()


def test_duplicate_client_id_is_detected_and_logged_once(tmp: Path) -> None:
    """Two agents with one device_id on one broker take the session from each other: each
    logs the cause once, counts it, and backs off instead of reconnecting at once."""
    broker = Broker().start()
    cam = {
        "source": {"type": "images", "path": str(IMAGES), "realtime": True, "loop": True},
        "publish_empty": True,
    }
    agents = []
    try:
        for i in range(2):
            cfg = base_config(broker.port, SSD, SSD_LABELS, {"lobby": cam})
            cfg["device_id"] = "twin"
            cfg["mqtt"]["reconnect_max_delay"] = 8
            cfg["outbox"]["path"] = str(tmp / f"outbox-{i}.db")
            agents.append(AgentProcess(write_config(tmp, cfg, f"twin-{i}.yaml")))
        time.sleep(25)
        for agent in agents:
            assert agent.proc.poll() is None, agent.output[-2000:]
            agent.proc.send_signal(signal.SIGTERM)
        for agent in agents:
            agent.wait(30)
        said = [a.count("client id 'edge-agent-twin'") for a in agents]
        assert sum(said) >= 1 and max(said) == 1, said  # noticed, and said once per agent
        connects = [a.count("connected to broker") for a in agents]
        print(f"\nconnects in 25 s by the two twins: {connects}")
        assert sum(connects) < 25, connects  # backing off, not 1.5 reconnects a second
    finally:
        for agent in agents:
            agent.kill()
        broker.stop()


def test_status_does_not_flap_on_unreachable_port(tmp: Path) -> None:
    """Sanity for the fault suite: an agent with no broker keeps capturing and exits 0 on
    SIGTERM with its messages kept for later."""
    cfg = _config(free_port(), "nobroker")
    cfg["runtime"] = {"shutdown_timeout": 1}
    agent = AgentProcess(write_config(tmp, cfg))
    try:
        assert agent.wait_for_line("retrying", 30)
        assert agent.wait_for_line("all cameras finished", 60), agent.output[-2000:]
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        assert agent.wait_for_line("stay in the outbox for the next run", 1)
    finally:
        agent.kill()
