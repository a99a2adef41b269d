"""MQTT delivery: a bounded pending queue handed to paho while connected, acked by PUBACK.

paho callbacks run on paho's network thread and only put events on a queue; one sender
thread owns all state. Messages handed to paho stay in paho's session until acknowledged
and paho re-sends them after a reconnect, so nothing in flight is lost while the process runs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config.schema import MqttConfig
from edge_agent.errors import ConfigError
from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage, Topics

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"  # noqa: S105 (a variable name, not a secret)
DROP_ORDER = ("samples", "stats", "detections")  # first kind in this list is dropped first


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


@dataclass(frozen=True)
class _Event:
    kind: str  # connect | disconnect | ack
    code: int = 0
    reason: str = ""
    mid: int = 0


class PendingQueue:
    """Messages not yet handed to paho, bounded; when full, the lowest-priority oldest goes."""

    def __init__(self, limit: int, counters: Counters) -> None:
        self.limit = limit
        self.counters = counters
        self._lock = threading.Lock()
        self._items: deque[OutMessage] = deque()

    def put(self, msg: OutMessage) -> None:
        """Append, dropping one message by priority (counted) when at the limit."""
        with self._lock:
            if len(self._items) >= self.limit:
                self._drop_one(msg)
                if len(self._items) >= self.limit:
                    return
            self._items.append(msg)

    def _drop_one(self, incoming: OutMessage) -> None:
        for kind in DROP_ORDER:
            if kind == incoming.kind:
                self.counters.inc(f"mqtt.dropped.{kind}")
                log.warning("pending queue full: dropped new %s message %s", kind, incoming.id)
                return
            for i, old in enumerate(self._items):
                if old.kind == kind:
                    del self._items[i]
                    self.counters.inc(f"mqtt.dropped.{kind}")
                    log.warning("pending queue full: dropped %s message %s", kind, old.id)
                    return

    def pop(self) -> OutMessage | None:
        """Oldest message, or None."""
        with self._lock:
            return self._items.popleft() if self._items else None

    def push_front(self, msg: OutMessage) -> None:
        """Return a message that could not be handed over."""
        with self._lock:
            self._items.appendleft(msg)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class MqttPublisher:
    """Owns the paho client and the sender thread."""

    def __init__(self, cfg: MqttConfig, device_id: str, counters: Counters) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.counters = counters
        self.client_id = cfg.client_id or f"edge-agent-{device_id}"
        self.pending = PendingQueue(cfg.max_pending, counters)
        self._events: queue.Queue[_Event] = queue.Queue()
        self._inflight: dict[int, OutMessage] = {}
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._last_refusal = ""
        self.client = self._make_client(read_password(cfg))

    def _make_client(self, password: str | None) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, password)
        client.will_set(self.topics.status, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(
            min_delay=max(1, round(self.cfg.reconnect_min_delay)),
            max_delay=max(1, round(self.cfg.reconnect_max_delay)),
        )
        client.max_inflight_messages_set(self.cfg.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # paho callbacks: hand off only.
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._events.put(_Event("connect", rc.value, str(rc)))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._events.put(_Event("disconnect", rc.value, str(rc)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._events.put(_Event("ack", rc.value, str(rc), mid))

    def start(self) -> None:
        """Begin connecting (in the background, retrying) and start the sender thread."""
        log.info("connecting to mqtt://%s:%d as %s", self.cfg.host, self.cfg.port, self.client_id)
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def submit(self, msg: OutMessage) -> None:
        """Queue a message for delivery (never blocks; a full queue drops by priority)."""
        self.pending.put(msg)
        self.counters.inc(f"mqtt.queued.{msg.kind}")

    @property
    def connected(self) -> bool:
        """True while the broker session is up."""
        return self._connected.is_set()

    def undelivered(self) -> int:
        """Messages queued or in flight (not yet acknowledged)."""
        with self._idle:
            return len(self.pending) + len(self._inflight)

    def wait_delivered(self, timeout: float | None, stop: threading.Event | None = None) -> bool:
        """Block until everything queued is acknowledged; False on timeout or `stop`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_log = time.monotonic()
        while self.undelivered():
            if stop is not None and stop.is_set():
                return False
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now - last_log >= 10:
                log.info("waiting for the broker: %d messages undelivered", self.undelivered())
                last_log = now
            with self._idle:
                self._idle.wait(0.1)
        return True

    def close(self, timeout: float = 3.0) -> None:
        """Publish `offline` (retained), disconnect and stop the threads."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.connected:
            info = self.client.publish(self.topics.status, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("could not publish offline status")
        self.client.disconnect()
        self.client.loop_stop()
        lost = self.undelivered()
        if lost:
            self.counters.inc("mqtt.undelivered_at_exit", lost)
            log.warning("%d messages were not delivered before exit", lost)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=0.05)
                self._handle(event)
                while True:
                    self._handle(self._events.get_nowait())
            except queue.Empty:
                pass
            self._feed()

    def _handle(self, event: _Event) -> None:
        if event.kind == "ack":
            with self._idle:
                msg = self._inflight.pop(event.mid, None)
                self._idle.notify_all()
            if msg is not None:
                self.counters.inc(f"mqtt.delivered.{msg.kind}")
                log.debug("acknowledged %s", msg.id)
        elif event.kind == "connect":
            self._on_connected(event)
        else:
            self._connected.clear()
            log.warning(
                "disconnected from broker (%s); %d undelivered", event.reason, self.undelivered()
            )

    def _on_connected(self, event: _Event) -> None:
        if event.code != 0:
            self.counters.inc("mqtt.connect_refused")
            if event.reason != self._last_refusal:
                log.error(
                    "broker %s:%d refused the connection: %s (will retry)",
                    self.cfg.host,
                    self.cfg.port,
                    event.reason,
                )
                self._last_refusal = event.reason
            return
        self._last_refusal = ""
        self._connected.set()
        self.counters.inc("mqtt.connects")
        log.info("connected to broker %s:%d", self.cfg.host, self.cfg.port)
        self.client.publish(self.topics.status, b"online", qos=1, retain=True)

    def _feed(self) -> None:
        """Hand queued messages to paho while connected, up to the in-flight window."""
        while self.connected and len(self._inflight) < self.cfg.max_inflight:
            # Under the lock so undelivered() never sees a message in neither place.
            with self._idle:
                msg = self.pending.pop()
                if msg is None:
                    return
                info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
                if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    self.pending.push_front(msg)
                    return
                if msg.qos == 0:
                    self.counters.inc(f"mqtt.delivered.{msg.kind}")
                else:
                    # Even on MQTT_ERR_NO_CONN paho keeps QoS>0 messages and sends them later.
                    self._inflight[info.mid] = msg
            log.debug("handed %s to mqtt (mid %d)", msg.id, info.mid)
