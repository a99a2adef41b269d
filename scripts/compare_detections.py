#!/usr/bin/env python3
"""Run edge-agent on the shared images with each shared detector and compare two such runs.

    compare_detections.py collect --agent CMD --port P --out RUN.json [--root DIR] ...
    compare_detections.py compare A.json B.json --min-iou 0.9 --score-tol 0.02 [--report R]

`collect` writes one config per detector (images sources, `publish_empty`), runs
`CMD run --config ...` for each (CMD may be a chroot command line: paths in the config are
the ones the agent sees, under --root on this host), and records every detections message it
published to the broker. `compare` matches detections per detector and frame (greedy by label,
then IoU) and exits 1 when a match misses the IoU or score bound or a detection is unmatched
(unless its score is within the tolerance of the threshold: it may fall on either side).
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# name: (model file, labels file) relative to the shared models directory, and the most
# detections the model itself outputs per frame (0: no cap inside the model).
DETECTORS = {
    "ssd_mobilenet_v1": (
        "ssd_mobilenet_v1_coco_quant/detect.tflite",
        "ssd_mobilenet_v1_coco_quant/labelmap.txt",
        10,
    ),
    "yolov8n_int8": (
        "yolov8n_coco_int8_640/yolov8n_full_integer_quant.tflite",
        "yolov8n_coco_int8_640/coco80_labels.txt",
        0,
    ),
    "blazeface": (
        "blazeface_short_range/face_detection_short_range.tflite",
        "blazeface_short_range/labels.txt",
        0,
    ),
}
# camera name: image folder relative to the shared media directory.
CAMERAS = {"stills": "images", "coco8": "images/coco8/train"}
MIN_SCORE = 0.3
LOADED = re.compile(r"loaded \S+ with (\S+) \(")


def _config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model, labels, _cap = DETECTORS[name]
    cameras = {
        cam: {
            "source": {"type": "images", "path": f"{args.media}/{folder}"},
            "detect": {"min_score": MIN_SCORE},
            "publish_empty": True,
        }
        for cam, folder in CAMERAS.items()
    }
    return {
        "device_id": f"cmp-{name}",
        "mqtt": {"host": "127.0.0.1", "port": args.port, "topic_prefix": "cmp"},
        "model": {
            "path": f"{args.models}/{model}",
            "labels": f"{args.models}/{labels}",
            "exact": args.exact,
        },
        "cameras": cameras,
        "outbox": {"path": f"{args.work}/{name}.db"},
        "log": {"level": "info", "format": "text"},
    }


class Collector:
    """Every message under one topic prefix, until the agent says offline (QoS 1)."""

    def __init__(self, port: int, prefix: str) -> None:
        # Lazy: the compare step needs no MQTT client.
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._ready: queue.Queue[bool] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._ready.put(True)
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._ready.get(timeout=10)

    def drain(self, timeout: float) -> list[tuple[str, bytes, bool]]:
        """Messages until a live (not retained) "offline" status, or timeout."""
        out: list[tuple[str, bytes, bool]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            out.append(msg)
            if msg[0].endswith("/status") and msg[1] == b"offline" and not msg[2]:
                break
        self.client.disconnect()
        self.client.loop_stop()
        return out


def _run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = _config(name, args)
    seen = f"{args.work}/{name}.yaml"
    host_path = Path(args.root + seen)
    host_path.parent.mkdir(parents=True, exist_ok=True)
    host_path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    collector = Collector(args.port, f"cmp/{cfg['device_id']}")
    start = time.monotonic()
    proc = subprocess.run(
        [*shlex.split(args.agent), "run", "--config", seen],
        capture_output=True,
        text=True,
        timeout=args.timeout,
        check=False,
    )
    wall = time.monotonic() - start
    messages = collector.drain(30 if proc.returncode == 0 else 2)
    frames: dict[str, list[dict[str, Any]]] = {}
    for topic, payload, _retain in messages:
        if topic.endswith("/detections"):
            body = json.loads(payload)
            frames[f"{body['camera']}/{body['frame']}"] = body["detections"]
    runtime = LOADED.search(proc.stderr + proc.stdout)
    log.info("%s: exit %d, %d frames, %.1f s", name, proc.returncode, len(frames), wall)
    return {
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "runtime": runtime.group(1) if runtime else "unknown",
        "cap": DETECTORS[name][2],
        "frames": frames,
        "output_tail": (proc.stderr + proc.stdout)[-2000:] if proc.returncode else "",
    }


def collect(args: argparse.Namespace) -> int:
    """Run every detector, write the run file; 1 when an agent run failed."""
    names = args.detectors.split(",") if args.detectors else list(DETECTORS)
    runs = {name: _run_one(name, args) for name in names}
    Path(args.out).write_text(json.dumps({"min_score": MIN_SCORE, "detectors": runs}, indent=1))
    bad = [n for n, r in runs.items() if r["exit"] != 0 or not r["frames"]]
    for name in bad:
        print(f"{name}: exit {runs[name]['exit']}\n{runs[name]['output_tail']}", file=sys.stderr)
    return 1 if bad else 0


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# Why an unmatched detection is not a failure: its score is within the tolerance of the
# threshold or of the other run's weakest kept detection when that run hit the model's output
# cap (either may fall on either side), or the other run kept an overlapping box of the same
# label instead (NMS chose differently within a cluster). A matched pair off the box bound is
# excused as "cluster" when either box overlaps another of its label in its own run: NMS kept a
# different member of a group of overlapping boxes.
EXCUSES = ("threshold", "cap", "overlap", "cluster")
OVERLAP_IOU = 0.3
# A pair overlapping less is two different boxes (NMS kept another one of a cluster).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Bounds:
    """What a matched pair must meet; box: IoU >= min_iou or every corner within box_tol."""

    min_iou: float
    score_tol: float
    box_tol: float
    min_score: float


@dataclass
class Tally:
    """Comparison figures of one detector."""

    frames: int = 0
    detections_a: int = 0
    detections_b: int = 0
    matched: int = 0
    max_iou_deficit: float = 0.0
    max_corner_diff: float = 0.0
    max_score_diff: float = 0.0
    below_min_iou: int = 0
    unmatched: int = 0
    excused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCUSES, 0))
    runtime_a: str = ""
    runtime_b: str = ""
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _match(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Greedy pairs (same label, highest IoU first) and the detections left over, each with
    the other run's detections of its frame."""
    pairs = sorted(
        (
            (iou(x["box"], y["box"]), i, j)
            for i, x in enumerate(a)
            for j, y in enumerate(b)
            if x["label"] == y["label"]
        ),
        reverse=True,
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    matched = []
    for value, i, j in pairs:
        if value >= MATCH_IOU and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matched.append((value, a[i], b[j]))
    rest = [(x, b) for i, x in enumerate(a) if i not in used_a]
    rest += [(y, a) for j, y in enumerate(b) if j not in used_b]
    return matched, rest


def _excuse(det: dict[str, Any], other: list[dict[str, Any]], cap: int, bounds: Bounds) -> str:
    """The EXCUSES entry that explains an unmatched detection, or ""."""
    if det["score"] < bounds.min_score + bounds.score_tol:
        return "threshold"
    weakest = min((o["score"] for o in other), default=1.0)
    if cap and len(other) >= cap and det["score"] <= weakest + bounds.score_tol:
        return "cap"
    if any(o["label"] == det["label"] and iou(o["box"], det["box"]) >= OVERLAP_IOU for o in other):
        return "overlap"
    return ""


def _clustered(det: dict[str, Any], run: list[dict[str, Any]]) -> bool:
    """True when another detection of det's label in its own frame overlaps it."""
    return any(
        o is not det and o["label"] == det["label"] and iou(o["box"], det["box"]) >= OVERLAP_IOU
        for o in run
    )


def _pair(
    t: Tally, key: str, pair: tuple[float, Any, Any], frame: tuple[Any, Any], b: Bounds
) -> None:
    value, x, y = pair
    t.matched += 1
    diff = abs(x["score"] - y["score"])
    corner = max(abs(p - q) for p, q in zip(x["box"], y["box"], strict=True))
    t.max_iou_deficit = max(t.max_iou_deficit, 1 - value)
    t.max_corner_diff = max(t.max_corner_diff, corner)
    t.max_score_diff = max(t.max_score_diff, diff)
    t.below_min_iou += value < b.min_iou
    what = f"{key} {x['label']}: IoU {value:.4f}, corner {corner:.4f}, score diff {diff:.4f}"
    if diff > b.score_tol:
        t.failures.append(what)
    elif value < b.min_iou and corner > b.box_tol:
        if _clustered(x, frame[0]) or _clustered(y, frame[1]):
            t.excused["cluster"] += 1
            t.notes.append(f"{what} (cluster)")
        else:
            t.failures.append(what)


def compare_detector(a: dict[str, Any], b: dict[str, Any], bounds: Bounds) -> Tally:
    """Compare one detector's frames of two runs."""
    t = Tally(runtime_a=a["runtime"], runtime_b=b["runtime"])
    cap = int(a.get("cap") or 0)
    if set(a["frames"]) != set(b["frames"]):
        t.failures.append(f"frames differ: {sorted(set(a['frames']) ^ set(b['frames']))}")
    for key in sorted(set(a["frames"]) & set(b["frames"])):
        da, db = a["frames"][key], b["frames"][key]
        t.frames += 1
        t.detections_a += len(da)
        t.detections_b += len(db)
        matched, rest = _match(da, db)
        for pair in matched:
            _pair(t, key, pair, (da, db), bounds)
        for det, other in rest:
            what = f"{key} unmatched {det['label']} {det['score']:.3f} {det['box']}"
            reason = _excuse(det, other, cap, bounds)
            if reason:
                t.excused[reason] += 1
                t.notes.append(f"{what} ({reason})")
            else:
                t.unmatched += 1
                t.failures.append(what)
    return t


def _print(tallies: dict[str, Tally]) -> None:
    print(
        "detector          frames  dets A/B  matched  max 1-IoU  max corner  max |dscore|"
        "  unmatched  excused (threshold/cap/overlap/cluster)"
    )
    for name, t in tallies.items():
        excused = "/".join(str(t.excused[k]) for k in EXCUSES)
        print(
            f"{name:<17} {t.frames:>6}  {t.detections_a:>4}/{t.detections_b:<4} {t.matched:>7}"
            f"  {t.max_iou_deficit:>9.4f}  {t.max_corner_diff:>10.4f}  {t.max_score_diff:>12.4f}"
            f"  {t.unmatched:>9}  {excused:<10}  {'ok' if not t.failures else 'FAIL'}"
        )
        for line in t.failures[:20] + t.notes[:10]:
            print(f"    {line}")
    print(
        "runtimes: " + ", ".join(f"{n} {t.runtime_a} vs {t.runtime_b}" for n, t in tallies.items())
    )


def compare(args: argparse.Namespace) -> int:
    """Compare two run files, print a table, write the JSON report; 1 on any failure."""
    runs = [json.loads(Path(p).read_text()) for p in (args.a, args.b)]
    bounds = Bounds(args.min_iou, args.score_tol, args.box_tol, float(runs[0]["min_score"]))
    tallies = {}
    for name, a in runs[0]["detectors"].items():
        b = runs[1]["detectors"].get(name)
        if b is None:
            tallies[name] = Tally(failures=["missing in the second run"])
            continue
        tallies[name] = compare_detector(a, b, bounds)
        if args.runtime_b and b["runtime"] != args.runtime_b:
            tallies[name].failures.append(f"second run used {b['runtime']}, not {args.runtime_b}")
    _print(tallies)
    report = {
        "bounds": asdict(bounds),
        "a": args.a,
        "b": args.b,
        "detectors": {n: asdict(t) for n, t in tallies.items()},
        "ok": not any(t.failures for t in tallies.values()),
    }
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    col = sub.add_parser("collect", help="run the agent with each detector, record detections")
    col.add_argument("--agent", required=True, help="command line of edge-agent (shell words)")
    col.add_argument("--port", type=int, required=True, help="broker port on 127.0.0.1")
    col.add_argument("--out", required=True, help="run file to write (JSON)")
    col.add_argument("--root", default="", help="host path of the agent's / (a chroot)")
    col.add_argument("--models", required=True, help="shared models dir, as the agent sees it")
    col.add_argument("--media", required=True, help="shared media dir, as the agent sees it")
    col.add_argument("--work", required=True, help="dir for configs and outboxes, agent's view")
    col.add_argument("--detectors", default="", help="comma-separated subset")
    col.add_argument("--timeout", type=float, default=1800)
    col.add_argument(
        "--exact", action="store_true", help="model.exact: reference kernels, exact resize"
    )
    cmp_ = sub.add_parser("compare", help="compare two run files")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    cmp_.add_argument("--min-iou", type=float, default=0.9)
    cmp_.add_argument("--score-tol", type=float, default=0.02)
    cmp_.add_argument("--box-tol", type=float, default=0.0, help="corner offset passing a pair")
    cmp_.add_argument("--report", default="")
    cmp_.add_argument("--runtime-b", default="", help="interpreter module the second run must use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[compare] %(message)s")
    return collect(args) if args.cmd == "collect" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
