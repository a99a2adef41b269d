"""Every shared model, on every shared image: MANIFEST samples and agreement with a reference.

Table-driven over ../shared/models. The runtime side is the Detector with `format: auto` and
no hints, so family detection, quantization, labels and letterboxing are all exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pytest

from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector
from tests.helpers import IMAGES, MODELS
from tests.reference import (
    Agreement,
    ReferenceBlazeFace,
    ReferenceSSD,
    ReferenceYoloV5,
    ReferenceYoloV8,
    agree,
    iou,
)

IMAGE_FILES = sorted(p for p in IMAGES.iterdir() if p.is_file()) + sorted(
    (IMAGES / "coco8" / "train").glob("*.jpg")
)

# name: (model file, labels, reference, family, threshold, manifest samples)
# samples: (image, label, score, [x1, y1, x2, y2] pixels or None)
CASES: dict[str, tuple[str, str, Any, str, float, list[tuple[str, str, float, Any]]]] = {
    "ssd_mobilenet_v1": (
        "ssd_mobilenet_v1_coco_quant/detect.tflite",
        "ssd_mobilenet_v1_coco_quant/labelmap.txt",
        ReferenceSSD,
        "ssd",
        0.4,
        [
            ("kite_and_cold.jpg", "person", 0.70, [63, 518, 89, 554]),
            ("grace_hopper.bmp", "tie", 0.66, [224, 425, 288, 538]),
            ("cat.bmp", "cat", 0.72, [46, 44, 362, 333]),
            ("bus.jpg", "airplane", 0.50, None),
        ],
    ),
    "yolov8n": (
        "yolov8n_coco_int8_640/yolov8n_full_integer_quant.tflite",
        "",
        ReferenceYoloV8,
        "yolov8",
        0.35,
        [
            ("kite_and_cold.jpg", "kite", 0.87, [596, 80, 670, 154]),
            ("grace_hopper.bmp", "person", 0.91, [6, 16, 510, 602]),
            ("cat.bmp", "cat", 0.95, [52, 37, 364, 335]),
            ("bus.jpg", "bus", 0.87, [29, 229, 788, 748]),
        ],
    ),
    "yolo11n": (
        "yolo11n_coco_int8_640/yolo11n_full_integer_quant.tflite",
        "yolo11n_coco_int8_640/coco80_labels.txt",
        ReferenceYoloV8,
        "yolov8",
        0.35,
        [
            ("kite_and_cold.jpg", "kite", 0.88, [598, 79, 669, 151]),
            ("kite_and_cold.jpg", "person", 0.84, None),
            ("grace_hopper.bmp", "person", 0.88, None),
            ("cat.bmp", "cat", 0.91, None),
            ("bus.jpg", "bus", 0.73, None),
        ],
    ),
    "yolov5n": (
        "yolov5n_coco_int8_640/yolov5n-int8.tflite",
        "yolov5n_coco_int8_640/coco80_labels.txt",
        ReferenceYoloV5,
        "yolov5",
        0.35,
        [
            ("kite_and_cold.jpg", "person", 0.84, [206, 692, 266, 855]),
            ("kite_and_cold.jpg", "kite", 0.83, [597, 77, 675, 149]),
            ("grace_hopper.bmp", "tie", 0.65, [224, 441, 289, 527]),
            ("cat.bmp", "cat", 0.53, [17, 39, 400, 331]),
            ("bus.jpg", "bus", 0.48, None),
        ],
    ),
    "blazeface": (
        "blazeface_short_range/face_detection_short_range.tflite",
        "blazeface_short_range/labels.txt",
        ReferenceBlazeFace,
        "blazeface",
        0.5,
        [
            ("grace_hopper.bmp", "face", 0.93, [169, 141, 365, 338]),
        ],
    ),
}


def _detector(name: str, threshold: float) -> Detector:
    model, labels = CASES[name][0], CASES[name][1]
    cfg = ModelConfig(path=MODELS / model, labels=(MODELS / labels) if labels else None)
    return Detector(cfg, threshold)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, Detector, Any]:
    name = request.param
    model, labels, ref_cls, _, _, _ = CASES[name]
    labels_path = MODELS / (labels or "yolov8n_coco_int8_640/coco80_labels.txt")
    return name, _detector(name, CASES[name][4] - 0.08), ref_cls(MODELS / model, labels_path)


def test_family_detected(case: tuple[str, Detector, Any]) -> None:
    name, detector, _ = case
    assert detector.family == CASES[name][3]


def test_manifest_samples(case: tuple[str, Detector, Any]) -> None:
    name, detector, _ = case
    for image, label, score, box in CASES[name][5]:
        frame = cv2.imread(str(IMAGES / image))
        h, w = frame.shape[:2]
        dets, _ = detector.detect(frame)
        hits = [d for d in dets if d.label == label and abs(d.score - score) <= 0.015]
        if box is not None:
            norm = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
            hits = [d for d in hits if iou(d.box, norm) >= 0.9]
        assert hits, f"{name} {image}: {label} {score} {box} not in {dets}"


def test_agrees_with_reference(case: tuple[str, Detector, Any]) -> None:
    name, detector, reference = case
    threshold = CASES[name][4]
    total = Agreement()
    for path in IMAGE_FILES:
        frame = cv2.imread(str(path))
        dets, _ = detector.detect(frame)
        published = [d.to_json() for d in dets]
        one = agree(reference(frame, threshold - 0.08), published, threshold + 0.08)
        total.reference += one.reference
        total.matched += one.matched
        total.published += one.published
        total.extra += one.extra
    print(
        f"\n{name}: reference={total.reference} matched={total.matched_ratio:.4f} "
        f"extra={total.extra_ratio:.4f}"
    )
    assert total.reference > 0
    assert total.matched_ratio >= 0.97
    assert total.extra_ratio <= 0.03


def test_blazeface_keypoints_inside_the_face(tmp_path: Path) -> None:
    detector = _detector("blazeface", 0.5)
    dets, _ = detector.detect(cv2.imread(str(IMAGES / "grace_hopper.bmp")))
    assert len(dets) == 1 and len(dets[0].keypoints) == 6
    x1, y1, x2, y2 = dets[0].box
    eyes = dets[0].keypoints[:2]
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in eyes)
    assert eyes[0][0] < eyes[1][0]  # the subject's right eye appears on the image's left
    assert "keypoints" in dets[0].to_json()


def test_float_model_fed_raw_pixels_gets_a_hint(caplog: pytest.LogCaptureFixture) -> None:
    model, labels = CASES["blazeface"][0], CASES["blazeface"][1]
    cfg = ModelConfig.model_validate(
        {
            "path": str(MODELS / model),
            "labels": str(MODELS / labels),
            "input": {"normalize": "0..255"},
        }
    )
    detector = Detector(cfg, 0.5)
    assert "fed raw 0..255 pixels" in caplog.text and "normalize: -1..1" in caplog.text
    dets, _ = detector.detect(cv2.imread(str(IMAGES / "grace_hopper.bmp")))
    # The hint matters: with the wrong range the face found with -1..1 input is not found.
    assert not any(d.score >= 0.9 for d in dets)


def test_labels_file_differing_from_embedded_names_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "labels.txt").write_text("\n".join(f"thing{i}" for i in range(80)))
    cfg = ModelConfig(path=MODELS / CASES["yolov8n"][0], labels=tmp_path / "labels.txt")
    detector = Detector(cfg, 0.5)
    assert detector.labels[0] == "thing0"
    assert "differs from the 80 class names embedded" in caplog.text


def test_embedded_names_used_without_labels_file() -> None:
    detector = Detector(ModelConfig(path=MODELS / CASES["yolo11n"][0]), 0.5)
    assert detector.labels[:3] == ["person", "bicycle", "car"] and len(detector.labels) == 80
