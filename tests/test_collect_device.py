"""The real device side into the collector: `edge-agent run` samples the shared images (SSD,
every frame, full frames scaled down and crops mode), `edge-agent collect` stores them. Every
message the agent publishes is accepted, and the COCO export has the agent's own boxes in
pixels of the stored images."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import cv2

from tests.helpers import IMAGES, SSD, SSD_LABELS, Broker, base_config, run_to_end
from tests.test_collect import CollectorProcess, assert_same_boxes, coco_boxes, expected_boxes


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
