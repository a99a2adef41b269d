"""`edge-agent models inspect | eval`: look inside a model, and measure its accuracy."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector
from edge_agent.errors import UserError
from edge_agent.types import Detection, Image

log = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    """Register `models inspect` and `models eval` on the CLI's subparsers."""
    models = sub.add_parser("models", help="inspect or evaluate a model")
    msub = models.add_subparsers(dest="models_command", required=True)
    inspect = msub.add_parser("inspect", help="tensors, family, labels, ops, smoke test")
    inspect.add_argument("model", type=Path)
    _model_options(inspect, threshold=0.4)
    inspect.add_argument("--image", type=Path, help="run the model on this image")
    inspect.add_argument(
        "--output", type=Path, help="annotated PNG (default: next to the model, else here)"
    )
    ev = msub.add_parser("eval", help="mAP on labelled images")
    ev.add_argument("--model", type=Path, required=True)
    _model_options(ev, threshold=0.01)
    ev.add_argument("--images", type=Path, required=True, help="folder of images")
    ev.add_argument(
        "--annotations",
        type=Path,
        required=True,
        help="COCO JSON, boxes JSON, or a folder of YOLO .txt labels",
    )
    ev.add_argument("--names", type=Path, help="class names for YOLO labels (yaml or txt)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")


def _model_options(parser: argparse.ArgumentParser, threshold: float) -> None:
    parser.add_argument("--labels", type=Path)
    parser.add_argument(
        "--format", default="auto", choices=["auto", "ssd", "yolov8", "yolov5", "blazeface"]
    )
    parser.add_argument("--threshold", type=float, default=threshold)
    parser.add_argument("--threads", type=int, default=2)


def _detector(model: Path, args: argparse.Namespace) -> Detector:
    cfg = ModelConfig.model_validate(
        {"path": str(model), "labels": args.labels, "format": args.format, "threads": args.threads}
    )
    return Detector(cfg, args.threshold)


def run(args: argparse.Namespace) -> int:
    """Dispatch a `models` subcommand."""
    if args.models_command == "inspect":
        return inspect(args)
    return evaluate(args)


def inspect(args: argparse.Namespace) -> int:
    """Print what the model is and how edge-agent will run it; optionally a smoke test."""
    det = _detector(args.model, args)
    info = det.summary()
    ops = Counter(str(op.get("op_name")) for op in det.model.ops)
    print(f"model      {args.model}")
    print(f"runtime    {info.runtime}")
    print(f"input      {info.input}")
    for out in info.outputs:
        print(f"output     {out}")
    print(f"family     {info.family} ({'from --format' if args.format != 'auto' else 'detected'})")
    print(
        f"preprocess resize {'letterbox' if info.letterbox else 'stretch'}, "
        f"values {info.normalize}, colour {'rgb' if det.plan.rgb else 'bgr'}"
    )
    shown = ", ".join(det.labels[:8]) + (" ..." if len(det.labels) > 8 else "")
    print(f"labels     {len(det.labels)}: {shown}")
    print(
        "ops        "
        + (
            ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))
            or "(not reported by this runtime)"
        )
    )
    if args.image is not None:
        _smoke(det, args)
    return 0


def _smoke(det: Detector, args: argparse.Namespace) -> None:
    frame = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if frame is None:
        raise UserError("cannot decode image", where=str(args.image))
    image = np.asarray(frame, np.uint8)
    dets, ms = det.detect(image)
    print(
        f"smoke test {args.image}: {len(dets)} detections in {ms:.1f} ms "
        f"(score >= {args.threshold})"
    )
    h, w = image.shape[:2]
    for d in dets:
        box = [round(d.box[0] * w), round(d.box[1] * h), round(d.box[2] * w), round(d.box[3] * h)]
        print(f"  {d.label:<16} {d.score:.2f}  {box}")
    out = args.output or _default_png(args.model, args.image)
    if not cv2.imwrite(str(out), annotate(image, dets)):
        raise UserError("cannot write the annotated image", where=str(out))
    print(f"annotated  {out}")


def _default_png(model: Path, image: Path) -> Path:
    name = f"{model.stem}.{image.stem}.png"
    folder = model.resolve().parent
    return folder / name if os.access(folder, os.W_OK) else Path.cwd() / name


def annotate(image: Image, dets: tuple[Detection, ...]) -> Image:
    """A copy of the image with boxes, labels and keypoints drawn."""
    out = image.copy()
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    for d in dets:
        p1 = (round(d.box[0] * w), round(d.box[1] * h))
        p2 = (round(d.box[2] * w), round(d.box[3] * h))
        cv2.rectangle(out, p1, p2, (0, 200, 255), thickness)
        cv2.putText(
            out,
            f"{d.label} {d.score:.2f}",
            (p1[0], max(12, p1[1] - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            (0, 200, 255),
            thickness,
        )
        for x, y in d.keypoints:
            cv2.circle(out, (round(x * w), round(y * h)), 2 * thickness, (0, 255, 0), -1)
    return out


def evaluate(args: argparse.Namespace) -> int:
    """mAP of the model on labelled images, with a progress bar on a terminal."""
    from edge_agent import evaluate as ev

    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        raise UserError(
            "model evaluation needs faster-coco-eval: pip install 'edge-agent[eval]'"
        ) from None
    det = _detector(args.model, args)
    names = ev.read_names(args.names) if args.names else list(det.labels)
    gt = ev.load_ground_truth(args.images, args.annotations, names)
    with _Progress(len(gt.images)) as step:
        results = ev.detections_json(gt, lambda img: det.detect(img)[0], step)
    report = ev.coco_map(gt, results)
    report["images"] = len(gt.images)
    report["model"] = str(args.model)
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return 0


class _Progress:
    """Rich progress bar on a terminal; a log line every 10% otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int, int], None]:
        if sys.stderr.isatty():
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            task = self._bar.add_task("evaluating", total=self.total)
            return lambda n, _t: self._bar.update(task, completed=n)
        return self._log

    def _log(self, n: int, total: int) -> None:
        if n == total or n % max(1, total // 10) == 0:
            log.info("evaluated %d/%d images", n, total)

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _print_table(report: dict[str, Any]) -> None:
    print(f"{report['model']}: {report['images']} images")
    print(f"mAP@0.5       {report['map50']:.4f}")
    print(f"mAP@0.5:0.95  {report['map50_95']:.4f}")
    print(f"{'class':<20} {'AP50':>7} {'AP50-95':>8}")
    for name, ap in sorted(report["per_class"].items()):
        print(f"{name:<20} {ap['ap50']:>7.4f} {ap['ap50_95']:>8.4f}")
