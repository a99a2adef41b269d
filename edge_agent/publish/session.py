"""The broker side of the MQTT publisher (edge_agent.publish.mqtt): its state, one paho client
per connection, connecting on a short-lived thread, and what paho reports (CONNACK, PUBACK,
disconnect) applied to the in-flight window, the outbox and the reconnect backoff.

`MqttPublisher` extends `BrokerSession` with the thread that drives it: the loop, feeding the
window from the outbox, and shutdown. Everything here runs on that thread, except the paho
callbacks' hand-off onto the event queue.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config.schema import MqttConfig
from edge_agent.errors import ConfigError
from edge_agent.health import Counters
from edge_agent.publish.client import (
    Backoff,
    Client,
    connect_properties,
    make_client,
    read_password,
)
from edge_agent.publish.fallback import ProtocolFallback
from edge_agent.publish.guard import Guard
from edge_agent.publish.inbox import Inbox
from edge_agent.publish.outbox import Outbox, Stored
from edge_agent.publish.payloads import Topics

log = logging.getLogger(__name__)

LOOP_TIMEOUT = 0.02  # seconds paho's loop waits for socket activity per turn
ACK_BATCH = 256  # acknowledged messages removed from the outbox in one transaction...
ACK_DELAY = 0.05  # ...or after this many seconds, or as soon as nothing is in flight
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


class BrokerSession:
    """The publisher's connection and acknowledgement state; `MqttPublisher` drives it."""

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
        self._backoff = Backoff(cfg.reconnect_min_delay, cfg.reconnect_max_delay)
        self._next_attempt = 0.0
        self._last_error = ""
        self._password = read_password(cfg)
        self._receive_max: int | None = None
        self._connector: tuple[threading.Thread, list[BaseException | None]] | None = None
        self.inbox: Inbox | None = None  # subscriptions and received messages (commands)
        self.client = self._new_client()

    if TYPE_CHECKING:  # provided by MqttPublisher, the public side

        def undelivered(self) -> int:
            """Messages in the outbox (queued or in flight)."""

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

    @property
    def connected(self) -> bool:
        """True while the broker session is up."""
        return self._connected.is_set()

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
