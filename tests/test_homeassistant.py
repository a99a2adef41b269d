"""Home Assistant discovery: topics, unique ids, label choice and removal (pure); every payload
validated by Home Assistant's own MQTT discovery code (a separate venv, scripts/ha-venv.sh); and
two real agent runs against a private broker: configs appear, a removed camera's are cleared."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import __version__
from edge_agent.config.schema import AgentConfig, ModelConfig
from edge_agent.control.homeassistant import (
    AUTO_LABELS_MAX,
    announce,
    counted_labels,
    discovery_messages,
    load_topics,
    node_id,
    removal_messages,
    save_topics,
    slug,
    state_file,
)
from edge_agent.detect.detector import Detector
from edge_agent.publish.payloads import OutMessage, Topics
from tests.helpers import (
    IMAGES,
    ROOT,
    SSD,
    SSD_LABELS,
    Broker,
    Subscriber,
    base_config,
    run_to_end,
)

TOPICS = Topics("edge", "dev-1")
LABELS = ["???", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
          "boat", "traffic light", "fire hydrant", "cell phone", "cell_phone"]  # fmt: skip
BOX = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
VIDEO = {"type": "video", "path": "clip.mp4"}
NODE = "edge-agent_dev-1"
YARD = "back-yard.1"  # not a valid discovery id as it is: slugged with a hash


def agent_config(cameras: dict[str, Any], **extra: Any) -> AgentConfig:
    """A validated config (validation touches no file)."""
    body = {"device_id": "dev-1", "model": {"path": "m.tflite"}, "cameras": cameras, **extra}
    return AgentConfig.model_validate(body)


def three_cameras() -> dict[str, Any]:
    """Listed labels, zones and motion; auto labels without motion; no tracking at all."""
    return {
        "front": {
            "source": VIDEO,
            "motion": {"enabled": True},
            "objects": {"person": {}, "cell phone": {}, "*": {"min_score": 0.8}},
            "zones": {"drive": {"polygon": BOX, "labels": ["car"]}, "porch": {"polygon": BOX}},
        },
        YARD: {"source": {"type": "images", "path": "imgs"}, "zones": {"lawn": {"polygon": BOX}}},
        "garage": {"source": VIDEO, "track": {"enabled": False}},
    }


def by_topic(messages: list[OutMessage]) -> dict[str, dict[str, Any]]:
    """Discovery payloads by config topic."""
    return {m.topic: json.loads(m.payload) for m in messages}


def object_ids(messages: list[OutMessage], camera: str | None = None) -> set[str]:
    """`<component>/<object_id>` of each config topic (optionally of one camera's entities)."""
    out = set()
    for m in messages:
        prefix, component, node, object_id, last = m.topic.split("/")
        assert (prefix, node, last) == ("homeassistant", NODE, "config")
        if camera is None or object_id.startswith(f"{slug(camera)}_"):
            out.add(f"{component}/{object_id}")
    return out


YARD_ID = slug(YARD)
AUTO = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
        "traffic_light"]  # fmt: skip


@pytest.mark.parametrize(
    ("camera", "expected"),
    [
        (
            "front",
            {"sensor/front_count_person", "binary_sensor/front_occupancy_person",
             "sensor/front_count_cell_phone", "binary_sensor/front_occupancy_cell_phone",
             "sensor/front_count_car", "binary_sensor/front_occupancy_car",
             "sensor/front_zone_drive_count_car",
             "sensor/front_zone_porch_count_person", "sensor/front_zone_porch_count_cell_phone",
             "sensor/front_zone_porch_count_car",
             "binary_sensor/front_motion", "image/front_snapshot",
             "sensor/front_state", "sensor/front_fps", "sensor/front_inference_ms"},
        ),
        (
            YARD,
            {*(f"sensor/{YARD_ID}_count_{label}" for label in AUTO),
             *(f"binary_sensor/{YARD_ID}_occupancy_{label}" for label in AUTO),
             *(f"sensor/{YARD_ID}_zone_lawn_count_{label}" for label in AUTO),
             f"image/{YARD_ID}_snapshot", f"sensor/{YARD_ID}_state", f"sensor/{YARD_ID}_fps",
             f"sensor/{YARD_ID}_inference_ms"},
        ),
        ("garage", {"image/garage_snapshot", "sensor/garage_state", "sensor/garage_fps",
                    "sensor/garage_inference_ms"}),
    ],
)  # fmt: skip
def test_entities_per_camera(camera: str, expected: set[str]) -> None:
    messages = discovery_messages(agent_config(three_cameras()), TOPICS, LABELS, "1.2", "m")
    assert object_ids(messages, camera) == expected


def test_payloads_topics_and_unique_ids() -> None:
    cfg = agent_config(three_cameras())
    messages = discovery_messages(cfg, TOPICS, LABELS, "1.2", "m.tflite")
    device = {"cpu", "memory", "cpu_temperature", "disk_free", "outbox", "uptime", "warnings"}
    assert {f"sensor/{d}" for d in device} <= object_ids(messages)
    assert all(m.retain and m.qos == 1 and m.kind == "discovery" for m in messages)
    payloads = by_topic(messages)
    assert len(payloads) == len(messages)  # one message per topic
    unique_ids = [p["unique_id"] for p in payloads.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for topic, body in payloads.items():
        assert body["unique_id"] == f"{NODE}_{topic.split('/')[3]}"
        assert body["availability_topic"] == "edge/dev-1/status"
        assert (body["payload_available"], body["payload_not_available"]) == ("online", "offline")
        assert body["device"] == {
            "identifiers": ["edge-agent_dev-1"], "name": "dev-1", "manufacturer": "edge-agent",
            "model": "edge-agent", "sw_version": "1.2", "hw_version": "m.tflite",
        }  # fmt: skip
    root = "homeassistant/{}/edge-agent_dev-1/{}/config"
    count = payloads[root.format("sensor", "front_count_cell_phone")]
    assert count["state_topic"] == "edge/dev-1/front/count/cell_phone"
    assert (count["state_class"], count["unit_of_measurement"]) == ("measurement", "objects")
    occupancy = payloads[root.format("binary_sensor", "front_occupancy_person")]
    assert occupancy["state_topic"] == "edge/dev-1/front/count/person"
    assert occupancy["device_class"] == "occupancy"
    zone = payloads[root.format("sensor", f"{YARD_ID}_zone_lawn_count_traffic_light")]
    assert zone["state_topic"] == f"edge/dev-1/{YARD}/zones/lawn/count/traffic_light"
    motion = payloads[root.format("binary_sensor", "front_motion")]
    assert (motion["state_topic"], motion["device_class"]) == ("edge/dev-1/front/motion", "motion")
    image = payloads[root.format("image", "garage_snapshot")]
    assert image["image_topic"] == "edge/dev-1/garage/snapshot"
    assert image["content_type"] == "image/jpeg"
    cpu = payloads[root.format("sensor", "cpu")]
    assert (cpu["state_topic"], cpu["entity_category"]) == ("edge/dev-1/stats", "diagnostic")
    # Stable across restarts: the same config gives the same topics and payloads.
    again = discovery_messages(cfg, TOPICS, LABELS, "1.2", "m.tflite")
    assert [(m.topic, m.payload) for m in again] == [(m.topic, m.payload) for m in messages]


def test_discovery_prefix_and_node_id_follow_the_config() -> None:
    cfg = agent_config(
        {"cam.1": {"source": VIDEO}}, device_id="pi 4", homeassistant={"discovery_prefix": "ha/x"}
    )
    messages = discovery_messages(cfg, Topics("edge", "pi 4"), LABELS, "1", "m")
    node = node_id("pi 4")
    assert node.startswith("edge-agent_pi_4_") and node != node_id("pi_4")
    assert all(m.topic.startswith("ha/x/") and f"/{node}/" in m.topic for m in messages)
    assert all(json.loads(m.payload)["device"]["identifiers"] == ["edge-agent_pi 4"]
               for m in messages)  # fmt: skip


@pytest.mark.parametrize(
    ("camera", "expected"),
    [
        ({"objects": {"car": {}, "person": {}}}, ["car", "person"]),
        ({"objects": {"*": {}}}, AUTO),  # every label reported: the first ones, capped
        ({}, AUTO),
        ({"zones": {"z": {"polygon": BOX, "labels": ["bus"]}}}, ["bus"]),
        ({"objects": {"person": {}}, "lines": {"l": {"points": [[0, 0], [1, 1]],
          "labels": ["car", "person"]}}}, ["person", "car"]),
        ({"objects": {"cell phone": {}, "cell_phone": {}}}, ["cell phone"]),  # one topic
        ({"objects": {"person": {}}, "track": {"enabled": False}}, []),
        ({"objects": {"person": {}}, "events": {"counts": False}}, []),
    ],
)  # fmt: skip
def test_counted_labels(camera: dict[str, Any], expected: list[str]) -> None:
    cam = agent_config({"c": {"source": VIDEO, **camera}}).cameras["c"]
    assert [label.replace(" ", "_") for label in counted_labels(cam, LABELS)] == [
        e.replace(" ", "_") for e in expected
    ]
    assert len(AUTO) == AUTO_LABELS_MAX


@pytest.mark.parametrize(
    ("text", "same"),
    [("front", True), ("Cam_2-b", True), ("back yard", False), ("é", False), ("", False)],
)
def test_slug(text: str, same: bool) -> None:
    out = slug(text)
    assert (out == text) is same
    assert out and all(c.isascii() and (c.isalnum() or c in "_-") for c in out)
    assert slug(text) == out


def test_state_file_round_trip_and_damage(tmp_path: Path, caplog: Any) -> None:
    path = state_file(tmp_path / "sub", "dev-1")
    assert path.name == "discovery-dev-1.json"
    assert load_topics(path) == set()  # never announced
    save_topics(path, {"b", "a"})
    assert load_topics(path) == {"a", "b"}
    assert not list(path.parent.glob("*.tmp"))
    for damaged in ("{not json", '{"topics": "a"}', '{"v": 1}', "[1]"):
        path.write_text(damaged)
        with caplog.at_level(logging.WARNING):
            assert load_topics(path) == set()
        assert "stale entities are not removed" in caplog.text
        caplog.clear()


def test_removal_messages() -> None:
    out = removal_messages({"t/c", "t/a", "t/b"}, {"t/b", "t/d"})
    assert [(m.topic, m.payload, m.retain, m.qos) for m in out] == [
        ("t/a", b"", True, 1),
        ("t/c", b"", True, 1),
    ]
    assert removal_messages(set(), {"x"}) == []


def test_announce_clears_what_the_config_no_longer_has(tmp_path: Path) -> None:
    full = agent_config(three_cameras())
    cameras = three_cameras()
    del cameras[YARD]
    cameras["front"]["zones"].pop("porch")
    smaller = agent_config(cameras)
    runs: list[list[OutMessage]] = []
    for cfg in (full, smaller, smaller):
        sent: list[OutMessage] = []
        announced, removed = announce(cfg, TOPICS, LABELS, "1", "m", sent.append, tmp_path)
        assert announced + removed == len(sent)
        runs.append(sent)
    first = {m.topic for m in runs[0]}
    assert all(m.payload for m in runs[0])  # nothing to remove the first time
    cleared = [m.topic for m in runs[1] if not m.payload]
    gone = object_ids(discovery_messages(full, TOPICS, LABELS, "1", "m"), YARD)
    gone |= {f"sensor/front_zone_porch_count_{x}" for x in ("person", "cell_phone", "car")}
    assert {f"{t.split('/')[1]}/{t.split('/')[3]}" for t in cleared} == gone
    assert set(cleared) <= first
    assert runs[1][: len(cleared)] == [m for m in runs[1] if not m.payload]  # removals first
    assert all(m.payload for m in runs[2])  # nothing left to remove
    assert load_topics(state_file(tmp_path, "dev-1")) == {m.topic for m in runs[2]}


# --- Home Assistant's own validation ----------------------------------------------------------

# Runs inside the Home Assistant venv: each config goes through the steps of HA's
# components/mqtt/discovery.py (topic match, abbreviations, origin schema, `~` base, platform
# "mqtt"), then the platform's DISCOVERY_SCHEMA. HA's schemas silently drop unknown keys
# (REMOVE_EXTRA), so a dropped key is reported too, and so is a sensor unit or state class its
# device class does not allow (HA only logs those). Templates are rendered with HA's engine
# against sample payloads of their topics.
VALIDATOR = r"""
import asyncio, importlib, json, sys, tempfile
from homeassistant.components.mqtt import discovery
from homeassistant.components.mqtt.abbreviations import (
    ABBREVIATIONS, DEVICE_ABBREVIATIONS, ORIGIN_ABBREVIATIONS)
from homeassistant.components.sensor import DEVICE_CLASS_STATE_CLASSES, DEVICE_CLASS_UNITS
from homeassistant.const import __version__
from homeassistant.core import HomeAssistant
from homeassistant.util.json import json_loads_object

FAILED = object()

def expand(payload):
    for key in list(payload):
        payload[ABBREVIATIONS.get(key, key)] = payload.pop(key)
    for name, table in (("device", DEVICE_ABBREVIATIONS), ("origin", ORIGIN_ABBREVIATIONS)):
        part = payload.get(name, {})
        for key in list(part):
            part[table.get(key, key)] = part.pop(key)
    if "origin" in payload:
        discovery.MQTT_ORIGIN_INFO_SCHEMA(payload["origin"])
    if "~" in payload:
        base = payload.pop("~")
        for key, value in list(payload.items()):
            if isinstance(value, str) and value and key.endswith("topic"):
                payload[key] = value.replace("~", base)
    payload["platform"] = "mqtt"
    return payload

def render(hass, template, payload):
    template.hass = hass  # as the MQTT entity does before rendering
    out = template.async_render_with_possible_json_value(payload, FAILED)
    if out is FAILED:
        raise ValueError(f"template {template.template!r} failed on {payload!r}")
    return out

def check(hass, prefix, topic, raw, samples):
    trimmed = topic.replace(prefix + "/", "", 1)
    match = discovery.TOPIC_MATCHER.fullmatch(trimmed)
    if match is None:
        raise ValueError("not a discovery topic HA accepts")
    component = match.group("component")
    if component not in discovery.SUPPORTED_COMPONENTS:
        raise ValueError(f"unsupported component {component}")
    payload = expand(json_loads_object(raw))
    module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
    config = module.DISCOVERY_SCHEMA(dict(payload))
    dropped = sorted(set(payload) - set(config) - {"platform"})  # HA's own key goes too
    if dropped:
        raise ValueError(f"keys HA ignores: {dropped}")
    if component == "sensor" and config.get("device_class"):  # what SensorEntity warns about
        kind, unit = config["device_class"], config.get("unit_of_measurement")
        if unit not in DEVICE_CLASS_UNITS.get(kind, {unit}):
            raise ValueError(f"unit {unit!r} is not one of device class {kind}")
        state = config.get("state_class")
        if state and state not in DEVICE_CLASS_STATE_CLASSES.get(kind, {state}):
            raise ValueError(f"state class {state} is not one of device class {kind}")
    renders = {}
    for key, topic_key in (("value_template", "state_topic"),
                           ("json_attributes_template", "json_attributes_topic")):
        if key in config:
            found = samples.get(config[topic_key], [])
            renders[key] = [render(hass, config[key], sample) for sample in found]
    return {"component": component, "renders": renders}

async def main(job):
    hass = HomeAssistant(tempfile.mkdtemp())  # templates render with a (bare) instance
    results = {}
    for message in job["messages"]:
        try:
            results[message["topic"]] = check(
                hass, job["prefix"], message["topic"], message["payload"], job["samples"])
        except Exception as exc:
            results[message["topic"]] = {"error": f"{type(exc).__name__}: {exc}"}
    return results

results = asyncio.run(main(json.load(sys.stdin)))
json.dump({"version": __version__, "results": results}, sys.stdout)
"""


@pytest.fixture(scope="session")
def ha_python() -> str:
    """The python of the cached Home Assistant venv (built on first use: a few minutes)."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "ha-venv.sh")], capture_output=True, text=True, timeout=1500
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot build the Home Assistant venv:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def ha_validate(
    python: str, messages: list[OutMessage], samples: dict[str, list[str]]
) -> dict[str, Any]:
    """HA's verdict on each config: {"version", "results": {topic: {error|component, renders}}}."""
    job = {
        "prefix": "homeassistant",
        "messages": [{"topic": m.topic, "payload": m.payload.decode()} for m in messages],
        "samples": samples,
    }
    proc = subprocess.run(
        [python, "-c", VALIDATOR], input=json.dumps(job), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdict: dict[str, Any] = json.loads(proc.stdout)
    errors = {t: r["error"] for t, r in verdict["results"].items() if "error" in r}
    assert not errors, json.dumps(errors, indent=1)
    return verdict


WARNING = {"kind": "drift_score", "camera": "front", "label": "person", "baseline": 0.8,
           "current": 0.5, "drop": 0.375}  # fmt: skip
FULL_STATS = {
    "v": 1, "uptime": 3600.5, "warnings": [WARNING],
    "system": {"cpu_percent": 12.5, "rss_bytes": 123456789, "cpu_temp_c": 48.2,
               "disk_free_bytes": 5000000000},
    "outbox": {"messages": 7},
    "cameras": {"front": {"fps": {"processed": 9.5}, "inference_ms": {"p50": 8.25}},
                YARD: {"fps": {"processed": 2.0}, "inference_ms": {"p50": 30.0}}},
}  # fmt: skip
NO_TEMPERATURE = {**FULL_STATS, "system": {**FULL_STATS["system"], "cpu_temp_c": None}}
NULLS = {"v": 1, "uptime": None, "system": None, "outbox": None, "warnings": None,
         "cameras": {"front": {"fps": None, "inference_ms": None}}}  # fmt: skip
STATS_SAMPLES = [FULL_STATS, {"v": 1}, NO_TEMPERATURE, NULLS]
# object id -> rendered state for each of STATS_SAMPLES ("None" is HA's unknown)
STATS_RENDERS = {
    "uptime": ["3600.5", "None", "3600.5", "None"],
    "cpu": ["12.5", "None", "12.5", "None"],
    "memory": ["123456789", "None", "123456789", "None"],
    "cpu_temperature": ["48.2", "None", "None", "None"],
    "disk_free": ["5000000000", "None", "5000000000", "None"],
    "outbox": ["7", "None", "7", "None"],
    "warnings": ["1", "0", "1", "0"],
    "front_fps": ["9.5", "None", "9.5", "None"],
    "front_inference_ms": ["8.25", "None", "8.25", "None"],
    f"{YARD_ID}_fps": ["2.0", "None", "2.0", "None"],
    "garage_fps": ["None", "None", "None", "None"],
}


@pytest.mark.slow
def test_home_assistant_accepts_every_payload(ha_python: str) -> None:
    """Every config passes HA's discovery schemas and every template renders as intended."""
    messages = discovery_messages(agent_config(three_cameras()), TOPICS, LABELS, __version__, "m")
    samples = {
        "edge/dev-1/stats": [json.dumps(body) for body in STATS_SAMPLES],
        "edge/dev-1/front/count/person": ["0", "2"],
        "edge/dev-1/front/state": [json.dumps({"v": 1, "state": "running", "since": 1.0})],
    }
    verdict = ha_validate(ha_python, messages, samples)
    assert verdict["version"] == "2024.3.3"
    results = {t.split("/")[3]: r for t, r in verdict["results"].items()}
    assert len(results) == len(messages)
    assert {r["component"] for r in results.values()} == {"sensor", "binary_sensor", "image"}
    rendered = {k: r["renders"]["value_template"] for k, r in results.items() if k in STATS_RENDERS}
    assert rendered == STATS_RENDERS
    assert results["front_occupancy_person"]["renders"]["value_template"] == ["OFF", "ON"]
    assert results["front_state"]["renders"]["value_template"] == ["running"]
    attributes = results["warnings"]["renders"]["json_attributes_template"]
    assert [json.loads(a) for a in attributes] == [
        {"warnings": [WARNING]},
        {"warnings": []},
        {"warnings": [WARNING]},
        {"warnings": []},
    ]


# --- the real agent -----------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A private mosquitto."""
    server = Broker().start()
    yield server
    server.stop()


def retained(port: int, topic: str, expected: set[str]) -> dict[str, bytes]:
    """The retained messages a new subscriber to `topic` gets (waits for `expected` topics)."""
    sub = Subscriber(port, topic)
    try:
        sub.wait_for(lambda s: expected <= {m.topic for m in s.messages}, 15)
        return {m.topic: m.payload for m in sub.messages if m.retain}
    finally:
        sub.close()


@pytest.mark.slow
def test_agent_announces_then_clears_a_removed_camera(
    broker: Broker, tmp_path: Path, ha_python: str
) -> None:
    """Run 1 (two cameras) leaves every config retained; run 2 (one camera) clears the other's."""
    images = str(IMAGES / "coco8" / "train")
    cameras = {
        "lobby": {
            "source": {"type": "images", "path": images},
            "motion": {"enabled": True},
            "objects": {"person": {"min_score": 0.4}},
            "zones": {"left": {"polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}},
        },
        "yard": {"source": {"type": "images", "path": images}},
    }
    cfg = base_config(broker.port, SSD, SSD_LABELS, cameras)
    cfg["homeassistant"] = {"enabled": True}
    labels = Detector(ModelConfig(path=SSD, labels=SSD_LABELS), 0.5).labels
    topics = Topics("edge", "test-dev")

    def expected(body: dict[str, Any]) -> dict[str, bytes]:
        messages = discovery_messages(
            AgentConfig.model_validate(body), topics, labels, __version__, SSD.name
        )
        return {m.topic: m.payload for m in messages}

    first = expected(cfg)
    run = run_to_end(broker.port, tmp_path, cfg)
    assert f"home assistant: {len(first)} entities announced" in run.proc.stderr
    assert retained(broker.port, "homeassistant/#", set(first)) == first
    state = Path(cfg["outbox"]["path"]).parent / "discovery-test-dev.json"
    assert load_topics(state) == set(first)
    # The entities' state topics are real: counts, motion and camera state are retained.
    bodies = [json.loads(p) for t, p in first.items() if "/lobby_" in t]
    states = {
        b["state_topic"] for b in bodies if b.get("state_topic", topics.stats) != topics.stats
    }
    assert len(states) == 4  # count/person (count and occupancy), the zone's count, motion, state
    assert set(retained(broker.port, "edge/test-dev/#", states)) >= states
    # HA's templates read real figures from the agent's real stats message.
    stats = [m.payload.decode() for m in run.sub.on("/stats")]
    messages = [OutMessage("x", t, p, "discovery") for t, p in first.items()]
    verdict = ha_validate(ha_python, messages, {topics.stats: stats[-1:]})
    results = verdict["results"].items()
    rendered = {t.split("/")[3]: r["renders"].get("value_template") for t, r in results}
    known = ("uptime", "cpu", "memory", "disk_free", "outbox", "lobby_fps", "lobby_inference_ms")
    assert all(float(rendered[k][0]) >= 0 for k in known), rendered  # a number, not unknown

    del cfg["cameras"]["yard"]
    second = expected(cfg)
    watcher = Subscriber(broker.port, "homeassistant/#")
    try:
        run_to_end(broker.port, tmp_path, cfg)
        gone = set(first) - set(second)
        watcher.wait_for(lambda s: gone <= {m.topic for m in s.messages if not m.payload}, 15)
        cleared = {m.topic for m in watcher.messages if not m.payload}
    finally:
        watcher.close()
    assert gone and all("/yard_" in t for t in gone)
    assert cleared == gone
    assert retained(broker.port, "homeassistant/#", set(second)) == second
    assert load_topics(state) == set(second)
