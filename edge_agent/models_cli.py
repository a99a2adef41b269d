"""`edge-agent models inspect | eval`: look inside a model, and measure its accuracy.

Inputs the user names (model, labels, image, output, annotations) are checked before the model
loads, so a typo fails at once as one `UserError` line naming the file and the option.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pydantic import ValidationError

from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector
from edge_agent.errors import UserError
from edge_agent.types import Detection, Image

if TYPE_CHECKING:
    from edge_agent.evaluate import GroundTruth

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


def check_file(path: Path, what: str, option: str) -> None:
    """UserError unless path is an existing, readable file; names the option to fix."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix == ".tflite")[:3]
        hint = f"; it holds {', '.join(inside)}: pass that file" if inside else ""
        raise UserError(f"is a folder, not a file ({option}){hint}", where=str(path))
    if not path.exists():
        raise UserError(f"{what} not found ({option})", where=str(path))
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} is not readable: permission denied ({option})", where=str(path))


def _check_model_options(model: Path, args: argparse.Namespace, model_option: str) -> None:
    """Cheap checks before the model loads, so a typo costs no interpreter start-up."""
    check_file(model, "model file", model_option)
    if args.labels is not None:
        check_file(args.labels, "labels file", "--labels")
    if not 0.0 <= args.threshold <= 1.0:  # also rejects nan
        raise UserError("must be a score 0..1", where=f"--threshold {args.threshold:g}")
    if not 1 <= args.threads <= 64:
        raise UserError("must be 1..64", where=f"--threads {args.threads}")


def _detector(model: Path, args: argparse.Namespace) -> Detector:
    try:
        cfg = ModelConfig.model_validate(
            {
                "path": str(model),
                "labels": args.labels,
                "format": args.format,
                "threads": args.threads,
            }
        )
    except ValidationError as exc:  # the checks above should leave nothing; never a traceback
        first = exc.errors()[0]
        option = f"--{first['loc'][0]}" if first["loc"] else "--model"
        raise UserError(str(first["msg"]), where=option) from None
    return Detector(cfg, args.threshold)


def run(args: argparse.Namespace) -> int:
    """Dispatch a `models` subcommand."""
    if args.models_command == "inspect":
        return inspect(args)
    return evaluate(args)


def inspect(args: argparse.Namespace) -> int:
    """Print what the model is and how edge-agent will run it; optionally a smoke test."""
    _check_model_options(args.model, args, "MODEL")
    smoke: tuple[Image, Path] | None = None
    if args.image is not None:
        smoke = read_image(args.image, "--image"), _output_path(args)
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
    if smoke is not None:
        _smoke(det, args, *smoke)
    return 0


def read_image(path: Path, option: str) -> Image:
    """Decode an image file; UserError naming the option when it is missing or not an image."""
    check_file(path, "image file", option)
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise UserError(
            f"not an image OpenCV can decode ({option}: use a .jpg, .png or .bmp file)",
            where=str(path),
        )
    return np.asarray(frame, np.uint8)


def _output_path(args: argparse.Namespace) -> Path:
    """Where the annotated image goes; checked before any work, so a bad path fails at once."""
    name = f"{args.model.stem}.{args.image.stem}.png"
    out: Path = args.output or _default_png(args.model, name)
    if out.is_dir():
        out = out / name
    folder = out.parent
    if not folder.is_dir():
        raise UserError(
            f"folder {folder} does not exist (create it, or choose another --output)",
            where=str(out),
        )
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(
            f"cannot write in {folder}: permission denied or a read-only file system "
            "(choose another --output)",
            where=str(out),
        )
    if not cv2.haveImageWriter(str(out)):
        raise UserError("unknown image type: end --output in .png or .jpg", where=str(out))
    return out


def _default_png(model: Path, name: str) -> Path:
    folder = model.resolve().parent
    return folder / name if os.access(folder, os.W_OK) else Path.cwd() / name


def _smoke(det: Detector, args: argparse.Namespace, image: Image, out: Path) -> None:
    dets, ms = det.detect(image)
    print(
        f"smoke test {args.image}: {len(dets)} detections in {ms:.1f} ms "
        f"(score >= {args.threshold})"
    )
    h, w = image.shape[:2]
    for d in dets:
        box = [round(d.box[0] * w), round(d.box[1] * h), round(d.box[2] * w), round(d.box[3] * h)]
        print(f"  {d.label:<16} {d.score:.2f}  {box}")
    ok, encoded = cv2.imencode(out.suffix, annotate(image, dets))
    if not ok:
        raise UserError("cannot encode the annotated image (--output)", where=str(out))
    try:
        out.write_bytes(encoded.tobytes())
    except OSError as exc:
        out.unlink(missing_ok=True)  # never leave a truncated picture behind
        raise UserError(
            f"cannot write the annotated image: {exc.strerror or exc} (choose another --output)",
            where=str(out),
        ) from None
    print(f"annotated  {out}")


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
    _check_model_options(args.model, args, "--model")
    names = ev.read_names(args.names) if args.names else None
    gt = None
    if names is not None or not args.annotations.is_dir():
        # The data is checked before the model loads: a mistake there fails at once.
        gt = ev.load_ground_truth(args.images, args.annotations, names or [])
    else:
        ev.image_files(args.images)
    det = _detector(args.model, args)
    if gt is None:
        source = f"the model has {len(det.labels)} labels (give --names with the dataset's classes)"
        gt = ev.load_ground_truth(args.images, args.annotations, list(det.labels), source)
    _check_overlap(gt, det.labels, args.model)
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


def _check_overlap(gt: GroundTruth, labels: list[str], model: Path) -> None:
    """UserError when no class of the annotations is a label of the model (mAP would be 0)."""
    present = sorted({gt.names[a["category_id"] - 1] for a in gt.annotations})
    if set(present) & set(labels):
        return
    shown = ", ".join(present[:5]) + (" ..." if len(present) > 5 else "")
    mine = ", ".join(labels[:5]) + (" ..." if len(labels) > 5 else "")
    raise UserError(
        f"none of the annotated classes ({shown}) is a label of the model ({mine}); "
        "check --labels, --names and --annotations",
        where=str(model),
    )


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
