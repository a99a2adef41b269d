"""MQTT delivery from the outbox: one thread owns the paho client, its socket and its state.

The thread connects (TLS and auth as configured), reconnects with exponential backoff and
jitter, runs paho's network loop, and feeds messages from the outbox into a bounded in-flight
window. paho callbacks run inside that loop and only put events on a queue. A message leaves
the outbox when the broker acknowledges it. Each connection gets a fresh paho client: after a
loss, what was in flight is fed again from the outbox, in order, so the publisher alone decides
what goes on the wire (the window, probing a suspected poison message, size limits).

This module is the thread and the public side; the connection, paho's events and the ack
bookkeeping are in edge_agent.publish.session.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from edge_agent.config.schema import MqttConfig
from edge_agent.health import Counters
from edge_agent.publish.client import Backoff, publish_properties, read_password
from edge_agent.publish.netloop import Waker, network_turn
from edge_agent.publish.outbox import Outbox
from edge_agent.publish.payloads import OutMessage
from edge_agent.publish.session import ACK_BATCH as ACK_BATCH  # moved; re-exported
from edge_agent.publish.session import ACK_DELAY, LOOP_TIMEOUT, BrokerSession
from edge_agent.publish.session import TRANSIENT_REFUSALS as TRANSIENT_REFUSALS

__all__ = ["Backoff", "MqttPublisher", "read_password"]

log = logging.getLogger(__name__)

EXPIRE_EVERY = 10.0  # seconds between outbox age checks
STABLE_AFTER = 10.0  # seconds a connection must last before the reconnect backoff resets
# Longest sleep of an idle, connected publisher: keepalive pings and housekeeping run at least
# this often; new messages, acknowledgements and commands wake it at once.
IDLE_WAIT = 1.0
# Messages wait until this long after the outbox's last commit, so a busy camera's messages
# are committed and sent in groups (one transaction for many); a message staged after a quiet
# spell goes out at once.
LINGER = 0.01


class MqttPublisher(BrokerSession):
    """Delivers everything put in the outbox; `submit()` is safe from any thread."""

    def __init__(self, cfg: MqttConfig, device_id: str, counters: Counters, outbox: Outbox) -> None:
        super().__init__(cfg, device_id, counters, outbox)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_expire = 0.0
        self._waker = Waker()

    def start(self) -> None:
        """Start the publisher thread (it connects in the background and keeps retrying)."""
        scheme = "mqtts" if self.cfg.tls.enabled else "mqtt"
        log.info(
            "publishing to %s://%s:%d as %s (MQTT %s)",
            scheme,
            self.cfg.host,
            self.cfg.port,
            self.client_id,
            self.cfg.protocol,
        )
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def submit(self, msg: OutMessage) -> None:
        """Store a message in the outbox for delivery (never blocks on the network).

        A sample larger than the broker accepts is re-encoded smaller here, on the producer's
        thread; whatever still does not fit is quarantined when its turn comes."""
        self.outbox.put(self.guard.fit(msg))
        self.counters.inc(f"mqtt.queued.{msg.kind}")
        self._waker.wake()

    def undelivered(self) -> int:
        """Messages in the outbox (queued or in flight)."""
        return len(self.outbox)

    def wait_delivered(self, timeout: float | None, stop: threading.Event | None = None) -> bool:
        """Block until the outbox is empty; False on timeout or `stop`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_log = time.monotonic()
        while self.undelivered():
            now = time.monotonic()
            if (stop is not None and stop.is_set()) or (deadline is not None and now >= deadline):
                return False
            if now - last_log >= 10:
                log.info("waiting for the broker: %d messages undelivered", self.undelivered())
                last_log = now
            self.outbox.wait_empty(0.2)
        return True

    def close(self, timeout: float = 3.0) -> None:
        """Publish `offline` (retained), disconnect, stop the thread, close the outbox."""
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout + 5)
            if self._thread.is_alive():
                log.warning("mqtt thread did not stop in time")
        left = self.undelivered()
        if left and not self.outbox.mode.startswith("memory"):
            log.warning("%d messages stay in the outbox for the next run", left)
        self.outbox.close()  # says itself what an in-memory outbox loses
        if self._thread is None or not self._thread.is_alive():
            self._waker.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception:
                # A bug or an unexpected library error must not end delivery for good.
                self.counters.inc("mqtt.loop_errors")
                log.exception("mqtt loop failed; continuing")
                self._stop.wait(1.0)
        try:
            self._goodbye()
        except Exception:
            log.exception("mqtt shutdown failed")
        finally:
            self._waker.close()

    def _turn(self) -> None:
        """One iteration: commit, connect if needed, network I/O, events, feeding, housekeeping."""
        now = time.monotonic()
        if not self.connected or now - self.outbox.last_commit >= LINGER:
            self.outbox.flush()  # (while connected the feeder's fetch commits as well)
        self.guard.flush_logs(now)
        if self._connector is not None:
            self._finish_connect()
            return
        if not self._socket_open:
            if now < self._next_attempt:
                self._stop.wait(min(0.1, self._next_attempt - now))
                return
            self._start_connect()
            return
        rc = self._network(now)
        self._drain_events()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._socket_open:
            self._lost(f"network loop: {paho.error_string(rc)}")
        self._feed()
        if self.connected and self._backoff.attempt and now - self._connected_at > STABLE_AFTER:
            self._backoff.reset()
        if now >= self._next_expire:
            self.outbox.expire()
            self._next_expire = now + EXPIRE_EVERY

    def _network(self, now: float) -> MQTTErrorCode:
        """paho's network I/O, sleeping until there is something to do."""
        # `sleeping` goes up before the last look for work: a producer staging a message
        # after that look sees it and wakes this thread (Waker).
        self._waker.sleeping = True
        try:
            if self._stop.is_set():
                return network_turn(self.client, self._waker, 0.0)
            if not self._has_work():
                wait = IDLE_WAIT
                if self._acked:  # acknowledged, waiting to be deleted in one batch
                    wait = max(0.0, self._last_ack_flush + ACK_DELAY - now)
                self._waker.woken = False
                rc = network_turn(self.client, self._waker, wait)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not self._waker.woken:
                    return rc  # the broker replied, or a deadline came
        finally:
            self._waker.sleeping = False
        # Work for the feeder: it waits until LINGER after the last commit, so what producers
        # stage meanwhile is committed with it (the broker's replies are read meanwhile).
        deadline = self.outbox.last_commit + LINGER
        while True:
            rc = network_turn(self.client, self._waker, max(0.0, deadline - time.monotonic()))
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or time.monotonic() >= deadline:
                return rc
            if self._stop.is_set() or (self._events and self._events[-1].kind != "ack"):
                return rc  # stopping, or a connect/disconnect to act on now

    def _has_work(self) -> bool:
        """Staged messages, or committed ones the feeder has not taken while it has room."""
        if self.outbox.has_staged:
            return True
        if not self.outbox.unfetched or not self.connected:
            return False
        return len(self._inflight) < self._window()

    def _window(self) -> int:
        """How many messages may be in flight now."""
        # Only a window's worth goes to paho: its own queue is scanned on every PUBACK. While a
        # message is suspected of taking the connection down, it travels alone.
        window = 1 if self.guard.probing else self.cfg.max_inflight
        if self._receive_max:  # the broker's own limit, one slot kept for the status message
            window = max(1, min(window, self._receive_max - 1))
        return window

    def _props(self, msg: OutMessage, props: Any) -> Any:
        return props if self.inbox is None else self.inbox.reply_properties(msg.id, props)

    def _properties(self) -> Any:
        return publish_properties(self.cfg)

    def _feed(self) -> None:
        """Hand outbox messages to paho while connected, up to the in-flight window."""
        room = self._window() - len(self._inflight)
        if not self.connected or room <= 0:
            return
        props = publish_properties(self.cfg)
        items = self.outbox.fetch(self._cursor, room)
        if self.guard.probing and not self._inflight:
            # The suspect may have left the outbox another way (expired, evicted, salvaged).
            self.guard.check_suspect(items[0].seq if items else None)
        for item in items:
            payload = self.guard.sendable(item)
            if payload is None:  # quarantined: too large for this broker
                self._cursor = item.seq
                continue
            msg = item.msg
            info = self.client.publish(
                msg.topic,
                payload,
                qos=msg.qos,
                retain=msg.retain,
                properties=self._props(msg, props),
            )
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                return
            self._cursor = item.seq
            if msg.qos == 0:
                self.counters.inc(f"mqtt.delivered.{msg.kind}")
                self._acked.append(item)
            else:
                self._inflight[info.mid] = item
                self.guard.sent(item)
            log.debug("sent %s (seq %d, mid %d)", msg.id, item.seq, info.mid)

    def _goodbye(self) -> None:
        """On stop: a retained `offline`, then a clean disconnect (no last will)."""
        if self.connected:
            info = self.client.publish(self.topics.status, b"offline", qos=1, retain=True)
            deadline = time.monotonic() + 3.0
            while not info.is_published() and time.monotonic() < deadline:
                if self.client.loop(timeout=LOOP_TIMEOUT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                self._drain_events()
            self.client.disconnect()
            self.client.loop(timeout=LOOP_TIMEOUT)
        self._socket_open = False  # our own disconnect: nothing to report
        self._connected.clear()
        self._drain_events()
        self._flush_acks(force=True)
        self.guard.flush_logs(float("inf"))
