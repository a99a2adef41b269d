"""Unit tests of the pure stages: NMS, labels, rate limit, slots, topics, loader, runtime lookup."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.camera.objects import LegacyLabelRule, ObjectFilter
from edge_agent.config.loader import parse_yaml
from edge_agent.config.schema import DetectConfig, ObjectRule, SamplesConfig
from edge_agent.core.detections import Detections
from edge_agent.detect import interpreter
from edge_agent.detect.labels import fit_labels
from edge_agent.errors import ConfigError, ModelError, RuntimeMissingError
from edge_agent.health import Counters
from edge_agent.pipeline import END, FrameSlot
from edge_agent.postprocess import Decoded, nms
from edge_agent.preprocess import InputPlan, Transform, prepare
from edge_agent.sampling.budget import Window
from edge_agent.sampling.select import FrameView, Selector
from edge_agent.types import Frame


def _decoded(rows: list[tuple[float, float, float, float, float, int]]) -> Decoded:
    arr = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return Decoded(arr[:, :4].copy(), arr[:, 4].copy(), arr[:, 5].astype(np.int64))


NMS_CASES = [
    ("overlap same class keeps best", [(0, 0, 1, 1, 0.9, 0), (0, 0, 0.95, 1, 0.8, 0)], [0.9]),
    ("overlap other class keeps both", [(0, 0, 1, 1, 0.9, 0), (0, 0, 0.95, 1, 0.8, 1)], [0.9, 0.8]),
    (
        "disjoint same class keeps both",
        [(0, 0, 0.4, 0.4, 0.7, 0), (0.5, 0.5, 1, 1, 0.9, 0)],
        [0.9, 0.7],
    ),
    ("iou exactly below threshold", [(0, 0, 1, 1, 0.9, 0), (0.5, 0, 1.5, 1, 0.8, 0)], [0.9, 0.8]),
    ("empty", [], []),
]


@pytest.mark.parametrize(
    ("rows", "scores"), [c[1:] for c in NMS_CASES], ids=[c[0] for c in NMS_CASES]
)
def test_nms(rows: list[tuple[float, ...]], scores: list[float]) -> None:
    kept = nms(_decoded(rows), iou_threshold=0.45, max_out=100)  # type: ignore[arg-type]
    assert kept.scores.tolist() == pytest.approx(scores)


def test_nms_caps_output() -> None:
    rows = [(i, 0, i + 0.5, 1, 0.5 + i / 100, 0) for i in range(20)]
    assert len(nms(_decoded(rows), 0.45, max_out=5).scores) == 5  # type: ignore[arg-type]


LABEL_CASES = [
    ("exact", ["a", "b"], 2, ["a", "b"]),
    ("background line dropped", ["???", "a", "b"], 2, ["a", "b"]),
    ("background named", ["background", "a"], 1, ["a"]),
    ("unknown count keeps plain", ["a", "b"], None, ["a", "b"]),
    ("unknown count drops background", ["???", "a"], None, ["a"]),
]


@pytest.mark.parametrize(
    ("labels", "count", "expected"), [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES]
)
def test_fit_labels(labels: list[str], count: int | None, expected: list[str]) -> None:
    assert fit_labels(labels, count, "labels.txt") == expected


@pytest.mark.parametrize(
    ("labels", "count"), [(["a", "b", "c"], 2), (["x", "a", "b"], 2), (["a"], 3)]
)
def test_fit_labels_mismatch(labels: list[str], count: int) -> None:
    with pytest.raises(ModelError, match=f"has {len(labels)} entries but the model has {count}"):
        fit_labels(labels, count, "labels.txt")


def _allow(window: Window, ts: float) -> bool:
    if window.allows(ts):
        window.take(ts)
        return True
    return False


def test_rate_limit_sliding_window() -> None:
    limit = Window(60.0, 2)
    decisions = [_allow(limit, t) for t in (0.0, 10.0, 20.0, 59.9, 60.0, 61.0, 70.0)]
    assert decisions == [True, True, False, False, True, False, True]


def test_rate_limit_zero_allows_nothing() -> None:
    assert not Window(60.0, 0).allows(0.0)


LABELS = ["person", "car", "dog"]


def _dets(*items: tuple[str, float]) -> Detections:
    n = len(items)
    return Detections(
        np.tile(np.array([[0.1, 0.1, 0.4, 0.4]], np.float32), (n, 1)),
        np.array([s for _, s in items], np.float32),
        np.array([LABELS.index(lab) for lab, _ in items], np.int64),
    )


FILTER_CASES = [
    # (id, objects / detect, boxes, expected (label, score) reported)
    (
        "legacy detect: labels and per_label",
        DetectConfig(
            min_score=0.5,
            labels=["person", "car"],
            per_label={"car": LegacyLabelRule(min_score=0.7)},
        ).to_objects(),
        [("person", 0.55), ("car", 0.65), ("car", 0.75), ("dog", 0.9)],
        [("person", 0.55), ("car", 0.75)],
    ),
    (
        "legacy detect without labels keeps every label",
        DetectConfig(min_score=0.6).to_objects(),
        [("person", 0.55), ("dog", 0.9)],
        [("dog", 0.9)],
    ),
    ("no objects: every label at 0.5", {}, [("dog", 0.5), ("car", 0.49)], [("dog", 0.5)]),
    (
        "objects with a default rule",
        {"*": ObjectRule(min_score=0.8), "car": ObjectRule(min_score=0.3)},
        [("car", 0.35), ("dog", 0.7), ("person", 0.85)],
        [("car", 0.35), ("person", 0.85)],
    ),
]


@pytest.mark.parametrize(
    ("objects", "boxes", "expected"),
    [c[1:] for c in FILTER_CASES],
    ids=[c[0] for c in FILTER_CASES],
)
def test_object_filter(objects, boxes, expected) -> None:
    result = ObjectFilter(objects, LABELS, None, 0.5).apply(_dets(*boxes))
    shown = result.kept[result.reported]
    assert [
        (LABELS[c], round(float(s), 2)) for c, s in zip(shown.class_id, shown.score, strict=True)
    ] == expected


def test_object_filter_keeps_low_boxes_for_the_tracker_and_area_bounds() -> None:
    objects = {"car": ObjectRule(min_score=0.6, min_area=0.05, max_area=0.5)}
    f = ObjectFilter(objects, LABELS, 0.1, 0.5)
    assert f.floor == pytest.approx(0.1)
    dets = _dets(("car", 0.2), ("car", 0.05), ("dog", 0.9))
    result = f.apply(dets)
    assert result.kept.score.tolist() == pytest.approx([0.2]) and not result.reported.any()
    tiny = Detections(
        np.array([[0, 0, 0.1, 0.1]], np.float32), np.array([0.9], np.float32), np.array([1])
    )
    assert len(f.apply(tiny).kept) == 0  # area 0.01 < min_area


SAMPLER_CASES = [
    ("in band", [("person", 0.4)], None, True),
    ("at upper bound excluded", [("person", 0.5)], None, False),
    ("at lower bound included", [("person", 0.3)], None, True),
    ("below band", [("person", 0.2)], None, False),
    ("unwanted label ignored", [("dog", 0.4)], ["person"], False),
    ("wanted label in band", [("dog", 0.4), ("person", 0.35)], ["person"], True),
]


@pytest.mark.parametrize(
    ("dets", "labels", "sampled"), [c[1:] for c in SAMPLER_CASES], ids=[c[0] for c in SAMPLER_CASES]
)
def test_sampler_trigger(
    dets: list[tuple[str, float]], labels: list[str] | None, sampled: bool
) -> None:
    objects = ObjectFilter(DetectConfig(labels=labels).to_objects(), LABELS, None, 0.5)
    selector = Selector(SamplesConfig(enabled=True), "cam", LABELS, objects.allowed, Counters())
    raw = _dets(*dets)
    frame = Frame("cam", 0, 0.0, np.zeros((8, 8, 3), np.uint8))
    chosen = selector(FrameView(frame, raw, np.zeros(len(raw), np.bool_), {}))
    assert bool(chosen) == sampled
    if chosen:
        assert chosen[0].reasons == ["low_confidence"] and chosen[0].track is None


def test_replay_slot_blocks_and_keeps_order() -> None:
    stop, wake = threading.Event(), threading.Event()
    slot = FrameSlot("cam", live=False, size=2, counters=Counters(), wake=wake)
    frames = [Frame("cam", i, float(i), np.zeros((2, 2, 3), np.uint8)) for i in range(3)]
    assert slot.put(frames[0], stop) and slot.put(frames[1], stop)
    stop.set()
    assert not slot.put(frames[2], stop)  # full and stopping: refused, not dropped silently
    assert [slot.get()[1].index for _ in range(2)] == [0, 1]  # type: ignore[union-attr]


def test_live_slot_keeps_newest_and_counts_skips() -> None:
    counters = Counters()
    slot = FrameSlot("cam", live=True, size=4, counters=counters, wake=threading.Event())
    stop = threading.Event()
    for i in range(5):
        slot.put(Frame("cam", i, float(i), np.zeros((2, 2, 3), np.uint8)), stop)
    has, item = slot.get()
    assert has and item is not END and item.index == 4  # type: ignore[union-attr]
    assert counters.get("frames.skipped.cam") == 4


@pytest.mark.parametrize(
    ("letterbox", "size", "frame"),
    [
        (True, (640, 640), (432, 768)),
        (False, (300, 300), (432, 768)),
        (True, (320, 256), (600, 512)),
        (True, (256, 320), (100, 900)),
    ],
)
def test_transform_roundtrip(
    letterbox: bool, size: tuple[int, int], frame: tuple[int, int]
) -> None:
    """A box drawn on the frame maps into the input and back to where it was."""
    image = np.zeros((*frame, 3), np.uint8)
    plan = InputPlan(size[0], size[1], np.dtype(np.uint8), letterbox, True, "raw")
    tensor, transform = prepare(image, plan)
    assert tensor.shape == (1, size[1], size[0], 3)
    box = np.array([[0.25, 0.5, 0.75, 1.0]], np.float32)
    in_px = _frame_to_input(box, transform)
    back = transform.to_frame(in_px)
    np.testing.assert_allclose(back, box, atol=1e-5)


def _frame_to_input(box: np.ndarray, t: Transform) -> np.ndarray:
    out = box.copy()
    out[:, 0::2] = (box[:, 0::2] * t.src_w * t.scale_x + t.pad_x) / t.in_w
    out[:, 1::2] = (box[:, 1::2] * t.src_h * t.scale_y + t.pad_y) / t.in_h
    return out


def test_int8_input_is_pixel_minus_128() -> None:
    image = np.arange(0, 256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    plan = InputPlan(16, 16, np.dtype(np.int8), False, False, "raw")
    tensor, _ = prepare(image, plan)
    assert tensor.dtype == np.int8
    np.testing.assert_array_equal(tensor[0].astype(int), image.astype(int) - 128)


def test_yaml_duplicate_key_and_lines() -> None:
    with pytest.raises(
        ConfigError, match=r"x\.yaml:3: a\.b: duplicate key \(first defined on line 2"
    ):
        parse_yaml("a:\n  b: 1\n  b: 2\n", Path("x.yaml"))
    data, lines = parse_yaml("a:\n  b: [1, 2]\nc: 3\n", Path("x.yaml"))
    assert data == {"a": {"b": [1, 2]}, "c": 3}
    assert lines[("a", "b")] == 2 and lines[("c",)] == 3


def test_missing_runtime_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interpreter, "RUNTIME_MODULES", ("no_such_runtime_a", "no_such_b"))
    with pytest.raises(RuntimeMissingError, match="pip install ai-edge-litert"):
        interpreter.interpreter_class()


def test_import_needs_no_hardware_or_runtime_library() -> None:
    code = (
        "import sys, edge_agent, edge_agent.cli, edge_agent.runtime, edge_agent.sources;"
        "bad = [m for m in ('picamera2', 'ai_edge_litert', 'tflite_runtime', 'tensorflow')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_counters_snapshot_is_a_copy() -> None:
    counters = Counters()
    counters.inc("a")
    snap = counters.snapshot()
    counters.inc("a")
    assert snap == {"a": 1} and counters.get("a") == 2


# ---- Detections: selections and derivations keep every per-box array aligned


def _boxes() -> Detections:
    xyxy = np.array([[0.1, 0.2, 0.3, 0.6], [0.5, 0.5, 0.9, 0.7], [0.4, 0.1, 0.4, 0.2]], np.float32)
    return Detections(
        xyxy,
        np.array([0.9, 0.4, 0.7], np.float32),
        np.array([0, 2, 1], np.int64),
        tracker_id=np.array([5, -1, 7], np.int64),
        keypoints=np.arange(12, dtype=np.float32).reshape(3, 2, 2),
        data={"sub": np.array([10, 20, 30])},
    )


@pytest.mark.parametrize(
    ("selector", "rows"),
    [
        (np.array([True, False, True]), [0, 2]),
        (np.array([2, 0]), [2, 0]),
        (slice(1, None), [1, 2]),
        (np.zeros(3, bool), []),
    ],
)
def test_detections_selection_keeps_rows_together(selector: Any, rows: list[int]) -> None:
    full = _boxes()
    part = full[selector]
    assert len(part) == len(rows)
    assert part.xyxy.tolist() == full.xyxy[rows].tolist()
    assert part.score.tolist() == full.score[rows].tolist()
    assert part.class_id.tolist() == full.class_id[rows].tolist()
    assert part.tracked.tolist() == full.tracked[rows].tolist()
    assert part.keypoints is not None and part.keypoints.shape == (len(rows), 2, 2)
    assert part.data["sub"].tolist() == full.data["sub"][rows].tolist()


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        ("bottom_center", [[0.2, 0.6], [0.7, 0.7], [0.4, 0.2]]),
        ("center", [[0.2, 0.4], [0.7, 0.6], [0.4, 0.15]]),
        ("top_center", [[0.2, 0.2], [0.7, 0.5], [0.4, 0.1]]),
        ("top_left", [[0.1, 0.2], [0.5, 0.5], [0.4, 0.1]]),
        ("bottom_left", [[0.1, 0.6], [0.5, 0.7], [0.4, 0.2]]),
    ],
)
def test_detections_anchor_points(anchor: Any, expected: list[list[float]]) -> None:
    points = _boxes().anchors(anchor)
    assert points.dtype == np.float32 and points.shape == (3, 2)
    assert np.allclose(points, expected, atol=1e-6)


def test_detections_area_and_refused_mismatches() -> None:
    dets = _boxes()
    area = dets.area()
    assert area.dtype == np.float32
    assert np.allclose(area, [0.08, 0.08, 0.0], atol=1e-6)  # a zero-width box has no area
    assert dets.with_tracker_id(np.array([1, 2, 3])).tracked.tolist() == [1, 2, 3]
    assert dets.with_data(extra=np.ones(3)).data.keys() == {"sub", "extra"}
    with pytest.raises(ValueError, match="3 boxes"):
        dets.with_tracker_id(np.array([1, 2]))
    with pytest.raises(ValueError, match="3 rows"):
        dets.with_data(extra=np.ones(4))
    with pytest.raises(ValueError, match="disagree"):
        Detections(dets.xyxy, dets.score[:2], dets.class_id)
