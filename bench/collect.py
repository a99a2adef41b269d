"""Samples/s one `edge-agent collect` stores, with ~100 KB samples, one run.

.venv/bin/python bench/collect.py [--samples 1000] [--side 640]

A private mosquitto, one collector process (the real CLI), and a publisher sending every
sample at QoS 1 as fast as the broker takes them. The rate is samples stored in the index
(images fsynced, rows committed, messages acknowledged) over the time from the first publish
to the last row; the collector's CPU time per sample comes from /proc.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _broker import start_broker

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT.parent / "shared" / "media" / "images" / "bus.jpg"


def payloads(n: int, side: int) -> list[bytes]:
    """n samples of one real frame (bus.jpg scaled to `side`), distinct ids."""
    frame = cv2.imread(str(IMAGE))
    height, width = frame.shape[:2]
    scale = min(1.0, side / max(height, width))
    small = cv2.resize(frame, (round(width * scale), round(height * scale)), cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    image = {"format": "jpeg", "width": small.shape[1], "height": small.shape[0]}
    image["data"] = base64.b64encode(jpeg.tobytes()).decode()
    dets = [
        {"label": "bus", "class_id": 5, "score": 0.45, "box": [0.02, 0.21, 0.99, 0.74]},
        {"label": "person", "class_id": 0, "score": 0.38, "box": [0.06, 0.37, 0.30, 0.87]},
    ]
    base = {
        "v": 2, "device_id": "bench", "camera": "cam", "width": width, "height": height,
        "model": "detect.tflite", "model_sha256": hashlib.sha256(b"m").hexdigest(),
        "inference_ms": 10.0, "detections": dets, "reasons": ["low_confidence"],
        "phash": "0123456789abcdef", "privacy": {"mode": "full", "masks": 0, "faces": 0},
        "image": image,
    }  # fmt: skip
    out = []
    for k in range(n):
        body = {**base, "id": uuid.uuid4().hex, "frame": k, "ts": 1.76e9 + k}
        out.append(json.dumps(body, separators=(",", ":")).encode())
    return out


def stored(db: Path) -> int:
    """Rows in the collector's index."""
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(port: int, msgs: list[bytes]) -> None:
    """Send every message at QoS 1 and wait for every PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for info in [client.publish("edge/bench/cam/samples", m, qos=1) for m in msgs]:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def main() -> None:
    """Run the benchmark and print one line of results."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--side", type=int, default=640, help="longer side of the JPEG, pixels")
    args = ap.parse_args()
    msgs = payloads(args.samples, args.side)
    broker, port = start_broker()
    out = Path(tempfile.mkdtemp(prefix="collect-bench-")) / "ds"
    cmd = [sys.executable, "-m", "edge_agent", "collect", "--port", str(port), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--log-format", "text"], stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "subscribed to" in line:
                break
        threading.Thread(target=lambda: list(proc.stderr or []), daemon=True).start()
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        threading.Thread(target=publish, args=(port, msgs), daemon=True).start()
        while stored(out / "index.db") < args.samples:
            time.sleep(0.05)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(60)
        broker.terminate()
        broker.wait(10)
    size = sum(len(m) for m in msgs) / len(msgs) / 1000
    print(
        f"collect: {args.samples} samples of {size:.0f} KB (payload) in {elapsed:.2f} s: "
        f"{args.samples / elapsed:.0f} samples/s, {cpu / args.samples * 1000:.2f} ms "
        f"collector CPU per sample ({os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
