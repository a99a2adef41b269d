"""What the agent receives over MQTT: the subscriptions it holds on every connection (remote
commands) and the hand-off of each incoming message from paho's loop to the runtime's main
loop, through a bounded queue. Replies keep the MQTT 5 correlation data of their request."""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.publish.client import properties

log = logging.getLogger(__name__)

MQTT_V5 = 5  # paho.mqtt.client.MQTTv5
MAX_REPLIES = 1000  # correlation data kept for replies not yet sent (oldest forgotten first)
MAX_CORRELATION = 1024  # bytes of MQTT 5 correlation data echoed; longer is ignored


@dataclass(frozen=True)
class Incoming:
    """One received message with the MQTT 5 properties a command uses."""

    topic: str
    payload: bytes
    user_properties: tuple[tuple[str, str], ...] = ()
    response_topic: str | None = None
    correlation: bytes | None = None
    retain: bool = False  # delivered from the broker's retained store

    def user_property(self, name: str) -> list[str]:
        """Every value of the user property `name` (MQTT 5 allows repeats)."""
        return [value for key, value in self.user_properties if key == name]


def incoming_of(msg: Any) -> Incoming:
    """An `Incoming` from a paho message (properties absent under MQTT 3.1.1)."""
    props = getattr(msg, "properties", None)
    users = getattr(props, "UserProperty", None) or []
    response = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    if correlation is not None and len(correlation) > MAX_CORRELATION:
        correlation = None  # kept in memory until the reply is sent: bounded
    return Incoming(
        str(msg.topic),
        bytes(msg.payload),
        tuple((str(k), str(v)) for k, v in users),
        str(response) if response else None,
        bytes(correlation) if correlation is not None else None,
        bool(getattr(msg, "retain", False)),
    )


class Inbox:
    """Topic filters subscribed after every connect, and what arrives on them.

    paho calls `on_message` and `on_subscribe` inside the publisher's network loop: they only
    hand off. When the queue is full, `on_full` is told (the caller answers "busy")."""

    def __init__(
        self,
        filters: Sequence[str],
        size: int,
        on_full: Callable[[Incoming], None],
        v5: bool = True,
    ) -> None:
        self.filters = tuple(filters)
        self.v5 = v5
        self._queue: queue.Queue[Incoming] = queue.Queue(maxsize=size)
        self._on_full = on_full
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def subscribe(self, client: Any) -> None:
        """Subscribe `client` to every filter (a fresh session needs it after each connect)."""
        if not self.filters:
            return
        # noLocal: the device never receives what it publishes itself (MQTT 5 only: the
        # client's own protocol decides, it may have fallen back to 3.1.1).
        v5 = getattr(client, "protocol", MQTT_V5) == MQTT_V5
        options: list[tuple[str, Any]] = [
            (f, SubscribeOptions(qos=1, noLocal=True) if v5 else 1) for f in self.filters
        ]
        client.subscribe(options)

    def on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        """paho callback: queue the message, or report it when the queue is full."""
        item = incoming_of(msg)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._on_full(item)

    def on_subscribe(
        self, _client: Any, _userdata: Any, _mid: int, codes: Sequence[Any], _props: Any
    ) -> None:
        """paho callback: a refused subscription is worth one log line (broker ACLs)."""
        refused = [str(code) for code in codes if getattr(code, "value", 0) >= 0x80]
        if refused:
            log.error("broker refused the command subscription (%s)", ", ".join(refused))

    def get(self) -> Incoming | None:
        """The next received message, or None when nothing waits."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def remember_reply(self, msg_id: str, correlation: bytes) -> None:
        """The reply `msg_id` carries this correlation data (set before it is submitted)."""
        with self._lock:
            self._replies[msg_id] = correlation
            while len(self._replies) > MAX_REPLIES:
                self._replies.popitem(last=False)

    def reply_properties(self, msg_id: str, base: Properties | None) -> Properties | None:
        """PUBLISH properties for a message: `base`, plus the correlation data of a reply."""
        with self._lock:
            correlation = self._replies.get(msg_id)
        if correlation is None or not self.v5:
            return base
        props = properties(PacketTypes.PUBLISH)
        expiry = getattr(base, "MessageExpiryInterval", None)
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        props.CorrelationData = correlation
        return props
