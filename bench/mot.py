"""Tracker comparison on MOTChallenge ground truth: ours vs ByteTrack (supervision) vs norfair.

The ground truth that `motmetrics` ships (TUD-Campus, TUD-Stadtmitte, 640x480) becomes
detections through a fixed, seeded corruption: 10% of boxes dropped, box jitter of 5% of the
size, 5% false boxes, true scores ~U(0.3, 0.95) (so some fall below the high threshold) and
false ones ~U(0.1, 0.6). Every tracker sees the same detections; motmetrics scores MOTA and IDF1
at IoU 0.5.

    .venv/bin/python bench/mot.py [--seeds 0 1 2] [--png bench/mot.png]

Needs (test extra): motmetrics, supervision (installed --no-deps, so that
opencv-python-headless stays the only OpenCV), norfair-enough; matplotlib for the chart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.core.detections import Detections
from edge_agent.track import TrackConfig, Tracker

SIZE = (640.0, 480.0)  # both TUD sequences
SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
Frames = list[tuple[int, np.ndarray, np.ndarray]]  # frame, xyxy pixels (N,4), score (N,)
Runner = Callable[[Frames], list[tuple[int, int, np.ndarray]]]  # -> frame, id, xyxy


def _motmetrics() -> Any:
    """motmetrics, with the numpy 2 shim it still needs (np.asfarray was removed)."""
    if not hasattr(np, "asfarray"):
        np.asfarray = lambda a, dtype=float: np.asarray(a, dtype)  # type: ignore[attr-defined]
    import motmetrics

    return motmetrics


def gt_path(seq: str) -> Path:
    """The ground truth file motmetrics ships for a sequence."""
    return Path(_motmetrics().__file__).parent / "data" / seq / "gt.txt"


def corrupt(gt: np.ndarray, seed: int) -> Frames:
    """Detections from MOT ground-truth rows (frame,id,x,y,w,h,...): fixed seeded damage."""
    rng = np.random.default_rng(seed)
    rows = gt[rng.random(len(gt)) >= 0.10]
    xywh = rows[:, 2:6].copy()
    xywh += rng.normal(0.0, 0.05, xywh.shape) * np.hstack([xywh[:, 2:], xywh[:, 2:]])
    xywh[:, 2:] = np.maximum(xywh[:, 2:], 2.0)
    scores = rng.uniform(0.3, 0.95, len(rows))
    frames = rows[:, 0].astype(int)
    n_false = round(0.05 * len(gt))
    sizes = gt[rng.integers(0, len(gt), n_false), 4:6]
    corner = rng.uniform(0, 1, (n_false, 2)) * (np.array(SIZE) - sizes)
    fxywh = np.hstack([corner, sizes])
    fframes = rng.integers(gt[:, 0].min(), gt[:, 0].max() + 1, n_false)
    all_f = np.concatenate([frames, fframes])
    all_b = np.vstack([xywh, fxywh])
    all_s = np.concatenate([scores, rng.uniform(0.1, 0.6, n_false)])
    xyxy = np.hstack([all_b[:, :2], all_b[:, :2] + all_b[:, 2:]])
    out: Frames = []
    for f in range(int(gt[:, 0].min()), int(gt[:, 0].max()) + 1):
        sel = all_f == f
        out.append((f, xyxy[sel], all_s[sel]))
    return out


def run_ours(cfg: TrackConfig) -> Runner:
    """Our tracker with this config (boxes normalized by the frame size)."""
    scale = np.array(SIZE * 2)

    def run(frames: Frames) -> list[tuple[int, int, np.ndarray]]:
        tracker, out = Tracker(cfg), []
        for f, xyxy, score in frames:
            dets = Detections(
                (xyxy / scale).astype(np.float32),
                score.astype(np.float32),
                np.zeros(len(score), np.int64),
            )
            got = tracker.update(dets, f / 25.0, f).detections
            for box, tid in zip(got.xyxy, got.tracked, strict=True):
                if tid >= 0:
                    out.append((f, int(tid), box.astype(np.float64) * scale))
        return out

    return run


def run_bytetrack(frames: Frames) -> list[tuple[int, int, np.ndarray]]:
    """supervision's ByteTrack with its defaults."""
    import supervision as sv

    tracker, out = sv.ByteTrack(), []
    for f, xyxy, score in frames:
        dets = sv.Detections(
            xyxy=xyxy.astype(np.float32), confidence=score, class_id=np.zeros(len(score), int)
        )
        got = tracker.update_with_detections(dets)
        out += [(f, int(t), b) for b, t in zip(got.xyxy, got.tracker_id, strict=True)]
    return out


NORFAIR_THRESHOLD = 0.7  # norfair has no default; 1 - IoU, as in its IoU examples


def run_norfair(frames: Frames) -> list[tuple[int, int, np.ndarray]]:
    """norfair (norfair-enough) with its defaults, IoU distance."""
    import norfair

    tracker = norfair.Tracker(distance_function="iou", distance_threshold=NORFAIR_THRESHOLD)
    out = []
    for f, xyxy, score in frames:
        dets = [
            norfair.Detection(points=b.reshape(2, 2), scores=np.array([s, s]))
            for b, s in zip(xyxy, score, strict=True)
        ]
        for obj in tracker.update(detections=dets):
            out.append((f, int(obj.id), obj.estimate.reshape(4)))
    return out


def score(seq: str, tracks: list[tuple[int, int, np.ndarray]]) -> dict[str, float]:
    """MOTA, IDF1 and id switches of tracks against the sequence's ground truth."""
    mm = _motmetrics()
    import pandas as pd

    gt = mm.io.loadtxt(str(gt_path(seq)), fmt="mot15-2D")
    rows = [(f, i, b[0], b[1], b[2] - b[0], b[3] - b[1], 1.0) for f, i, b in tracks]
    cols = ["FrameId", "Id", "X", "Y", "Width", "Height", "Confidence"]
    ts = pd.DataFrame(rows, columns=cols).set_index(["FrameId", "Id"])
    acc = mm.utils.compare_to_groundtruth(gt, ts, "iou", distth=0.5)
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches"])
    return {k: float(summary[k].iloc[0]) for k in ("mota", "idf1", "num_switches")}


def trackers() -> dict[str, Runner]:
    """Every tracker compared, by the name shown in the table."""
    return {
        "ours (defaults)": run_ours(TrackConfig()),
        "ByteTrack (supervision)": run_bytetrack,
        "norfair": run_norfair,
    }


def compare(seed: int) -> Iterator[tuple[str, str, dict[str, float]]]:
    """(sequence, tracker, metrics) for every pair, on one seed."""
    for seq in SEQUENCES:
        frames = corrupt(np.loadtxt(gt_path(seq), delimiter=","), seed)
        for name, run in trackers().items():
            yield seq, name, score(seq, run(frames))


def _chart(results: list[tuple[int, str, str, dict[str, float]]], png: Path) -> bool:
    """A bar chart of mean IDF1 per tracker and sequence; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(dict.fromkeys(r[2] for r in results))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, seq in enumerate(SEQUENCES):
        vals = [np.mean([r[3]["idf1"] for r in results if r[1:3] == (seq, n)]) for n in names]
        ax.bar(np.arange(len(names)) + k * 0.4, vals, 0.4, label=seq)
    ax.set_xticks(np.arange(len(names)) + 0.2, names)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("IDF1 (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return True


def main() -> None:
    """Print the comparison as a Markdown table (and a PNG chart when matplotlib is there)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--png", type=Path, default=Path(os.path.dirname(__file__)) / "mot.png")
    args = parser.parse_args()
    results = [(seed, *r) for seed in args.seeds for r in compare(seed)]
    print("| seed | sequence | tracker | MOTA | IDF1 | ID switches |")
    print("|---|---|---|---|---|---|")
    for seed, seq, name, m in results:
        cells = f"{m['mota']:.3f} | {m['idf1']:.3f} | {m['num_switches']:.0f}"
        print(f"| {seed} | {seq} | {name} | {cells} |")
    if _chart(results, args.png):
        print(f"\nchart: {args.png}")


if __name__ == "__main__":
    main()
