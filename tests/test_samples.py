"""Low-confidence samples from the first release's keys (`min_score`, `max_score`,
`max_per_minute`): they arrive, decode, match the reference, and obey the budget."""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np
import pytest

from tests.helpers import (
    SSD,
    SSD_LABELS,
    VIDEO,
    Broker,
    Subscriber,
    base_config,
    cli,
    write_config,
)
from tests.reference import ReferenceSSD, agree

BAND = (0.3, 0.5)
PER_MINUTE = 6
FPS = 10.0  # the clip's frame rate: ts = start + frame / 10


@pytest.fixture(scope="module")
def published(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    device = "samples-1"
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "lobby": {
                "source": {"type": "video", "path": str(VIDEO)},
                "detect": {"min_score": BAND[0]},
                "publish_empty": True,
                "samples": {
                    "enabled": True,
                    "min_score": BAND[0],
                    "max_score": BAND[1],
                    "max_per_minute": PER_MINUTE,
                    "max_side": 640,
                    "jpeg_quality": 90,
                    "floor": BAND[0],
                    "dedup": {"enabled": False},  # the budget rule alone (dedup: test_sampling)
                },
            },
        },
    )
    cfg["device_id"] = device
    sub = Subscriber(broker.port, f"edge/{device}/#")
    try:
        proc = cli("run", "--config", str(write_config(tmp_path_factory.mktemp("s"), cfg)))
        assert proc.returncode == 0, proc.stderr[-2000:]
        sub.wait_for(
            lambda s: any(m.payload == b"offline" and not m.retain for m in s.on("/status")), 10
        )
    finally:
        sub.close()
    detections = {m.json()["frame"]: m.json() for m in sub.on("/detections")}
    samples = [m.json() for m in sub.on("/samples")]
    return {"detections": detections, "samples": samples}


def _expected_sample_frames(detections: dict[int, Any]) -> list[int]:
    """Replay the budget rule: at most PER_MINUTE samples in any 60 s of frame time."""
    chosen: list[int] = []
    for frame in sorted(detections):
        scores = [d["score"] for d in detections[frame]["detections"]]
        if not any(BAND[0] <= s < BAND[1] for s in scores):
            continue
        recent = [c for c in chosen if frame - c < 60 * FPS]
        if len(recent) < PER_MINUTE:
            chosen.append(frame)
    return chosen


def test_samples_arrive_with_reason_and_header(published: dict[str, Any]) -> None:
    samples = published["samples"]
    assert len(samples) >= PER_MINUTE  # the 139 s clip spans three budget windows
    for body in samples:
        assert body["reasons"] == ["low_confidence"] and body["v"] == 2
        assert body["camera"] == "lobby" and body["device_id"] == "samples-1"
        assert (body["width"], body["height"]) == (768, 432)


def test_sample_jpeg_decodes_to_stated_size(published: dict[str, Any]) -> None:
    for body in published["samples"]:
        image = body["image"]
        assert image["format"] == "jpeg"
        decoded = cv2.imdecode(
            np.frombuffer(base64.b64decode(image["data"]), np.uint8), cv2.IMREAD_COLOR
        )
        assert decoded is not None
        assert (decoded.shape[1], decoded.shape[0]) == (image["width"], image["height"])
        assert max(image["width"], image["height"]) == 640  # 768x432 scaled to max_side


def test_rate_limit_holds_exactly(published: dict[str, Any]) -> None:
    frames = [b["frame"] for b in published["samples"]]
    assert frames == sorted(frames)
    assert frames == _expected_sample_frames(published["detections"])
    for i, start in enumerate(frames):
        assert sum(1 for f in frames[i:] if f < start + 60 * FPS) <= PER_MINUTE


def test_sample_detections_match_reference(published: dict[str, Any]) -> None:
    wanted = {b["frame"] for b in published["samples"]}
    reference = ReferenceSSD(SSD, SSD_LABELS)
    cap = cv2.VideoCapture(str(VIDEO))
    index = 0
    checked = 0
    by_frame = {b["frame"]: b for b in published["samples"]}
    while wanted:
        ok, image = cap.read()
        assert ok
        if index in wanted:
            wanted.discard(index)
            ref = reference(image, BAND[0] - 0.08)
            result = agree(ref, by_frame[index]["detections"], level=BAND[0])
            assert result.matched == result.reference and result.extra == 0, index
            assert any(BAND[0] - 0.01 <= d.score < BAND[1] + 0.01 for d in ref), index
            checked += 1
        index += 1
    assert checked == len(published["samples"])
