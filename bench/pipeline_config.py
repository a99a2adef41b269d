"""Agent configs for bench/pipeline.py, with the per-camera pipeline keys in one place."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import yaml

from edge_agent.config.loader import load_config
from edge_agent.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_AGENT_SHARED", ROOT.parent / "shared"))
VIDEOS = SHARED / "media" / "video"
CAR, PERSON = VIDEOS / "car-detection.mp4", VIDEOS / "one-by-one-person-detection.mp4"
MODELS = {
    "ssd": (
        "ssd_mobilenet_v1_coco_quant/detect.tflite",
        "ssd_mobilenet_v1_coco_quant/labelmap.txt",
    ),
    "yolov8n": (
        "yolov8n_coco_int8_640/yolov8n_full_integer_quant.tflite",
        "yolov8n_coco_int8_640/coco80_labels.txt",
    ),
}
THREADS = 2  # model.threads of every agent run, and the bare loop's interpreter threads
CAM = "cam"
WORK = Path(tempfile.gettempdir())  # configs, outboxes and cut clips; main() uses a fresh one

# ---- the per-camera pipeline keys (contract). The only place they appear: they are sent only
# when the agent's schema accepts them (wiring_accepted), so the bench runs before and after.


def camera_wiring(label: str, motion: bool | None) -> dict[str, Any]:
    """Tracking on, one zone and one line, events on; `motion` None leaves the default."""
    cam: dict[str, Any] = {
        "track": {"enabled": True},
        "zones": {
            "area": {"polygon": [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]], "labels": [label]}
        },
        "lines": {"gate": {"points": [[0.0, 0.5], [1.0, 0.5]]}},
        "events": {"publish_detections": True},
    }
    if motion is not None:
        cam["motion"] = {"enabled": motion}
    return cam


RUNTIME_WIRING: dict[str, Any] = {"detect_workers": 1}

# Nothing after detection but the object filter: no tracking, no zones, nothing published per
# frame. What the agent's threads cost by themselves (capture, hand-offs, output decoding).
NO_STEPS: dict[str, Any] = {"track": {"enabled": False}, "events": {"publish_detections": False}}


def _wiring(label: str, motion: bool | None, no_steps: bool) -> dict[str, Any]:
    return dict(NO_STEPS) if no_steps else camera_wiring(label, motion)


def interpreters(split: bool) -> tuple[int, int]:
    """(detect workers, threads per interpreter) of an agent run: one interpreter with THREADS
    threads like the bare loop, or `split`: the same THREADS threads as that many one-thread
    interpreters, each taking whole frames (the camera's thread restores frame order)."""
    return (THREADS, 1) if split else (1, THREADS)


def floor_keys(score: float, wired: bool) -> dict[str, Any]:
    """Camera keys that make `score` the detector's score floor (the profile's second run):
    the tracker's low boxes set the floor once tracking is on."""
    keys: dict[str, Any] = {"detect": {"min_score": score}}
    if wired:
        keys["track"] = {"enabled": True, "low_score": score, "high_score": score,
                         "new_track_score": score}  # fmt: skip
    return keys


def second_floor(wired: bool) -> float:
    """The profile's second score floor: far from the first, so the box count differs a lot
    (tracking keeps boxes down to 0.1; without it the floor is 0.5)."""
    return 0.6 if wired else 0.1


# ---- configs


def config(
    port: int,
    model: str,
    source: dict[str, Any],
    wired: bool,
    label: str = "car",
    motion: bool | None = None,
    floor: float | None = None,
    split: bool = False,
    no_steps: bool = False,
) -> Path:
    """Write an agent config (one camera `cam`) to a fresh folder; returns its path.
    `no_steps`: NO_STEPS instead of the pipeline keys (with `wired`)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=WORK))
    path, labels = MODELS[model]
    cam: dict[str, Any] = {"source": source}
    if source["type"] == "rtsp":
        cam["publish_empty"] = True  # a latency sample from every frame, not only busy ones
    cfg: dict[str, Any] = {
        "device_id": f"bench-{folder.name[-8:].replace('_', '-')}",
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "edge"},
        "model": {"path": str(SHARED / "models" / path), "labels": str(SHARED / "models" / labels)},
        "cameras": {CAM: cam | (_wiring(label, motion, no_steps) if wired else {})},
        "outbox": {"path": str(folder / "outbox.db")},
        "log": {"level": "warning", "format": "text"},
    }
    workers, cfg["model"]["threads"] = interpreters(split)
    if floor is not None:
        cfg["cameras"][CAM] |= floor_keys(floor, wired)
    if wired:
        cfg["runtime"] = RUNTIME_WIRING | {"detect_workers": workers}
    (folder / "agent.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder / "agent.yaml"


def wiring_accepted(port: int) -> bool:
    """True when the agent's config schema takes the pipeline keys."""
    try:
        load_config(config(port, "ssd", {"type": "video", "path": str(CAR)}, True, motion=True))
    except UserError as exc:
        logging.warning("pipeline keys not accepted yet, running without them: %s", exc)
        return False
    return True


def cut(clip: Path, frames: int) -> Path:
    """The first `frames` frames of a clip as a new MP4 at the same frame rate (--quick)."""
    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS)
    out = Path(tempfile.mkdtemp(prefix="bench-clip-", dir=WORK)) / clip.name
    writer: Any = None
    for _ in range(frames):
        ok, image = cap.read()
        if not ok:
            break
        if writer is None:
            size = (image.shape[1], image.shape[0])
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
        writer.write(image)
    cap.release()
    writer.release()
    return out
