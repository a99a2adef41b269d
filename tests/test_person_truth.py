"""The hand-made ground truth of people in the shared person video: self-consistent, about
this exact file, and plausible to the SSD detector (people found where the truth has them,
nobody found where it has none)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import pytest

from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector
from edge_agent.types import Image
from tests.helpers import SSD, SSD_LABELS, VIDEO

TRUTH = Path(__file__).resolve().parent / "data" / "person_video_truth.json"
SAMPLE_EVERY = 5  # every 5th frame keeps the detector pass to a few seconds
PERSON_SCORE = 0.5
EDGES = {"bottom", "top", "left", "right"}


@pytest.fixture(scope="module")
def truth() -> dict[str, Any]:
    """The ground-truth JSON."""
    data: dict[str, Any] = json.loads(TRUTH.read_text())
    return data


def spans(truth: dict[str, Any]) -> list[tuple[int, int]]:
    """(first, last) of every appearance, in file order."""
    return [(a["first_frame"], a["last_frame"]) for a in truth["appearances"]]


def frames_at(wanted: set[int]) -> Iterator[tuple[int, Image]]:
    """Decode the video in order (no seeking: H.264 seeks are not frame-exact) and yield the
    wanted frames by 0-based index."""
    cap = cv2.VideoCapture(str(VIDEO))
    try:
        index = 0
        last = max(wanted)
        while index <= last:
            if index in wanted:
                ok, frame = cap.read()
                assert ok, f"video ended before frame {index}"
                yield index, cast(Image, frame)  # cv2 stubs type frames loosely
            else:
                assert cap.grab(), f"video ended before frame {index}"
            index += 1
    finally:
        cap.release()


def test_truth_is_about_this_video(truth: dict[str, Any]) -> None:
    """Name, checksum, frame count, fps and size match the shared file."""
    assert truth["video"] == VIDEO.name
    assert truth["sha256"] == hashlib.sha256(VIDEO.read_bytes()).hexdigest()
    cap = cv2.VideoCapture(str(VIDEO))
    try:
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == truth["frames"]
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(truth["fps"])
        assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == truth["width"]
        assert int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == truth["height"]
    finally:
        cap.release()


def test_appearances_are_ordered_and_inside_the_video(truth: dict[str, Any]) -> None:
    """Ids 1..n in order, one person at a time, every frame index inside the video."""
    apps = truth["appearances"]
    assert [a["id"] for a in apps] == list(range(1, len(apps) + 1))
    previous_last = -1
    for app in apps:
        first, last = app["first_frame"], app["last_frame"]
        assert previous_last < first <= last < truth["frames"], app["id"]
        assert app["enters_from"] in EDGES and app["exits_to"] in EDGES, app["id"]
        assert isinstance(app["person"], int) and app["person"] >= 1, app["id"]
        assert app["notes"].strip(), app["id"]
        previous_last = last
    assert truth["distinct_people"] == len({a["person"] for a in apps})
    assert truth["definition"].strip() and truth["method"].strip()


def test_empty_ranges_are_exactly_the_frames_nobody_is_in(truth: dict[str, Any]) -> None:
    """Appearances and empty ranges together cover every frame exactly once."""
    covered = [i for first, last in spans(truth) for i in range(first, last + 1)]
    empty = [i for first, last in truth["empty_ranges"] for i in range(first, last + 1)]
    assert sorted(covered + empty) == list(range(truth["frames"]))


@pytest.mark.parametrize("key", ["static", "transient_non_person"])
def test_boxes_are_normalized(truth: dict[str, Any], key: str) -> None:
    """Every box is [x1, y1, x2, y2] with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1."""
    assert truth[key]
    for item in truth[key]:
        x1, y1, x2, y2 = item["box"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, item["what"]


def test_ssd_agrees_with_the_truth(truth: dict[str, Any]) -> None:
    """SSD sees a person (>= 0.5) in at least half of each appearance's sampled frames and
    in none of the sampled empty frames."""
    inside = {i: n for n, (a, b) in enumerate(spans(truth), 1) for i in range(a, b + 1)}
    sampled = {i for a, b in spans(truth) for i in range(a, b + 1, SAMPLE_EVERY)}
    sampled |= {i for a, b in truth["empty_ranges"] for i in range(a, b + 1, SAMPLE_EVERY)}
    detector = Detector(ModelConfig(path=SSD, labels=SSD_LABELS), 0.3)
    hits = dict.fromkeys(range(1, len(truth["appearances"]) + 1), 0)
    totals = dict.fromkeys(hits, 0)
    false_people: list[int] = []
    for index, frame in frames_at(sampled):
        found = any(
            d.label == "person" and d.score >= PERSON_SCORE for d in detector.detect(frame)[0]
        )
        if index in inside:
            totals[inside[index]] += 1
            hits[inside[index]] += found
        elif found:
            false_people.append(index)
    weak = {n: f"{hits[n]}/{totals[n]}" for n in hits if 2 * hits[n] < totals[n]}
    assert not weak, f"appearances where SSD finds a person in under half the frames: {weak}"
    assert not false_people, (
        f"SSD finds a person in frames the truth says are empty: {false_people}"
    )
