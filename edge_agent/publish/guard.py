"""What keeps one bad message or one bad neighbour from stopping delivery: broker size limits,
refusals, poison messages and a second client with the same id. Owned by the MQTT thread."""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass

from edge_agent.config.schema import MqttConfig
from edge_agent.health import Counters
from edge_agent.publish.client import MQTT_MAX_PACKET, packet_size
from edge_agent.publish.outbox import Outbox, Stored
from edge_agent.publish.payloads import OutMessage, shrink_sample, shrink_stats

log = logging.getLogger(__name__)

# Kinds that can be re-encoded smaller when over the broker's limit (else quarantined).
SHRINKERS = {"samples": shrink_sample, "stats": shrink_stats}

LOG_EVERY = 60.0  # seconds between log lines about the same kind of refusal
SUSPECT_WINDOW = 15.0  # a drop this long after sending still points at the message...
SESSION_TAKEN_OVER = 0x8E
# DISCONNECT reasons by which an MQTT 5 broker says that what it received was the problem.
PACKET_FAULTS = frozenset({0x81, 0x82, 0x90, 0x93, 0x94, 0x95, 0x99, 0x9A})
# Losses that say nothing about the message: keepalive timeout (seen by the client itself),
# server busy or shutting down, administrative action, session taken over, use another
# server, server moved, packet identifier in use, quota exceeded.
NOT_THE_MESSAGE = frozenset({0x89, 0x8B, 0x8C, 0x8D, 0x8E, 0x91, 0x97, 0x98, 0x9C, 0x9D})
QUICK_DROP = 30.0  # a connection closed by the broker within this many seconds...
QUICK_DROPS = 3  # ...this many times...
QUICK_WINDOW = 300.0  # ...within this many seconds: someone else may be using our client id


def _slug(reason: str) -> str:
    """`Not authorized` -> `not_authorized`: a counter-name suffix."""
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "unknown"


@dataclass
class _Tally:
    """Rate-limited logging of one kind of trouble."""

    next_log: float = 0.0
    pending: int = 0
    detail: str = ""


class Guard:
    """Limits, refusals, quarantine and duplicate-client detection for one MqttPublisher."""

    def __init__(self, cfg: MqttConfig, client_id: str, counters: Counters, outbox: Outbox) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.counters = counters
        self.outbox = outbox
        self.v5 = cfg.protocol == "5"
        self._broker_limit: int | None = None
        self._suspect: int | None = None  # seq of a message suspected of killing connections
        self._strikes = 0
        self._sent: dict[int, float] = {}  # seq -> monotonic time it was last handed to paho
        self._quick_drops: deque[float] = deque()
        self._takeover_logged = False
        self._tallies: dict[str, _Tally] = {}

    # -- size limits ---------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """The largest packet the broker accepts (announced, configured, or MQTT's maximum)."""
        known = [v for v in (self.cfg.max_message_bytes, self._broker_limit) if v]
        return min(known) if known else MQTT_MAX_PACKET

    def set_broker_limit(self, limit: int | None) -> None:
        """Maximum Packet Size from the MQTT 5 CONNACK (None when not announced)."""
        if limit and limit != self._broker_limit:
            log.info("broker accepts packets up to %d bytes", limit)
        self._broker_limit = limit or None

    def _size(self, msg: OutMessage) -> int:
        return packet_size(msg.topic, len(msg.payload), msg.qos, self.v5)

    def _shrunk(self, msg: OutMessage) -> OutMessage | None:
        budget = self.limit - packet_size(msg.topic, 0, msg.qos, self.v5)
        shrink = SHRINKERS.get(msg.kind)
        smaller = shrink(msg, budget) if shrink is not None else None
        if smaller is not None:
            self.counters.inc(f"mqtt.resized.{msg.kind}")
            log.info(
                "%s message %s re-encoded from %d to %d bytes to fit the broker's limit (%d)",
                msg.kind,
                msg.id,
                len(msg.payload),
                len(smaller.payload),
                self.limit,
            )
        return smaller

    def fit(self, msg: OutMessage) -> OutMessage:
        """On submit: a sample over the limit known now is re-encoded smaller when it can be."""
        if self._size(msg) <= self.limit:
            return msg
        return self._shrunk(msg) or msg

    def sendable(self, item: Stored) -> bytes | None:
        """The payload to send for a stored message, or None when it was quarantined because
        no encoding of it fits the broker's limit."""
        msg = item.msg
        size = self._size(msg)
        if size <= self.limit:
            return msg.payload
        smaller = self._shrunk(msg)
        if smaller is not None:
            return smaller.payload
        self.counters.inc(f"mqtt.too_large.{msg.kind}")
        reason = f"{size} bytes is more than the broker accepts ({self.limit} bytes)"
        self.outbox.quarantine(item, reason)
        self._log("too_large", f"{msg.kind} message {msg.id} quarantined: {reason}")
        return None

    # -- refusals ------------------------------------------------------------------------
    def refused(self, item: Stored, reason: str) -> None:
        """An MQTT 5 acknowledgement with a reason code >= 0x80: counted, kept, logged."""
        kind = item.msg.kind
        self.counters.inc(f"mqtt.rejected.{kind}")
        self.counters.inc(f"mqtt.rejected.{kind}.{_slug(reason)}")
        self.outbox.quarantine(item, f"refused by the broker: {reason}")
        self._log(
            f"refused.{kind}",
            f"broker refused {kind} message {item.msg.id} on {item.msg.topic}: {reason} "
            f"(counted in mqtt.rejected.{kind}; kept in the outbox's dead letters)",
        )

    def _log(self, key: str, line: str) -> None:
        """Log the first occurrence now, then at most one summary line a minute."""
        tally = self._tallies.setdefault(key, _Tally())
        now = time.monotonic()
        if now >= tally.next_log:
            log.error("%s", line)
            tally.next_log = now + LOG_EVERY
        else:
            tally.pending += 1
            tally.detail = line

    def flush_logs(self, now: float) -> None:
        """Summaries of what was not logged line by line."""
        for key, tally in self._tallies.items():
            if tally.pending and now >= tally.next_log:
                log.error(
                    "%d more %s in the last minute; the latest: %s",
                    tally.pending,
                    key.replace(".", " "),
                    tally.detail,
                )
                tally.pending = 0
                tally.next_log = time.monotonic() + LOG_EVERY

    # -- poison messages -----------------------------------------------------------------
    @property
    def probing(self) -> bool:
        """True while a suspected message travels alone to find out whether it is poison."""
        return self._suspect is not None

    def sent(self, item: Stored) -> None:
        """A message was handed to paho."""
        self._sent[item.seq] = time.monotonic()

    def cleared(self, item: Stored) -> None:
        """The broker answered for a message: it did not take the connection down."""
        self._sent.pop(item.seq, None)
        if item.seq == self._suspect:
            self._suspect, self._strikes = None, 0

    def check_suspect(self, first: int | None) -> None:
        """While probing: the first message waiting must be the suspect, else it has left the
        outbox another way (expired, evicted) and probing ends."""
        if first != self._suspect:
            self._suspect, self._strikes = None, 0

    def strike(self, item: Stored, code: int) -> None:
        """The connection dropped with `item` the oldest in flight and nothing acknowledged."""
        sent_at = self._sent.get(item.seq, 0.0)
        self._sent.clear()
        if code in NOT_THE_MESSAGE:
            return
        # ...but never longer than a keepalive timeout could take to notice a dead link.
        window = min(SUSPECT_WINDOW, self.cfg.keepalive / 2)
        if code not in PACKET_FAULTS and time.monotonic() - sent_at > window:
            return  # it had been on the wire a while: a network or broker problem, not poison
        if item.seq == self._suspect:
            self._strikes += 1
        else:
            self._suspect, self._strikes = item.seq, 1
        if self._strikes < self.cfg.quarantine_after:
            log.warning(
                "the connection dropped with %s message %s in flight and nothing acknowledged "
                "(%d of %d): sending it alone to find out whether the broker refuses it",
                item.msg.kind,
                item.msg.id,
                self._strikes,
                self.cfg.quarantine_after,
            )
            return
        self._suspect, self._strikes = None, 0
        self.counters.inc(f"mqtt.poison.{item.msg.kind}")
        reason = (
            f"the broker dropped the connection {self.cfg.quarantine_after} times in a row "
            "while this message was in flight"
        )
        self.outbox.quarantine(item, reason)
        log.error(
            "%s message %s (%d bytes on %s) quarantined: %s; delivery goes on with the next",
            item.msg.kind,
            item.msg.id,
            len(item.msg.payload),
            item.msg.topic,
            reason,
        )

    # -- duplicate client id -------------------------------------------------------------
    def connection_lost(self, code: int, lasted: float, had_inflight: bool) -> None:
        """Notice another client taking over this client id (two agents, one device_id).
        An MQTT 5 broker may say so (reason 0x8E); otherwise (MQTT 3.1.1, and brokers such as
        Mosquitto 2.0 that just close the socket) repeated quick drops with nothing in flight
        (so not a poison message) are the hint."""
        if code == SESSION_TAKEN_OVER:
            self.counters.inc("mqtt.session_taken_over")
            self._takeover(
                f"the broker handed this agent's session to another client with the same "
                f"client id '{self.client_id}'"
            )
            return
        now = time.monotonic()
        if lasted < QUICK_DROP and not had_inflight:
            self._quick_drops.append(now)
        while self._quick_drops and self._quick_drops[0] < now - QUICK_WINDOW:
            self._quick_drops.popleft()
        if len(self._quick_drops) >= QUICK_DROPS:
            self._takeover(
                f"the broker closed the connection {len(self._quick_drops)} times in "
                f"{QUICK_WINDOW:.0f} s, each within {QUICK_DROP:.0f} s of accepting it: another "
                f"client may be using the client id '{self.client_id}'"
            )

    def _takeover(self, what: str) -> None:
        if self._takeover_logged:
            return
        self._takeover_logged = True
        log.error(
            "%s (two agents with one device_id on one broker?): give each agent its own "
            "device_id or mqtt.client_id; until then they take turns and reconnect with backoff",
            what,
        )
