"""An independent reference decode, written from the model MANIFEST, not from edge_agent.

It runs the interpreter directly and decodes with plain float math, so agreement between it
and the agent's published detections is evidence the agent's fast paths are right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter


@dataclass(frozen=True)
class RefDet:
    """label, score, box [x1,y1,x2,y2] normalized to the frame."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    """Plain IoU of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class ReferenceSSD:
    """SSD MobileNet v1 (postprocess op): stretch to 300x300, raw uint8 RGB; label = lines[c+1]."""

    def __init__(self, model: Path, labels: Path) -> None:
        self.it = Interpreter(model_path=str(model), num_threads=2)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()
        self.lines = labels.read_text().splitlines()  # line 0 is the '???' background

    def __call__(self, bgr: np.ndarray, threshold: float) -> list[RefDet]:
        h, w = self.inp["shape"][1:3]
        rgb = cv2.cvtColor(
            cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB
        )
        self.it.set_tensor(self.inp["index"], rgb[None].astype(np.uint8))
        self.it.invoke()
        boxes, classes, scores, count = (self.it.get_tensor(o["index"]) for o in self.out)
        dets = []
        for i in range(int(count[0])):
            if scores[0, i] < threshold:
                continue
            y1, x1, y2, x2 = (float(np.clip(v, 0, 1)) for v in boxes[0, i])
            dets.append(
                RefDet(self.lines[int(classes[0, i]) + 1], float(scores[0, i]), (x1, y1, x2, y2))
            )
        return dets


class _SingleOutput:
    """Interpreter, first input and output, and a dense label list."""

    def __init__(self, model: Path, labels: Path) -> None:
        self.it = Interpreter(model_path=str(model), num_threads=2)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.lines = _labels(labels)


class ReferenceYoloV8(_SingleOutput):
    """YOLOv8/11 int8: letterbox (pad 114), q = round(pixel/255/scale)+zp, [1,84,N] -> NMS 0.45."""

    def __call__(self, bgr: np.ndarray, threshold: float) -> list[RefDet]:
        rgb, r, left, top = _letterbox(bgr, int(self.inp["shape"][1]), 114)
        scale, zp = self.inp["quantization"]
        q = np.clip(np.round(rgb / 255.0 / scale + zp), -128, 127).astype(np.int8)
        self.it.set_tensor(self.inp["index"], q[None])
        self.it.invoke()
        oscale, ozp = self.out["quantization"]
        out = (self.it.get_tensor(self.out["index"]).astype(np.float64) - ozp) * oscale
        pred = out[0].T  # (N, 84)
        size = float(self.inp["shape"][1])
        h, w = bgr.shape[:2]
        # Ultralytics' predict keeps each anchor's best class (multi_label=False), then
        # runs NMS per class.
        best = pred[:, 4:].argmax(axis=1)
        best_score = pred[np.arange(len(pred)), 4 + best]
        found: list[RefDet] = []
        for c in np.unique(best[best_score >= threshold]):
            rows = pred[(best == c) & (best_score >= threshold)]
            cand = []
            for row in rows:
                cx, cy, bw, bh = row[:4] * size
                box = (
                    (cx - bw / 2 - left) / r / w,
                    (cy - bh / 2 - top) / r / h,
                    (cx + bw / 2 - left) / r / w,
                    (cy + bh / 2 - top) / r / h,
                )
                cand.append((float(row[4 + c]), tuple(float(np.clip(v, 0, 1)) for v in box)))
            kept = _greedy_nms(cand, 0.45)
            found += [RefDet(self.lines[c], s, b) for s, b in kept]  # type: ignore[arg-type]
        return sorted(found, key=lambda d: -d.score)


@dataclass
class Agreement:
    """Counts for the agreement rule: matched share of reference, extra share of reference."""

    reference: int = 0
    matched: int = 0
    published: int = 0
    extra: int = 0

    @property
    def matched_ratio(self) -> float:
        """Matched reference detections / reference detections."""
        return self.matched / self.reference if self.reference else 1.0

    @property
    def extra_ratio(self) -> float:
        """Published detections without a reference match / reference detections."""
        return self.extra / self.reference if self.reference else 0.0


def _match(
    a_label: str,
    a_score: float,
    a_box: tuple[float, ...],
    others: list[tuple[str, float, tuple[float, ...]]],
    tol: float,
) -> bool:
    return any(
        lab == a_label and abs(s - a_score) <= tol and iou(a_box, b) >= 0.7 for lab, s, b in others
    )


def agree(
    reference: list[RefDet], published: list[dict], level: float, tol: float = 0.08
) -> Agreement:
    """Compare one frame: reference (decoded below `level`) vs the agent's published detections."""
    ref = [(d.label, d.score, d.box) for d in reference]
    pub = [(d["label"], float(d["score"]), tuple(d["box"])) for d in published]
    result = Agreement()
    for label, score, box in ref:
        if score >= level:
            result.reference += 1
            result.matched += _match(label, score, box, pub, tol)
    for label, score, box in pub:
        if score >= level:
            result.published += 1
            result.extra += not _match(label, score, box, ref, tol)
    return result


def _greedy_nms(
    cand: list[tuple[float, tuple[float, ...]]], iou_max: float
) -> list[tuple[float, tuple[float, ...]]]:
    cand = sorted(cand, key=lambda t: -t[0])
    kept: list[tuple[float, tuple[float, ...]]] = []
    for score, box in cand:
        if all(iou(box, k[1]) <= iou_max for k in kept):
            kept.append((score, box))
    return kept


def _letterbox(bgr: np.ndarray, size: int, pad: int) -> tuple[np.ndarray, float, int, int]:
    h, w = bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), pad, np.uint8)
    canvas[top : top + nh, left : left + nw] = cv2.resize(
        bgr, (nw, nh), interpolation=cv2.INTER_LINEAR
    )
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB), r, left, top


class ReferenceYoloV5(_SingleOutput):
    """YOLOv5 uint8: letterbox 114, raw pixels in; [1,N,85]: conf = objectness x class prob."""

    def __call__(self, bgr: np.ndarray, threshold: float) -> list[RefDet]:
        size = int(self.inp["shape"][1])
        rgb, r, left, top = _letterbox(bgr, size, 114)
        self.it.set_tensor(self.inp["index"], rgb[None])
        self.it.invoke()
        scale, zp = self.out["quantization"]
        pred = (self.it.get_tensor(self.out["index"])[0].astype(np.float64) - zp) * scale
        conf = pred[:, 5:] * pred[:, 4:5]
        best = conf.argmax(axis=1)
        best_conf = conf[np.arange(len(conf)), best]
        h, w = bgr.shape[:2]
        found: list[RefDet] = []
        for c in np.unique(best[best_conf >= threshold]):
            rows = np.nonzero((best == c) & (best_conf >= threshold))[0]
            cand = []
            for i in rows:
                cx, cy, bw, bh = pred[i, :4] * size
                box = (
                    (cx - bw / 2 - left) / r / w,
                    (cy - bh / 2 - top) / r / h,
                    (cx + bw / 2 - left) / r / w,
                    (cy + bh / 2 - top) / r / h,
                )
                cand.append((float(best_conf[i]), tuple(float(np.clip(v, 0, 1)) for v in box)))
            found += [RefDet(self.lines[c], s, b) for s, b in _greedy_nms(cand, 0.45)]  # type: ignore[arg-type]
        return sorted(found, key=lambda d: -d.score)


class ReferenceBlazeFace:
    """BlazeFace short range, from the MANIFEST: letterbox (0 in [-1,1] space), 896 anchors."""

    def __init__(self, model: Path, labels: Path) -> None:
        self.it = Interpreter(model_path=str(model), num_threads=2)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        outs = {o["name"]: o for o in self.it.get_output_details()}
        self.reg, self.cls = outs["regressors"], outs["classificators"]
        self.label = _labels(labels)[0]
        anchors = []
        for grid, per_cell in ((16, 2), (8, 6)):
            for row in range(grid):
                for col in range(grid):
                    anchors += [((col + 0.5) / grid, (row + 0.5) / grid)] * per_cell
        self.anchors = np.array(anchors)

    def __call__(self, bgr: np.ndarray, threshold: float) -> list[RefDet]:
        size = 128
        h, w = bgr.shape[:2]
        r = min(size / h, size / w)
        nw, nh = round(w * r), round(h * r)
        left, top = (size - nw) // 2, (size - nh) // 2
        tensor = np.zeros((size, size, 3), np.float32)
        small = cv2.cvtColor(
            cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB
        )
        tensor[top : top + nh, left : left + nw] = small / 127.5 - 1
        self.it.set_tensor(self.inp["index"], tensor[None])
        self.it.invoke()
        reg = self.it.get_tensor(self.reg["index"])[0].astype(np.float64)
        logit = self.it.get_tensor(self.cls["index"])[0, :, 0].astype(np.float64)
        score = 1 / (1 + np.exp(-np.clip(logit, -100, 100)))
        cand = []
        for i in np.nonzero(score >= threshold)[0]:
            cx = reg[i, 0] / size + self.anchors[i, 0]
            cy = reg[i, 1] / size + self.anchors[i, 1]
            bw, bh = reg[i, 2] / size, reg[i, 3] / size
            box = (
                ((cx - bw / 2) * size - left) / r / w,
                ((cy - bh / 2) * size - top) / r / h,
                ((cx + bw / 2) * size - left) / r / w,
                ((cy + bh / 2) * size - top) / r / h,
            )
            cand.append((float(score[i]), tuple(float(np.clip(v, 0, 1)) for v in box)))
        return [RefDet(self.label, s, b) for s, b in _greedy_nms(cand, 0.3)]  # type: ignore[arg-type]
