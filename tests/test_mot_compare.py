"""Our tracker against ByteTrack (supervision) and norfair on MOT ground truth (bench/mot.py).

The requirement: on a fixed seed, our IDF1 at our defaults is at least the better of the two
baselines at theirs, on both TUD sequences motmetrics ships."""

from __future__ import annotations

import numpy as np
import pytest

from bench import mot

SEED = 0


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], dict[str, float]]:
    return {(seq, name): m for seq, name, m in mot.compare(SEED)}


@pytest.mark.parametrize("seq", mot.SEQUENCES)
def test_ours_at_least_the_better_baseline_on_idf1(results, seq) -> None:
    ours = results[seq, "ours (defaults)"]["idf1"]
    best = max(results[seq, n]["idf1"] for n in ("ByteTrack (supervision)", "norfair"))
    assert ours >= best, f"{seq}: ours {ours:.3f} < best baseline {best:.3f}"
    assert results[seq, "ours (defaults)"]["mota"] > 0.7


def test_corruption_is_fixed_and_damaging() -> None:
    gt = np.loadtxt(mot.gt_path("TUD-Campus"), delimiter=",")
    a, b = mot.corrupt(gt, SEED), mot.corrupt(gt, SEED)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    n = sum(len(f[2]) for f in a)
    assert 0.9 * len(gt) < n < len(gt)  # 10% dropped, 5% false added
    scores = np.concatenate([f[2] for f in a])
    assert (scores < 0.5).mean() > 0.2  # some true boxes fall below a high threshold


def test_only_headless_opencv_installed() -> None:
    from importlib import metadata

    names = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert "opencv-python-headless" in names
    assert not names & {"opencv-python", "opencv-contrib-python"}
