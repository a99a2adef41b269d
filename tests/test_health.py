"""Health: the stats message (rates, inference times, the board, drift) and the Prometheus
endpoint. Units on synthetic input, then one run of the agent (real broker, real model, the
shared video) that checks the stats messages, the drift signal and a scrape."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import edge_agent
from edge_agent.config.schema import AgentConfig
from edge_agent.control.config import DriftConfig
from edge_agent.core.detections import Detections
from edge_agent.health.drift import DriftMonitor
from edge_agent.health.latency import LatencyRing
from edge_agent.health.prometheus import counter_families, split_counter
from edge_agent.health.stats import CameraHealth, Feeds, Health
from edge_agent.health.system import (
    Throttling,
    cpu_zone,
    free_bytes,
    parse_throttled,
    read_temp,
)
from edge_agent.publish.payloads import OutMessage, shrink_stats
from tests.helpers import (
    ROOT,
    SSD,
    SSD_LABELS,
    VIDEO,
    AgentProcess,
    Broker,
    Subscriber,
    base_config,
    free_port,
    write_config,
)

STATS_SCHEMA = json.loads((ROOT / "schemas" / "stats.schema.json").read_text())
LABELS = ["person", "car", "dog"]
PERSON, CAR = 0, 1

# ---------------------------------------------------------------- inference times


def test_latency_percentiles_cover_the_last_interval_only() -> None:
    ring = LatencyRing(size=8)
    assert ring.take_interval() is None
    for ms in (10.0, 20.0, 30.0, 40.0):
        ring.add(ms)
    assert ring.take_interval() == {"p50": 25.0, "p95": 38.5}
    assert ring.take_interval() is None  # nothing new since
    for ms in range(100, 120):  # more than the ring holds: the latest 8 count
        ring.add(float(ms))
    got = ring.take_interval()
    assert got is not None and got["p50"] == 115.5 and got["p95"] <= 119.0


# ---------------------------------------------------------------- drift

DRIFT = DriftConfig(baseline=100.0, window=50.0, max_drop=0.3, min_count=50)
FPS = 10.0


def feed(
    monitor: DriftMonitor, start: float, seconds: float, every: int, score: float, seed: int
) -> float:
    """One person box on every `every`-th frame at ~score (noise 0.03), FPS frames a second;
    returns the ts after the last frame."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * FPS)
    for i in range(frames):
        ts = start + i / FPS
        if i % every:
            monitor.observe(ts, np.zeros(0, np.int64), np.zeros(0, np.float32))
            continue
        s = np.clip(rng.normal(score, 0.03, 1), 0, 1).astype(np.float32)
        monitor.observe(ts, np.array([PERSON], np.int64), s)
    return start + frames / FPS


@pytest.mark.parametrize(
    ("after", "kinds"),
    [
        ((1, 0.8), []),  # steady
        ((1, 0.5), ["drift_score"]),  # confidence falls 0.8 -> 0.5
        ((4, 0.8), ["drift_rate"]),  # a quarter of the boxes
        ((4, 0.5), ["drift_score", "drift_rate"]),
        ((10**6, 0.8), ["drift_rate"]),  # one box in the whole window: gone
        ((1, 0.95), []),  # better is not drift
    ],
    ids=["steady", "score", "rate", "both", "gone", "up"],
)
def test_drift_warns_on_score_and_rate_drops(after: tuple[int, float], kinds: list[str]) -> None:
    monitor = DriftMonitor("lobby", DRIFT, LABELS)
    t = feed(monitor, 1000.0, 100.0, 1, 0.8, seed=1)
    report, warnings = monitor.report()
    assert report["baseline_complete"] is False and warnings == []
    assert report["labels"]["person"]["current"] is None
    every, score = after
    feed(monitor, t, 60.0, every, score, seed=2)  # more than the window
    report, warnings = monitor.report()
    assert report["baseline_complete"] is True
    assert sorted(w["kind"] for w in warnings) == sorted(kinds)
    base = report["labels"]["person"]["baseline"]
    assert base["count"] == 1000 and abs(base["mean_score"] - 0.8) < 0.01
    assert base["per_hour"] == 36000.0
    for w in warnings:
        assert w["camera"] == "lobby" and w["label"] == "person"
        assert w["drop"] == pytest.approx((w["baseline"] - w["current"]) / w["baseline"], 1e-2)
        if w["kind"] == "drift_score":
            assert abs(w["current"] - score) < 0.01 and w["drop"] > 0.3
    jsonschema.validate(
        {
            "v": 1,
            "id": "0" * 32,
            "device_id": "d",
            "ts": 1.0,
            "counters": {},
            "drift": {"lobby": report},
            "warnings": warnings,
        },
        STATS_SCHEMA,
    )


def test_drift_judges_only_with_enough_evidence() -> None:
    monitor = DriftMonitor("lobby", DRIFT, LABELS)
    # 40 car boxes in the baseline (< min_count 50): never judged, even when gone
    for i in range(1000):
        cls = [PERSON, CAR] if i % 25 == 0 else [PERSON]
        ids = np.array(cls, np.int64)
        monitor.observe(1000.0 + i / FPS, ids, np.full(len(ids), 0.8, np.float32))
    t = 1100.0
    # the window is not full yet: the rate is not judged; 20 boxes at 0.3 < min_count: nor
    # is the score
    for i in range(200):
        ids = np.array([PERSON] if i % 10 == 0 else [], np.int64)
        monitor.observe(t + i / FPS, ids, np.full(len(ids), 0.3, np.float32))
    report, warnings = monitor.report()
    assert report["baseline_complete"] and warnings == []
    assert report["labels"]["car"]["baseline"]["count"] == 40
    assert report["labels"]["car"]["current"]["count"] == 0
    assert report["labels"]["person"]["current"]["count"] == 20
    assert report["labels"]["person"]["current"]["mean_score"] == pytest.approx(0.3)


def test_drift_names_unknown_classes_and_ignores_invalid_ids() -> None:
    monitor = DriftMonitor("lobby", DRIFT, LABELS)
    monitor.observe(1.0, np.array([7, -1, 0], np.int64), np.array([0.5, 0.9, 0.7], np.float32))
    monitor.observe(1.5, np.array([7], np.int64), np.array([0.7], np.float32))
    report, _ = monitor.report()
    assert report["labels"]["class_7"]["baseline"]["count"] == 2
    assert report["labels"]["class_7"]["baseline"]["mean_score"] == pytest.approx(0.6)
    assert set(report["labels"]) == {"class_7", "person"}


# ---------------------------------------------------------------- the board


@pytest.mark.parametrize(
    ("text", "now", "since_boot"),
    [
        ("throttled=0x0\n", set(), set()),
        ("throttled=0x50000\n", set(), {"under_voltage", "throttled"}),
        ("throttled=0x50005", {"under_voltage", "throttled"}, {"under_voltage", "throttled"}),
        (
            "throttled=0xF000F",
            {"under_voltage", "freq_capped", "throttled", "soft_temp_limit"},
            {"under_voltage", "freq_capped", "throttled", "soft_temp_limit"},
        ),
        ("throttled=0x8", {"soft_temp_limit"}, set()),
        ('error=1 error_msg="Command not registered"', None, None),
    ],
)
def test_parse_throttled(text: str, now: set[str] | None, since_boot: set[str] | None) -> None:
    got = parse_throttled(text)
    if now is None:
        assert got is None
        return
    assert got is not None and got["raw"] == text.split("=")[1].strip().lower()
    flags = ("under_voltage", "freq_capped", "throttled", "soft_temp_limit")
    assert {f for f in flags if got[f]} == now
    assert {f for f in flags if got["since_boot"][f]} == since_boot


def test_throttling_runs_vcgencmd_and_backs_off_when_it_hangs(tmp_path: Path) -> None:
    good = tmp_path / "vcgencmd"
    good.write_text('#!/bin/sh\n[ "$1" = get_throttled ] && echo throttled=0x50000\n')
    good.chmod(0o755)
    got = Throttling(str(good)).read()
    assert got is not None and got["since_boot"]["under_voltage"] and not got["under_voltage"]
    hung = tmp_path / "hung"
    calls = tmp_path / "calls"
    hung.write_text(f"#!/bin/sh\necho x >> {calls}\nexec sleep 5\n")
    hung.chmod(0o755)
    probe = Throttling(str(hung))
    assert [probe.read() for _ in range(5)] == [None] * 5  # one 1 s timeout, then cached
    assert calls.read_text().count("x") == 1
    assert Throttling(None).read() is None


def test_cpu_temperature_prefers_the_cpu_zone(tmp_path: Path) -> None:
    assert cpu_zone(tmp_path) is None and read_temp(None) is None
    for n, kind, milli in ((0, "acpitz", "27800"), (1, "x86_pkg_temp", "51000"), (10, "pch", "1")):
        zone = tmp_path / f"thermal_zone{n}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    assert read_temp(cpu_zone(tmp_path)) == 51.0
    (tmp_path / "thermal_zone1" / "type").write_text("other\n")
    assert read_temp(cpu_zone(tmp_path)) == 27.8  # no CPU zone: the first one
    (tmp_path / "thermal_zone0" / "temp").write_text("garbage")
    assert read_temp(cpu_zone(tmp_path)) is None


def test_free_bytes_of_a_path_not_created_yet(tmp_path: Path) -> None:
    got = free_bytes(tmp_path / "not" / "yet" / "o.db")
    assert got is not None and got == shutil.disk_usage(tmp_path).free


# ---------------------------------------------------------------- stats body, Prometheus


def _health(counters: dict[str, int]) -> Health:
    cfg = AgentConfig.model_validate(
        {
            "model": {"path": str(SSD)},
            "cameras": {
                "lobby": {"source": {"type": "video", "path": str(VIDEO)}},
                "gate": {"source": {"type": "video", "path": str(VIDEO)}, "motion": {}},
            },
        }
    )

    class Post:
        health: CameraHealth | None = None

    health = Health(cfg)
    posts = {"lobby": Post(), "gate": Post()}
    states = {n: {"state": "running", "since": 1.0} for n in posts}
    health.attach(
        LABELS, "ab" * 32, Feeds(lambda: dict(counters), lambda: states, dict, None), posts
    )
    assert all(p.health is health.cameras[n] for n, p in posts.items())
    return health


def test_stats_rates_come_from_counter_deltas_and_a_scrape_repeats_them() -> None:
    counters = {"frames.captured.gate": 0}
    health = _health(counters)
    health.stats()
    counters.update({"frames.captured.gate": 40, "detector.runs.gate": 10})
    counters.update({"frames.processed.gate": 10, "frames.captured.lobby": 5})
    health.cameras["gate"].observe(5.0, 12.0, Detections())
    _, body = health.stats()
    jsonschema.validate(
        {"v": 1, "id": "0" * 32, "device_id": "d", "ts": 1.0, "counters": counters, **body},
        STATS_SCHEMA,
    )
    gate, lobby = body["cameras"]["gate"], body["cameras"]["lobby"]
    assert gate["fps"]["capture"] > 0 and gate["fps"]["processed"] > 0
    assert gate["fps"]["capture"] == pytest.approx(4 * gate["fps"]["processed"], rel=0.05)
    assert gate["motion_ratio"] == 0.25 and lobby["motion_ratio"] is None  # motion only on gate
    assert gate["inference_ms"] == {"p50": 12.0, "p95": 12.0} and lobby["inference_ms"] is None
    assert gate["detector_runs"] == 10
    counters["frames.captured.gate"] = 1000
    _, scraped = health.snapshot()  # no new interval: the same rates
    assert scraped["cameras"]["gate"]["fps"] == gate["fps"]
    assert scraped["system"]["cpu_percent"] == body["system"]["cpu_percent"]
    assert scraped["cameras"]["gate"]["inference_ms"] == gate["inference_ms"]


def test_a_reload_keeps_the_drift_baseline_unless_the_model_changes() -> None:
    health = _health({})
    gate = health.cameras["gate"]
    assert gate.drift is not None
    gate.observe(
        1.0,
        5.0,
        Detections(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64)),
    )
    feeds = Feeds(dict, dict, dict, None)

    class Post:
        health: CameraHealth | None = None

    cfg = health.cfg.model_copy(
        update={
            "cameras": {"gate": health.cfg.cameras["gate"], "yard": health.cfg.cameras["lobby"]}
        }
    )
    posts = {"gate": Post(), "yard": Post()}
    health.attach(LABELS, "ab" * 32, feeds, posts, cfg)  # same model: same baseline
    assert posts["gate"].health is gate and set(health.cameras) == {"gate", "yard"}
    assert health.camera_names == ["lobby", "gate", "yard"]  # counters of lobby stay
    health.attach(LABELS, "cd" * 32, feeds, posts, cfg)  # another model: learned again
    again = health.cameras["gate"]
    assert again is not gate and again.drift is not None
    assert again.drift.report()[0]["labels"] == {} and health.model["sha256"] == "cd" * 32


@pytest.mark.parametrize(
    ("counter", "metric", "labels"),
    [
        ("frames.processed.lobby", "frames_processed", {"camera": "lobby"}),
        ("frames.captured.front.door", "frames_captured", {"camera": "front.door"}),
        ("detector.runs.door", "detector_runs", {"camera": "door"}),
        (
            "samples.skipped.budget_low_confidence.lobby",
            "samples_skipped",
            {"reason": "budget_low_confidence", "camera": "lobby"},
        ),
        ("events.new.lobby", "events", {"type": "new", "camera": "lobby"}),
        ("mqtt.delivered.detections", "mqtt_delivered", {"kind": "detections"}),
        ("mqtt.rejected.samples", "mqtt_rejected", {"kind": "samples"}),
        (
            "mqtt.rejected.samples.not_authorized",
            "mqtt_rejected_by_reason",
            {"kind": "samples", "reason": "not_authorized"},
        ),
        ("outbox.dropped.samples", "outbox_dropped", {"kind": "samples"}),
        ("mqtt.connects", "mqtt_connects", {}),
        ("outbox.dead_letters_dropped", "outbox_dead_letters_dropped", {}),
        ("frames.new_thing.lobby", "frames_new_thing", {"camera": "lobby"}),  # no rule: generic
        ("frames.processed.attic", "frames_processed_attic", {}),  # not a camera
        ("odd-name.x", "odd_name_x", {}),
    ],
)
def test_counter_names_map_to_labelled_metrics(
    counter: str, metric: str, labels: dict[str, str]
) -> None:
    assert split_counter(counter, ["lobby", "door", "front.door"]) == (metric, labels)


def _exposition(families: list[Any]) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_no_counter_is_dropped_when_label_sets_clash() -> None:
    counters = {"frames.processed.lobby": 3, "frames.processed.attic": 4, "mqtt.connects": 1}
    counters["frames.processed"] = 5  # no camera: would clash with the labelled family
    got = _exposition(counter_families(counters, ["lobby"]))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in got.values() for s in f.samples
    }
    assert samples == {
        ("edge_agent_frames_processed_total", (("camera", "lobby"),)): 3,
        ("edge_agent_frames_processed_attic_total", ()): 4,
        ("edge_agent_counter_total", (("name", "frames.processed"),)): 5,
        ("edge_agent_mqtt_connects_total", ()): 1,
    }


def test_importing_the_agent_loads_no_prometheus_client() -> None:
    code = "import sys, edge_agent.runtime; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- the agent, end to end

HALF = 69.7  # seconds: half of the shared video's 1394 frames at 10 fps


def _clip(folder: Path, first: int = 300, frames: int = 60) -> Path:
    """6 s of the shared video (people in view), 10 fps."""
    cap = cv2.VideoCapture(str(VIDEO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, first)
    path = folder / "clip.mp4"
    writer = None
    for _ in range(frames):
        ok, image = cap.read()
        assert ok
        if writer is None:
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (w, h))
        writer.write(image)
    assert writer is not None
    writer.release()
    cap.release()
    return path


def _scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(families: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    family = families.get(name)
    if family is None:
        return {}
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def _stats(sub: Subscriber) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on("/stats")]


def _settled(stats: list[dict[str, Any]]) -> bool:
    """Both replays ended and their post threads finished (their counters are final)."""
    if not stats:
        return False
    last = stats[-1]
    cams = last["cameras"]
    return all(cams[c]["state"] == "stopped" for c in ("lobby", "hall")) and not any(
        t in last["threads"] for t in ("post-lobby", "post-hall")
    )


@pytest.mark.slow
def test_stats_drift_and_metrics_of_a_run(tmp_path: Path) -> None:
    """One agent, three cameras: `lobby` a 6 s clip replayed at real time with a motion gate,
    `hall` the whole shared video as fast as it goes (drift: baseline = first half), `net` a
    stream that never answers (keeps the agent running after the replays)."""
    broker = Broker().start()
    sub = Subscriber(broker.port, "edge/test-dev/#")
    cameras = {
        "lobby": {
            "source": {"type": "video", "path": str(_clip(tmp_path)), "realtime": True},
            "motion": {"enabled": True},
        },
        "hall": {"source": {"type": "video", "path": str(VIDEO)}},
        "net": {
            "source": {
                "type": "rtsp",
                "url": f"http://127.0.0.1:{free_port()}/x.mjpg",
                "reconnect_delay": 0.5,
            }
        },
    }
    cfg = base_config(broker.port, SSD, SSD_LABELS, cameras)
    cfg["runtime"] = {"stats_interval": 1, "retry_max_delay": 2}
    cfg["metrics"] = {"enabled": True, "port": 0}
    cfg["drift"] = {"baseline": HALF, "window": 60}
    agent = AgentProcess(write_config(tmp_path, cfg))
    try:
        assert agent.wait_for_line("metrics: serving", 60), agent.output
        port = int(
            re.findall(r"metrics: serving http://127\.0\.0\.1:(\d+)/metrics", agent.output)[0]
        )
        assert port > 0
        assert sub.wait_for(lambda s: _settled(_stats(s)), 300), agent.output[-3000:]
        scraped = _scrape(port)
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, agent.output[-3000:]
        sub.wait_for(lambda s: any(m.payload == b"offline" for m in s.on("/status")), 10)
    finally:
        agent.kill()
        sub.close()
        broker.stop()
    messages = _stats(sub)
    _check_stats(messages)
    _check_drift(messages[-1])
    _check_scrape(scraped, messages)


def _check_stats(messages: list[dict[str, Any]]) -> None:
    """Acceptance: every field present, plausible, valid against the schema."""
    sha = hashlib.sha256(SSD.read_bytes()).hexdigest()
    assert len(messages) >= 5
    uptimes = [m["uptime"] for m in messages]
    assert uptimes == sorted(uptimes) and len(set(uptimes)) == len(uptimes)
    no_zone = cpu_zone() is None
    for m in messages:
        jsonschema.validate(m, STATS_SCHEMA)
        assert m["version"] == edge_agent.__version__
        assert m["model"] == {"name": SSD.name, "sha256": sha}
        system = m["system"]
        assert 0 < system["rss_bytes"] < 2 * 2**30
        assert system["cpu_percent"] is not None and system["cpu_percent"] >= 0
        assert system["disk_free_bytes"] > 0 and system["load1"] >= 0
        assert (system["cpu_temp_c"] is None) == no_zone  # only what the board reports
        assert (system["throttled"] is None) == (shutil.which("vcgencmd") is None)
        assert m["outbox"]["dropped"] == sum(
            n for k, n in m["counters"].items() if k.startswith("outbox.dropped.")
        )
        for name, cam in m["cameras"].items():
            assert cam["detector_runs"] == m["counters"].get(f"detector.runs.{name}", 0)
            assert all(0 <= v <= 10 + 3 for v in cam["fps"].values()) or name == "hall"
            ms = cam["inference_ms"]
            assert ms is None or 0 < ms["p50"] <= ms["p95"]
            assert cam["motion_ratio"] is None or name == "lobby"
    lobby = [m["cameras"]["lobby"] for m in messages if m["cameras"]["lobby"]["state"] == "running"]
    assert any(c["fps"]["capture"] > 0 and c["fps"]["processed"] > 0 for c in lobby)
    assert any(c["inference_ms"] is not None for c in lobby)
    assert any(c["motion_ratio"] is not None and 0 < c["motion_ratio"] <= 1 for c in lobby)
    assert all(m["cameras"]["net"]["state"] == "retrying" for m in messages[2:-1])
    last = messages[-1]
    runs = [m["cameras"]["hall"]["fps"]["processed"] for m in messages]
    print(
        f"\nstats: {len(messages)} messages; hall processed fps {max(runs)} at most; "
        f"lobby {[c['fps'] for c in lobby]}; inference {[c['inference_ms'] for c in lobby]}; "
        f"system {last['system']}"
    )


def _check_drift(last: dict[str, Any]) -> None:
    """The whole shared video against its first half: no warning."""
    hall = last["drift"]["hall"]
    assert hall["baseline_complete"] is True
    assert last["drift"]["lobby"]["baseline_complete"] is False  # 6 s < the baseline
    assert "person" in hall["labels"], hall
    person = hall["labels"]["person"]
    assert person["baseline"]["count"] >= DriftConfig().min_count
    assert person["current"]["count"] >= DriftConfig().min_count
    assert last["warnings"] == []
    print(f"drift (hall): {json.dumps(hall['labels'])}")


def _check_scrape(scraped: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    """The scrape (after the replays' last frame) says what the stats say."""
    final = messages[-1]
    counters = final["counters"]
    cameras = list(final["cameras"])
    seen = 0
    for name, value in counters.items():
        metric, labels = split_counter(name, cameras)
        got = _samples(scraped, f"edge_agent_{metric}").get(tuple(sorted(labels.items())))
        if name.endswith((".lobby", ".hall")):  # finished cameras: final at the scrape
            assert got == value, name
            seen += 1
        else:  # still moving (stats deliveries, retries): the scrape came first
            assert got is None or got <= value, name
    assert seen >= 6
    for family in scraped.values():
        if family.type == "counter":
            for s in family.samples:
                assert s.name.endswith(("_total", "_created")), s.name
    build = _samples(scraped, "edge_agent_build_info")
    assert next(iter(build)) == tuple(
        sorted(
            {
                "version": edge_agent.__version__,
                "model": SSD.name,
                "model_sha256": final["model"]["sha256"],
            }.items()
        )
    )
    uptime = _samples(scraped, "edge_agent_uptime_seconds")[()]
    assert messages[0]["uptime"] < uptime < final["uptime"]
    rss = _samples(scraped, "edge_agent_resident_memory_bytes")[()]
    assert 0 < rss < 2 * 2**30
    assert _samples(scraped, "edge_agent_outbox_messages")[()] >= 0
    assert (
        _samples(scraped, "edge_agent_camera_state")[(("camera", "hall"), ("state", "stopped"))]
        == 1
    )
    drift = final["drift"]["hall"]["labels"]["person"]
    mean = _samples(scraped, "edge_agent_drift_mean_score")
    for period in ("baseline", "current"):
        key = (("camera", "hall"), ("label", "person"), ("period", period))
        assert mean[key] == drift[period]["mean_score"]  # no frame since: the same figures
    # Interval figures: those of the last stats message built before the scrape.
    built = [m for m in messages if m["uptime"] <= uptime][-1]
    fps = _samples(scraped, "edge_agent_camera_frames_per_second")
    for name, cam in built["cameras"].items():
        for stage, value in cam["fps"].items():
            assert fps[(("camera", name), ("stage", stage))] == value
    cpu = _samples(scraped, "edge_agent_cpu_percent")[()]
    assert cpu == built["system"]["cpu_percent"]
    print(
        f"scrape: {sum(len(f.samples) for f in scraped.values())} samples, {seen} camera counters"
        f" equal to the final stats; uptime {uptime:.1f} s; rss {rss / 2**20:.0f} MiB"
    )


def _big_stats() -> OutMessage:
    body = {
        "v": 1,
        "id": "a" * 32,
        "device_id": "d",
        "ts": 1.0,
        "counters": {f"frames.processed.cam{i}": i for i in range(40)},
        "warnings": [],
        "drift": {"labels": {f"label{i}": {"baseline": {}, "current": {}} for i in range(40)}},
        "threads": {f"detect-{i}": 0.1 for i in range(20)},
        "system": {"cpu_percent": 1.0, "rss_bytes": 1},
        "cameras": {"cam": {"state": "running"}},
        "outbox": {"messages": 0},
        "model": {"name": "m", "sha256": "0" * 64},
    }
    return OutMessage("a" * 32, "edge/d/stats", json.dumps(body).encode(), "stats", 1)


def test_stats_over_the_broker_limit_lose_sections_in_order() -> None:
    """Tighter and tighter limits: the sections go in a fixed order (each result a prefix of
    it), the message keeps its id, fits, validates, keeps non-zero counters and warnings;
    below what the counters need, nothing fits (the guard then quarantines it, counted)."""
    order = ["drift", "threads", "system", "cameras", "outbox", "model", "zero_counters"]
    msg = _big_stats()
    seen: list[list[str] | None] = []
    for limit in range(len(msg.payload) - 1, 150, -3):
        smaller = shrink_stats(msg, limit)
        if smaller is None:
            seen.append(None)
            continue
        assert None not in seen  # once nothing fits, a smaller limit cannot fit either
        assert len(smaller.payload) <= limit and smaller.id == msg.id
        body = json.loads(smaller.payload)
        assert body["truncated"] == order[: len(body["truncated"])]
        nonzero = {k: v for k, v in json.loads(msg.payload)["counters"].items() if v}
        dropped_zeros = "zero_counters" in body["truncated"]
        assert body["counters"] == (
            nonzero if dropped_zeros else json.loads(msg.payload)["counters"]
        )
        assert "warnings" in body
        jsonschema.validate(body["truncated"], STATS_SCHEMA["properties"]["truncated"])
        seen.append(body["truncated"])
    assert seen[0] == ["drift"] and order in seen and seen[-1] is None
