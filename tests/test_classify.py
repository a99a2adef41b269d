"""Second stage: a real (generated) TFLite classifier on each detection crop, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.camera.pipeline import CameraEnv, CameraPipeline
from edge_agent.config.schema import CameraConfig
from edge_agent.core.detections import Detections
from edge_agent.detect.classifier import Classifier
from edge_agent.health import Counters
from edge_agent.publish.payloads import Topics
from edge_agent.types import Frame
from tests.helpers import (
    IMAGES,
    SSD,
    SSD_LABELS,
    Broker,
    Subscriber,
    base_config,
    cli,
    write_config,
)
from tests.tflite_builder import colour_classifier

COLOURS = ["reddish", "greenish", "bluish"]
IMAGE_FILES = sorted(p for p in IMAGES.iterdir() if p.is_file())


def _expected(image: np.ndarray, box: list[float]) -> np.ndarray:
    """Class probabilities computed here: softmax(20 x mean RGB (0..1) of the crop as the
    model sees it, i.e. resized bilinearly to its 16x16 input)."""
    h, w = image.shape[:2]
    x1, y1 = int(box[0] * w), int(box[1] * h)
    x2, y2 = int(np.ceil(box[2] * w)), int(np.ceil(box[3] * h))
    small = cv2.resize(image[y1:y2, x1:x2], (16, 16), interpolation=cv2.INTER_LINEAR)
    rgb = small[:, :, ::-1].reshape(-1, 3).mean(axis=0) / 255.0
    logits = 20 * rgb
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _classifier(tmp: Path) -> tuple[Path, Path]:
    model = colour_classifier(tmp / "colour.tflite", size=16)
    labels = tmp / "colours.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    return model, labels


def test_classification_attached_to_wanted_labels(broker: Broker, tmp: Path) -> None:
    model, labels = _classifier(tmp)
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "stills": {
                "source": {"type": "images", "path": str(IMAGES)},
                "detect": {"min_score": 0.4},
                # Untracked boxes are classified on every frame; tracked ones once per track
                # (then every classify.refresh): these stills are unrelated photos, not a video.
                "track": {"enabled": False},
                "classify": {"model": str(model), "labels": str(labels), "on_labels": ["person"]},
            }
        },
    )
    cfg["device_id"] = "cls-1"
    sub = Subscriber(broker.port, "edge/cls-1/#")
    try:
        proc = cli("run", "--config", str(write_config(tmp, cfg)))
        assert proc.returncode == 0, proc.stderr[-2000:]
        sub.wait_for(lambda s: any(m.payload == b"offline" for m in s.on("/status")), 10)
    finally:
        sub.close()
    bodies = [m.json() for m in sub.on("cls-1/stills/detections")]
    checked = 0
    for body in bodies:
        image = cv2.imread(str(IMAGE_FILES[body["frame"]]))
        for det in body["detections"]:
            if det["label"] != "person":
                assert "classification" not in det
                continue
            probs = _expected(image, det["box"])
            got = det["classification"]
            top2 = np.sort(probs)[-2:]
            if top2[1] - top2[0] > 0.1:  # a clear winner: the label must agree
                assert got["label"] == COLOURS[int(np.argmax(probs))], (body["frame"], det)
            assert got["score"] == pytest.approx(probs[COLOURS.index(got["label"])], abs=0.02)
            checked += 1
    assert checked >= 5


def _run_error(tmp: Path, classify: dict[str, Any]) -> str:
    cfg = base_config(
        1,
        SSD,
        SSD_LABELS,
        {"stills": {"source": {"type": "images", "path": str(IMAGES)}, "classify": classify}},
    )
    proc = cli("run", "--config", str(write_config(tmp, cfg)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    return proc.stderr


def test_classifier_label_mismatch_is_located(tmp: Path) -> None:
    model, _ = _classifier(tmp)
    (tmp / "two.txt").write_text("a\nb\n")
    err = _run_error(tmp, {"model": str(model), "labels": str(tmp / "two.txt")})
    assert "cameras.stills.classify.labels" in err
    assert "labels file has 2 entries but the model has 3 classes" in err


def test_classifier_on_unknown_label_is_located(tmp: Path) -> None:
    model, labels = _classifier(tmp)
    err = _run_error(tmp, {"model": str(model), "labels": str(labels), "on_labels": ["brid"]})
    assert "cameras.stills.classify.on_labels.0: label 'brid'" in err
    assert "did you mean 'bird'" in err


def test_classifier_not_a_model(tmp: Path) -> None:
    (tmp / "x.tflite").write_text("nope")
    err = _run_error(tmp, {"model": str(tmp / "x.tflite")})
    assert "cameras.stills.classify.model" in err and "not a TFLite model" in err


# ---- once per track: the real (generated) classifier behind a camera's steps, counted


def _steps(tmp: Path, track: bool, refresh: float) -> tuple[Any, Counters]:
    model, labels = _classifier(tmp)
    cam = CameraConfig.model_validate(
        {
            "source": {"type": "images", "path": str(tmp)},
            "track": {"enabled": track},
            "classify": {"model": str(model), "labels": str(labels), "refresh": refresh},
            "events": {"publish_detections": True},
        }
    )
    assert cam.classify is not None
    counters = Counters()
    env = CameraEnv(
        "dev", "m.tflite", ["person", "car"], Topics("edge", "dev"), 1, counters, "0" * 64
    )
    return CameraPipeline("cam", cam, env, Classifier(cam.classify)), counters


def _walk(pipeline: Any, frames: int, fps: float, present: Any) -> list[list[dict[str, Any]]]:
    """One red person walking right; detections payload boxes of every frame."""
    image = np.zeros((240, 320, 3), np.uint8)
    image[:, :, 2] = 200
    out = []
    for i in range(frames):
        if i in present:
            x = 0.1 + 0.002 * i
            raw = Detections(
                np.array([[x, 0.2, x + 0.2, 0.8]], np.float32),
                np.array([0.9], np.float32),
                np.array([0], np.int64),
            )
        else:
            raw = Detections()
        ctx = pipeline.process(Frame("cam", i, 1000.0 + i / fps, image), raw, 1.0)
        out.append(
            [
                b
                for m in ctx.out
                if m.topic.endswith("/detections")
                for b in json.loads(m.payload)["detections"]
            ]
        )
    return out


@pytest.mark.parametrize(
    ("track", "refresh", "frames", "present", "runs"),
    [
        # Confirmed at frame 9 (a full median window), then every refresh seconds of frame time.
        (True, 10.0, 150, range(150), 2),  # frames 9 and 109
        (True, 5.0, 150, range(150), 3),  # 9, 59, 109
        (True, 10.0, 30, range(30), 1),
        # The person leaves (track ends after its buffer) and comes back: a new track, a new run.
        (True, 100.0, 200, [*range(40), *range(150, 200)], 2),
        # Without tracking there is no identity to cache by: every frame.
        (False, 10.0, 30, range(30), 30),
    ],
    ids=["refresh-10s", "refresh-5s", "short", "new-track", "untracked"],
)
def test_classified_once_per_track_then_every_refresh(
    tmp: Path, track: bool, refresh: float, frames: int, present: Any, runs: int
) -> None:
    pipeline, counters = _steps(tmp, track, refresh)
    boxes = _walk(pipeline, frames, 10.0, present)
    assert counters.get("classify.runs.cam") == runs
    # Every box published once its track is confirmed carries the (cached) result.
    tracked = [b for frame in boxes for b in frame if b.get("tracker_id") is not None]
    if track:
        assert tracked
    labelled = tracked if track else [b for frame in boxes for b in frame]
    assert all(b["classification"]["label"] == "reddish" for b in labelled)
