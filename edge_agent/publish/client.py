"""The pieces of an MQTT connection that hold no delivery state: the paho client (with MQTT 5
PUBREC refusals reported), TLS, the password, backoff, and packet sizes."""

from __future__ import annotations

import logging
import os
import random
import ssl
import stat
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config.schema import MqttConfig
from edge_agent.errors import ConfigError
from edge_agent.files import check_regular, open_regular

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"  # noqa: S105 (a variable name, not a secret)
# MQTT's largest packet (remaining length 268,435,455 + 5 header bytes); used when nothing lower
# is announced or configured.
MQTT_MAX_PACKET = 268_435_460
MAX_PASSWORD_FILE_BYTES = 65_536  # MQTT's own limit for a password


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from `password_file`, else the environment, else None."""
    path = cfg.password_file
    if path is None:
        return os.environ.get(PASSWORD_ENV)
    try:
        with open_regular(path) as stream:
            text = stream.read(MAX_PASSWORD_FILE_BYTES).decode("utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read password file: {reason}", where=f"mqtt.password_file: {path}"
        ) from None
    _warn_if_readable(path, mode)
    return text


def _warn_if_readable(path: Path, mode: int) -> None:
    """A password file others can read leaks the broker password to every local user."""
    if mode & (stat.S_IRWXO | stat.S_IRWXG):
        log.warning(
            "password file %s can be read by other users (mode %o): run 'chmod 600 %s'",
            path,
            stat.S_IMODE(mode),
            path,
        )


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


def properties(packet_type: int) -> Properties:
    """MQTT 5 properties for a packet type (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


# The agent receives only commands (a few hundred bytes): the broker drops larger packets
# rather than making the device buffer them (MQTT 5 only; 3.1.1 cannot say it).
MAX_INCOMING_PACKET = 256 * 1024


def connect_properties(cfg: MqttConfig) -> Properties | None:
    """CONNECT properties (MQTT 5): the session expiry interval, the largest packet taken."""
    if cfg.protocol != "5":
        return None
    props = properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(cfg.session_expiry)
    props.MaximumPacketSize = MAX_INCOMING_PACKET
    return props


def publish_properties(cfg: MqttConfig) -> Properties | None:
    """PUBLISH properties (MQTT 5): the message expiry interval when configured."""
    if cfg.protocol != "5" or cfg.message_expiry is None:
        return None
    props = properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = int(cfg.message_expiry)
    return props


def packet_size(topic: str, payload_len: int, qos: int, v5: bool) -> int:
    """Bytes of the PUBLISH packet on the wire (fixed header, topic, packet id, properties)."""
    # 5 = type byte + the longest remaining-length varint; v5 adds the property block (a
    # length byte and the 5-byte message expiry at most).
    return 5 + 2 + len(topic.encode()) + (2 if qos else 0) + (6 if v5 else 0) + payload_len


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context for the broker connection (CA, client certificate)."""
    tls = cfg.tls
    try:
        for path in (tls.ca_file, tls.cert_file, tls.key_file):
            if path is not None:
                check_regular(path)  # ssl opens them by name: a FIFO would block it
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}", where="mqtt.tls") from None
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


class Client(paho.Client):
    """paho's client, reporting MQTT 5 PUBREC refusals (QoS 2) through on_publish.

    paho ignores the reason code of a PUBREC and answers it with PUBREL, so a QoS 2 message the
    broker refused (e.g. an ACL denial) would complete as if delivered. A refusal ends the flow
    per MQTT 5: the message is handed to on_publish with the PUBREC's reason code."""

    def _handle_pubrec(self) -> MQTTErrorCode:
        packet = bytes(self._in_packet["packet"])
        # MQTT 5 PUBREC: packet id (2 bytes), then a reason code (absent means success).
        if self._protocol == paho.MQTTv5 and len(packet) >= 3 and packet[2] >= 0x80:
            mid = int.from_bytes(packet[:2], "big")
            reason = ReasonCode(PacketTypes.PUBREC, identifier=packet[2])
            with self._out_message_mutex:
                if mid in self._out_messages:
                    return self._do_on_publish(mid, reason, properties(PacketTypes.PUBREC))
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubrec()


def make_client(cfg: MqttConfig, client_id: str, will_topic: str, password: str | None) -> Client:
    """A configured client (callbacks are set by the owner)."""
    v5 = cfg.protocol == "5"
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
    )
    if cfg.username:
        client.username_pw_set(cfg.username, password)
    if cfg.tls.enabled:
        client.tls_set_context(tls_context(cfg))
        client.tls_insecure_set(cfg.tls.insecure)
    client.will_set(will_topic, b"offline", qos=1, retain=True)
    # The publisher keeps its own window; paho's limit is a guard above it.
    client.max_inflight_messages_set(cfg.max_inflight + 2)
    client.connect_timeout = 5.0
    return client
