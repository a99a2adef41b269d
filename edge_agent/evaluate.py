"""Accuracy evaluation: run a detector over labelled images and score it with COCO mAP.

Ground truth comes from a COCO JSON file, a folder of YOLO `.txt` labels (with class names from
`--names` or the model's labels), or a boxes JSON (`images[].objects[]` with `label` and
`bbox_xyxy`). Detections are matched to ground-truth classes by label name, so models with
different label spaces (COCO-90 SSD vs COCO-80 YOLO) are scored on the same annotations.
Scoring uses faster-coco-eval, a maintained implementation of the COCO evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge_agent.errors import UserError
from edge_agent.sources.replay import IMAGE_SUFFIXES
from edge_agent.types import Detection, Image

log = logging.getLogger(__name__)

Detect = Callable[[Image], Iterable[Detection]]


@dataclass
class GroundTruth:
    """COCO-style ground truth built in memory."""

    names: list[str]
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    files: dict[int, Path] = field(default_factory=dict)

    def coco(self) -> dict[str, Any]:
        """The dataset as a COCO dict (category id = index + 1)."""
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(self.names)]
        return {"images": self.images, "annotations": self.annotations, "categories": cats}

    def add_image(self, path: Path, width: int, height: int) -> int:
        """Register an image; returns its id."""
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": path.name, "width": width, "height": height}
        )
        self.files[image_id] = path
        return image_id

    def add_box(self, image_id: int, name: str, xyxy: tuple[float, float, float, float]) -> None:
        """Add one ground-truth box in pixels."""
        if name not in self.names:
            self.names.append(name)
        x1, y1, x2, y2 = xyxy
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": self.names.index(name) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
        )


def read_names(path: Path) -> list[str]:
    """Class names from a YAML (`names:` list or dict) or a text file (one per line)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        names = (yaml.safe_load(text) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=int)]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise UserError("no `names:` list in the file", where=str(path))
    return [line.strip() for line in text.splitlines() if line.strip()]


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError("image folder not found", where=str(folder))
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise UserError("no images in folder", where=str(folder))
    return found


def _size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError("cannot decode image", where=str(path))
    return int(image.shape[1]), int(image.shape[0])


def load_ground_truth(images: Path, annotations: Path, names: list[str]) -> GroundTruth:
    """Ground truth for the images in `images` from any supported annotation format."""
    if annotations.is_dir():
        return _from_yolo(images, annotations, names)
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read annotations: {exc}", where=str(annotations)) from None
    if isinstance(data, dict) and "annotations" in data:
        return _from_coco(images, data)
    if isinstance(data, dict) and "images" in data:
        return _from_boxes(images, data)
    raise UserError("not COCO JSON, a boxes JSON or a YOLO labels folder", where=str(annotations))


def _from_yolo(images: Path, labels: Path, names: list[str]) -> GroundTruth:
    gt = GroundTruth(list(names))
    for path in _images(images):
        width, height = _size(path)
        image_id = gt.add_image(path, width, height)
        txt = labels / f"{path.stem}.txt"
        if not txt.exists():
            continue
        for number, line in enumerate(txt.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                cls, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
                name = names[cls]
            except (ValueError, IndexError):
                raise UserError(
                    "expected `class cx cy w h` with a known class", where=f"{txt}:{number}"
                ) from None
            gt.add_box(
                image_id,
                name,
                (
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                ),
            )
    return gt


def _from_coco(images: Path, data: dict[str, Any]) -> GroundTruth:
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    gt = GroundTruth([])
    by_name = {p.name: p for p in _images(images)}
    ids: dict[int, int] = {}
    for img in data["images"]:
        path = by_name.get(Path(img["file_name"]).name)
        if path is not None:
            ids[img["id"]] = gt.add_image(path, img["width"], img["height"])
    for ann in data["annotations"]:
        if ann["image_id"] in ids and not ann.get("iscrowd", 0):
            x, y, w, h = ann["bbox"]
            gt.add_box(ids[ann["image_id"]], cats[ann["category_id"]], (x, y, x + w, y + h))
    return gt


def _from_boxes(images: Path, data: dict[str, Any]) -> GroundTruth:
    gt = GroundTruth([])
    by_name = {p.name: p for p in _images(images)}
    for img in data["images"]:
        path = by_name.get(Path(img["file"]).name)
        if path is None:
            continue
        image_id = gt.add_image(path, img["width"], img["height"])
        for obj in img.get("objects", []):
            gt.add_box(image_id, obj["label"], tuple(obj["bbox_xyxy"]))
    return gt


def detections_json(
    gt: GroundTruth, detect: Detect, progress: Callable[[int, int], None] | None = None
) -> list[dict[str, Any]]:
    """Run `detect` on every image; COCO result dicts for labels the ground truth knows."""
    results: list[dict[str, Any]] = []
    skipped: set[str] = set()
    total = len(gt.images)
    for n, img in enumerate(gt.images, 1):
        frame = cv2.imread(str(gt.files[img["id"]]), cv2.IMREAD_COLOR)
        if frame is None:
            raise UserError("cannot decode image", where=str(gt.files[img["id"]]))
        w, h = img["width"], img["height"]
        for det in detect(np.asarray(frame, np.uint8)):
            if det.label not in gt.names:
                skipped.add(det.label)
                continue
            x1, y1, x2, y2 = det.box
            results.append(
                {
                    "image_id": img["id"],
                    "category_id": gt.names.index(det.label) + 1,
                    "bbox": [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h],
                    "score": det.score,
                }
            )
        if progress is not None:
            progress(n, total)
    if skipped:
        log.info("labels not in the annotations (ignored): %s", ", ".join(sorted(skipped)))
    return results


def coco_map(gt: GroundTruth, results: list[dict[str, Any]]) -> dict[str, Any]:
    """mAP@0.5, mAP@0.5:0.95 and per-class AP with faster-coco-eval."""
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt.coco())
    present = sorted({a["category_id"] for a in gt.annotations})
    if not results:
        return {
            "map50": 0.0,
            "map50_95": 0.0,
            "per_class": {gt.names[c - 1]: {"ap50": 0.0, "ap50_95": 0.0} for c in present},
        }
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=log.debug)
    ev.params.catIds = present
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    precision = ev.eval["precision"]  # [iou, recall, class, area, maxdets]
    per_class = {}
    for k, cat in enumerate(present):
        p = precision[:, :, k, 0, -1]
        ap = float(np.mean(p[p > -1])) if np.any(p > -1) else 0.0
        p50 = precision[0, :, k, 0, -1]
        ap50 = float(np.mean(p50[p50 > -1])) if np.any(p50 > -1) else 0.0
        per_class[gt.names[cat - 1]] = {"ap50": round(ap50, 4), "ap50_95": round(ap, 4)}
    return {
        "map50": round(float(ev.stats[1]), 4),
        "map50_95": round(float(ev.stats[0]), 4),
        "per_class": per_class,
    }
