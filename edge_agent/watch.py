"""`edge-agent watch`: a small subscriber that prints what devices publish, one line a message.

Every mistake a user can make here (a wrong host or port, an invalid topic filter, a broker that
wants a password or TLS) is reported as one `UserError` line naming the option to fix.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import UserError

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
CONNECT_TIMEOUT = 10.0  # seconds for TCP + TLS + CONNACK + SUBACK; a black-hole host must not hang
KEEPALIVE = 30


@dataclass(frozen=True)
class WatchOptions:
    """What to connect to and when to stop."""

    host: str = "127.0.0.1"
    port: int | None = None  # None: 8883 with TLS, else 1883
    topic: str = "edge/#"
    count: int = 0
    until_offline: bool = False
    timeout: float = 0.0
    username: str | None = None
    password_env: str | None = None
    tls: bool = False
    cafile: Path | None = None
    connect_timeout: float = CONNECT_TIMEOUT

    @property
    def use_tls(self) -> bool:
        """TLS is on with --tls or implied by --cafile."""
        return self.tls or self.cafile is not None

    @property
    def broker_port(self) -> int:
        """The port to connect to."""
        if self.port is not None:
            return self.port
        return DEFAULT_TLS_PORT if self.use_tls else DEFAULT_PORT

    @property
    def where(self) -> str:
        """The broker as named in error messages."""
        return f"broker {self.host}:{self.broker_port}"


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the `watch` options on its subparser (values are checked later, as UserErrors)."""
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="broker port (default 1883, with TLS 8883)")
    parser.add_argument("--topic", default="edge/#", help="topic filter (default edge/#)")
    parser.add_argument("--count", type=int, default=0, help="exit after N messages")
    parser.add_argument(
        "--until-offline",
        action="store_true",
        help="exit when a device publishes a (non-retained) offline status",
    )
    parser.add_argument("--timeout", type=float, default=0, help="exit after N seconds")
    parser.add_argument("--username", help="MQTT user name")
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        help="name of the environment variable holding the password",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system CA store)")
    parser.add_argument(
        "--cafile", type=Path, help="CA certificate (PEM) of the broker; implies --tls"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        help=f"seconds to wait for the broker (default {CONNECT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    """Run `watch` from parsed arguments (options absent from the parser take their defaults)."""
    defaults = WatchOptions()
    fields = WatchOptions.__dataclass_fields__
    values = {name: getattr(args, name, getattr(defaults, name)) for name in fields}
    return watch_with(WatchOptions(**values))


def watch(
    host: str, port: int | None, topic: str, count: int, until_offline: bool, timeout: float
) -> int:
    """Subscribe and print until count/offline/timeout; returns 0, or 1 if nothing arrived."""
    return watch_with(WatchOptions(host, port, topic, count, until_offline, timeout))


def summarize(topic: str, payload: bytes) -> str:
    """One human line for a message."""
    try:
        body = json.loads(payload)
    except ValueError:
        return f"{topic}: {payload[:80].decode('utf-8', 'replace')}"
    if not isinstance(body, dict):
        return f"{topic}: {body!r}"
    dets = body.get("detections")
    if isinstance(dets, list):
        items = ", ".join(f"{d.get('label')} {d.get('score', 0):.2f}" for d in dets[:6])
        more = f" +{len(dets) - 6}" if len(dets) > 6 else ""
        extra = ""
        if "image" in body or "crops" in body:
            why = ", ".join(str(r) for r in body.get("reasons") or []) or "sample"
            what = "jpeg" if "image" in body else f"{len(body.get('crops') or [])} crops"
            extra = f" [{why}; {what}]"
        return f"{topic} frame {body.get('frame')}: {items or '-'}{more}{extra}"
    if "counters" in body:
        cams = body.get("cameras")
        states = ""
        if isinstance(cams, dict) and cams:
            shown = ", ".join(
                f"{n} {c.get('state')}" for n, c in cams.items() if isinstance(c, dict)
            )
            states = f"; cameras: {shown}"
        return f"{topic}: {len(body['counters'])} counters{states}"
    if topic.endswith("/state") and "state" in body:
        reason = f" ({body['reason']})" if body.get("reason") else ""
        return f"{topic}: {body['state']}{reason}"
    return f"{topic}: {str(body)[:120]}"


def check_filter(topic: str) -> None:
    """UserError unless topic is a valid MQTT subscription filter."""
    if not topic:
        raise UserError("empty topic filter; use e.g. edge/# for everything", where="--topic")
    where = f"--topic {topic!r}"
    if "\0" in topic or len(topic.encode("utf-8")) > 65535:
        raise UserError(
            "not a valid MQTT topic filter (NUL or longer than 65535 bytes)", where=where
        )
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise UserError("'#' must be a whole level and the last one (e.g. edge/#)", where=where)
        if "+" in level and level != "+":
            raise UserError("'+' must be a whole level (e.g. edge/+/status)", where=where)


def check_options(opts: WatchOptions) -> None:
    """UserError for option values that cannot work, before touching the network."""
    if not opts.host or any(c.isspace() for c in opts.host):
        raise UserError("not a host name or address", where=f"--host {opts.host!r}")
    if not 1 <= opts.broker_port <= 65535:
        raise UserError("must be a TCP port 1..65535", where=f"--port {opts.broker_port}")
    check_filter(opts.topic)
    if opts.count < 0:
        raise UserError(
            "must be 0 (no limit) or a number of messages", where=f"--count {opts.count}"
        )
    if not opts.timeout >= 0:  # also catches nan
        raise UserError(
            "must be 0 (no limit) or a number of seconds", where=f"--timeout {opts.timeout:g}"
        )
    if not opts.connect_timeout > 0:
        raise UserError(
            "must be a positive number of seconds",
            where=f"--connect-timeout {opts.connect_timeout:g}",
        )


def _password(opts: WatchOptions) -> str | None:
    if opts.password_env is None:
        return None
    if not opts.username:
        raise UserError("a password needs a user name: add --username", where="--password-env")
    value = os.environ.get(opts.password_env)
    if value is None:
        raise UserError(
            f"environment variable {opts.password_env} is not set (export it with the password)",
            where="--password-env",
        )
    return value


def _tls(client: paho.Client, opts: WatchOptions) -> None:
    cafile = opts.cafile
    if cafile is not None:
        if not cafile.is_file():
            what = "is a folder, not a file" if cafile.is_dir() else "not found"
            raise UserError(f"CA certificate {what}", where=f"--cafile {cafile}")
        try:
            client.tls_set(ca_certs=str(cafile))
        except (ssl.SSLError, OSError) as exc:
            raise UserError(
                f"not a readable PEM CA certificate ({getattr(exc, 'reason', None) or exc})",
                where=f"--cafile {cafile}",
            ) from None
    else:
        client.tls_set()  # the system CA store


def _client(opts: WatchOptions, events: queue.Queue[tuple[str, Any]]) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect_timeout = opts.connect_timeout
    password = _password(opts)
    if opts.username:
        client.username_pw_set(opts.username, password)
    if opts.use_tls:
        _tls(client, opts)

    def on_connect(c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            c.subscribe(opts.topic, qos=1)  # on every (re)connect: the session is clean
        events.put(("connect", rc))

    client.on_connect = on_connect
    client.on_disconnect = lambda _c, _u, _f, rc, _p: events.put(("disconnect", rc))
    client.on_subscribe = lambda _c, _u, _m, codes, _p: events.put(("subscribe", codes))
    client.on_message = lambda _c, _u, msg: events.put(("message", msg))
    return client


def _open(client: paho.Client, opts: WatchOptions) -> None:
    """TCP (and TLS) connect, every failure as one line naming what to check."""
    where = opts.where
    try:
        client.connect(opts.host, opts.broker_port, keepalive=KEEPALIVE)
    except socket.gaierror as exc:
        raise UserError(
            f"cannot resolve the host name: {exc.strerror} (check --host)",
            where=f"--host {opts.host}",
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise UserError(
            f"TLS certificate not trusted: {exc.verify_message} "
            "(give the broker's CA with --cafile)",
            where=where,
        ) from None
    except ssl.SSLError as exc:
        raise UserError(
            f"TLS handshake failed: {exc.reason or exc} "
            "(is this a TLS port? check --port and --tls)",
            where=where,
        ) from None
    except ConnectionRefusedError:
        raise UserError(
            "connection refused: no broker listens there (is it running? check --host and --port)",
            where=where,
        ) from None
    except TimeoutError:
        raise UserError(
            f"no answer within {opts.connect_timeout:g} s (host down, or a firewall drops the "
            "traffic? check --host and --port)",
            where=where,
        ) from None
    except ConnectionResetError:
        if not opts.use_tls:
            raise UserError("connection reset (check --host and --port)", where=where) from None
        # A plain MQTT listener drops a TLS ClientHello as a malformed packet.
        raise UserError(
            "TLS handshake failed: the connection was reset (is this a plain MQTT port? "
            "then drop --tls/--cafile, or use the broker's TLS port)",
            where=where,
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot connect: {exc.strerror or exc} (check --host and --port)", where=where
        ) from None


def _refused(opts: WatchOptions, rc: Any) -> UserError:
    reason = str(rc).lower()
    if opts.username:
        hint = (
            f"check --username and the password in ${opts.password_env}"
            if opts.password_env
            else "check --username; add --password-env if the account has a password"
        )
    else:
        hint = "the broker requires a login: add --username and --password-env"
    if "authori" in reason or "user name or password" in reason:
        return UserError(f"connection refused: {reason} ({hint})", where=opts.where)
    return UserError(f"connection refused: {reason}", where=opts.where)


def _closed_early(opts: WatchOptions) -> UserError:
    hint = (
        "does it require a client certificate?"
        if opts.use_tls
        else "not an MQTT broker, or a TLS port: then add --tls"
    )
    return UserError(
        f"the broker closed the connection before accepting it ({hint})", where=opts.where
    )


def _await_subscription(events: queue.Queue[tuple[str, Any]], opts: WatchOptions) -> None:
    """Wait for CONNACK and SUBACK; messages that arrive meanwhile go back in the queue."""
    deadline = time.monotonic() + opts.connect_timeout
    early: list[tuple[str, Any]] = []
    try:
        while True:
            try:
                kind, value = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise UserError(
                    f"no MQTT answer within {opts.connect_timeout:g} s (is this an MQTT port? "
                    "a TLS listener needs --tls)",
                    where=opts.where,
                ) from None
            if kind == "connect" and value.is_failure:
                raise _refused(opts, value)
            if kind == "disconnect":
                raise _closed_early(opts)
            if kind == "subscribe":
                failed = [code for code in value if code.is_failure]
                if failed:
                    raise UserError(
                        f"the broker refused the subscription: {str(failed[0]).lower()} "
                        "(check the account's ACL, or choose another --topic)",
                        where=f"--topic {opts.topic!r}",
                    )
                return
            if kind == "message":
                early.append((kind, value))
    finally:
        for item in early:
            events.put(item)


def watch_with(opts: WatchOptions) -> int:
    """Connect, subscribe, print until count/offline/timeout; 0, or 1 if nothing arrived."""
    check_options(opts)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = _client(opts, events)
    _open(client, opts)
    client.loop_start()
    try:
        _await_subscription(events, opts)
        return _print_messages(events, opts)
    finally:
        client.disconnect()
        client.loop_stop()


def _print_messages(events: queue.Queue[tuple[str, Any]], opts: WatchOptions) -> int:
    seen = 0
    deadline = time.monotonic() + opts.timeout if opts.timeout > 0 else None
    while deadline is None or time.monotonic() < deadline:
        try:
            kind, msg = events.get(timeout=0.2)
        except queue.Empty:
            continue
        if kind != "message":
            continue  # reconnects are paho's business; on_connect subscribes again
        line = summarize(msg.topic, msg.payload)
        print(f"{line} (retained)" if msg.retain else line, flush=True)
        seen += 1
        if opts.count and seen >= opts.count:
            break
        if (
            opts.until_offline
            and msg.topic.endswith("/status")
            and msg.payload == b"offline"
            and not msg.retain
        ):
            break
    return 0 if seen else 1
