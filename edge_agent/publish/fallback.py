"""MQTT 5 -> 3.1.1 fallback for brokers that speak only MQTT 3.1.1 (NATS, RabbitMQ 3.x).

Such a broker answers an MQTT 5 CONNECT in one of two ways: a CONNACK "unsupported protocol
version" (NATS), or closing the connection without any CONNACK (RabbitMQ 3.10 fails to parse
the packet). The first is proof: the agent switches at once. The second looks like other
failures (a broker shutting down, a TLS peer rejecting the client), so only after three such
closes in a row is the next attempt a 3.1.1 probe: only a CONNACK to it proves the broker
speaks 3.1.1; anything else goes back to MQTT 5. A broker that accepted MQTT 5 once in this
run is never downgraded by a close, so a broker restart cannot cause a fallback. Once
switched, the publisher keeps MQTT 3.1.1.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from edge_agent.config.schema import MqttConfig
from edge_agent.health import Counters

if TYPE_CHECKING:
    from edge_agent.publish.guard import Guard
    from edge_agent.publish.inbox import Inbox

log = logging.getLogger(__name__)

# CONNACK "unsupported protocol version" (MQTT 5 reason 0x84); paho reports the MQTT 3.1.1
# return code 1 "unacceptable protocol version" with the same value.
UNSUPPORTED_PROTOCOL = 0x84
COUNTER = "mqtt.protocol_fallback"
CLOSES_BEFORE_PROBE = 3  # MQTT 5 connections closed unanswered, in a row, before a 3.1.1 probe


class Connection(Protocol):
    """What the fallback adjusts before each connection attempt (the MQTT publisher)."""

    cfg: MqttConfig
    guard: Guard
    inbox: Inbox | None


class ProtocolFallback:
    """Chooses the protocol of each connection attempt from what the broker answered."""

    def __init__(self, cfg: MqttConfig, counters: Counters) -> None:
        self.wanted_v5 = cfg.protocol == "5"
        self.address = f"{cfg.host}:{cfg.port}"
        self.counters = counters
        self.fallen = False  # switched to 3.1.1 for good
        self.v5_accepted = False  # the broker accepted an MQTT 5 connection in this run
        self.probing = False  # the current or next attempt is a 3.1.1 probe
        self.attempt = ""  # protocol of the current attempt
        self._retry_now = False  # the last attempt failed on protocol evidence only
        self.unanswered = 0  # MQTT 5 attempts in a row closed without a CONNACK

    @property
    def protocol(self) -> str:
        """The protocol of the next connection attempt: "5" or "3.1.1"."""
        return "5" if self.wanted_v5 and not (self.fallen or self.probing) else "3.1.1"

    def config(self, cfg: MqttConfig) -> MqttConfig:
        """`cfg` with the protocol of the next attempt (the same object when unchanged)."""
        protocol = self.protocol
        return cfg if cfg.protocol == protocol else cfg.model_copy(update={"protocol": protocol})

    def apply(self, conn: Connection) -> None:
        """Before a connection attempt: set the protocol everywhere it shapes packets."""
        conn.cfg = self.config(conn.cfg)
        self.attempt = conn.cfg.protocol
        v5 = self.attempt == "5"
        conn.guard.v5 = v5  # MQTT 5 packets carry a property block
        if conn.inbox is not None:
            conn.inbox.v5 = v5  # subscription options (noLocal) exist only in MQTT 5

    def connack(self, code: int) -> None:
        """The broker answered the attempt's CONNECT with `code` (0: accepted)."""
        if self.attempt == "5":
            self.unanswered = 0  # an answer, whatever it says
            if code == 0:
                self.v5_accepted = True
            elif code == UNSUPPORTED_PROTOCOL and not self.fallen:
                self._switch("it answered CONNACK 'unsupported protocol version'")
                self._retry_now = True
        elif self.probing:
            self.probing = False
            # Any other answer, even a refused login, is MQTT 3.1.1 understood.
            if code != UNSUPPORTED_PROTOCOL:
                self._switch("it closed MQTT 5 connections unanswered and answers MQTT 3.1.1")

    def disconnected(self, accepted: bool) -> None:
        """The broker closed the connection; `accepted`: after a successful CONNACK."""
        if accepted:
            return
        if self.attempt == "5" and not (self.fallen or self.v5_accepted):
            self.unanswered += 1
            log.debug("broker %s closed an MQTT 5 connection unanswered", self.address)
            # One close may be a broker starting or stopping: probe only after several.
            if self.unanswered >= CLOSES_BEFORE_PROBE:
                self.probing = self._retry_now = True
        elif self.probing:
            self.probing = False  # 3.1.1 closed too: not a protocol question
            self.unanswered = 0

    def retry_now(self) -> bool:
        """The attempt failed: True when only to switch protocol, so the caller tries again at
        once and quietly; a probe that failed otherwise ends (back to MQTT 5)."""
        retry, self._retry_now = self._retry_now, False
        if not retry and self.probing and self.attempt == "3.1.1":
            self.probing = False
        return retry

    def _switch(self, evidence: str) -> None:
        self.fallen = True
        self.probing = False
        self.counters.inc(COUNTER)
        log.warning(
            "broker at %s does not speak MQTT 5 (%s); using MQTT 3.1.1 from now on "
            "(message expiry, the broker's size limit and MQTT 5 properties are not sent; "
            'set mqtt.max_message_bytes for its size limit, mqtt.protocol: "3.1.1" to skip this)',
            self.address,
            evidence,
        )
