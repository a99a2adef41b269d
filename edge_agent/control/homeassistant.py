"""Home Assistant MQTT discovery: retained config messages that make one HA device per agent,
with entities per camera, counted label and zone, plus diagnostics read from `stats`.

Discovery configs are retained, so entities of cameras, labels or zones removed from the config
would stay in Home Assistant forever. The config topics published last are kept in a small
JSON file in the state folder; at the next start every topic no longer announced gets an empty
retained payload, which makes Home Assistant delete the entity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.camera.events import topic_segment
from edge_agent.camera.objects import ANY
from edge_agent.config.schema import AgentConfig, CameraConfig
from edge_agent.detect.labels import BACKGROUND_NAMES
from edge_agent.publish.payloads import OutMessage, Topics, new_id
from edge_agent.publish.stores import default_path

log = logging.getLogger(__name__)

KIND = "discovery"  # outbox kind: unknown kinds are dropped last when the outbox is full
# A camera without an `objects:` list reports every model label; announcing all 80 COCO
# classes, each with a count and an occupancy entity, would bury the useful ones.
AUTO_LABELS_MAX = 10
STATE_VERSION = 1
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
AVAILABILITY = {"payload_available": "online", "payload_not_available": "offline"}
OCCUPIED = "{{ 'ON' if value | int(0) > 0 else 'OFF' }}"
DIAGNOSTIC = {"entity_category": "diagnostic"}

Entity = tuple[str, str, dict[str, Any]]  # (component, object_id, entity-specific config)


def slug(text: str) -> str:
    """`text` as a discovery topic id (`[A-Za-z0-9_-]+`); a short hash of the original keeps
    two names that differ only in replaced characters apart, and is the same at every start."""
    cleaned = _ID_UNSAFE.sub("_", text)
    if cleaned == text and text:
        return text
    return f"{cleaned}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def node_id(device_id: str) -> str:
    """The discovery node id of an agent (also the prefix of every unique_id)."""
    return f"edge-agent_{slug(device_id)}"


def counted_labels(cam: CameraConfig, labels: Sequence[str]) -> list[str]:
    """The labels whose retained count topics the camera publishes from the start: those
    listed in `objects:`, zones and lines; with none listed, the first AUTO_LABELS_MAX model
    labels. No counts without tracking or with `events.counts` off."""
    if not (cam.track.enabled and cam.events.counts):
        return []
    listed = [label for label in cam.object_rules if label != ANY]
    for item in (*cam.zones.values(), *cam.lines.values()):
        listed += item.labels or []
    auto = not listed
    if auto:
        listed = [label for label in labels if label not in BACKGROUND_NAMES]
    unique: dict[str, str] = {}  # one entity per topic: labels sharing a topic level share it
    for label in listed:
        unique.setdefault(topic_segment(label), label)
    found = list(unique.values())
    return found[:AUTO_LABELS_MAX] if auto else found


def _stats_value(*keys: str) -> str:
    """A template reading one value of the stats JSON; None (HA: unknown) when it or a section
    on its path is missing or null (a section such as `inference_ms` is null before data)."""
    path = "value_json"
    for key in keys[:-1]:
        path = f"({path}.get({json.dumps(key)}) or {{}})"
    return f"{{{{ {path}.get({json.dumps(keys[-1])}) }}}}"


def _measure(name: str, state_topic: str, unit: str, **extra: Any) -> dict[str, Any]:
    """A numeric sensor's config (HA keeps long-term statistics of measurements)."""
    body = {"name": name, "state_topic": state_topic, "unit_of_measurement": unit}
    return {**body, "state_class": "measurement", **extra}


def _camera_entities(
    topics: Topics, name: str, cam: CameraConfig, labels: Sequence[str]
) -> list[Entity]:
    """Counts, occupancy, zones, motion, snapshot and diagnostics of one camera."""
    cid, base = slug(name), f"{topics.base}/{name}"
    counted = counted_labels(cam, labels)
    out: list[Entity] = []
    for label in counted:
        seg = topic_segment(label)
        count = f"{base}/count/{seg}"
        sensor = _measure(f"{name} {label} count", count, "objects")
        out.append(("sensor", f"{cid}_count_{slug(seg)}", sensor))
        occupancy = {"name": f"{name} {label} occupancy", "state_topic": count}
        occupancy |= {"device_class": "occupancy", "value_template": OCCUPIED}
        out.append(("binary_sensor", f"{cid}_occupancy_{slug(seg)}", occupancy))
    for zone, zcfg in cam.zones.items():
        for label in counted:
            if zcfg.labels is not None and label not in zcfg.labels:
                continue  # the zone never counts this label
            seg = topic_segment(label)
            body = _measure(
                f"{name} {zone} {label} count", f"{base}/zones/{zone}/count/{seg}", "objects"
            )
            out.append(("sensor", f"{cid}_zone_{slug(zone)}_count_{slug(seg)}", body))
    if cam.motion_config.enabled:
        motion = {"name": f"{name} motion", "state_topic": topics.motion(name)}
        out.append(("binary_sensor", f"{cid}_motion", {**motion, "device_class": "motion"}))
    snapshot = {"name": f"{name} snapshot", "image_topic": topics.snapshot(name)}
    out.append(("image", f"{cid}_snapshot", {**snapshot, "content_type": "image/jpeg"}))
    return out + _camera_diagnostics(topics, name, cid)


def _camera_diagnostics(topics: Topics, name: str, cid: str) -> list[Entity]:
    """The camera's state and, from `stats`, its processed frame rate and inference time."""
    state = {"name": f"{name} state", "state_topic": topics.camera_state(name)}
    state["value_template"] = "{{ value_json.get('state') }}"
    fps = _measure(f"{name} processed fps", topics.stats, "fps")
    fps["value_template"] = _stats_value("cameras", name, "fps", "processed")
    p50 = _measure(f"{name} inference time", topics.stats, "ms", device_class="duration")
    p50["value_template"] = _stats_value("cameras", name, "inference_ms", "p50")
    rows = (("state", state), ("fps", fps), ("inference_ms", p50))
    return [("sensor", f"{cid}_{key}", {**body, **DIAGNOSTIC}) for key, body in rows]


# Agent-wide figures from `stats`: (object id, name, JSON path, unit, device class).
_DEVICE_SENSORS: tuple[tuple[str, str, tuple[str, ...], str, str | None], ...] = (
    ("cpu", "CPU", ("system", "cpu_percent"), "%", None),
    ("memory", "memory", ("system", "rss_bytes"), "B", "data_size"),
    ("cpu_temperature", "CPU temperature", ("system", "cpu_temp_c"), "°C", "temperature"),
    ("disk_free", "disk free", ("system", "disk_free_bytes"), "B", "data_size"),
    ("outbox", "outbox messages", ("outbox", "messages"), "messages", None),
)


def _device_diagnostics(topics: Topics) -> list[Entity]:
    """Agent-wide figures from the `stats` message: uptime, system, outbox, warnings."""
    out: list[Entity] = []
    for key, title, path, unit, device_class in _DEVICE_SENSORS:
        body = _measure(title, topics.stats, unit, value_template=_stats_value(*path))
        if device_class is not None:
            body["device_class"] = device_class
        out.append(("sensor", key, {**body, **DIAGNOSTIC}))
    # No state_class: long-term statistics of a figure that resets at each start mislead.
    uptime = {"name": "uptime", "state_topic": topics.stats, "unit_of_measurement": "s"}
    uptime |= {"device_class": "duration", "value_template": _stats_value("uptime")}
    warnings = {
        "name": "warnings",
        "state_topic": topics.stats,
        "json_attributes_topic": topics.stats,
    }
    warnings["value_template"] = "{{ (value_json.get('warnings') or []) | length }}"
    warnings["json_attributes_template"] = (
        "{{ {'warnings': value_json.get('warnings') or []} | tojson }}"
    )
    return [
        *out,
        ("sensor", "uptime", {**uptime, **DIAGNOSTIC}),
        ("sensor", "warnings", {**warnings, **DIAGNOSTIC}),
    ]


def discovery_messages(
    cfg: AgentConfig, topics: Topics, labels: Sequence[str], version: str, model: str
) -> list[OutMessage]:
    """Retained QoS 1 discovery configs for every entity of the agent (one HA device)."""
    ha, node = cfg.homeassistant, node_id(cfg.device_id)
    device = {"identifiers": [f"edge-agent_{cfg.device_id}"], "name": cfg.device_id}
    # hw_version shows the detector model on the device page (HA has no better field for it).
    device |= {"manufacturer": "edge-agent", "model": "edge-agent", "sw_version": version}
    device["hw_version"] = model
    origin = {"name": "edge-agent", "sw_version": version}
    common = {"device": device, "origin": origin, "availability_topic": topics.status}
    common |= AVAILABILITY
    entities = _device_diagnostics(topics)
    for name, cam in cfg.cameras.items():
        entities += _camera_entities(topics, name, cam, labels)
    out: dict[str, OutMessage] = {}
    for component, object_id, body in entities:
        topic = f"{ha.discovery_prefix}/{component}/{node}/{object_id}/config"
        if topic in out:  # only names built to collide can get here; the first one wins
            log.warning("home assistant: two entities map to %s; keeping the first", topic)
            continue
        payload = {**body, "unique_id": f"{node}_{object_id}", **common}
        data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        out[topic] = OutMessage(new_id(), topic, data, KIND, 1, True)
    return list(out.values())


def removal_messages(previous: Iterable[str], current: Iterable[str]) -> list[OutMessage]:
    """Empty retained payloads for config topics announced before but not now (HA deletes
    those entities, and the broker forgets the retained configs)."""
    gone = sorted(set(previous) - set(current))
    return [OutMessage(new_id(), topic, b"", KIND, 1, True) for topic in gone]


def state_file(state_dir: Path, device_id: str) -> Path:
    """Where the config topics announced last are kept."""
    return state_dir / f"discovery-{device_id}.json"


def discovery_state_dir(cfg: AgentConfig, environ: Mapping[str, str]) -> Path:
    """The folder of the agent's state: the outbox's folder (systemd's StateDirectory= or
    the XDG state folder unless `outbox.path` says otherwise)."""
    outbox = cfg.outbox.path or default_path(cfg.device_id, environ)
    return outbox.parent


def load_topics(path: Path) -> set[str]:
    """The topics saved by `save_topics`; empty when the file is missing or unreadable."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        topics = body["topics"]
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise TypeError("topics is not a list of strings")
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("home assistant: ignoring %s (%s); stale entities are not removed", path, exc)
        return set()
    return set(topics)


def save_topics(path: Path, topics: Iterable[str]) -> None:
    """Write the announced topics atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    data = json.dumps({"v": STATE_VERSION, "topics": sorted(topics)}, indent=1) + "\n"
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def announce(
    cfg: AgentConfig,
    topics: Topics,
    labels: Sequence[str],
    version: str,
    model: str,
    submit: Callable[[OutMessage], None],
    state_dir: Path,
) -> tuple[int, int]:
    """Clear the entities announced last time but gone now, then announce the current ones.
    Returns (announced, removed). A state file that cannot be read or written is logged, not
    fatal: discovery must never stop the agent."""
    messages = discovery_messages(cfg, topics, labels, version, model)
    current = {m.topic for m in messages}
    path = state_file(state_dir, cfg.device_id)
    removals = removal_messages(load_topics(path), current)
    for msg in (*removals, *messages):
        submit(msg)
    try:
        save_topics(path, current)  # after submitting: the outbox holds the removals by now
    except OSError as exc:
        log.warning("home assistant: cannot save %s (%s)", path, exc)
    log.info(
        "home assistant: %d entities announced under %s/, %d removed",
        len(messages),
        cfg.homeassistant.discovery_prefix,
        len(removals),
    )
    return len(messages), len(removals)
