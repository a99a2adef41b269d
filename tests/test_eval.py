"""`models eval`: its mAP equals the same library's mAP of the reference decode's boxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import pytest

from edge_agent.evaluate import coco_map, load_ground_truth, read_names
from tests.helpers import MEDIA, MODELS, cli
from tests.test_models import CASES

IMAGES = MEDIA / "images" / "coco8" / "train"
LABELS = MEDIA / "annotations" / "coco8" / "labels" / "train"
NAMES = MEDIA / "annotations" / "coco8" / "coco8.yaml"
BOXES = MEDIA / "annotations" / "coco8" / "coco8_boxes.json"
THRESHOLD = 0.05
COCO_MODELS = ["ssd_mobilenet_v1", "yolov8n", "yolo11n", "yolov5n"]


def _reference_map(name: str) -> dict[str, Any]:
    model, labels, ref_cls = CASES[name][0], CASES[name][1], CASES[name][2]
    labels_path = MODELS / (labels or "yolov8n_coco_int8_640/coco80_labels.txt")
    reference = ref_cls(MODELS / model, labels_path)
    gt = load_ground_truth(IMAGES, LABELS, read_names(NAMES))
    results = []
    for img in gt.images:
        frame = cv2.imread(str(gt.files[img["id"]]))
        w, h = img["width"], img["height"]
        for d in reference(frame, THRESHOLD)[:100]:
            if d.label in gt.names:
                x1, y1, x2, y2 = d.box
                results.append(
                    {
                        "image_id": img["id"],
                        "category_id": gt.names.index(d.label) + 1,
                        "bbox": [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h],
                        "score": d.score,
                    }
                )
    return coco_map(gt, results)


def _eval_cli(name: str, annotations: Path, *extra: str) -> dict[str, Any]:
    model, labels = CASES[name][0], CASES[name][1]
    args = [
        "models",
        "eval",
        "--model",
        str(MODELS / model),
        "--images",
        str(IMAGES),
        "--annotations",
        str(annotations),
        "--threshold",
        str(THRESHOLD),
        "--json",
        *extra,
    ]
    if labels:
        args += ["--labels", str(MODELS / labels)]
    proc = cli(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("name", COCO_MODELS)
def test_eval_matches_reference(name: str) -> None:
    ours = _eval_cli(name, LABELS, "--names", str(NAMES))
    ref = _reference_map(name)
    print(
        f"\n{name}: eval map50={ours['map50']:.4f} map50_95={ours['map50_95']:.4f} | "
        f"reference map50={ref['map50']:.4f} map50_95={ref['map50_95']:.4f}"
    )
    assert abs(ours["map50"] - ref["map50"]) <= 0.005
    assert abs(ours["map50_95"] - ref["map50_95"]) <= 0.005
    assert set(ours["per_class"]) == {
        "bowl",
        "broccoli",
        "orange",
        "giraffe",
        "potted plant",
        "vase",
        "zebra",
    }
    assert ours["images"] == 4


def test_boxes_json_gives_the_same_result_as_yolo_labels() -> None:
    a = _eval_cli("yolov8n", LABELS, "--names", str(NAMES))
    b = _eval_cli("yolov8n", BOXES)
    assert a["map50"] == b["map50"] and a["map50_95"] == b["map50_95"]


def test_eval_table_output() -> None:
    model = MODELS / CASES["yolov8n"][0]
    proc = cli(
        "models",
        "eval",
        "--model",
        str(model),
        "--images",
        str(IMAGES),
        "--annotations",
        str(LABELS),
        "--names",
        str(NAMES),
    )
    assert proc.returncode == 0
    assert "mAP@0.5 " in proc.stdout and "zebra" in proc.stdout


def test_inspect_smoke_test_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "smoke.png"
    proc = cli(
        "models",
        "inspect",
        str(MODELS / CASES["yolov5n"][0]),
        "--labels",
        str(MODELS / CASES["yolov5n"][1]),
        "--image",
        str(MEDIA / "images" / "bus.jpg"),
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    for text in (
        "family     yolov5 (detected)",
        "[1x25200x85] uint8",
        "labels     80: person",
        "ops        ",
        "CONV_2D",
        "smoke test",
        "bus ",
    ):
        assert text in proc.stdout, text
    image = cv2.imread(str(out))
    assert image is not None and image.shape[:2] == (1080, 810)


def test_inspect_rejects_non_model(tmp_path: Path) -> None:
    bad = tmp_path / "x.tflite"
    bad.write_text("nope")
    proc = cli("models", "inspect", str(bad))
    assert proc.returncode == 2 and "not a TFLite model" in proc.stderr
    assert "Traceback" not in proc.stderr
