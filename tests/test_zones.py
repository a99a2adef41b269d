"""Zones, counting lines and the geometry under them (edge_agent.core.geometry, camera.zones)."""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.camera.zones import LineConfig, ZoneConfig, ZoneLineState
from edge_agent.config.schema import ModelConfig
from edge_agent.core.detections import NO_TRACK, Detections, box_iou
from edge_agent.core.geometry import (
    boxes_to_normalized,
    boxes_to_pixels,
    cxcywh_to_xyxy,
    points_in_polygon,
    segment_crossings,
    to_normalized,
    to_pixels,
    validate_polygon,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from edge_agent.detect.detector import Detector
from edge_agent.errors import ConfigError
from tests.helpers import SSD, SSD_LABELS, VIDEO

LABELS = ["person", "bicycle", "car"]
PERSON, CAR = 0, 2
SQUARE = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]
# An L: the square minus its top-right quarter (0.5..0.8 x 0.2..0.5).
L_SHAPE = [[0.2, 0.2], [0.5, 0.2], [0.5, 0.5], [0.8, 0.5], [0.8, 0.8], [0.2, 0.8]]
HORIZONTAL = [[0.0, 0.5], [1.0, 0.5]]  # drawn left to right: moving down is "in"


def dets(points: Any, ids: Any, classes: Any = CAR, **data: Any) -> Detections:
    """Small boxes whose bottom-center anchor is each (x, y) of `points`."""
    p = np.asarray(points, np.float32).reshape(-1, 2)
    n = len(p)
    xyxy = np.stack([p[:, 0] - 0.02, p[:, 1] - 0.05, p[:, 0] + 0.02, p[:, 1]], axis=1)
    return Detections(
        xyxy.astype(np.float32),
        np.full(n, 0.9, np.float32),
        np.broadcast_to(np.asarray(classes, np.int64), (n,)).copy(),
        np.asarray(ids, np.int64).reshape(n),
        data={k: np.asarray(v) for k, v in data.items()},
    )


def state(
    zones: dict[str, Any] | None = None, lines: dict[str, Any] | None = None
) -> ZoneLineState:
    return ZoneLineState(
        {k: ZoneConfig(**v) for k, v in (zones or {}).items()},
        {k: LineConfig(**v) for k, v in (lines or {}).items()},
        LABELS,
    )


def walk(
    s: ZoneLineState, ys: list[float], x: float = 0.5, track: int = 1
) -> list[tuple[str, str]]:
    """Move one track through the y positions; the (line, direction) crossings in order."""
    out: list[tuple[str, str]] = []
    for y in ys:
        out += [(e.line, e.direction) for e in s.update(dets([[x, y]], [track])).crossed]
    return out


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("polygon", "point", "inside"),
    [
        (SQUARE, (0.5, 0.5), True),
        (SQUARE, (0.1, 0.5), False),
        (SQUARE, (0.9, 0.9), False),
        (SQUARE, (0.5, 0.2), True),  # on the top edge
        (SQUARE, (0.8, 0.5), True),  # on the right edge
        (SQUARE, (0.2, 0.2), True),  # a vertex
        (SQUARE, (0.8, 0.8), True),  # the opposite vertex
        (SQUARE, (0.8000001, 0.5), True),  # within the float32 tolerance of the edge
        (SQUARE, (0.801, 0.5), False),
        (L_SHAPE, (0.3, 0.3), True),
        (L_SHAPE, (0.7, 0.3), False),  # in the notch of the L
        (L_SHAPE, (0.7, 0.7), True),
        (L_SHAPE, (0.5, 0.4), True),  # on the inner edge of the notch
        (L_SHAPE, (0.5, 0.5), True),  # the reflex vertex
        (L_SHAPE, (0.65, 0.5), True),  # on the notch's floor
        (L_SHAPE, (0.65, 0.49), False),
    ],
)
def test_points_in_polygon(
    polygon: list[list[float]], point: tuple[float, float], inside: bool
) -> None:
    assert points_in_polygon([point], polygon).tolist() == [inside]


def test_points_in_polygon_vectorized_matches_one_by_one() -> None:
    rng = np.random.default_rng(7)
    pts = rng.uniform(0, 1, (500, 2))
    together = points_in_polygon(pts, L_SHAPE)
    apart = [bool(points_in_polygon([p], L_SHAPE)[0]) for p in pts]
    assert together.tolist() == apart
    # Area check: the L covers 0.36 - 0.09 = 0.27 of the unit square.
    assert abs(points_in_polygon(rng.uniform(0, 1, (20000, 2)), L_SHAPE).mean() - 0.27) < 0.02


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        ([[0, 0], [1, 1]], "at least 3 points"),
        ([[0, 0], [0.5, 0.5], [1, 1]], "zero area"),
        ([[0, 0], [1, 0], [1, 0], [0, 1]], "repeats"),
        ([[0, 0], [1, 1], [1, 0], [0, 1]], "crosses itself"),  # bow tie
        # Figure eight touching itself at (0.5, 0.5).
        ([[0, 0], [0.5, 0.5], [1, 0], [1, 1], [0.5, 0.5], [0, 1]], "repeats|crosses itself"),
        ([[0, 0], [1, 0], [0.5, 0], [0.5, 1]], "doubles back|crosses itself"),
        ([[0, 0], [1, 0], [float("nan"), 1]], "finite"),
        ([[0, 0, 0], [1, 0, 0], [1, 1, 0]], "shape"),
    ],
)
def test_degenerate_polygons_refused(polygon: list[list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_polygon(polygon)


def test_closed_polygon_accepted_without_its_copy_of_the_first_point() -> None:
    assert validate_polygon([*SQUARE, SQUARE[0]]).tolist() == SQUARE


@pytest.mark.parametrize(
    ("line", "prev", "cur", "expected"),
    [
        ([[0, 0.5], [1, 0.5]], (0.5, 0.4), (0.5, 0.6), 1),  # left->right, moving down: in
        ([[0, 0.5], [1, 0.5]], (0.5, 0.6), (0.5, 0.4), -1),
        ([[1, 0.5], [0, 0.5]], (0.5, 0.4), (0.5, 0.6), -1),  # right->left: down is out
        ([[1, 0.5], [0, 0.5]], (0.5, 0.6), (0.5, 0.4), 1),
        ([[0.5, 0], [0.5, 1]], (0.6, 0.5), (0.4, 0.5), 1),  # drawn downward: moving left is in
        ([[0.5, 0], [0.5, 1]], (0.4, 0.5), (0.6, 0.5), -1),
        ([[0.5, 1], [0.5, 0]], (0.4, 0.5), (0.6, 0.5), 1),  # drawn upward: moving right is in
        ([[0, 0], [1, 1]], (0.6, 0.4), (0.4, 0.6), 1),  # diagonal, moving down-left
        ([[0, 0], [1, 1]], (0.4, 0.6), (0.6, 0.4), -1),
        ([[0.2, 0.5], [0.4, 0.5]], (0.5, 0.4), (0.5, 0.6), 0),  # passes beside the segment
        ([[0.2, 0.5], [0.4, 0.5]], (0.4, 0.4), (0.4, 0.6), 1),  # through its end point
        ([[0, 0.5], [1, 0.5]], (0.5, 0.4), (0.5, 0.45), 0),  # stays on one side
        ([[0, 0.5], [1, 0.5]], (0.5, 0.4), (0.5, 0.5), 1),  # onto the line: the "in" half
        ([[0, 0.5], [1, 0.5]], (0.5, 0.5), (0.5, 0.6), 0),  # ... so leaving it is no 2nd count
    ],
)
def test_segment_crossing_direction(
    line: list[list[float]], prev: tuple[float, float], cur: tuple[float, float], expected: int
) -> None:
    assert segment_crossings([prev], [cur], *line).tolist() == [expected]


def test_box_and_unit_conversions() -> None:
    xyxy = np.array([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 640.0, 480.0]])
    xywh = xyxy_to_xywh(xyxy)
    assert xywh.tolist() == [[10, 20, 40, 80], [0, 0, 640, 480]]
    assert xyxy_to_cxcywh(xyxy).tolist() == [[30, 60, 40, 80], [320, 240, 640, 480]]
    np.testing.assert_allclose(xywh_to_xyxy(xywh), xyxy)
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)
    norm = boxes_to_normalized(xyxy, (640, 480))
    np.testing.assert_allclose(norm[1], [0, 0, 1, 1])
    np.testing.assert_allclose(boxes_to_pixels(norm, (640, 480)), xyxy)
    # Normalized YOLO labels from pixel COCO boxes, the dataset tools' path.
    yolo = xyxy_to_cxcywh(boxes_to_normalized(xywh_to_xyxy([[64, 48, 64, 48]]), (640, 480)))
    np.testing.assert_allclose(yolo, [[0.15, 0.15, 0.1, 0.1]])
    np.testing.assert_allclose(to_normalized([[320, 120]], (640, 480)), [[0.5, 0.25]])
    np.testing.assert_allclose(to_pixels([[0.5, 0.25]], (640, 480)), [[320, 120]])
    with pytest.raises(ValueError, match="positive"):
        to_normalized([[1, 1]], (0, 480))
    with pytest.raises(ValueError, match="4 numbers"):
        xyxy_to_xywh([[1, 2, 3]])


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        (ZoneConfig, {"polygon": [[0, 0], [1, 1], [1, 0], [0, 1]]}, "crosses itself"),
        (ZoneConfig, {"polygon": [[0, 0], [1, 0]]}, "at least 3"),
        (ZoneConfig, {"polygon": [[0, 0], [2, 0], [0, 1]]}, "units: px"),
        (ZoneConfig, {"polygon": [[0, 0], [-1, 0], [0, 1]]}, "greater than or equal"),
        (ZoneConfig, {"polygon": SQUARE, "labels": []}, "at least 1"),
        (ZoneConfig, {"polygon": SQUARE, "min_frames": 0}, "greater than or equal"),
        (ZoneConfig, {"polygon": SQUARE, "anchor": "middle"}, "bottom_center"),
        (ZoneConfig, {"polygon": SQUARE, "colour": "red"}, "Extra inputs"),
        (LineConfig, {"points": [[0.5, 0.5], [0.5, 0.5]]}, "two different points"),
        (LineConfig, {"points": [[0, 0], [1, 1], [1, 0]]}, "at most 2"),
        (LineConfig, {"points": HORIZONTAL, "margin": 0.9}, "less than or equal"),
        (LineConfig, {"points": [[0, 0], [640, 480]]}, "units: px"),
    ],
)
def test_config_refuses(model: type[Any], fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model(**fields)


@pytest.mark.parametrize("section", ["zones", "lines"])
def test_unknown_label_is_a_config_error(section: str) -> None:
    item = {"polygon": SQUARE} if section == "zones" else {"points": HORIZONTAL}
    with pytest.raises(ConfigError) as caught:
        state(**{section: {"drive": {**item, "labels": ["car", "carr"]}}})
    assert str(caught.value).startswith(f"{section}.drive.labels: 'carr' is not a label")


# --- lines ----------------------------------------------------------------------------------


def counts(events: list[tuple[str, str]]) -> dict[str, int]:
    return {d: sum(1 for _, got in events if got == d) for d in ("in", "out")}


JITTER = [0.5 + (0.005 if i % 2 else -0.005) for i in range(30)]


@pytest.mark.parametrize(
    ("ys", "margin", "expected"),
    [
        ([0.2, 0.4, 0.6, 0.8], 0.02, {"in": 1, "out": 0}),
        ([0.8, 0.6, 0.4, 0.2], 0.02, {"in": 0, "out": 1}),
        (JITTER, 0.02, {"in": 0, "out": 0}),  # never passes the margin
        (JITTER, 0.002, {"in": 1, "out": 1}),  # passes it: once per direction, not 15
        ([0.2, 0.45, *JITTER, 0.8], 0.02, {"in": 1, "out": 0}),  # arrives, dithers, goes
        ([0.2, 0.45, *JITTER, 0.8], 0.0, {"in": 1, "out": 1}),  # no margin: one each
        ([0.2, 0.8, 0.2], 0.02, {"in": 1, "out": 1}),  # crosses and comes back
        ([0.2, 0.8, 0.2, 0.8, 0.2, 0.8], 0.02, {"in": 1, "out": 1}),  # in twice counts once
        ([0.51, 0.8], 0.02, {"in": 0, "out": 0}),  # first seen on the "in" side
        ([0.49, 0.8], 0.02, {"in": 1, "out": 0}),  # first seen just above: it crossed
        ([0.49, 0.515], 0.02, {"in": 0, "out": 0}),  # not yet margin past
    ],
)
def test_line_crossings_with_hysteresis(
    ys: list[float], margin: float, expected: dict[str, int]
) -> None:
    s = state(lines={"gate": {"points": HORIZONTAL, "margin": margin}})
    assert counts(walk(s, ys)) == expected
    totals = s.line_totals()["gate"]
    assert {d: sum(totals[d].values()) for d in ("in", "out")} == expected


@pytest.mark.parametrize(
    ("points", "path", "expected"),
    [
        ([[1.0, 0.5], [0.0, 0.5]], [(0.5, 0.2), (0.5, 0.8)], "out"),  # right to left
        ([[0.5, 0.0], [0.5, 1.0]], [(0.8, 0.5), (0.2, 0.5)], "in"),  # vertical, drawn down
        ([[0.5, 0.0], [0.5, 1.0]], [(0.2, 0.5), (0.8, 0.5)], "out"),
        ([[0.0, 0.0], [1.0, 1.0]], [(0.7, 0.3), (0.3, 0.7)], "in"),  # diagonal
        ([[0.0, 1.0], [1.0, 0.0]], [(0.3, 0.3), (0.7, 0.7)], "in"),
        ([[0.0, 0.5], [0.3, 0.5]], [(0.5, 0.2), (0.5, 0.8)], None),  # beside the segment
    ],
)
def test_line_direction_by_drawing(
    points: list[list[float]], path: list[tuple[float, float]], expected: str | None
) -> None:
    s = state(lines={"l": {"points": points}})
    seen = [e.direction for p in path for e in s.update(dets([p], [3])).crossed]
    assert seen == ([] if expected is None else [expected])


def test_line_label_filter_and_totals_per_label() -> None:
    s = state(
        lines={"gate": {"points": HORIZONTAL, "labels": ["car"]}, "all": {"points": HORIZONTAL}}
    )
    for y in (0.3, 0.7):
        update = s.update(dets([[0.3, y], [0.6, y]], [1, 2], [CAR, PERSON]))
    events = {(e.line, e.track_id, e.label) for e in update.crossed}
    assert events == {("gate", 1, "car"), ("all", 1, "car"), ("all", 2, "person")}
    assert s.line_totals() == {
        "gate": {"in": {"car": 1}, "out": {}},
        "all": {"in": {"car": 1, "person": 1}, "out": {}},
    }


def test_voted_label_id_wins_over_class_id() -> None:
    s = state(lines={"gate": {"points": HORIZONTAL, "labels": ["car"]}})
    s.update(dets([[0.5, 0.3]], [1], PERSON, label_id=[CAR]))
    crossed = s.update(dets([[0.5, 0.7]], [1], PERSON, label_id=[CAR])).crossed
    assert [(e.label, e.direction) for e in crossed] == [("car", "in")]


def test_repeated_ids_and_unknown_class_ids() -> None:
    s = state(
        lines={"cars": {"points": HORIZONTAL, "labels": ["car"]}, "any": {"points": HORIZONTAL}}
    )
    # A tracker bug gives one id to two boxes: the first box wins, nothing is counted twice.
    for y in (0.3, 0.7):
        update = s.update(dets([[0.5, y], [0.2, y], [0.8, y]], [5, 5, 6], [CAR, CAR, 7]))
    assert sorted((e.line, e.track_id, e.label) for e in update.crossed) == [
        ("any", 5, "car"), ("any", 6, "class_7"), ("cars", 5, "car")
    ]  # fmt: skip
    assert s.line_totals()["any"]["in"] == {"car": 1, "class_7": 1}


# --- zones ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_frames", "inside", "entered_at", "left_at"),
    [
        (1, [1, 1, 0, 0], [0], [2]),
        (2, [1, 1, 1, 0, 0, 0], [1], [4]),
        (3, [1, 1, 1, 0, 1, 0, 0, 0], [2], [7]),  # one frame out is jitter, not a leave
        (2, [1, 0, 1, 0, 1, 0, 1, 0], [], []),  # flickering at the border never enters
    ],
)
def test_zone_enter_and_leave_after_min_frames(
    min_frames: int, inside: list[int], entered_at: list[int], left_at: list[int]
) -> None:
    s = state(zones={"drive": {"polygon": SQUARE, "min_frames": min_frames}})
    entered, left = [], []
    for frame, flag in enumerate(inside):
        update = s.update(dets([[0.5, 0.5] if flag else [0.9, 0.5]], [4]))
        assert update.box_zones.tolist() == [[bool(flag)]]  # raw membership, no debounce
        entered += [frame for e in update.entered if (e.track_id, e.zone) == (4, "drive")]
        left += [frame for e in update.left if (e.track_id, e.zone) == (4, "drive")]
    assert (entered, left) == (entered_at, left_at)


def test_zone_label_filters_counts_and_forget() -> None:
    s = state(
        zones={
            "drive": {"polygon": SQUARE, "labels": ["car"], "min_frames": 1},
            "lawn": {"polygon": L_SHAPE, "min_frames": 1},
        }
    )
    points = [[0.3, 0.3], [0.4, 0.6], [0.7, 0.3], [0.1, 0.1], [0.3, 0.4]]
    classes = [CAR, PERSON, CAR, CAR, CAR]
    update = s.update(dets(points, [1, 2, 3, 4, NO_TRACK], classes))
    assert update.box_zones.tolist() == [
        [True, True], [False, True], [True, False], [False, False], [True, True]
    ]  # fmt: skip
    assert update.zones_of(1) == ("drive", "lawn")
    assert update.zones_of(2) == ("lawn",)  # a person is not counted in the car-only zone
    assert update.zones_of(NO_TRACK) == ()  # untracked boxes make no events
    assert {(e.track_id, e.zone) for e in update.entered} == {
        (1, "drive"), (1, "lawn"), (2, "lawn"), (3, "drive")
    }  # fmt: skip
    assert s.present_counts() == {"drive": {"car": 2}, "lawn": {"car": 1, "person": 1}}
    left = s.forget([1, 99])  # 99 never existed
    assert {(e.track_id, e.zone, e.label) for e in left} == {
        (1, "drive", "car"),
        (1, "lawn", "car"),
    }
    assert s.present_counts() == {"drive": {"car": 1}, "lawn": {"person": 1}}
    assert s.forget([1]) == ()  # already gone
    # Unseen tracks stay where they were (a missed detection is not a leave).
    assert s.update(dets(np.zeros((0, 2)), [])).left == ()
    assert s.present_counts()["lawn"] == {"person": 1}


def test_pixel_units_match_normalized_ones() -> None:
    size = (640, 480)
    px_zone = {
        "polygon": [[128, 96], [512, 96], [512, 384], [128, 384]],
        "units": "px",
        "min_frames": 1,
    }
    px_line = {"points": [[0, 240], [640, 240]], "units": "px"}
    px = state(zones={"z": px_zone}, lines={"l": px_line})
    norm = state(
        zones={"z": {"polygon": SQUARE, "min_frames": 1}}, lines={"l": {"points": HORIZONTAL}}
    )
    rng = np.random.default_rng(3)
    for _ in range(20):
        frame = dets(rng.uniform(0, 1, (10, 2)), np.arange(10))
        a, b = px.update(frame, size), norm.update(frame)
        assert a.box_zones.tolist() == b.box_zones.tolist()
        assert {(e.track_id, e.direction) for e in a.crossed} == {
            (e.track_id, e.direction) for e in b.crossed
        }
    assert px.line_totals() == norm.line_totals() != {"l": {"in": {}, "out": {}}}
    with pytest.raises(ValueError, match="frame size"):
        px.update(frame)


def test_slots_are_reused_clean_after_forget() -> None:
    s = state(
        zones={"z": {"polygon": SQUARE, "min_frames": 1}}, lines={"l": {"points": HORIZONTAL}}
    )
    ids = np.arange(200)  # beyond the initial capacity: the table grows
    for y in (0.3, 0.7):
        update = s.update(dets(np.column_stack([np.full(200, 0.5), np.full(200, y)]), ids))
    assert len(update.crossed) == 200
    assert len(s.forget(ids)) == 200  # all were in the zone
    # New tracks in recycled slots must not inherit "already counted" or "in the zone".
    s.update(dets([[0.5, 0.3]], [1000]))
    assert [e.direction for e in s.update(dets([[0.5, 0.7]], [1000])).crossed] == ["in"]
    assert s.line_totals()["l"]["in"] == {"car": 201}
    assert s.present_counts() == {"z": {"car": 1}}


def test_update_is_vectorized_fast() -> None:
    """50 tracks x 5 zones x 3 lines per frame: the budget is 0.3 ms; assert 10x that."""
    zones = {
        f"z{i}": {
            "polygon": [[0.1 * i, 0.1], [0.1 * i + 0.3, 0.1], [0.1 * i + 0.2, 0.9], [0.1 * i, 0.7]]
        }
        for i in range(5)
    }
    lines = {f"l{i}": {"points": [[0.0, 0.3 + 0.2 * i], [1.0, 0.35 + 0.2 * i]]} for i in range(3)}
    s = state(zones, lines)
    rng = np.random.default_rng(11)
    start = rng.uniform(0.05, 0.95, (50, 2))
    speed = rng.uniform(-0.01, 0.01, (50, 2))
    frames = [dets(np.clip(start + k * speed, 0, 1), np.arange(50)) for k in range(300)]
    for frame in frames[:20]:
        s.update(frame)
    t0 = time.perf_counter()
    events = 0
    for frame in frames[20:]:
        u = s.update(frame)
        events += len(u.entered) + len(u.left) + len(u.crossed)
    per_frame_ms = (time.perf_counter() - t0) * 1000 / len(frames[20:])
    print(f"zones update: {per_frame_ms:.3f} ms/frame, {events} events")
    assert events > 0
    assert per_frame_ms < 3.0


# --- real detections ------------------------------------------------------------------------


def _greedy_tracks(
    frames: list[Detections], max_missed: int = 3
) -> list[tuple[Detections, list[int]]]:
    """A minimal IoU tracker (the real one is another stage): each frame's boxes with ids,
    and the ids that ended (unseen for `max_missed` frames) before it."""
    live: dict[int, tuple[np.ndarray, int]] = {}  # id -> (last box, frames missed)
    out, next_id = [], 1
    for frame in frames:
        ids = np.full(len(frame), NO_TRACK, np.int64)
        known = list(live)
        if known and len(frame):
            iou = box_iou(frame.xyxy, np.stack([live[k][0] for k in known]))
            for _ in range(min(iou.shape)):
                r, c = np.unravel_index(np.argmax(iou), iou.shape)
                if iou[r, c] < 0.3:
                    break
                ids[r] = known[c]
                iou[r, :], iou[:, c] = -1, -1
        for row in np.flatnonzero(ids == NO_TRACK):
            ids[row], next_id = next_id, next_id + 1
        seen = set(ids.tolist())
        for k in list(live):
            if k not in seen:
                live[k] = (live[k][0], live[k][1] + 1)
        ended = [k for k, (_, missed) in live.items() if missed > max_missed]
        for k in ended:
            del live[k]
        live.update({int(k): (frame.xyxy[i], 0) for i, k in enumerate(ids)})
        out.append((frame.with_tracker_id(ids), ended))
    return out


@pytest.fixture(scope="module")
def person_frames() -> list[Detections]:
    """SSD person boxes on every 6th frame of the shared one-by-one clip (about 230 frames)."""
    cap = cv2.VideoCapture(str(VIDEO))
    detector = Detector(ModelConfig(path=SSD, labels=SSD_LABELS), 0.5)
    frames, index = [], 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if index % 6 == 0:
            found = [
                d for d in detector.detect(np.asarray(image, np.uint8))[0] if d.class_id == PERSON
            ]
            frames.append(
                Detections(
                    np.array([d.box for d in found], np.float32).reshape(-1, 4),
                    np.array([d.score for d in found], np.float32),
                    np.array([d.class_id for d in found], np.int64),
                )
            )
        index += 1
    cap.release()
    assert len(frames) > 200
    return frames


def test_real_people_enter_and_leave_the_zone_where_they_stand(
    person_frames: list[Detections],
) -> None:
    stand = [[0.4, 0.7], [0.8, 0.7], [0.8, 1.0], [0.4, 1.0]]  # where the clip's people stop
    entered: dict[int, list[int]] = {1: [], 3: []}
    for min_frames in entered:
        s = state(zones={"spot": {"polygon": stand, "min_frames": min_frames}})
        left, most = 0, 0
        for frame, ended in _greedy_tracks(person_frames):
            left += len(s.forget(ended))
            update = s.update(frame)
            anchors = frame.anchors("bottom_center")
            assert update.box_zones[:, 0].tolist() == points_in_polygon(anchors, stand).tolist()
            entered[min_frames] += [e.track_id for e in update.entered]
            left += len(update.left)
            most = max(most, sum(s.present_counts()["spot"].values()))
        left += len(s.forget(list(range(10_000))))  # the clip ends: everyone still there leaves
        assert left == len(entered[min_frames])
        assert 1 <= most <= 3  # one person at a time (plus a false or doubled box)
    print(f"people clip: {len(entered[1])} entries (min_frames 1), {len(entered[3])} (3)")
    assert len(entered[3]) >= 4  # the clip shows several people stopping there, one by one
    assert len(entered[3]) <= len(entered[1])  # min_frames only removes flicker


def test_zone_and_line_numbers_have_upper_bounds() -> None:
    from tests.test_input_faults import unbounded_numbers

    assert unbounded_numbers(ZoneConfig, "ZoneConfig", [], set()) == []
    assert unbounded_numbers(LineConfig, "LineConfig", [], set()) == []
