"""Events, retained counts and line totals (edge_agent.camera.events), and the JSON Schemas
in schemas/ that every published payload must satisfy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.camera.events import EventBuilder, EventsConfig, topic_segment
from edge_agent.camera.zones import LineConfig, ZoneConfig, ZoneLineState
from edge_agent.config.schema import ModelConfig
from edge_agent.core.detections import NO_TRACK, Detections
from edge_agent.detect.detector import Detector
from edge_agent.publish.payloads import (
    OutMessage,
    Topics,
    boxes_json,
    camera_state_message,
    detection_message,
    header,
    stats_message,
)
from edge_agent.sampling.config import Privacy
from edge_agent.sampling.encode import sample_job, sample_message
from edge_agent.sampling.privacy import PrivacyFilter
from edge_agent.sampling.select import Chosen, FrameView
from edge_agent.track import Tracker, TrackUpdate
from edge_agent.track.config import TrackConfig
from edge_agent.track.tracks import Track, new_track, record_hit
from edge_agent.types import Frame
from tests.helpers import MEDIA, ROOT, SSD, SSD_LABELS

SCHEMAS = ROOT / "schemas"
LABELS = ["person", "bicycle", "car", "truck"]
CAR, TRUCK = 2, 3
TOPICS = Topics("edge", "dev-1")
BASE = "edge/dev-1/gate/"
TRACK_CFG = TrackConfig(min_hits=2, median_window=3, stationary_frames=4)
DRIVEWAY = {"polygon": [[0.6, 0.0], [1.0, 0.0], [1.0, 0.45], [0.6, 0.45]]}  # above the gate
GATE = {"points": [[0.0, 0.5], [1.0, 0.5]], "margin": 0.01}


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def schema_for(topic: str) -> str:
    rest = topic.removeprefix(BASE)
    if rest == "events":
        return "events"
    if rest.startswith("lines/"):
        return "lines"
    if rest.startswith(("count/", "zones/")):
        return "counts"
    raise AssertionError(f"unexpected topic {topic}")


def check(messages: list[OutMessage]) -> list[tuple[str, Any]]:
    """Validate every message against its schema; return (topic suffix, payload) pairs."""
    out = []
    for m in messages:
        body = json.loads(m.payload)
        validator(schema_for(m.topic)).validate(body)
        retained = not m.topic.endswith("/events")
        assert (m.retain, m.kind) == ((True, "state") if retained else (False, "events"))
        assert m.qos == 2  # the caller's QoS, as passed to the builder
        out.append((m.topic.removeprefix(BASE), body))
    return out


@dataclass(frozen=True)
class Obs:
    """One track's box this frame: bottom-center (x, y), score, class."""

    x: float
    y: float
    score: float = 0.8
    cls: int = CAR


class Script:
    """Synthetic tracker output (real Track objects and record_hit), fed through real
    zone/line state into the builder."""

    def __init__(self, cfg: EventsConfig, zones: dict[str, Any], lines: dict[str, Any]) -> None:
        self.builder = EventBuilder("gate", "dev-1", LABELS, TOPICS, cfg, qos=2)
        self.zones = ZoneLineState(
            {k: ZoneConfig(**v) for k, v in zones.items()},
            {k: LineConfig(**v) for k, v in lines.items()},
            LABELS,
        )
        self.tracks: dict[int, Track] = {}
        self.next_id = 1
        self.fps = 10.0

    def step(
        self, frame: int, obs: dict[int, Obs | None], subs: dict[int, Any] | None = None
    ) -> list[tuple[str, Any]]:
        """obs: script key -> box this frame, or None: the track ends this frame."""
        ts = 1000.0 + frame / self.fps
        created, updated, ended = [], [], []
        for key, o in obs.items():
            if o is None:
                t = self.tracks.pop(key)
                if t.id:
                    ended.append(t)
                continue
            box = (o.x - 0.05, o.y - 0.1, o.x + 0.05, o.y)
            t = self.tracks.setdefault(key, new_track(TRACK_CFG, box, ts, frame))
            record_hit(t, TRACK_CFG, (box, o.score, o.cls), ts, frame, 0.5)
            if t.id:
                updated.append(t)
            elif t.hits >= TRACK_CFG.min_hits:
                t.id, self.next_id = self.next_id, self.next_id + 1
                created.append(t)
        seen = created + updated
        dets = Detections(
            np.array([t.box for t in seen], np.float32).reshape(-1, 4),
            np.array([t.scores[-1] for t in seen], np.float32),
            np.array([t.label for t in seen], np.int64),
            np.array([t.id for t in seen], np.int64),
        )
        zone_update = self.zones.update(dets)
        self.zones.forget([t.id for t in ended])
        update = TrackUpdate(dets, tuple(created), tuple(updated), tuple(ended))
        ids = {key: t.id for key, t in self.tracks.items()}
        by_id = {ids[k]: v for k, v in (subs or {}).items() if ids.get(k)}
        return check(self.builder.frame(update, zone_update, ts, frame, by_id))


def run(
    frames: list[dict[int, Obs | None]],
    cfg: EventsConfig | None = None,
    subs: dict[int, dict[int, Any]] | None = None,
) -> tuple[Script, list[list[tuple[str, Any]]]]:
    script = Script(cfg or EventsConfig(update_interval=0), {"driveway": DRIVEWAY}, {"gate": GATE})
    out = [script.step(i, f, (subs or {}).get(i)) for i, f in enumerate(frames)]
    return script, out


def events(out: list[list[tuple[str, Any]]]) -> list[tuple[int, str, list[str]]]:
    """(frame index, type, changes) of every event."""
    return [
        (i, body["type"], body["changes"])
        for i, msgs in enumerate(out)
        for topic, body in msgs
        if topic == "events"
    ]


def retained(out: list[list[tuple[str, Any]]], topic: str) -> list[tuple[int, Any]]:
    return [(i, body) for i, msgs in enumerate(out) for t, body in msgs if t == topic]


STILL = Obs(0.5, 0.3)


def moving(ys: list[float], **kw: Any) -> list[dict[int, Obs | None]]:
    """Down (or up) the left of the frame, away from the driveway."""
    return [{1: Obs(0.2 + 0.02 * i, y, **kw)} for i, y in enumerate(ys)]


def sideways(xs: list[float]) -> list[dict[int, Obs | None]]:
    """Along y=0.3, above the gate line: into the driveway for x > 0.6."""
    return [{1: Obs(x, 0.3)} for x in xs]


INTO_DRIVEWAY = sideways([0.2, 0.25, 0.3, 0.7, 0.72, 0.74, 0.3, 0.25, 0.2, 0.15])


LABEL_FLIP = [{1: Obs(0.2 + 0.01 * i, 0.3, 0.6, CAR)} for i in range(3)] + [
    {1: Obs(0.23 + 0.01 * i, 0.3, 0.6, TRUCK)} for i in range(4)
]
RISING = [{1: Obs(0.2 + 0.03 * i, 0.3, min(0.99, 0.6 + 0.02 * i))} for i in range(8)]


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        # Confirms at its third hit (median of three >= 0.5): one `new`, not before.
        ([{1: Obs(0.2 + 0.02 * i, 0.3)} for i in range(5)], [(2, "new", [])]),
        # The vote flips to truck at the fourth truck hit (2.4 > 1.8); scores never rise.
        (LABEL_FLIP, [(2, "new", []), (6, "update", ["label"])]),
        # Below the threshold: a track with an id that never confirms, then ends: nothing.
        ([{1: Obs(0.2, 0.3, 0.3)}] * 4 + [{1: None}], []),
        # Ends: `end` on the frame the tracker reports it.
        ([{1: STILL}] * 3 + [{1: None}], [(2, "new", []), (3, "end", [])]),
        # Enter the driveway (two frames inside: min_frames), then leave it.
        (
            INTO_DRIVEWAY,
            [(2, "new", []), (4, "update", ["zone_entered"]), (7, "update", ["zone_left"])],
        ),
        # Crossing the gate line downward (in), staying above the driveway.
        (
            moving([0.3, 0.35, 0.4, 0.45, 0.55, 0.58]),
            [(2, "new", []), (4, "update", ["line_crossed"])],
        ),
        # Score rises 0.02 per frame: a new best by >= 0.05 every third frame.
        (RISING, [(2, "new", []), (5, "update", ["score"])]),
        # Standing still for stationary_frames: stationary on once.
        ([{1: STILL}] * 6, [(2, "new", []), (3, "update", ["stationary"])]),
    ],
    ids=["confirm", "label", "unconfirmed", "end", "zone", "line", "score", "stationary"],
)
def test_track_scenarios_produce_exactly_these_events(frames, expected) -> None:
    _, out = run(frames)
    assert events(out) == expected


def test_unconfirmed_track_is_counted_and_handed_over_not_published() -> None:
    script, out = run([{1: Obs(0.2, 0.3, 0.3)}] * 4 + [{1: None}])
    assert out[-1] == [] and all(not msgs for msgs in out)
    b = script.builder
    assert (b.confirmed, b.unconfirmed) == (0, 1)
    assert [t.id for t in b.last_unconfirmed] == [1]
    assert b.counters() == {"tracks.confirmed.gate": 0, "tracks.unconfirmed.gate": 1}


def test_zone_count_rises_and_drops_to_zero_once() -> None:
    # A huge update_interval: zone changes are never held back.
    _, out = run(INTO_DRIVEWAY, EventsConfig(update_interval=3600))
    assert [e[:2] for e in events(out)] == [(2, "new"), (4, "update"), (7, "update")]
    assert retained(out, "zones/driveway/count/car") == [(4, 1), (7, 0)]
    assert retained(out, "count/car") == [(2, 1)]
    update = next(b for t, b in out[4] if t == "events")
    assert (update["current_zones"], update["entered_zones"]) == (["driveway"], ["driveway"])
    left = next(b for t, b in out[7] if t == "events")
    assert (left["current_zones"], left["entered_zones"]) == ([], ["driveway"])


def test_line_crossing_publishes_retained_totals_by_label() -> None:
    frames = moving([0.3, 0.35, 0.4, 0.45, 0.55, 0.58, 0.45, 0.4])
    _, out = run(frames)
    totals = retained(out, "lines/gate")
    assert [(i, b["in"], b["out"], b["by_label"]) for i, b in totals] == [
        (4, 1, 0, {"car": {"in": 1, "out": 0}}),
        (6, 1, 1, {"car": {"in": 1, "out": 1}}),
    ]
    crossings = next(b["lines"] for t, b in out[6] if t == "events")
    assert [(c["line"], c["direction"]) for c in crossings] == [("gate", "in"), ("gate", "out")]


def test_crossing_before_confirmation_counts_only_once_confirmed() -> None:
    # Low scores (median < 0.5) while crossing, then high ones: confirms at frame 5.
    scores = [0.3, 0.3, 0.3, 0.9, 0.9, 0.9, 0.9]
    ys = [0.4, 0.45, 0.55, 0.58, 0.58, 0.58, 0.58]
    frames = [
        {1: Obs(0.2 + 0.02 * i, y, s)} for i, (y, s) in enumerate(zip(ys, scores, strict=True))
    ]
    _, out = run(frames)
    assert events(out)[0][:2] == (4, "new")
    new = next(b for t, b in out[4] if t == "events")
    assert [c["direction"] for c in new["lines"]] == ["in"]
    assert [i for i, _ in retained(out, "lines/gate")] == [4]


def test_unconfirmed_crossing_never_reaches_the_totals() -> None:
    frames = [*moving([0.4, 0.45, 0.55, 0.58, 0.58], score=0.3), {1: None}]
    _, out = run(frames)
    assert all(not msgs for msgs in out)


@pytest.mark.parametrize(
    ("interval", "update_frames"),
    [(0.0, [5, 8, 11, 14, 17]), (0.5, [7, 12, 17]), (1.0, [12])],
)
def test_score_only_updates_are_rate_limited(interval, update_frames) -> None:
    # +0.02 per frame from 0.5: a new best by >= 0.05 every 3 frames (0.3 s at 10 fps).
    frames = [{1: Obs(0.2 + 0.01 * i, 0.3, 0.5 + 0.02 * i)} for i in range(19)]
    _, out = run(frames, EventsConfig(update_interval=interval))
    got = events(out)
    assert [i for i, kind, _ in got if kind == "update"] == update_frames
    assert all(changes == ["score"] for _, kind, changes in got if kind == "update")


def test_held_back_label_change_is_sent_when_the_interval_has_passed() -> None:
    frames = LABEL_FLIP + [{1: Obs(0.3 + 0.01 * i, 0.3, 0.6, TRUCK)} for i in range(20)]
    _, out = run(frames, EventsConfig(update_interval=1.0))
    # new at frame 2 (ts 0.2 s), truck wins at frame 6, sent 1 s after `new`: frame 12.
    assert events(out) == [(2, "new", []), (12, "update", ["label"])]
    assert retained(out, "count/car") == [(2, 1), (6, 0)]
    assert retained(out, "count/truck") == [(6, 1)]


def test_label_flip_back_within_the_interval_sends_nothing() -> None:
    frames = LABEL_FLIP + [{1: Obs(0.3, 0.3, 0.9, CAR)}] * 3
    _, out = run(frames, EventsConfig(update_interval=10, min_score_change=1))
    assert events(out) == [(2, "new", [])]


def test_sub_label_set_is_an_update() -> None:
    frames = [{1: Obs(0.2 + 0.03 * i, 0.3)} for i in range(6)]
    _, out = run(frames, subs={4: {1: ("taxi", 0.91)}, 5: {1: ("taxi", 0.95)}})
    assert events(out) == [(2, "new", []), (4, "update", ["sub_label"])]
    body = next(b for t, b in out[4] if t == "events")
    assert (body["sub_label"], body["sub_label_score"]) == ("taxi", 0.91)


def test_end_carries_the_final_fields() -> None:
    # Into the driveway at frame 5, across the gate (and out of the driveway) at 6 and 7.
    ys = [0.3, 0.35, 0.4, 0.42, 0.44, 0.44, 0.55, 0.6]
    frames = [{1: Obs(0.5 + 0.03 * i, y, 0.6 + 0.03 * i)} for i, y in enumerate(ys)]
    frames += [{}] * 2 + [{1: None}]
    script, out = run(frames)
    bodies = [b for msgs in out for t, b in msgs if t == "events"]
    new, end = bodies[0], bodies[-1]
    assert (new["type"], end["type"]) == ("new", "end")
    assert new["id"] == end["id"] == "1000.000-gate-1"
    assert len({b["msg_id"] for b in bodies}) == len(bodies)
    assert (new["end_ts"], new["end_frame"]) == (None, None)
    assert end["end_frame"] == 7 and end["end_ts"] == pytest.approx(1000.7)
    assert (end["frame"], end["ts"]) == (10, pytest.approx(1001.0))  # when the end was seen
    assert (end["start_frame"], end["start_ts"]) == (0, 1000.0)
    assert (end["top_score"], end["top_frame"]) == (pytest.approx(0.81), 7)
    assert end["top_box"] == end["box"] == pytest.approx([0.66, 0.5, 0.76, 0.6])
    assert end["entered_zones"] == ["driveway"] and end["current_zones"] == []
    changes = [b["changes"] for b in bodies if b["type"] == "update"]
    without_score = [[c for c in cs if c != "score"] for cs in changes]
    assert [cs for cs in without_score if cs] == [["zone_entered"], ["line_crossed"], ["zone_left"]]
    assert [c["direction"] for c in end["lines"]] == ["in"]
    assert (end["label"], end["class_id"], end["false_positive"]) == ("car", CAR, False)
    assert retained(out, "count/car")[-1] == (10, 0)
    assert retained(out, "zones/driveway/count/car") == [(5, 1), (7, 0)]
    assert script.builder.counters() == {
        "tracks.confirmed.gate": 1,
        "tracks.unconfirmed.gate": 0,
        "events.end.gate": 1,
        "events.new.gate": 1,
        "events.update.gate": sum(b["type"] == "update" for b in bodies),
    }


def test_counts_follow_several_tracks_and_publish_only_changes() -> None:
    a, b = Obs(0.2, 0.3), Obs(0.7, 0.3)
    frames = [{1: a}, {1: a, 2: b}, {1: a, 2: b}, {1: a, 2: b}, {1: None, 2: b}, {2: None}]
    _, out = run(frames)
    assert retained(out, "count/car") == [(2, 1), (3, 2), (4, 1), (5, 0)]


def test_disabled_events_still_count_and_counts_can_be_switched_off() -> None:
    frames = [{1: STILL}] * 4 + [{1: None}]
    script, out = run(frames, EventsConfig(enabled=False))
    assert events(out) == [] and retained(out, "count/car") == [(2, 1), (4, 0)]
    assert script.builder.confirmed == 1
    _, out = run(frames, EventsConfig(counts=False, update_interval=0))
    assert [t for msgs in out for t, _ in msgs] == ["events"] * 3  # new, stationary, end


def test_initial_state_and_finish() -> None:
    builder = EventBuilder("gate", "dev-1", LABELS, TOPICS, EventsConfig(), qos=2)
    zero = check(builder.initial_state(["driveway"], ["gate"], ["car", "a/b+#"]))
    assert [t for t, _ in zero] == [
        "count/car",
        "count/a_b__",
        "zones/driveway/count/car",
        "zones/driveway/count/a_b__",
        "lines/gate",
    ]
    assert zero[-1][1] == {"v": 1, "ts": 0.0, "in": 0, "out": 0, "by_label": {}}
    script = Script(EventsConfig(), {"driveway": DRIVEWAY}, {"gate": GATE})
    script.builder = builder
    for i in range(3):
        script.step(i, {1: STILL})
    finished = check(builder.finish(1000.5, 5))
    assert [(t, b if t != "events" else b["type"]) for t, b in finished] == [
        ("events", "end"),
        ("count/car", 0),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"update_interval": -1},
        {"update_interval": 86_401},
        {"min_score_change": 1.5},
        {"enabled": "maybe"},
        {"update_intervall": 5},
        {"update_interval": float("nan")},
    ],
)
def test_config_refuses_bad_values(bad) -> None:
    with pytest.raises(ValidationError):
        EventsConfig(**bad)


def test_config_accepts_durations() -> None:
    assert EventsConfig(update_interval="2m").update_interval == 120.0


@pytest.mark.parametrize(
    ("label", "segment"),
    [("car", "car"), ("a/b", "a_b"), ("", "_"), ("cell phone", "cell_phone"), ("a+#b", "a__b")],
)
def test_topic_segment(label, segment) -> None:
    assert topic_segment(label) == segment


FRAME = Frame("gate", 7, 1000.25, np.full((120, 160, 3), 90, np.uint8))
DETS = Detections(
    np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]], np.float32),
    np.array([0.87654, 0.5], np.float32),
    np.array([CAR, 0], np.int64),
    np.array([3, NO_TRACK], np.int64),
    np.array([[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.5], [0.6, 0.6]]], np.float32),
    {"sub_label_id": np.array([-1, 0]), "sub_score": np.array([0.0, 0.7], np.float32)},
)


def _boxes(dets: Detections = DETS) -> list[dict[str, Any]]:
    return boxes_json(dets, LABELS, ["smile"])  # class 2 is "car"


def _head() -> dict[str, Any]:
    return header("dev-1", "m.tflite", FRAME, 8.4)


def _sample(mode: str, with_track: bool) -> OutMessage:
    """A v2 samples message through the real job -> privacy -> encode path."""
    track = None
    if with_track:
        track = new_track(TrackConfig(), (0.1, 0.2, 0.3, 0.4), 999.0, 2)
        record_hit(track, TrackConfig(), ((0.1, 0.2, 0.3, 0.4), 0.4, CAR), 1000.25, 7, 0.7)
        track.id = 3
    view = FrameView(FRAME, DETS, np.ones(2, np.bool_), _head())
    chosen = Chosen(view, ["false_positive_track"] if with_track else ["random"], track, 0xABC)
    privacy = PrivacyFilter(Privacy(mode=mode, masks=[[(0, 0), (0.5, 0), (0.5, 0.5)]]), None)
    job = sample_job(chosen, _boxes(), "ab" * 32, LABELS, privacy, (64, 80, 1))
    return sample_message(TOPICS, job)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("detections", lambda: detection_message(TOPICS, _head(), _boxes(), 1)),
        ("detections", lambda: detection_message(TOPICS, _head(), _boxes(Detections()), 0)),
        ("samples", lambda: _sample("full", with_track=False)),
        ("samples", lambda: _sample("crops", with_track=True)),
        (
            "stats",
            lambda: stats_message(
                TOPICS,
                "dev-1",
                1000.0,
                {"frames.processed.gate": 3},
                {
                    "cameras": {"gate": {"state": "retrying", "since": 1.0, "next_attempt": 3.0}},
                    "outbox": {
                        "mode": "sqlite /x.db",
                        "messages": 0,
                        "bytes": 0,
                        "dead_letters": 0,
                    },
                },
            ),
        ),
        (
            "camera_state",
            lambda: camera_state_message(
                TOPICS, "dev-1", "gate", {"state": "failed", "since": 5.0, "reason": "no camera"}
            ),
        ),
    ],
)
def test_existing_payloads_match_their_schemas(name, message) -> None:
    validator(name).validate(json.loads(message().payload))


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("detections", {"v": 1}),
        (
            "camera_state",
            {
                "v": 1,
                "id": "0" * 32,
                "device_id": "d",
                "camera": "c",
                "state": "sleeping",
                "since": 1.0,
            },
        ),
        ("lines", {"v": 1, "ts": 1.0, "in": -1, "out": 0, "by_label": {}}),
        ("counts", 1.5),
    ],
)
def test_schemas_reject_wrong_payloads(name, body) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator(name).validate(body)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(type="end"),  # end without end_ts
        lambda b: b.update(changes=["score"]),  # changes on a `new`
        lambda b: b.update(false_positive=True),
        lambda b: b.update(extra=1),
        lambda b: b.update(box=[0.1, 0.2, 0.3]),
    ],
)
def test_event_schema_rejects_inconsistent_events(mutate) -> None:
    _, out = run([{1: STILL}] * 3)
    body = next(b for t, b in out[2] if t == "events")
    mutate(body)
    with pytest.raises(jsonschema.ValidationError):
        validator("events").validate(body)


def test_real_video_pipeline_emits_valid_consistent_messages() -> None:
    """SSD + tracker + zones on the shared parking-lot clip (every 2nd frame)."""
    video = Path(MEDIA) / "video" / "car-detection.mp4"
    detector = Detector(ModelConfig(path=SSD, labels=SSD_LABELS), 0.1)
    labels = list(detector.labels)
    tracker = Tracker(TrackConfig(threshold=0.5))  # the SSD scores these overhead cars low
    zones = ZoneLineState(
        {"lot": ZoneConfig(polygon=[[0, 0.5], [1, 0.5], [1, 1], [0, 1]])},
        {"mid": LineConfig(points=((0.0, 0.5), (1.0, 0.5)))},
        labels,
    )
    builder = EventBuilder("gate", "dev-1", labels, TOPICS, EventsConfig(), qos=2)
    messages = check(builder.initial_state(["lot"], ["mid"], ["car"]))
    cap = cv2.VideoCapture(str(video))
    index = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if index % 2 == 0:
            dets, _ = detector.detect_arrays(np.asarray(image, np.uint8))
            ts = 1000.0 + index / 12.5
            update = tracker.update(dets, ts, index)
            zone_update = zones.update(update.detections)
            zones.forget([t.id for t in update.ended])
            messages += check(builder.frame(update, zone_update, ts, index))
        index += 1
    messages += check(builder.finish(1000.0 + index / 12.5, index))
    bodies = [b for t, b in messages if t == "events"]
    kinds: dict[str, list[str]] = {}
    for b in bodies:
        kinds.setdefault(b["id"], []).append(b["type"])
    assert builder.confirmed >= 3  # cars drive through: several confirmed tracks
    assert all(k[0] == "new" and k[-1] == "end" and k.count("new") == 1 for k in kinds.values())
    assert len(kinds) == builder.confirmed
    final: dict[str, Any] = {}
    for topic, body in messages:
        if topic != "events":
            final[topic] = body
    assert all(v == 0 for t, v in final.items() if "count/" in t)  # everything ended
    print(
        f"frames {index}, confirmed {builder.confirmed}, unconfirmed {builder.unconfirmed}, "
        f"events {len(bodies)}, retained {len(messages) - len(bodies)}, lines {final['lines/mid']}"
    )
