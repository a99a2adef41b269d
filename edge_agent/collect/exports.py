"""The dataset's exports, made from the index alone: COCO, YOLO and Label Studio.

- `annotations/coco.json`: images (`file_name` relative to `images/`), the model's
  predictions as annotations with a `score`, categories with the index's stable ids.
- `labels/<device>/<camera>/<stem>.txt` (YOLO: `class cx cy w h`, normalized to the stored
  image) and `data.yaml` (names; train/val = `images`).
- `label_studio/tasks.json` (import format: `data.image` = image root + relative path,
  `predictions` with `model_version` and `rectanglelabels` results in percent) and
  `label_studio/config.xml`, a labeling config with every label seen.

Each file is replaced atomically, so a reader never sees half an export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import yaml

from edge_agent.collect.files import write_atomic, write_if_changed
from edge_agent.collect.geometry import PixelBox, picture_boxes
from edge_agent.collect.index import Index, Row, StoredImage

COCO_PATH = "annotations/coco.json"
TASKS_PATH = "label_studio/tasks.json"
LS_CONFIG_PATH = "label_studio/config.xml"
DATA_YAML = "data.yaml"
FROM_NAME, TO_NAME = "label", "image"  # the control and object names in config.xml


@dataclass
class Exports:
    """What one export pass builds in memory before writing."""

    categories: list[tuple[int, str]]
    image_root: str
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, bytes] = field(default_factory=dict)  # relative path -> YOLO text

    def __post_init__(self) -> None:
        self.coco_id = {name: cid for cid, name in self.categories}
        self.yolo_id = {name: k for k, (_, name) in enumerate(self.categories)}


def model_version(row: Row) -> str:
    """Label Studio's model_version: the model file name and a sha256 prefix."""
    return f"{row.model}@{row.model_sha256[:12]}"


def label_path(image: StoredImage) -> str:
    """The YOLO label file of a stored image (images/... -> labels/..., .jpg -> .txt)."""
    return "labels/" + image.path.removeprefix("images/").removesuffix(".jpg") + ".txt"


def _coco_annotations(ex: Exports, image_id: int, boxes: list[PixelBox]) -> None:
    for box in boxes:
        w, h = round(box.width, 2), round(box.height, 2)
        ex.annotations.append(
            {
                "id": len(ex.annotations) + 1,
                "image_id": image_id,
                "category_id": ex.coco_id[box.label],
                "bbox": [round(box.x1, 2), round(box.y1, 2), w, h],
                "area": round(w * h, 2),
                "iscrowd": 0,
                "segmentation": [],
                "score": round(box.score, 4),
            }
        )


def _yolo_text(ex: Exports, image: StoredImage, boxes: list[PixelBox]) -> bytes:
    lines = []
    for box in boxes:
        cx = (box.x1 + box.x2) / 2 / image.width
        cy = (box.y1 + box.y2) / 2 / image.height
        w, h = box.width / image.width, box.height / image.height
        lines.append(f"{ex.yolo_id[box.label]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines).encode()


def _ls_result(image: StoredImage, k: int, box: PixelBox) -> dict[str, Any]:
    return {
        "id": f"{image.stem}_{k}",
        "type": "rectanglelabels",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "original_width": image.width,
        "original_height": image.height,
        "image_rotation": 0,
        "value": {
            "x": round(box.x1 / image.width * 100, 4),
            "y": round(box.y1 / image.height * 100, 4),
            "width": round(box.width / image.width * 100, 4),
            "height": round(box.height / image.height * 100, 4),
            "rotation": 0,
            "rectanglelabels": [box.label],
        },
        "score": round(box.score, 4),
    }


def _ls_task(ex: Exports, row: Row, image: StoredImage, boxes: list[PixelBox]) -> dict[str, Any]:
    url = ex.image_root + quote(image.path, safe="/")
    prediction: dict[str, Any] = {
        "model_version": model_version(row),
        "result": [_ls_result(image, k, box) for k, box in enumerate(boxes)],
    }
    if boxes:  # the task's score sorts tasks in Label Studio: the mean box score
        prediction["score"] = round(sum(b.score for b in boxes) / len(boxes), 4)
    data = {
        "image": url,
        "sample_id": row.id,
        "device": row.device,
        "camera": row.camera,
        "ts": row.ts,
        "frame": row.frame,
        "reasons": row.reasons,
    }
    return {"data": data, "predictions": [prediction]}


def add_row(ex: Exports, row: Row, with_labels: bool) -> None:
    """Add one sample's images to every export."""
    for image in row.images:
        boxes = picture_boxes(
            row.detections, image.width, image.height, image.region, image.tracker_id
        )
        image_id = len(ex.images) + 1
        ex.images.append(
            {
                "id": image_id,
                "file_name": image.path.removeprefix("images/"),
                "width": image.width,
                "height": image.height,
                "sample_id": row.id,
                "device": row.device,
                "camera": row.camera,
                "ts": row.ts,
            }
        )
        _coco_annotations(ex, image_id, boxes)
        ex.tasks.append(_ls_task(ex, row, image, boxes))
        if with_labels:
            ex.labels[label_path(image)] = _yolo_text(ex, image, boxes)


def ls_config(categories: list[tuple[int, str]]) -> str:
    """A Label Studio labeling config for rectangles with every category."""
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for _, name in categories)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def _data_yaml(categories: list[tuple[int, str]]) -> bytes:
    # No `path:`: trainers then resolve train/val against this file's folder.
    body = {
        "train": "images",
        "val": "images",
        "nc": len(categories),
        "names": {k: name for k, (_, name) in enumerate(categories)},
    }
    header = "# edge-agent collect: YOLO dataset; labels/ mirrors images/\n"
    return (header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)).encode()


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def write_exports(out: Path, index: Index, image_root: str, labels_after: int = 0) -> int:
    """Regenerate every export from the index; returns the last seq exported."""
    # YOLO label files only for samples with seq > labels_after: a file never changes once
    # written (category ids are stable), and rewriting thousands every interval costs.
    ex = Exports(index.categories(), image_root)
    last = 0
    for row in index.rows():
        add_row(ex, row, with_labels=row.seq > labels_after)
        last = row.seq
    coco = {
        "info": {"description": "edge-agent collect: model predictions as pre-annotations"},
        "images": ex.images,
        "annotations": ex.annotations,
        "categories": [{"id": cid, "name": name} for cid, name in ex.categories],
    }
    for rel in (COCO_PATH, TASKS_PATH):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out / COCO_PATH, _dump(coco))
    write_atomic(out / TASKS_PATH, _dump(ex.tasks))
    write_if_changed(out / LS_CONFIG_PATH, ls_config(ex.categories).encode())
    write_if_changed(out / DATA_YAML, _data_yaml(ex.categories))
    for rel, text in ex.labels.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(path, text)
    return last
