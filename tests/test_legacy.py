"""The `legacy` install (tflite-runtime, numpy<2) gives the detections LiteRT gives (with
`model.exact`: reference kernels in both, bit for bit).

scripts/legacy-check.sh builds (once, cached) a venv with `pip install '.[legacy]'` minus
ai-edge-litert, runs the shared images through every shared detector with it and with the
project venv over a real broker, and compares them with scripts/compare_detections.py; the
comparison rules themselves are checked on small hand-made runs first.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "legacy-check.sh"


@functools.cache
def _compare_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compare_detections", ROOT / "scripts" / "compare_detections.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _det(label: str, score: float, box: list[float]) -> dict[str, Any]:
    return {"label": label, "score": score, "box": box}


def _run(frame: list[dict[str, Any]], cap: int = 0) -> dict[str, Any]:
    return {"runtime": "r", "cap": cap, "frames": {"cam/0": frame}}


PERSON = _det("person", 0.8, [0.1, 0.1, 0.5, 0.9])
CASES = {
    # name: (frame A, frame B, cap, failures, excused counts threshold/cap/overlap/cluster)
    "identical": ([PERSON], [PERSON], 0, 0, (0, 0, 0, 0)),
    "score off": ([PERSON], [{**PERSON, "score": 0.7}], 0, 1, (0, 0, 0, 0)),
    "box off": ([PERSON], [{**PERSON, "box": [0.1, 0.1, 0.5, 0.6]}], 0, 1, (0, 0, 0, 0)),
    "corner within tolerance": (
        [_det("kite", 0.8, [0.40, 0.40, 0.41, 0.41])],
        [_det("kite", 0.8, [0.401, 0.40, 0.411, 0.41])],
        0,
        0,
        (0, 0, 0, 0),
    ),
    "other label": ([PERSON], [{**PERSON, "label": "dog"}], 0, 2, (0, 0, 0, 0)),
    "near the threshold": (
        [PERSON, _det("cat", 0.33, [0, 0, 0.1, 0.1])],
        [PERSON],
        0,
        0,
        (1, 0, 0, 0),
    ),
    "confident, missing": (
        [PERSON, _det("cat", 0.7, [0, 0, 0.1, 0.1])],
        [PERSON],
        0,
        1,
        (0, 0, 0, 0),
    ),
    "cut by the cap": ([PERSON, _det("cat", 0.5, [0, 0, 0.1, 0.1])], [PERSON], 1, 0, (0, 1, 0, 0)),
    "NMS kept another": (
        [PERSON, _det("person", 0.6, [0.1, 0.2, 0.5, 0.7])],
        [PERSON],
        0,
        0,
        (0, 0, 1, 0),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_comparison_rules(name: str) -> None:
    cmp = _compare_module()
    frame_a, frame_b, cap, failures, excused = CASES[name]
    bounds = cmp.Bounds(min_iou=0.9, score_tol=0.06, box_tol=0.002, min_score=0.3)
    tally = cmp.compare_detector(_run(frame_a, cap), _run(frame_b, cap), bounds)
    assert len(tally.failures) == failures, tally.failures
    assert tuple(tally.excused[k] for k in cmp.EXCUSES) == excused, tally.notes


@pytest.mark.slow
def test_legacy_install_gives_litert_detections_with_exact_kernels(tmp_path: Path) -> None:
    """`model.exact` (reference kernels, exact resize) in both runtimes: the same detections,
    bit for bit, on every shared image and detector (the default kernels differ by design:
    tflite-runtime 2.14 never hands int8 ops to XNNPACK, LiteRT does; see README)."""
    assert shutil.which("python3.11"), "python3.11 is needed to build the legacy venv"
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [str(SCRIPT), "--exact", "--report", str(report_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    detectors = report["detectors"]
    assert sorted(detectors) == ["blazeface", "ssd_mobilenet_v1", "yolov8n_int8"]
    for name, tally in detectors.items():
        assert tally["runtime_a"] == "ai_edge_litert.interpreter", name
        assert tally["runtime_b"] == "tflite_runtime.interpreter", name
        assert tally["frames"] == 9, name  # 5 shared images + 4 COCO8 images
        assert tally["detections_a"] == tally["detections_b"] == tally["matched"], name
        assert tally["failures"] == [], name
        assert tally["max_score_diff"] == 0.0, name
        assert sum(tally["excused"].values()) == 0, name
    assert detectors["ssd_mobilenet_v1"]["matched"] >= 40
    assert detectors["yolov8n_int8"]["matched"] >= 20
    assert detectors["blazeface"]["matched"] >= 1
