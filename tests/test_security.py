"""Issue acceptance: TLS, mutual TLS and username/password with an ACL, against real brokers.

Certificates are made here with openssl. Each broker has a TLS (or authenticated) listener for
the agent and a second listener for the test's subscriber.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    IMAGES,
    SSD,
    SSD_LABELS,
    AgentProcess,
    Broker,
    Subscriber,
    base_config,
    free_port,
    write_config,
)

PASSWORD = "s3cret-Pa55"
N_IMAGES = len([p for p in IMAGES.iterdir() if p.is_file()])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=folder,
    )


def _signed(folder: Path, name: str, ca: str, san: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=folder,
    )


def _readable_dir(prefix: str) -> Path:
    """A folder the broker's unprivileged user can read (pytest's tmp is root-only)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def pki() -> Path:
    folder = _readable_dir("edge-agent-pki-")
    _ca(folder, "ca")
    _ca(folder, "rogue-ca")
    _signed(folder, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _signed(folder, "client", "ca", "DNS:edge-agent")
    for f in folder.iterdir():
        f.chmod(0o644)  # mosquitto drops to its own user
    return folder


def _tls_broker(pki: Path, require_cert: bool) -> tuple[Broker, int]:
    agent_port = free_port()
    broker = Broker(
        extra_conf=(
            f"listener {agent_port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\n"
            f"keyfile {pki}/server.key\nrequire_certificate {str(require_cert).lower()}\n"
        )
    )
    return broker.start(), agent_port


def _auth_broker(device: str) -> Broker:
    tmp = _readable_dir("edge-agent-auth-")
    pw = tmp / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "edge", PASSWORD], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "watcher", "watch"], check=True)
    acl = tmp / "acl"
    acl.write_text(f"user edge\ntopic write edge/{device}/#\n\nuser watcher\ntopic read edge/#\n")
    for f in (pw, acl):
        f.chmod(0o644)
    broker = Broker(extra_conf=f"password_file {pw}\nacl_file {acl}\n")
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    )
    return broker.start()


def _config(port: int, device: str, **mqtt: Any) -> dict[str, Any]:
    cfg = base_config(
        port,
        SSD,
        SSD_LABELS,
        {"stills": {"source": {"type": "images", "path": str(IMAGES)}, "publish_empty": True}},
    )
    cfg["device_id"] = device
    cfg["mqtt"].update(mqtt)
    cfg["runtime"] = {"shutdown_timeout": 1}
    return cfg


def _delivered(sub: Subscriber, device: str) -> set[int]:
    return {m.json()["frame"] for m in sub.on(f"{device}/stills/detections")}


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    items: list[Any] = []
    yield items
    for item in reversed(items):
        if isinstance(item, AgentProcess):
            item.kill()
        elif isinstance(item, Subscriber):
            item.close()
        elif isinstance(item, Broker):
            item.stop()


TLS_CASES = [
    ("server certificate", False, {}),
    ("mutual TLS", True, {"cert_file": "client.crt", "key_file": "client.key"}),
]


@pytest.mark.parametrize(
    ("require_cert", "client"), [c[1:] for c in TLS_CASES], ids=[c[0] for c in TLS_CASES]
)
def test_tls_connects_and_delivers(
    pki: Path, tmp: Path, cleanup: list[Any], require_cert: bool, client: dict[str, str]
) -> None:
    broker, tls_port = _tls_broker(pki, require_cert)
    cleanup.append(broker)
    sub = Subscriber(broker.port, "edge/#")
    cleanup.append(sub)
    tls = {"enabled": True, "ca_file": str(pki / "ca.crt")}
    tls.update({k: str(pki / v) for k, v in client.items()})
    agent = AgentProcess(write_config(tmp, _config(tls_port, "tls-1", tls=tls)))
    cleanup.append(agent)
    assert agent.wait(60) == 0, agent.output[-2000:]
    assert "mqtts://" in agent.output
    assert sub.wait_for(lambda s: len(_delivered(s, "tls-1")) == N_IMAGES, 10)


@pytest.mark.parametrize("how", ["environment", "password_file"])
def test_username_password_with_acl(tmp: Path, cleanup: list[Any], how: str) -> None:
    device = f"acl-{how[:3]}"
    broker = _auth_broker(device)
    cleanup.append(broker)
    sub = Subscriber(broker.port, "edge/#", username="watcher", password="watch")
    cleanup.append(sub)
    mqtt: dict[str, Any] = {"username": "edge"}
    env = {}
    if how == "environment":
        env["EDGE_AGENT_MQTT_PASSWORD"] = PASSWORD
    else:
        (tmp / "pw.txt").write_text(PASSWORD + "\n")
        mqtt["password_file"] = str(tmp / "pw.txt")
    agent = AgentProcess(
        write_config(tmp, _config(broker.port, device, **mqtt)), "--log-level", "debug", env=env
    )
    cleanup.append(agent)
    assert agent.wait(60) == 0, agent.output[-2000:]
    assert sub.wait_for(lambda s: len(_delivered(s, device)) == N_IMAGES, 10)
    assert PASSWORD not in agent.output


NEGATIVE_CASES = [
    (
        "wrong password",
        "auth",
        {"username": "edge"},
        {"EDGE_AGENT_MQTT_PASSWORD": "wrong"},
        "refused the connection: Not authorized",
    ),
    ("no credentials", "auth", {}, {}, "refused the connection: Not authorized"),
    (
        "untrusted server certificate",
        "tls",
        {"tls": {"enabled": True, "ca_file": "rogue-ca.crt"}},
        {},
        "TLS certificate not trusted",
    ),
    (
        "no client certificate for mutual TLS",
        "mtls",
        {"tls": {"enabled": True, "ca_file": "ca.crt"}},
        {},
        "closed the connection before accepting it (does it require a client certificate?",
    ),
]


@pytest.mark.parametrize(
    ("kind", "mqtt", "env", "message"),
    [c[1:] for c in NEGATIVE_CASES],
    ids=[c[0] for c in NEGATIVE_CASES],
)
def test_rejected_connection_is_reported_and_retried(
    pki: Path,
    tmp: Path,
    cleanup: list[Any],
    kind: str,
    mqtt: dict[str, Any],
    env: dict[str, str],
    message: str,
) -> None:
    if kind == "auth":
        broker = _auth_broker("neg-1")
        port = broker.port
    else:
        broker, port = _tls_broker(pki, require_cert=kind == "mtls")
        mqtt = {"tls": {**mqtt["tls"], "ca_file": str(pki / mqtt["tls"]["ca_file"])}}
    cleanup.append(broker)
    cfg = _config(port, "neg-1", **mqtt)
    cfg["mqtt"]["reconnect_max_delay"] = 1
    agent = AgentProcess(write_config(tmp, cfg), env=env)
    cleanup.append(agent)
    assert agent.wait_for_line(message, 20), agent.output[-2000:]
    time.sleep(4)
    assert agent.proc.poll() is None, "the agent gave up or crashed"
    failures = agent.count("broker 127.0.0.1")
    assert failures >= 1
    assert "Traceback" not in agent.output
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert "messages stay in the outbox" in agent.output
