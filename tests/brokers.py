"""Private brokers other than a lone Mosquitto, on free ports, each restartable with its data:
NATS with its MQTT listener, RabbitMQ with its MQTT plugin, and a Mosquitto "site" broker
bridged to a "central" one. A missing broker binary raises (the test fails, never skips)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import Broker, free_port, mosquitto_binary

READY_TIMEOUT = 120.0  # seconds a broker may take to answer MQTT (RabbitMQ boots in ~10 s)


def _find(what: str, env: str, patterns: list[str]) -> str:
    """The first existing path among `$env` (when set) or `patterns` (globs), else raise."""
    override = os.environ.get(env)
    candidates = [override] if override else [p for pat in patterns for p in sorted(glob.glob(pat))]
    found = next((p for p in candidates if p and Path(p).exists()), None)
    if found is None:
        raise RuntimeError(f"{what} is not installed (looked for {override or patterns})")
    return found


def nats_binary() -> str:
    """Path of nats-server (EDGE_AGENT_NATS overrides)."""
    which = shutil.which("nats-server") or ""
    return _find("nats-server", "EDGE_AGENT_NATS", [which, "/usr/sbin/nats-server"])


def rabbitmq_sbin() -> Path:
    """RabbitMQ's own sbin folder (not Debian's wrapper, which switches user and drops the
    environment that makes the node private); EDGE_AGENT_RABBITMQ overrides."""
    pattern = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"
    return Path(_find("rabbitmq-server", "EDGE_AGENT_RABBITMQ", [pattern]))


def mqtt_answers(port: int) -> bool:
    """True when an MQTT 3.1.1 CONNECT on `port` gets a CONNACK accepting it."""
    client_id = b"edge-agent-ready-probe"
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return answer[:1] == b"\x20" and answer[3:4] == b"\x00"


def wait_ready(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until the broker answers MQTT on `port`; raise if it exits or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering MQTT")
        if mqtt_answers(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer MQTT on port {port}")


def end_group(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill what is left of a broker started in its own session (its process group)."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class Setup:
    """A broker arrangement for one delivery test: the agent publishes on `agent_port`, the
    subscriber listens on `subscriber_port`, and `stop_target`/`start_target` restart the
    broker the messages have to cross last."""

    name = ""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"edge-agent-{self.name}-"))
        self.agent_port = self.subscriber_port = 0

    def start(self) -> float:
        """Start every broker; seconds until they all answer MQTT."""
        return self.start_target()

    def start_target(self) -> float:
        """Start the restartable broker; seconds until it answers MQTT."""
        raise NotImplementedError

    def stop_target(self) -> None:
        """Stop the restartable broker (cleanly: it saves its data)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop everything and remove the data."""
        self.stop_target()
        shutil.rmtree(self.dir, ignore_errors=True)


class NatsSetup(Setup):
    """nats-server with JetStream (MQTT sessions and QoS 1 live there) and an MQTT listener."""

    name = "nats"

    def __init__(self) -> None:
        super().__init__()
        self.agent_port = self.subscriber_port = free_port()
        self.conf = self.dir / "nats.conf"
        self.conf.write_text(
            f"server_name: edgetest_{self.agent_port}\n"
            f"listen: 127.0.0.1:{free_port()}\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.agent_port} }}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start_target(self) -> float:
        """Start nats-server on the same ports and store."""
        began = time.monotonic()
        with (self.dir / "nats.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [nats_binary(), "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_ready(self.agent_port, self.proc, "nats-server")
        return time.monotonic() - began

    def stop_target(self) -> None:
        """SIGTERM: NATS flushes JetStream and exits."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            finally:
                end_group(self.proc)
            self.proc = None


class RabbitSetup(Setup):
    """A private RabbitMQ node (own node name, ports, data, cookie) with the MQTT plugin."""

    name = "rabbitmq"

    def __init__(self) -> None:
        super().__init__()
        self.agent_port = self.subscriber_port = free_port()
        self.node = f"edgetest-{self.agent_port}@localhost"
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {free_port()}\n"
            f"mqtt.listeners.tcp.default = {self.agent_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        cookie = self.dir / ".erlang.cookie"
        cookie.write_text(f"edgetest{self.agent_port}")
        cookie.chmod(0o400)
        self.env = {
            **os.environ,
            "HOME": str(self.dir),  # the Erlang cookie is read from $HOME
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(free_port()),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start_target(self) -> float:
        """Boot the node on the same ports and data folder."""
        began = time.monotonic()
        with (self.dir / "server.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(rabbitmq_sbin() / "rabbitmq-server")],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.dir,
                start_new_session=True,
            )
        wait_ready(self.agent_port, self.proc, f"RabbitMQ node {self.node}")
        return time.monotonic() - began

    def stop_target(self) -> None:
        """`rabbitmqctl -n <node> stop`: only this node, never the system's."""
        if self.proc is None:
            return
        try:
            subprocess.run(
                [str(rabbitmq_sbin() / "rabbitmqctl"), "-n", self.node, "stop"],
                env=self.env,
                cwd=self.dir,
                capture_output=True,
                timeout=60,
                check=False,
            )
            self.proc.wait(30)
        finally:
            end_group(self.proc)
            self.proc = None


class BridgeSetup(Setup):
    """A Mosquitto "site" broker (the agent's) bridging `edge/#` out to a "central" one (the
    subscriber's), both persistent, so messages queued for the bridge survive."""

    name = "bridge"

    def __init__(self) -> None:
        super().__init__()
        self.central = Broker(persistent=True)
        bridge = (
            "connection central\n"
            f"address 127.0.0.1:{self.central.port}\n"
            "topic edge/# out 1\n"
            "cleansession false\n"
            "restart_timeout 1\n"
            "notifications false\n"
        )
        self.site = Broker(persistent=True, extra_conf=bridge)
        self.agent_port, self.subscriber_port = self.site.port, self.central.port

    def start(self) -> float:
        """Central first, then the site (its bridge connects at once)."""
        mosquitto_binary()  # fails here, before anything starts, when missing
        began = time.monotonic()
        self.start_target()
        self.site.start()
        wait_ready(self.site.port, _proc(self.site), "site mosquitto")
        return time.monotonic() - began

    def start_target(self) -> float:
        """Start the central broker with its saved state."""
        began = time.monotonic()
        self.central.start()
        wait_ready(self.central.port, _proc(self.central), "central mosquitto")
        return time.monotonic() - began

    def stop_target(self) -> None:
        """Stop the central broker (it saves its sessions and retained messages)."""
        self.central.stop()

    def close(self) -> None:
        """Stop both brokers and remove their data."""
        self.site.stop()
        self.central.stop()
        for folder in (self.site.dir, self.central.dir, self.dir):
            shutil.rmtree(folder, ignore_errors=True)


def _proc(broker: Broker) -> subprocess.Popen[bytes]:
    if broker.proc is None:
        raise RuntimeError("broker is not running")
    return broker.proc


SETUPS: dict[str, type[Setup]] = {
    NatsSetup.name: NatsSetup,
    RabbitSetup.name: RabbitSetup,
    BridgeSetup.name: BridgeSetup,
}
