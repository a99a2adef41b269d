"""Messages/s through edge-agent's outbox + publisher vs direct paho publishing, one run.

.venv/bin/python bench/outbox_throughput.py [--messages 5000] [--size 400]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _broker import start_broker

from edge_agent.config.schema import MqttConfig, OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.outbox import MemoryStore, Outbox, SqliteStore
from edge_agent.publish.payloads import OutMessage

INFLIGHT = 20


def _messages(n: int, size: int) -> list[OutMessage]:
    body = b"x" * size
    return [
        OutMessage(f"{i:032x}", "bench/dev/cam/detections", body, "detections") for i in range(n)
    ]


def direct(port: int, msgs: list[OutMessage]) -> float:
    """Seconds to publish all messages at QoS 1 with paho and receive every PUBACK."""
    done = threading.Event()
    acked = [0]

    def on_publish(*_: object) -> None:
        acked[0] += 1
        if acked[0] == len(msgs):
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.3)
    start = time.perf_counter()
    for m in msgs:
        client.publish(m.topic, m.payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return elapsed


def through_agent(port: int, msgs: list[OutMessage], disk: bool) -> float:
    """Seconds from the first submit to the outbox being empty (every message acknowledged)."""
    counters = Counters()
    folder = Path(tempfile.mkdtemp())
    cfg = OutboxConfig(path=folder / "o.db")
    store = SqliteStore(folder / "o.db", "normal") if disk else MemoryStore()
    publisher = MqttPublisher(
        MqttConfig(port=port, max_inflight=INFLIGHT),
        "bench",
        counters,
        Outbox(store, cfg, counters),
    )
    publisher.start()
    while not publisher.connected:
        time.sleep(0.01)
    start = time.perf_counter()
    for m in msgs:
        publisher.submit(m)
    publisher.wait_delivered(120)
    elapsed = time.perf_counter() - start
    publisher.close()
    return elapsed


def main() -> int:
    """Run each variant three times (alternating) and report the best of each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=400, help="payload bytes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    proc, port = start_broker()
    msgs = _messages(args.messages, args.size)
    times: dict[str, list[float]] = {"paho": [], "outbox_sqlite": [], "outbox_memory": []}
    try:
        for _ in range(args.rounds):
            times["paho"].append(direct(port, msgs))
            times["outbox_sqlite"].append(through_agent(port, msgs, disk=True))
            times["outbox_memory"].append(through_agent(port, msgs, disk=False))
    finally:
        proc.terminate()
    best = {k: min(v) for k, v in times.items()}
    rate = {k: args.messages / v for k, v in best.items()}
    report = {
        "messages": args.messages,
        "payload_bytes": args.size,
        "inflight": INFLIGHT,
        "msgs_per_s": {k: round(v) for k, v in rate.items()},
        "outbox_sqlite_cost": round(1 - rate["outbox_sqlite"] / rate["paho"], 3),
        "outbox_memory_cost": round(1 - rate["outbox_memory"] / rate["paho"], 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
