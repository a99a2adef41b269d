"""The collector's MQTT side: a persistent MQTT 5 session on a shared subscription, messages
handed to a bounded queue, and acknowledgements sent only when the collector says so.

paho's callbacks run on its network thread and only enqueue. A message is acknowledged
(`manual_ack`) after its files and index row are committed; until then the broker keeps it
in the session and sends it again after a reconnect or a restart. The broker should not have
more than `RECEIVE_MAXIMUM` unacknowledged messages out to the collector, but mosquitto 2.0
sends a resumed shared-subscription session more than that at once (seen: 86); so the queue is
bounded and a full queue makes the network thread wait (TCP flow control) while the
collector's loop, already running, drains it. Nothing waits on the network thread before
that loop starts: the SUBACK is checked by the loop (`check`), not awaited.

An acknowledgement names a packet id that is only meaningful on the connection the message
came in on: after a reconnect the same id may belong to another message. Each connection
gets a generation number and a message from an older one is never acknowledged (the broker
sends it again, and the index recognises the duplicate).
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.collect.options import CollectOptions
from edge_agent.errors import UserError
from edge_agent.publish.client import Client, make_client, properties

log = logging.getLogger(__name__)

RECEIVE_MAXIMUM = 32  # unacknowledged messages the broker may have out to us
INBOX_SIZE = 2 * RECEIVE_MAXIMUM + 8  # an old connection's leftovers plus a new window
START_TIMEOUT = 10.0  # seconds for TCP, TLS and CONNACK at start


@dataclass(frozen=True)
class Delivery:
    """One received message and the connection it came in on."""

    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes = field(repr=False)


def _topic(msg: Any) -> str:
    try:
        return str(msg.topic)
    except UnicodeDecodeError:  # paho raises for a topic that is not UTF-8
        return bytes(msg._topic).decode("utf-8", "replace")


class Subscription:
    """One collector's connection to the broker."""

    def __init__(self, opts: CollectOptions) -> None:
        self.opts = opts
        self.inbox: queue.Queue[Delivery] = queue.Queue(INBOX_SIZE)
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._generation = 0
        self._closing = False
        self._connected_once = False  # a refusal at start is one error line, not a warning too
        self.client = self._make()

    def _make(self) -> Client:
        cfg = self.opts.mqtt
        client = make_client(cfg, self.opts.client_id, "unused", self.opts.password)
        client.will_clear()  # a collector announces nothing
        client.manual_ack_set(True)
        low = max(1, round(cfg.reconnect_min_delay))  # paho counts whole seconds
        client.reconnect_delay_set(low, max(low, round(cfg.reconnect_max_delay)))
        client.connect_timeout = START_TIMEOUT
        client.on_pre_connect = lambda _c, _u: self._next_generation()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _next_generation(self) -> None:
        with self._lock:
            self._generation += 1

    def _on_connect(self, client: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self._connected_once = True
            client.subscribe(self.opts.subscription, options=SubscribeOptions(qos=1))
            log.info(
                "connected to %s (session present: %s)", self.opts.where, flags.session_present
            )
        self._events.put(("connect", rc))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._next_generation()
        if not self._closing and self._connected_once:
            log.warning("disconnected from %s: %s; reconnecting", self.opts.where, rc)
        self._events.put(("disconnect", rc))

    def _on_subscribe(self, _c: Any, _u: Any, _m: Any, codes: Any, _p: Any) -> None:
        if not any(code.is_failure for code in codes):
            log.info("subscribed to %s as %s", self.opts.subscription, self.opts.client_id)
        self._events.put(("subscribe", codes))

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            generation = self._generation
        item = Delivery(generation, msg.mid, msg.qos, _topic(msg), bytes(msg.payload))
        while not self._closing:  # full: wait for the loop (not acknowledged, so not lost)
            try:
                self.inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge a message if its connection is still the current one."""
        if delivery.qos == 0:
            return True
        with self._lock:
            if delivery.generation != self._generation:
                return False
            self.client.ack(delivery.mid, delivery.qos)
            return True

    def start(self) -> None:
        """Connect and run the network thread; UserError if the broker cannot be used."""
        cfg = self.opts.mqtt
        props = properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(cfg.session_expiry)
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            self.client.connect(
                cfg.host, cfg.port, cfg.keepalive, clean_start=False, properties=props
            )
        except (OSError, ssl.SSLError) as exc:
            raise connect_error(exc, self.opts) from None
        self.client.loop_start()
        try:
            self._await_connack()
        except BaseException:
            self.close()
            raise

    def _await_connack(self) -> None:
        try:
            kind, value = self._events.get(timeout=START_TIMEOUT)
        except queue.Empty:
            raise UserError(
                f"no MQTT answer within {START_TIMEOUT:g} s (is this an MQTT port?)",
                where=self.opts.where,
            ) from None
        if kind == "disconnect":
            raise UserError(
                "the broker closed the connection before accepting it", where=self.opts.where
            )
        if value.is_failure:
            raise UserError(f"connection refused: {str(value).lower()}", where=self.opts.where)

    def check(self) -> None:
        """Raise UserError if the broker refused the subscription (checked by the loop)."""
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                return
            failed = [code for code in value if code.is_failure] if kind == "subscribe" else []
            if failed:
                raise UserError(
                    f"the broker refused the subscription: {str(failed[0]).lower()} "
                    "(MQTT 5 shared subscriptions and the account's ACL)",
                    where=f"--topic {self.opts.subscription!r}",
                )

    def close(self) -> None:
        """Disconnect (the broker keeps the session) and stop the network thread."""
        # Messages still queued are dropped unacknowledged: the broker sends them again.
        self._closing = True
        while True:
            try:
                self.inbox.get_nowait()
            except queue.Empty:
                break
        self.client.disconnect()
        self.client.loop_stop()


def connect_error(exc: BaseException, opts: CollectOptions) -> UserError:
    """One line for a failed TCP or TLS connect."""
    where = opts.where
    if isinstance(exc, socket.gaierror):
        return UserError(
            f"cannot resolve the host name: {exc.strerror}", where=f"--host {opts.mqtt.host}"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UserError(f"TLS certificate not trusted: {exc.verify_message}", where=where)
    if isinstance(exc, ssl.SSLError):
        return UserError(f"TLS handshake failed: {exc.reason or exc}", where=where)
    if isinstance(exc, ConnectionRefusedError):
        return UserError(
            "connection refused: no broker listens there (check --host and --port)", where=where
        )
    if isinstance(exc, TimeoutError):
        return UserError(
            f"no answer within {START_TIMEOUT:g} s (check --host and --port)", where=where
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UserError(f"cannot connect: {reason}", where=where)
