"""MQTT delivery from the outbox: one thread owns the paho client, its socket and its state.

The thread connects (TLS and auth as configured), reconnects with exponential backoff and
jitter, runs paho's network loop, and feeds messages from the outbox into a bounded in-flight
window. paho callbacks run inside that loop and only put events on a queue. A message leaves
the outbox when the broker acknowledges it. Each connection gets a fresh paho client: after a
loss, what was in flight is fed again from the outbox, in order, so the publisher alone decides
what goes on the wire (the window, probing a suspected poison message, size limits).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config.schema import MqttConfig
from edge_agent.errors import ConfigError
from edge_agent.health import Counters
from edge_agent.publish.client import (
    Backoff,
    Client,
    connect_properties,
    make_client,
    publish_properties,
    read_password,
)
from edge_agent.publish.fallback import ProtocolFallback
from edge_agent.publish.guard import Guard
from edge_agent.publish.inbox import Inbox
from edge_agent.publish.outbox import Outbox, Stored
from edge_agent.publish.payloads import OutMessage, Topics

__all__ = ["Backoff", "MqttPublisher", "read_password"]

log = logging.getLogger(__name__)

LOOP_TIMEOUT = 0.02  # seconds paho's loop waits for socket activity per turn
EXPIRE_EVERY = 10.0  # seconds between outbox age checks
ACK_BATCH = 256  # acknowledged messages removed from the outbox in one transaction...
ACK_DELAY = 0.05  # ...or after this many seconds, or as soon as nothing is in flight
STABLE_AFTER = 10.0  # seconds a connection must last before the reconnect backoff resets
# Refusals that say "not now" rather than "never": the message is sent again, not quarantined.
TRANSIENT_REFUSALS = frozenset({0x91, 0x97})  # packet identifier in use, quota exceeded


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # connect | disconnect | ack
    code: int = 0
    reason: str = ""
    mid: int = 0
    limit: int | None = None  # CONNACK Maximum Packet Size (MQTT 5)
    receive_max: int | None = None  # CONNACK Receive Maximum (MQTT 5): QoS>0 in flight


class MqttPublisher:
    """Delivers everything put in the outbox; `submit()` is safe from any thread."""

    def __init__(self, cfg: MqttConfig, device_id: str, counters: Counters, outbox: Outbox) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.counters = counters
        self.outbox = outbox
        self.client_id = cfg.client_id or f"edge-agent-{device_id}"
        self.guard = Guard(cfg, self.client_id, counters, outbox)
        self.fallback = ProtocolFallback(cfg, counters)  # MQTT 3.1.1 for 3.1.1-only brokers
        # deque append/popleft are atomic: a lock-free hand-off queue for paho's callbacks.
        self._events: deque[_Event] = deque()
        self._inflight: dict[int, Stored] = {}
        self._cursor = 0  # highest outbox seq handed to paho
        self._acked: list[Stored] = []
        self._last_ack_flush = 0.0
        self._connected = threading.Event()
        self._connected_at = 0.0
        self._acks_this_connection = 0
        self._socket_open = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(cfg.reconnect_min_delay, cfg.reconnect_max_delay)
        self._next_attempt = 0.0
        self._last_error = ""
        self._next_expire = 0.0
        self._password = read_password(cfg)
        self._receive_max: int | None = None
        self._connector: tuple[threading.Thread, list[BaseException | None]] | None = None
        self.inbox: Inbox | None = None  # subscriptions and received messages (commands)
        self.client = self._new_client()

    def _new_client(self) -> Client:
        client = make_client(self.cfg, self.client_id, self.topics.status, self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        if self.inbox is not None:
            client.on_message = self.inbox.on_message
            client.on_subscribe = self.inbox.on_subscribe
        return client

    # paho callbacks (inside client.loop on the publisher thread): hand off only.
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, props: Any) -> None:
        limit = getattr(props, "MaximumPacketSize", None)
        receive_max = getattr(props, "ReceiveMaximum", None)
        self._events.append(_Event("connect", rc.value, str(rc), 0, limit, receive_max))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._events.append(_Event("disconnect", rc.value, str(rc)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._events.append(_Event("ack", rc.value, "" if rc.value < 0x80 else str(rc), mid))

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

    @property
    def connected(self) -> bool:
        """True while the broker session is up."""
        return self._connected.is_set()

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
        if self._thread is not None:
            self._thread.join(timeout + 5)
            if self._thread.is_alive():
                log.warning("mqtt thread did not stop in time")
        left = self.undelivered()
        if left and not self.outbox.mode.startswith("memory"):
            log.warning("%d messages stay in the outbox for the next run", left)
        self.outbox.close()  # says itself what an in-memory outbox loses

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

    def _turn(self) -> None:
        """One iteration: commit, connect if needed, network I/O, events, feeding, housekeeping."""
        self.outbox.flush()
        now = time.monotonic()
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
        rc = self.client.loop(timeout=LOOP_TIMEOUT)
        self._drain_events()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._socket_open:
            self._lost(f"network loop: {paho.error_string(rc)}")
        self._feed()
        if self.connected and self._backoff.attempt and now - self._connected_at > STABLE_AFTER:
            self._backoff.reset()
        if now >= self._next_expire:
            self.outbox.expire()
            self._next_expire = now + EXPIRE_EVERY

    def _start_connect(self) -> None:
        """Connect on a short-lived thread: DNS, TCP and TLS may block for seconds, and this
        thread must keep committing what producers stage meanwhile."""
        self.fallback.apply(self)
        try:
            client = self._new_client()  # a clean slate: nothing of the last connection
        except (ConfigError, OSError, ssl.SSLError) as exc:  # e.g. a CA file rotated away
            self._failed(f"cannot prepare the connection: {exc}")
            return
        self.client = client
        result: list[BaseException | None] = []

        def attempt() -> None:
            try:
                client.connect(
                    self.cfg.host,
                    self.cfg.port,
                    keepalive=self.cfg.keepalive,
                    clean_start=True if self.cfg.protocol == "5" else 3,
                    properties=connect_properties(self.cfg),
                )
                result.append(None)
            except Exception as exc:
                result.append(exc)

        thread = threading.Thread(target=attempt, name="mqtt-connect", daemon=True)
        self._connector = (thread, result)
        thread.start()

    def _finish_connect(self) -> None:
        """Take the connection over from the connect thread once it is done."""
        if self._connector is None:
            return
        thread, result = self._connector
        thread.join(LOOP_TIMEOUT)
        if thread.is_alive():
            return
        self._connector = None
        exc = result[0] if result else RuntimeError("connect thread ended without a result")
        if exc is None:
            self._socket_open = True
        elif isinstance(exc, ssl.SSLCertVerificationError):
            self._failed(
                f"TLS certificate not trusted: {exc.verify_message} (check mqtt.tls.ca_file)"
            )
        elif isinstance(exc, ssl.SSLError):
            self._failed(f"TLS handshake failed: {exc.reason or exc}")
        else:
            self._failed(f"cannot connect: {exc}")

    def _failed(self, reason: str) -> None:
        if self.fallback.retry_now():  # the broker refused MQTT 5: at once with 3.1.1
            self._next_attempt = 0.0
            return
        self.counters.inc("mqtt.connect_failures")
        delay = self._backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        if reason != self._last_error:
            log.error(
                "broker %s:%d: %s; retrying (next in %.1fs, backing off)",
                self.cfg.host,
                self.cfg.port,
                reason,
                delay,
            )
            self._last_error = reason
        else:
            log.debug("broker still unreachable: %s; next attempt in %.1fs", reason, delay)

    def _lost(self, reason: str, code: int = 0) -> None:
        was_connected = self.connected
        self._connected.clear()
        self._socket_open = False
        self.client.disconnect()  # release the socket
        self._flush_acks(force=True)
        had_inflight = bool(self._inflight)
        self._requeue_inflight(was_connected and code not in TRANSIENT_REFUSALS, code)
        if was_connected:
            lasted = time.monotonic() - self._connected_at
            self.guard.connection_lost(code, lasted, had_inflight)
            delay = self._backoff.next_delay()
            self._next_attempt = time.monotonic() + delay
            log.warning(
                "connection to broker lost (%s); %d undelivered; reconnecting in %.1fs",
                reason,
                self.undelivered(),
                delay,
            )
        else:
            self._failed(reason)

    def _requeue_inflight(self, suspect: bool, code: int) -> None:
        """What was in flight goes back to the outbox's queue; a message that keeps taking the
        connection down with it is quarantined."""
        if not self._inflight:
            return
        lowest = min(self._inflight.values(), key=lambda item: item.seq)
        self._cursor = lowest.seq - 1
        self._inflight.clear()
        if suspect and self._acks_this_connection == 0:
            self.guard.strike(lowest, code)

    def _drain_events(self) -> None:
        events = self._events
        while events:
            event = events.popleft()
            if event.kind == "ack":
                self._ack(event)
            elif event.kind == "connect":
                self._on_connected(event)
            elif self._socket_open:
                self.fallback.disconnected(self.connected)
                self._lost(self._disconnect_reason(event), event.code)
        self._flush_acks()

    def _flush_acks(self, force: bool = False) -> None:
        """Delete acknowledged messages in batches (a crash in between only re-sends them)."""
        if not self._acked:
            return
        now = time.monotonic()
        if (
            force
            or len(self._acked) >= ACK_BATCH
            or not self._inflight
            or now - self._last_ack_flush >= ACK_DELAY
        ):
            self.outbox.ack(self._acked)
            self._acked = []
            self._last_ack_flush = now

    def _disconnect_reason(self, event: _Event) -> str:
        if self.connected:
            return f"disconnected: {event.reason}"
        hint = ""
        if self.cfg.tls.enabled and self.cfg.tls.cert_file is None:
            hint = " (does it require a client certificate? set mqtt.tls.cert_file/key_file)"
        return f"the broker closed the connection before accepting it{hint}"

    def _ack(self, event: _Event) -> None:
        item = self._inflight.get(event.mid)
        if item is None:
            return
        if event.code in TRANSIENT_REFUSALS:
            # The broker is out of room: start over from this message, in order, after a pause.
            self._lost(f"the broker refused a message for now ({event.reason})", event.code)
            return
        del self._inflight[event.mid]
        self._acks_this_connection += 1
        self.guard.cleared(item)
        if event.code >= 0x80:  # MQTT 5 PUBACK/PUBREC/PUBCOMP with an error: refused
            self.guard.refused(item, event.reason)
            return
        self.counters.inc(f"mqtt.delivered.{item.msg.kind}")
        log.debug("acknowledged %s", item.msg.id)
        self._acked.append(item)

    def _on_connected(self, event: _Event) -> None:
        self.fallback.connack(event.code)
        if event.code != 0:
            self.counters.inc("mqtt.connect_refused")
            self._lost(f"broker refused the connection: {event.reason}")
            return
        self._last_error = ""
        self._connected.set()
        self._connected_at = time.monotonic()
        self._acks_this_connection = 0
        self.guard.set_broker_limit(event.limit)
        self._receive_max = event.receive_max
        self.counters.inc("mqtt.connects")
        log.info("connected to broker %s:%d", self.cfg.host, self.cfg.port)
        self.client.publish(self.topics.status, b"online", qos=1, retain=True)
        if self.inbox is not None:  # every connection starts a clean session
            self.inbox.subscribe(self.client)

    def _props(self, msg: OutMessage, props: Any) -> Any:
        return props if self.inbox is None else self.inbox.reply_properties(msg.id, props)

    def _properties(self) -> Any:
        return publish_properties(self.cfg)

    def _feed(self) -> None:
        """Hand outbox messages to paho while connected, up to the in-flight window."""
        # Only a window's worth goes to paho: its own queue is scanned on every PUBACK. While a
        # message is suspected of taking the connection down, it travels alone.
        window = 1 if self.guard.probing else self.cfg.max_inflight
        if self._receive_max:  # the broker's own limit, one slot kept for the status message
            window = max(1, min(window, self._receive_max - 1))
        room = window - len(self._inflight)
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
