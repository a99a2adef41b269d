"""The MQTT publisher under faults that only show in-process: the broker's Receive Maximum, a
link that dies silently after each CONNACK, a suspect that leaves the outbox another way, a
connect that blocks while producers keep producing, a CA file that disappears. Real mosquitto,
real sockets; no agent process."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.schema import MqttConfig, OutboxConfig, TlsConfig
from edge_agent.health import Counters
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.outbox import MemoryStore, Outbox
from edge_agent.publish.payloads import OutMessage, new_id
from tests.helpers import Broker, Subscriber


def _publisher(port: int, **mqtt: Any) -> tuple[MqttPublisher, Counters]:
    counters = Counters()
    cfg = MqttConfig(
        host="127.0.0.1", port=port, reconnect_min_delay=0.2, reconnect_max_delay=1, **mqtt
    )
    return MqttPublisher(cfg, "dev", counters, Outbox(MemoryStore(), OutboxConfig(), counters)), (
        counters
    )


def _msg(i: int, qos: int = 1, kind: str = "detections") -> OutMessage:
    body = json.dumps({"i": i, "pad": "x" * 50}).encode()
    return OutMessage(new_id(), f"edge/dev/cam/{kind}", body, kind, qos)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on a free port, closed after the test."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


@pytest.mark.parametrize(
    ("broker_conf", "qos", "max_inflight"),
    [
        ("max_inflight_messages 5\n", 2, 20),  # the broker's Receive Maximum is below ours
        ("", 2, 50),  # mosquitto's default (20) is below ours
        ("max_inflight_messages 3\n", 1, 40),
    ],
)
def test_broker_receive_maximum_is_honoured(broker_conf: str, qos: int, max_inflight: int) -> None:
    broker = Broker(extra_conf=broker_conf).start()
    sub = Subscriber(broker.port, "edge/dev/cam/#")
    pub, counters = _publisher(broker.port, qos=qos, max_inflight=max_inflight)
    try:
        for i in range(200):
            pub.submit(_msg(i, qos))
        pub.start()
        assert pub.wait_delivered(60), counters.snapshot()
        assert sub.wait_for(lambda s: len(s.messages) >= 200, 10)
        order = [json.loads(m.payload)["i"] for m in sub.messages]
        assert list(dict.fromkeys(order)) == list(range(200))
        assert counters.get("mqtt.delivered.detections") == 200, counters.snapshot()
        assert counters.get("outbox.quarantined.detections") == 0
    finally:
        pub.close()
        sub.close()
        broker.stop()


def test_silent_link_is_not_poison(listener: socket.socket) -> None:
    """Each connection gets its CONNACK, then the link goes silent (a flaky LTE/Wi-Fi link):
    the keepalive timeouts must not quarantine the healthy message in flight."""
    broker = Broker().start()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            data = src.recv(65536)  # CONNECT one way, CONNACK the other; then nothing
            dst.sendall(data)
            while src.recv(65536):
                pass
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", broker.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    pub, counters = _publisher(listener.getsockname()[1], keepalive=5, quarantine_after=2)
    try:
        pub.submit(_msg(1))
        pub.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and counters.get("mqtt.connects") < 3:
            time.sleep(0.5)
        time.sleep(1)
        assert counters.get("mqtt.connects") >= 3, counters.snapshot()  # two silent deaths
        assert counters.get("mqtt.poison.detections") == 0, counters.snapshot()
        assert len(pub.outbox) == 1 and pub.outbox.dead_letter_count() == 0
    finally:
        pub.close(timeout=1)
        broker.stop()


def test_probing_ends_when_the_suspect_leaves_the_outbox() -> None:
    broker = Broker().start()
    pub, counters = _publisher(broker.port)
    try:
        for i in range(3):
            pub.submit(_msg(i, kind="samples"))
        suspect = pub.outbox.fetch(0, 1)[0]
        pub.guard.sent(suspect)
        pub.guard.strike(suspect, 0x95)  # the broker said "packet too large" once
        assert pub.guard.probing
        pub.outbox.expire(now=time.time() + 10**7)  # ...then it aged out while offline
        for i in range(100):
            pub.submit(_msg(i))
        pub.start()
        assert pub.wait_delivered(30)
        assert not pub.guard.probing
        assert counters.get("mqtt.delivered.detections") == 100
    finally:
        pub.close()
        broker.stop()


def test_blocked_connect_does_not_hold_back_commits(listener: socket.socket) -> None:
    """A TLS endpoint that accepts and never answers: the connect blocks for seconds, and what
    producers submit meanwhile is committed within milliseconds all the same."""
    held: list[Any] = []

    def hold() -> None:
        # Ends quietly when the fixture closes the listener at teardown.
        with contextlib.suppress(OSError):
            for _ in range(50):
                held.append(listener.accept())

    threading.Thread(target=hold, daemon=True).start()
    pub, _ = _publisher(listener.getsockname()[1], tls=TlsConfig(enabled=True, insecure=True))
    try:
        pub.start()
        worst = 0
        end = time.monotonic() + 6
        while time.monotonic() < end:
            pub.submit(_msg(0))
            time.sleep(0.1)
            worst = max(worst, len(pub.outbox._staged))
        assert worst <= 2, worst  # at most ~0.2 s of production waits for its commit
    finally:
        pub.close(timeout=1)


def test_ca_file_gone_at_runtime_is_retried_with_backoff(
    tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = tmp / "ca.crt"
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", ca)
    pub, counters = _publisher(1, tls=TlsConfig(enabled=True, ca_file=ca))  # loads at start
    ca.unlink()  # e.g. a certificate bundle being rotated
    try:
        pub.start()
        time.sleep(5)
        assert counters.get("mqtt.loop_errors") == 0, counters.snapshot()
        assert 1 <= counters.get("mqtt.connect_failures") <= 30, counters.snapshot()
        said = [r for r in caplog.records if "cannot prepare the connection" in r.getMessage()]
        assert len(said) == 1 and not said[0].exc_info  # one line, no traceback flood
    finally:
        pub.close(timeout=1)
