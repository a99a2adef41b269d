"""MQTT layer pieces that need no broker: topic validation, backoff, publish properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.config.schema import AgentConfig, MqttConfig, OutboxConfig
from edge_agent.health import Counters
from edge_agent.publish.mqtt import Backoff, MqttPublisher, read_password
from edge_agent.publish.outbox import MemoryStore, Outbox, default_path


def _config(device: str, camera: str) -> dict[str, Any]:
    return {
        "device_id": device,
        "model": {"path": "m.tflite"},
        "cameras": {camera: {"source": {"type": "video", "path": "x.mp4"}}},
    }


@pytest.mark.parametrize(
    ("device", "camera"),
    [
        ("cam+1", "front"),
        ("cam#", "front"),
        ("a/b", "front"),
        ("nul\x00", "front"),
        ("", "front"),
        ("cam-1", "fr+ont"),
        ("cam-1", "#"),
        ("cam-1", "a/b"),
        ("cam-1", ""),
        ("cam-1", "x\x00"),
    ],
)
def test_topic_segments_rejected(device: str, camera: str) -> None:
    with pytest.raises(ValidationError):
        AgentConfig.model_validate(_config(device, camera))


def test_topic_segments_accepted() -> None:
    cfg = AgentConfig.model_validate(_config("cam-01_b.2", "Front Door"))
    assert cfg.device_id == "cam-01_b.2"


@pytest.mark.parametrize("prefix", ["a/+/b", "#", ""])
def test_bad_topic_prefix(prefix: str) -> None:
    with pytest.raises(ValidationError):
        MqttConfig(topic_prefix=prefix)


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 30.0)
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(30.0, 2.0**i) for i in range(12)]
    assert all(0.5 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays}) > 6  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.next_delay() <= 1.0


@pytest.mark.parametrize(
    ("protocol", "expiry", "expected"),
    [
        ("5", "1h", 3600),
        ("5", None, None),
        ("3.1.1", 60, None),
    ],
)
def test_message_expiry_property(protocol: str, expiry: object, expected: int | None) -> None:
    cfg = MqttConfig.model_validate({"protocol": protocol, "message_expiry": expiry})
    counters = Counters()
    pub = MqttPublisher(cfg, "dev", counters, Outbox(MemoryStore(), OutboxConfig(), counters))
    props = pub._properties()
    assert (props.MessageExpiryInterval if props is not None else None) == expected


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", "from-env")
    assert read_password(MqttConfig()) == "from-env"
    (tmp_path / "pw").write_text("from-file\n")
    assert read_password(MqttConfig(password_file=tmp_path / "pw")) == "from-file"


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o640, True), (0o644, True)])
def test_password_file_readable_by_others_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(mode)
    assert read_password(MqttConfig(password_file=pw)) == "s3cret"
    said = [
        r.getMessage() for r in caplog.records if "can be read by other users" in r.getMessage()
    ]
    assert bool(said) == warned
    assert all("s3cret" not in line and "chmod 600" in line for line in said)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/edge-agent"}, "/var/lib/edge-agent/outbox-d1.db"),
        ({"STATE_DIRECTORY": "/a:/b"}, "/a/outbox-d1.db"),
        ({"XDG_STATE_HOME": "/x"}, "/x/edge-agent/outbox-d1.db"),
    ],
)
def test_default_outbox_path(env: dict[str, str], expected: str) -> None:
    assert str(default_path("d1", env)) == expected
