"""The real device side into the collector: `edge-agent run` samples the shared images (SSD,
every frame, full frames scaled down and crops mode), `edge-agent collect` stores them. Every
message the agent publishes is accepted, and the COCO export has the agent's own boxes in
pixels of the stored images."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import cv2
import pytest

from tests.helpers import IMAGES, SSD, SSD_LABELS, Broker, base_config, run_to_end
from tests.test_collect import (
    CollectorProcess,
    assert_same_boxes,
    coco_boxes,
    expected_boxes,
    index_ids,
)


def _camera(folder: Path, privacy: dict[str, object], max_side: int) -> dict[str, object]:
    return {
        "source": {"type": "images", "path": str(folder)},
        "motion": {"enabled": False},
        "samples": {
            "enabled": True,
            "strategies": {"random": {"probability": 1.0}},
            "dedup": {"enabled": False},
            "privacy": privacy,
            "floor": 0.3,
            "max_side": max_side,
        },
    }


def test_what_the_agent_publishes_is_collected_with_its_boxes(
    broker: Broker, tmp_path: Path
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(["zidane.jpg", "bus.jpg", "kite_and_cold.jpg"]):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.imread(str(IMAGES / name)))
    cameras = {
        "whole": _camera(folder, {"mode": "full"}, 480),
        "boxes": _camera(folder, {"mode": "crops", "padding": 0.2}, 200),
    }
    cfg = base_config(broker.port, SSD, SSD_LABELS, cameras)
    cfg["device_id"] = device = f"collect-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "ds"
    col = CollectorProcess(
        broker.port, out, "--topic", f"edge/{device}/+/samples", "--log-level", "debug"
    )
    try:
        run = run_to_end(broker.port, tmp_path, cfg)
        bodies = run.bodies("/samples")
        assert {b["camera"] for b in bodies} == {"whole", "boxes"} and len(bodies) == 6
        assert col.wait_handled(len(bodies), 60), col.output
        assert col.stop() == 0, col.output
    finally:
        col.kill()
    assert f"{len(bodies)} accepted, 0 duplicates, 0 rejected" in col.finished()
    expected = {}
    for body in bodies:
        expected.update(expected_boxes(body))
    assert sum(len(v) for v in expected.values()) >= 10
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert_same_boxes(coco_boxes(coco), expected, "agent -> collect -> coco")


VIDEOS = IMAGES.parent / "video"
STRATEGIES = {
    "low_confidence": {"min_score": 0.3, "max_score": 0.5, "per_minute": 6},
    "false_positive_track": {"per_hour": 20},
    "short_track": {"per_hour": 20},
    "label_flip": {"per_hour": 20},
    "rare_class": {"labels": ["car", "tv"], "per_hour": 20},
    "random": {"probability": 0.01, "per_hour": 20},
}


@pytest.mark.slow
def test_both_videos_with_every_strategy_end_in_the_dataset_once(
    broker: Broker, tmp_path: Path
) -> None:
    """Acceptance: the agent replays both shared videos with several strategies; every
    sample it counts as published is in the dataset exactly once, its image decodes to the
    stated size, and its annotations are the payload's detections (count, boxes within 1 px)."""
    cameras = {}
    for name, clip in (
        ("cars", "car-detection.mp4"),
        ("people", "one-by-one-person-detection.mp4"),
    ):
        cameras[name] = {
            "source": {"type": "video", "path": str(VIDEOS / clip)},
            "track": {"enabled": True},
            "events": {"publish_detections": False},
            "samples": {"enabled": True, "strategies": STRATEGIES, "max_side": 640},
        }
    cfg = base_config(broker.port, SSD, SSD_LABELS, cameras)
    cfg["device_id"] = device = f"flywheel-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "ds"
    col = CollectorProcess(
        broker.port, out, "--topic", f"edge/{device}/+/samples", "--log-level", "debug"
    )
    try:
        run = run_to_end(broker.port, tmp_path, cfg)
        bodies = run.bodies("/samples")
        published = sum(run.counters.get(f"samples.published.{c}", 0) for c in cameras)
        assert len(bodies) == published > 10
        assert col.wait_handled(len(bodies), 120), col.output
        assert col.stop() == 0, col.output
    finally:
        col.kill()
    reasons = {r for b in bodies for r in b["reasons"]}
    assert {"low_confidence", "rare_class", "random"} <= reasons, reasons
    by_reason = {r: sum(r in b["reasons"] for b in bodies) for r in sorted(reasons)}
    print(f"\nboth videos: {len(bodies)} samples collected once each; by reason {by_reason}")
    assert sorted(index_ids(out)) == sorted(b["id"] for b in bodies)  # each exactly once
    expected = {}
    for body in bodies:
        image = cv2.imread(str(out / "images" / device / body["camera"] / f"{body['id']}.jpg"))
        assert image is not None, body["id"]
        assert (image.shape[1], image.shape[0]) == (body["image"]["width"], body["image"]["height"])
        expected.update(expected_boxes(body))
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert_same_boxes(coco_boxes(coco), expected, "both videos -> collect -> coco")
