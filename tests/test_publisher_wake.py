"""The publisher thread sleeps while it has nothing to do and wakes the moment a producer stages
a message: real mosquitto, an in-process MqttPublisher. The idle wait is stretched to 30 s in
the wake tests, so a message that arrives in seconds can only have been sent by a wake-up."""

from __future__ import annotations

import json
import select
import threading
import time
from typing import Any

import pytest

from edge_agent.config.schema import MqttConfig, OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish import mqtt as mqtt_module
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.netloop import Waker
from edge_agent.publish.outbox import MemoryStore, Outbox
from edge_agent.publish.payloads import OutMessage, new_id
from tests.helpers import Broker, Subscriber, wait_until


def _publisher(port: int, device: str) -> tuple[MqttPublisher, Counters]:
    counters = Counters()
    cfg = MqttConfig(host="127.0.0.1", port=port, reconnect_min_delay=0.2, reconnect_max_delay=1)
    outbox = Outbox(MemoryStore(), OutboxConfig(), counters)
    return MqttPublisher(cfg, device, counters, outbox), counters


def _msg(device: str, i: int) -> OutMessage:
    body = json.dumps({"i": i}).encode()
    return OutMessage(new_id(), f"edge/{device}/cam/detections", body, "detections", 1)


def _counting_turns(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Patch the publisher's network wait to record each call's timeout."""
    calls: list[float] = []
    real = mqtt_module.network_turn

    def counted(client: Any, waker: Waker, timeout: float) -> Any:
        calls.append(timeout)
        return real(client, waker, timeout)

    monkeypatch.setattr(mqtt_module, "network_turn", counted)
    return calls


def test_idle_publisher_sleeps(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_turns(monkeypatch)
    pub, _ = _publisher(broker.port, "wake-idle")
    pub.start()
    try:
        assert wait_until(lambda: pub.connected and not pub.undelivered(), 10)
        time.sleep(0.5)  # the `online` status acknowledged and its deletion flushed
        before = len(calls)
        time.sleep(3.0)
        turns = len(calls) - before
        # 1 s idle waits: about 3 turns (a fixed 20 ms poll made 150).
        assert turns <= 6, calls[before:]
    finally:
        pub.close()


@pytest.mark.parametrize("producers", [1, 4])
def test_submit_wakes_a_sleeping_publisher(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, producers: int
) -> None:
    monkeypatch.setattr(mqtt_module, "IDLE_WAIT", 30.0)
    device = f"wake-{producers}"
    sub = Subscriber(broker.port, f"edge/{device}/cam/#")
    pub, counters = _publisher(broker.port, device)
    pub.start()
    per_thread = 50
    try:
        assert wait_until(lambda: pub.connected and not pub.undelivered(), 10)
        time.sleep(0.5)  # asleep now, for up to 30 s
        start = time.monotonic()
        pub.submit(_msg(device, -1))
        assert sub.wait_for(lambda s: len(s.messages) >= 1, 10)
        assert time.monotonic() - start < 10  # not the 30 s idle wait: woken

        def produce(base: int) -> None:
            for i in range(per_thread):
                pub.submit(_msg(device, base + i))
                if i % 10 == 0:
                    time.sleep(0.05)  # let the publisher fall asleep between bursts

        threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        total = 1 + producers * per_thread
        # Every message arrives long before one idle wait ends: no wake-up was lost.
        assert sub.wait_for(lambda s: len(s.messages) >= total, 10), len(sub.messages)
        # ... and every acknowledgement is taken, without an idle wait either.
        delivered = lambda: counters.get("mqtt.delivered.detections")  # noqa: E731
        assert wait_until(lambda: delivered() == total, 10), delivered()
    finally:
        pub.close()
        sub.close()


def test_close_wakes_a_sleeping_publisher(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_module, "IDLE_WAIT", 30.0)
    sub = Subscriber(broker.port, "edge/wake-close/status")
    pub, _ = _publisher(broker.port, "wake-close")
    pub.start()
    try:
        assert wait_until(lambda: pub.connected and not pub.undelivered(), 10)
        assert sub.wait_for(lambda s: b"online" in [m.payload for m in s.messages], 10)
        time.sleep(0.5)
        start = time.monotonic()
        pub.close()
        assert time.monotonic() - start < 10  # not the 30 s idle wait
        assert sub.wait_for(lambda s: s.messages[-1].payload == b"offline", 10)
    finally:
        sub.close()


def test_waker_only_writes_to_a_sleeper() -> None:
    waker = Waker()
    try:
        waker.wake()  # not sleeping: nothing written
        waker.sleeping = True
        for _ in range(100_000):  # far more than the socket buffer holds: never blocks
            waker.wake()
        waker.drain()
        waker.sleeping = False
        waker.wake()
        readable, _, _ = select.select([waker], [], [], 0)
        assert readable == []
    finally:
        waker.close()


def test_message_staged_while_busy_is_not_left_for_the_idle_wait(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message staged while the publisher is between waits (no wake-up is written) and
    committed by the next turn must still go out in that turn, not after the idle wait. The
    turns run on the test's thread, so the message lands exactly in that window."""
    monkeypatch.setattr(mqtt_module, "IDLE_WAIT", 0.05)
    sub = Subscriber(broker.port, "edge/wake-busy/cam/#")
    pub, _ = _publisher(broker.port, "wake-busy")
    try:
        assert wait_until(lambda: (pub._turn(), pub.connected)[1], 10)  # connect, on this thread
        for _ in range(10):
            pub._turn()  # the status message out and acknowledged
        monkeypatch.setattr(mqtt_module, "IDLE_WAIT", 30.0)
        pub.submit(_msg("wake-busy", 1))  # the publisher is not sleeping: no wake-up byte
        start = time.monotonic()
        pub._turn()
        assert time.monotonic() - start < 5  # not the 30 s idle wait
        assert sub.wait_for(lambda s: len(s.messages) == 1, 10)
    finally:
        pub._stop.set()
        pub.close()
        sub.close()
