"""Second stage: a real (generated) TFLite classifier on each detection crop, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

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
