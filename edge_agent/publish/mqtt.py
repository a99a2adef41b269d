"""MQTT delivery from the outbox: one thread owns the paho client, its socket and its state.

The thread connects (TLS and auth as configured), reconnects with exponential backoff and
jitter, runs paho's network loop, and feeds messages from the outbox into a bounded in-flight
window. paho callbacks run inside that loop and only put events on a queue. A message leaves
the outbox when the broker acknowledges it; after a reconnect paho re-sends what was in flight,
and after a restart the outbox replays everything it still holds, in order.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config.schema import MqttConfig
from edge_agent.errors import ConfigError
from edge_agent.health import Counters
from edge_agent.publish.outbox import Outbox, Stored
from edge_agent.publish.payloads import OutMessage, Topics

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"  # noqa: S105 (a variable name, not a secret)
LOOP_TIMEOUT = 0.02  # seconds paho's loop waits for socket activity per turn
EXPIRE_EVERY = 10.0  # seconds between outbox age checks
ACK_BATCH = 256  # acknowledged messages removed from the outbox in one transaction...
ACK_DELAY = 0.05  # ...or after this many seconds, or as soon as nothing is in flight


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from `password_file`, else the environment, else None."""
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read password file: {exc.strerror}",
                where=f"mqtt.password_file: {cfg.password_file}",
            ) from None
    return os.environ.get(PASSWORD_ENV)


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # connect | disconnect | ack
    code: int = 0
    reason: str = ""
    mid: int = 0


class Backoff:
    """Exponential backoff with full jitter between min and max delay."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, max(low, high)
        self.attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt, seconds."""
        ceiling = min(self.high, self.low * 2 ** min(self.attempt, 16))
        self.attempt += 1
        return random.uniform(self.low / 2, ceiling)  # noqa: S311 (jitter, not crypto)

    def reset(self) -> None:
        """After a successful connection."""
        self.attempt = 0


def _properties(packet_type: int) -> Properties:
    """MQTT 5 properties for a packet type (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    tls = cfg.tls
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}", where="mqtt.tls") from None
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


class MqttPublisher:
    """Delivers everything put in the outbox; `submit()` is safe from any thread."""

    def __init__(self, cfg: MqttConfig, device_id: str, counters: Counters, outbox: Outbox) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.counters = counters
        self.outbox = outbox
        self.client_id = cfg.client_id or f"edge-agent-{device_id}"
        # deque append/popleft are atomic: a lock-free hand-off queue for paho's callbacks.
        self._events: deque[_Event] = deque()
        self._inflight: dict[int, Stored] = {}
        self._cursor = 0  # highest outbox seq handed to paho
        self._acked: list[int] = []
        self._last_ack_flush = 0.0
        self._connected = threading.Event()
        self._socket_open = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(cfg.reconnect_min_delay, cfg.reconnect_max_delay)
        self._next_attempt = 0.0
        self._last_error = ""
        self._next_expire = 0.0
        self.client = self._make_client(read_password(cfg))

    def _make_client(self, password: str | None) -> paho.Client:
        v5 = self.cfg.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else True,
        )
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, password)
        if self.cfg.tls.enabled:
            client.tls_set_context(_tls_context(self.cfg))
            client.tls_insecure_set(self.cfg.tls.insecure)
        client.will_set(self.topics.status, b"offline", qos=1, retain=True)
        client.max_inflight_messages_set(self.cfg.max_inflight)
        client.connect_timeout = 5.0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # paho callbacks (inside client.loop on the publisher thread): hand off only.
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._events.append(_Event("connect", rc.value, str(rc)))

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
        """Store a message in the outbox for delivery (never blocks on the network)."""
        self.outbox.put(msg)
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
        if left:
            log.warning("%d messages stay in the outbox for the next run", left)
        self.outbox.close()

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
        if not self._socket_open:
            if now < self._next_attempt:
                self._stop.wait(min(0.1, self._next_attempt - now))
                return
            self._connect()
            if not self._socket_open:
                return
        rc = self.client.loop(timeout=LOOP_TIMEOUT)
        self._drain_events()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._socket_open:
            self._lost(f"network loop: {paho.error_string(rc)}")
        self._feed()
        if now >= self._next_expire:
            self.outbox.expire()
            self._next_expire = now + EXPIRE_EVERY

    def _connect(self) -> None:
        props = None
        if self.cfg.protocol == "5":
            props = _properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.cfg.session_expiry)
        try:
            self.client.connect(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive,
                clean_start=True if self.cfg.protocol == "5" else 3,
                properties=props,
            )
        except ssl.SSLCertVerificationError as exc:
            self._failed(
                f"TLS certificate not trusted: {exc.verify_message} (check mqtt.tls.ca_file)"
            )
        except ssl.SSLError as exc:
            self._failed(f"TLS handshake failed: {exc.reason or exc}")
        except (OSError, ValueError) as exc:
            self._failed(f"cannot connect: {exc}")
        else:
            self._socket_open = True

    def _failed(self, reason: str) -> None:
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

    def _lost(self, reason: str) -> None:
        was_connected = self.connected
        self._connected.clear()
        self._socket_open = False
        self.client.disconnect()  # release the socket; paho keeps in-flight messages
        if was_connected:
            log.warning(
                "connection to broker lost (%s); %d undelivered", reason, self.undelivered()
            )
        if was_connected:
            self._next_attempt = time.monotonic() + self._backoff.next_delay()
        else:
            self._failed(reason)

    def _drain_events(self) -> None:
        events = self._events
        while events:
            event = events.popleft()
            if event.kind == "ack":
                self._ack(event)
            elif event.kind == "connect":
                self._on_connected(event)
            elif self._socket_open:
                self._lost(self._disconnect_reason(event))
        self._remove_acked()

    def _remove_acked(self) -> None:
        """Delete acknowledged messages in batches (a crash in between only re-sends them)."""
        if not self._acked:
            return
        now = time.monotonic()
        if (
            len(self._acked) >= ACK_BATCH
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
        item = self._inflight.pop(event.mid, None)
        if item is None:
            return
        if event.code >= 0x80:  # MQTT 5 PUBACK with an error: the broker refused this message
            self.counters.inc(f"mqtt.rejected.{item.msg.kind}")
            log.error("broker rejected %s on %s: %s", item.msg.id, item.msg.topic, event.reason)
        else:
            self.counters.inc(f"mqtt.delivered.{item.msg.kind}")
            log.debug("acknowledged %s", item.msg.id)
        self._acked.append(item.seq)

    def _on_connected(self, event: _Event) -> None:
        if event.code != 0:
            self.counters.inc("mqtt.connect_refused")
            self._lost(f"broker refused the connection: {event.reason}")
            return
        self._last_error = ""
        self._backoff.reset()
        self._connected.set()
        self.counters.inc("mqtt.connects")
        log.info("connected to broker %s:%d", self.cfg.host, self.cfg.port)
        self.client.publish(self.topics.status, b"online", qos=1, retain=True)

    def _properties(self) -> Properties | None:
        if self.cfg.protocol != "5" or self.cfg.message_expiry is None:
            return None
        props = _properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = int(self.cfg.message_expiry)
        return props

    def _feed(self) -> None:
        """Hand outbox messages to paho while connected, up to the in-flight window."""
        # Only a window's worth goes to paho: its own queue is scanned on every PUBACK.
        room = self.cfg.max_inflight - len(self._inflight)
        if not self.connected or room <= 0:
            return
        for item in self.outbox.fetch(self._cursor, room):
            msg = item.msg
            info = self.client.publish(
                msg.topic,
                msg.payload,
                qos=msg.qos,
                retain=msg.retain,
                properties=self._properties(),
            )
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                return
            self._cursor = item.seq
            if msg.qos == 0:
                self.counters.inc(f"mqtt.delivered.{msg.kind}")
                self._acked.append(item.seq)
            else:
                self._inflight[info.mid] = item
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
