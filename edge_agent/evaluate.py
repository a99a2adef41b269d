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
from typing import Any, TypeVar

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from edge_agent.errors import UserError
from edge_agent.sources.replay import IMAGE_SUFFIXES
from edge_agent.types import Detection, Image

log = logging.getLogger(__name__)

Detect = Callable[[Image], Iterable[Detection]]
_M = TypeVar("_M", bound=BaseModel)


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


Box = tuple[float, float, float, float]


class _Lenient(BaseModel):
    """Annotation files carry many more keys than these: extra keys are ignored."""

    model_config = ConfigDict(extra="ignore")


class _CocoImage(_Lenient):
    id: int
    file_name: str
    width: PositiveInt
    height: PositiveInt


class _CocoAnnotation(_Lenient):
    image_id: int
    category_id: int
    bbox: Box
    iscrowd: int = 0


class _CocoCategory(_Lenient):
    id: int
    name: str


class _Coco(_Lenient):
    images: list[_CocoImage]
    annotations: list[_CocoAnnotation]
    categories: list[_CocoCategory]


class _BoxObject(_Lenient):
    label: str
    bbox_xyxy: Box


class _BoxImage(_Lenient):
    file: str
    width: PositiveInt
    height: PositiveInt
    objects: list[_BoxObject] = []


class _Boxes(_Lenient):
    images: list[_BoxImage]


def _validated(model: type[_M], data: Any, where: str) -> _M:
    """Parse with pydantic; the first problem becomes one line: `images[3].width: message`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise UserError(
            f"{path.lstrip('.') or 'top level'}: {first['msg']} (--annotations)", where=where
        ) from None


def read_names(path: Path) -> list[str]:
    """Class names from a YAML (`names:` list or dict) or a text file (one per line)."""
    text = _read_text(path, "names file", "--names")
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or exc
            raise UserError(f"not valid YAML: {at}{problem} (--names)", where=str(path)) from None
        names = _yaml_names(data.get("names") if isinstance(data, dict) else None, path)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError("no class names in the file (--names)", where=str(path))
    return names


def _yaml_names(names: object, path: Path) -> list[str]:
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            order = sorted(names, key=int)
        except (TypeError, ValueError):
            raise UserError(
                "`names:` keys must be class numbers 0, 1, ... (--names)", where=str(path)
            ) from None
        return [str(names[k]) for k in order]
    raise UserError(
        "no `names:` list or mapping in the file (e.g. names: {0: person, 1: car}) (--names)",
        where=str(path),
    )


def _read_text(path: Path, what: str, option: str) -> str:
    """A UTF-8 text file's contents; every failure is a UserError naming the option."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} not found ({option})", where=str(path)) from None
    except IsADirectoryError:
        raise UserError(f"is a folder, not a {what} ({option})", where=str(path)) from None
    except UnicodeDecodeError:
        raise UserError(f"{what} is not UTF-8 text ({option})", where=str(path)) from None
    except OSError as exc:
        raise UserError(f"cannot read {what}: {exc.strerror} ({option})", where=str(path)) from None


def image_files(folder: Path) -> list[Path]:
    """The image files directly in folder, sorted; UserError when there are none."""
    if not folder.exists():
        raise UserError("image folder not found (--images)", where=str(folder))
    if not folder.is_dir():
        raise UserError(
            "not a folder (--images: give the folder holding the images)", where=str(folder)
        )
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise UserError(
            f"cannot list the folder: {exc.strerror} (--images)", where=str(folder)
        ) from None
    found = sorted(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise UserError(f"no images ({kinds}) in the folder (--images)", where=str(folder))
    return found


def _size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(
            "cannot decode image (replace it or move it out of --images)", where=str(path)
        )
    return int(image.shape[1]), int(image.shape[0])


def load_ground_truth(
    images: Path, annotations: Path, names: list[str], names_source: str | None = None
) -> GroundTruth:
    """Ground truth for the images in `images` from any supported annotation format.

    `names_source` says where `names` came from, for messages about YOLO class numbers
    (default: `--names has N names`)."""
    if annotations.is_dir():
        source = names_source or f"--names has {len(names)} names"
        gt = _from_yolo(images, annotations, names, source)
    else:
        gt = _from_json(images, annotations)
    if not gt.annotations:
        raise UserError(
            f"no boxes for the {len(gt.images)} matching images: nothing to score "
            "(check --annotations and --images)",
            where=str(annotations),
        )
    return gt


def _from_json(images: Path, annotations: Path) -> GroundTruth:
    text = _read_text(annotations, "annotations file", "--annotations")
    where = str(annotations)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"not valid JSON: {exc} (--annotations)", where=where) from None
    if isinstance(data, dict) and "annotations" in data:
        gt, listed = _from_coco(images, _validated(_Coco, data, where), where)
    elif isinstance(data, dict) and "images" in data:
        gt, listed = _from_boxes(images, _validated(_Boxes, data, where))
    else:
        found = (
            f"an object with keys {', '.join(sorted(data)) or '(none)'}"
            if isinstance(data, dict)
            else f"a JSON {type(data).__name__.replace('dict', 'object')}"
        )
        raise UserError(
            f"expected COCO JSON (images, annotations, categories) or a boxes JSON "
            f"(images[].objects[]), found {found} (--annotations)",
            where=where,
        )
    if not gt.images:
        example = f" (e.g. {listed[0]!r})" if listed else ""
        raise UserError(
            f"none of the {len(listed)} images listed in the annotations is in {images}{example}; "
            "files are matched by name (check --images)",
            where=where,
        )
    return gt


def _from_coco(images: Path, data: _Coco, where: str) -> tuple[GroundTruth, list[str]]:
    cats = {c.id: c.name for c in data.categories}
    listed = {img.id for img in data.images}
    gt = GroundTruth([])
    by_name = {p.name: p for p in image_files(images)}
    ids: dict[int, int] = {}
    for img in data.images:
        path = by_name.get(Path(img.file_name).name)
        if path is not None:
            ids[img.id] = gt.add_image(path, img.width, img.height)
    for n, ann in enumerate(data.annotations):
        if ann.image_id not in listed:
            raise UserError(
                f"annotations[{n}]: image_id {ann.image_id} is not in `images` (--annotations)",
                where=where,
            )
        if ann.category_id not in cats:
            raise UserError(
                f"annotations[{n}]: category_id {ann.category_id} is not in `categories` "
                "(--annotations)",
                where=where,
            )
        if ann.image_id in ids and not ann.iscrowd:
            x, y, w, h = ann.bbox
            gt.add_box(ids[ann.image_id], cats[ann.category_id], (x, y, x + w, y + h))
    return gt, [img.file_name for img in data.images]


def _from_boxes(images: Path, data: _Boxes) -> tuple[GroundTruth, list[str]]:
    gt = GroundTruth([])
    by_name = {p.name: p for p in image_files(images)}
    for img in data.images:
        path = by_name.get(Path(img.file).name)
        if path is None:
            continue
        image_id = gt.add_image(path, img.width, img.height)
        for obj in img.objects:
            gt.add_box(image_id, obj.label, obj.bbox_xyxy)
    return gt, [img.file for img in data.images]


def _from_yolo(images: Path, labels: Path, names: list[str], names_source: str) -> GroundTruth:
    gt = GroundTruth(list(names))
    matched = 0
    files = image_files(images)
    for path in files:
        txt = labels / f"{path.stem}.txt"
        width, height = _size(path)
        image_id = gt.add_image(path, width, height)
        if not txt.is_file():
            continue  # an image without a label file has no objects (YOLO convention)
        matched += 1
        text = _read_text(txt, "label file", "--annotations")
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                cls, (cx, cy, w, h) = _yolo_line(line, len(names), names_source, f"{txt}:{number}")
                x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
                gt.add_box(image_id, names[cls], (x1, y1, x1 + w * width, y1 + h * height))
    if not matched:
        raise UserError(
            f"no label file matches an image in {images} (expected e.g. {files[0].stem}.txt; "
            "check --annotations and --images)",
            where=str(labels),
        )
    return gt


def _yolo_line(line: str, classes: int, names_source: str, where: str) -> tuple[int, Box]:
    """One `class cx cy w h` line, checked; errors name the file and line."""
    parts = line.split()
    if len(parts) != 5:
        polygon = " (segmentation polygons are not supported)" if len(parts) > 5 else ""
        raise UserError(
            f"expected 5 values `class cx cy w h`, found {len(parts)}{polygon}", where=where
        )
    try:
        cls = int(parts[0])
    except ValueError:
        raise UserError(f"class {parts[0]!r} is not a whole number", where=where) from None
    if not 0 <= cls < classes:
        raise UserError(f"class {cls} is out of range: {names_source}", where=where)
    try:
        cx, cy, w, h = (float(v) for v in parts[1:])
    except ValueError:
        raise UserError(f"not a number in {' '.join(parts[1:])!r}", where=where) from None
    # Ultralytics' own rule: coordinates are fractions of the image size (pixels are a mistake).
    if not all(0.0 <= v <= 1.0 + 1e-3 for v in (cx, cy, w, h)):
        raise UserError(
            "cx cy w h must be fractions 0..1 of the image size (pixel values?)", where=where
        )
    return cls, (cx, cy, w, h)


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
