"""Motion gating on the shared clips: detector runs with the gate vs every frame, and its cost.

.venv/bin/python bench/motion.py [--repeat 100]

Per clip: frames, detector runs with tracks emulated (the last selected frame had a
car/truck/bus/person >= 0.5 and motion was seen in the last 2 s) and with tracks never active,
the share of frames the detector runs on, the gate's CPU ms per frame, how many stretches of
moving-object detections (gating off) the gate found within 0.5 s, and the share of detection
frames it selected. Then the gate's CPU cost per frame on a static scene at three frame sizes.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.camera.motion import MotionConfig, MotionGate
from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
VIDEOS = SHARED / "media" / "video"
SSD = SHARED / "models" / "ssd_mobilenet_v1_coco_quant"
TRACKED = {"car", "truck", "bus", "person"}
# SSD MobileNet v1 labels the overhead cars of car-detection.mp4 mostly "cell phone".
CLIPS = {
    "car-detection.mp4": TRACKED | {"cell phone"},
    "one-by-one-person-detection.mp4": {"person"},
}
SIZES = [(640, 360), (1280, 720), (1920, 1080)]
MIN_SCORE, HOLE, WINDOW = 0.5, 2, 0.5


def frames(path: Path) -> Iterator[Any]:
    """Decoded BGR frames of a clip."""
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, frame = cap.read()
        if not ok:
            cap.release()
            return
        yield frame


def stretches(seen: list[bool]) -> list[tuple[int, int]]:
    """(first, last) frame of each run of detections, joining runs split by <= HOLE frames."""
    runs: list[tuple[int, int]] = []
    for i in (i for i, s in enumerate(seen) if s):
        if runs and i - runs[-1][1] <= HOLE + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def replay(name: str, detector: Detector, cfg: MotionConfig) -> dict[str, Any]:
    """One pass: the detector on every frame (the baseline), two gates on every frame."""
    path = VIDEOS / name
    fps = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS)
    gate, plain = MotionGate(cfg, fps), MotionGate(cfg, fps)
    seen, selected, plain_runs = [], [], 0
    tracked, last_motion, cpu, det_ms = False, -math.inf, 0.0, 0.0
    for i, frame in enumerate(frames(path)):
        ts = i / fps
        found, ms = detector.detect(frame)
        det_ms += ms
        start = time.process_time()
        decision = gate.check(frame, ts, tracked and ts - last_motion <= 2.0)
        cpu += time.process_time() - start
        if len(decision.boxes):
            last_motion = ts
        if decision.run_detector:
            tracked = any(d.label in TRACKED and d.score >= MIN_SCORE for d in found)
        seen.append(any(d.label in CLIPS[name] and d.score >= MIN_SCORE for d in found))
        selected.append(decision.run_detector)
        plain_runs += plain.check(frame, ts, False).run_detector
    n = len(selected)
    window = round(WINDOW * fps)
    runs = stretches(seen)
    on_time = sum(any(selected[i] and seen[i] for i in range(a, min(b, a + window) + 1))
                  for a, b in runs)  # fmt: skip
    kept = sum(s and k for s, k in zip(seen, selected, strict=True))
    return {
        "clip": name,
        "frames": n,
        "runs": sum(selected),
        "ratio": sum(selected) / n,
        "runs_no_tracks": plain_runs,
        "ratio_no_tracks": plain_runs / n,
        "gate_ms": cpu / n * 1000,
        "detect_ms": det_ms / n,
        "stretches": f"{on_time}/{len(runs)}",
        "kept": kept / max(1, sum(seen)),
    }


def static_cost(width: int, height: int, repeat: int) -> float:
    """Median process CPU ms of one check() on a static frame of this size."""
    image = cv2.imread(str(SHARED / "media" / "images" / "zidane.jpg"))
    frame = np.ascontiguousarray(cv2.resize(image, (width, height)))
    gate = MotionGate(MotionConfig(), 10.0)
    gate.check(frame, 0.0, False)
    costs = []
    for i in range(1, repeat + 1):
        start = time.process_time()
        gate.check(frame, i / 10.0, False)
        costs.append((time.process_time() - start) * 1000)
    return statistics.median(costs)


def main() -> int:
    """Print the clip table and the per-size cost table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=100, help="calls per frame size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    detector = Detector(ModelConfig(path=SSD / "detect.tflite", labels=SSD / "labelmap.txt"), 0.3)
    cfg = MotionConfig()
    print(
        "| clip | frames | detector runs | ratio | runs, tracks never | ratio | "
        "gate CPU ms/frame | detector ms/frame | found within 0.5 s | detection frames kept |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name in CLIPS:
        r = replay(name, detector, cfg)
        print(f"| {r['clip']} | {r['frames']} | {r['runs']} | {r['ratio']:.3f} | "
              f"{r['runs_no_tracks']} | {r['ratio_no_tracks']:.3f} | {r['gate_ms']:.2f} | "
              f"{r['detect_ms']:.1f} | {r['stretches']} | {r['kept']:.3f} |")  # fmt: skip
    print()
    print("| static frame | gate CPU ms/frame (median) | share of one core at 10 fps |")
    print("|---|---|---|")
    for width, height in SIZES:
        ms = static_cost(width, height, args.repeat)
        print(f"| {width}x{height} | {ms:.3f} | {ms * 10 / 1000:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
