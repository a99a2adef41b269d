"""Frame rate of the whole agent on a replayed clip, outbox on disk vs in memory, vs bare invoke().

.venv/bin/python bench/pipeline_fps.py [--model ssd|yolov8n] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _broker import start_broker

from edge_agent.config.loader import load_config
from edge_agent.detect.interpreter import load_model
from edge_agent.runtime import Agent

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
VIDEO = SHARED / "media" / "video" / "one-by-one-person-detection.mp4"
MODELS = {
    "ssd": (
        SHARED / "models/ssd_mobilenet_v1_coco_quant/detect.tflite",
        SHARED / "models/ssd_mobilenet_v1_coco_quant/labelmap.txt",
    ),
    "yolov8n": (
        SHARED / "models/yolov8n_coco_int8_640/yolov8n_full_integer_quant.tflite",
        SHARED / "models/yolov8n_coco_int8_640/coco80_labels.txt",
    ),
}


def raw_invoke_fps(model: Path, n: int = 200) -> float:
    """invoke() calls per second on a fixed input tensor (no capture, no decoding)."""
    loaded = load_model(model, threads=2)
    spec = loaded.inputs[0]
    tensor = np.zeros(spec.shape, spec.dtype)
    interp = loaded.interpreter
    for _ in range(10):
        interp.set_tensor(spec.index, tensor)
        interp.invoke()
    start = time.perf_counter()
    for _ in range(n):
        interp.set_tensor(spec.index, tensor)
        interp.invoke()
    return n / (time.perf_counter() - start)


def pipeline_fps(port: int, model: str, outbox: bool) -> float:
    """Frames/s from start until every frame of the clip is processed."""
    folder = Path(tempfile.mkdtemp())
    path, labels = MODELS[model]
    cfg: dict[str, Any] = {
        "device_id": f"bench-{model}",
        "mqtt": {"port": port},
        "model": {"path": str(path), "labels": str(labels)},
        "cameras": {
            "lobby": {"source": {"type": "video", "path": str(VIDEO)}, "publish_empty": True}
        },
        "outbox": {"enabled": outbox, "path": str(folder / "o.db")},
    }
    (folder / "agent.yaml").write_text(yaml.safe_dump(cfg))
    agent = Agent(load_config(folder / "agent.yaml"))
    agent.prepare()
    finished: list[float] = []
    start = time.perf_counter()

    def watch() -> None:
        agent._pipeline_done.wait()
        finished.append(time.perf_counter())

    threading.Thread(target=watch, daemon=True).start()
    agent.run()
    frames = agent.counters.get("frames.processed.lobby")
    return frames / (finished[0] - start)


def main() -> int:
    """Alternate outbox on/off runs; report best frame rates and their ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="ssd")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    proc, port = start_broker()
    fps: dict[str, list[float]] = {"outbox_disk": [], "outbox_memory": []}
    try:
        for _ in range(args.rounds):
            fps["outbox_disk"].append(pipeline_fps(port, args.model, outbox=True))
            fps["outbox_memory"].append(pipeline_fps(port, args.model, outbox=False))
        raw = raw_invoke_fps(MODELS[args.model][0])
    finally:
        proc.terminate()
    best = {k: max(v) for k, v in fps.items()}
    print(
        json.dumps(
            {
                "model": args.model,
                "frames": 1394,
                "fps": {**{k: round(v, 1) for k, v in best.items()}, "raw_invoke": round(raw, 1)},
                "all_runs": {k: [round(x, 1) for x in v] for k, v in fps.items()},
                "disk_vs_memory": round(best["outbox_disk"] / best["outbox_memory"], 3),
                "pipeline_vs_raw_invoke": round(best["outbox_disk"] / raw, 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
