"""Acceptance: bad input gets one located error line and exit code 2, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, SSD, SSD_LABELS, VIDEO, cli


def _config(tmp: Path, body: str) -> Path:
    path = tmp / "agent.yaml"
    path.write_text(body)
    return path


GOOD = f"""\
device_id: t1
mqtt: {{host: 127.0.0.1, port: 1}}
model:
  path: {SSD}
  labels: {SSD_LABELS}
cameras:
  front:
    source: {{type: video, path: {VIDEO}}}
"""


def _setup_files(tmp: Path) -> dict[str, str]:
    (tmp / "not_a_model.tflite").write_text("hello, I am text\n" * 10)
    (tmp / "three_labels.txt").write_text("person\ncar\ndog\n")
    (tmp / "broken.mp4").write_bytes(b"\x00\x01garbage" * 100)
    return {"tmp": str(tmp)}


# (case id, config text, command, expected line number, regex the message must match)
CASES = [
    (
        "unknown key with suggestion",
        GOOD.replace("  labels:", "  lables:"),
        "check-config",
        5,
        r"model\.lables: unknown key \(did you mean 'labels'\?\)",
    ),
    (
        "unknown nested key",
        GOOD.replace("{type: video,", "{type: video, relatime: true,"),
        "check-config",
        8,
        r"cameras\.front\.source\.relatime: unknown key \(did you mean 'realtime'\?\)",
    ),
    (
        "wrong type",
        GOOD.replace("port: 1}", "port: eighty}"),
        "check-config",
        2,
        r"mqtt\.port: .*integer",
    ),
    (
        "out of range",
        GOOD + "    detect: {min_score: 1.5}\n",
        "check-config",
        9,
        r"cameras\.front\.detect\.min_score: .*less than or equal to 1",
    ),
    (
        "unknown source type",
        GOOD.replace("type: video", "type: webcam"),
        "check-config",
        8,
        r"cameras\.front\.source: unknown type 'webcam'",
    ),
    (
        "duplicate key",
        GOOD + "device_id: t2\n",
        "check-config",
        9,
        r"device_id: duplicate key \(first defined on line 1\)",
    ),
    ("yaml syntax", GOOD + "cameras: [unclosed\n", "check-config", 10, r"invalid YAML"),
    (
        "topic wildcard in camera name",
        GOOD.replace("  front:", "  front/+:"),
        "check-config",
        7,
        r"cameras\.front/\+: .*not allowed in an MQTT topic",
    ),
    (
        "missing model file",
        GOOD.replace(str(SSD), "{tmp}/nope.tflite"),
        "run",
        4,
        r"model\.path: .*nope\.tflite: model file not found",
    ),
    (
        "not a tflite model",
        GOOD.replace(str(SSD), "{tmp}/not_a_model.tflite"),
        "run",
        4,
        r"model\.path: .*not a TFLite model",
    ),
    (
        "labels do not match classes",
        GOOD.replace(str(SSD_LABELS), "{tmp}/three_labels.txt"),
        "run",
        5,
        r"model\.labels: .*labels file has 3 entries but the model has 90 classes",
    ),
    (
        "unreadable video",
        GOOD.replace(str(VIDEO), "{tmp}/broken.mp4"),
        "run",
        8,
        r"cameras\.front\.source: cannot decode video file .*broken\.mp4",
    ),
    (
        "missing video",
        GOOD.replace(str(VIDEO), "{tmp}/absent.mp4"),
        "run",
        8,
        r"cameras\.front\.source: video file not found",
    ),
    (
        "edge tpu runtime missing",
        GOOD.replace("  labels:", "  delegate: edgetpu\n  labels:"),
        "run",
        5,
        r"model\.delegate: cannot load the edgetpu delegate \(libedgetpu\.so\.1.*"
        r"install the Edge TPU runtime",
    ),
    (
        "unknown label in filter",
        GOOD + "    detect: {labels: [persn]}\n",
        "run",
        9,
        r"cameras\.front\.detect\.labels\.0: label 'persn' is not one of the model's 90 labels "
        r"\(did you mean 'person'\?\)",
    ),
]


@pytest.mark.parametrize(
    ("body", "command", "line", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_located(tmp: Path, body: str, command: str, line: int, pattern: str) -> None:
    subs = _setup_files(tmp)
    path = _config(tmp, body.replace("{tmp}", subs["tmp"]))
    args = ["check-config", str(path)] if command == "check-config" else ["run", "-c", str(path)]
    proc = cli(*args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{path}:{line}:" in proc.stderr, proc.stderr
    assert re.search(pattern, proc.stderr), proc.stderr


def test_missing_config_file(tmp: Path) -> None:
    proc = cli("check-config", str(tmp / "absent.yaml"))
    assert proc.returncode == 2 and "cannot read config file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("example", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(example: Path) -> None:
    proc = cli("check-config", str(example))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and re.match(r"edge-agent \d+\.\d+\.\d+", proc.stdout)
