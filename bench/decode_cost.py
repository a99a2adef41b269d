"""Decode + NMS time per frame vs the model's invoke() time, for every shared model, one run.

.venv/bin/python bench/decode_cost.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2

from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector
from edge_agent.postprocess import nms
from edge_agent.preprocess import prepare

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
# model: (file, labels, score threshold used in the MANIFEST samples)
MODELS = {
    "ssd_mobilenet_v1": (
        "ssd_mobilenet_v1_coco_quant/detect.tflite",
        "ssd_mobilenet_v1_coco_quant/labelmap.txt",
        0.4,
    ),
    "yolov8n": ("yolov8n_coco_int8_640/yolov8n_full_integer_quant.tflite", None, 0.35),
    "yolo11n": ("yolo11n_coco_int8_640/yolo11n_full_integer_quant.tflite", None, 0.35),
    "yolov5n": (
        "yolov5n_coco_int8_640/yolov5n-int8.tflite",
        "yolov5n_coco_int8_640/coco80_labels.txt",
        0.35,
    ),
    "blazeface": (
        "blazeface_short_range/face_detection_short_range.tflite",
        "blazeface_short_range/labels.txt",
        0.5,
    ),
}
IMAGES = sorted(p for p in (SHARED / "media" / "images").iterdir() if p.is_file())


def measure(name: str, repeat: int, scale: float) -> dict[str, float]:
    """Median ms of invoke() and of decode+NMS over the shared images."""
    model, labels, threshold = MODELS[name]
    threshold *= scale
    root = SHARED / "models"
    det = Detector(
        ModelConfig(path=root / model, labels=root / labels if labels else None), threshold
    )
    interp = det.model.interpreter
    invoke_ms, decode_ms = [], []
    for path in IMAGES:
        tensor, _ = prepare(cv2.imread(str(path)), det.plan)
        interp.set_tensor(det.input.index, tensor)
        for _ in range(3):
            interp.invoke()
        for _ in range(repeat):
            t0 = time.perf_counter()
            interp.invoke()
            t1 = time.perf_counter()
            decoded = det.decoder.decode(lambda spec: interp.get_tensor(spec.index), threshold)
            if det.family != "ssd":
                decoded = nms(decoded, det.nms_iou, det.cfg.max_detections)
            t2 = time.perf_counter()
            invoke_ms.append((t1 - t0) * 1000)
            decode_ms.append((t2 - t1) * 1000)
    inv, dec = statistics.median(invoke_ms), statistics.median(decode_ms)
    return {
        "threshold": round(threshold, 3),
        "invoke_ms": round(inv, 3),
        "decode_nms_ms": round(dec, 3),
        "decode_share": round(dec / inv, 4),
    }


def main() -> int:
    """Print one row per model."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--threshold-scale",
        type=float,
        default=1.0,
        help="multiply each model's MANIFEST threshold (0.5: many more boxes)",
    )
    args = parser.parse_args()
    report = {name: measure(name, args.repeat, args.threshold_scale) for name in MODELS}
    print(json.dumps({"images": len(IMAGES), "models": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
