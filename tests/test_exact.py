"""`model.exact`: reference kernels and a bit-exact resize, for comparing runtimes and devices.

The cross-runtime and cross-architecture proofs are tests/test_legacy.py and
scripts/arm64-check.sh; here: the option reaches the interpreter and the resize, and refuses
what it cannot do."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector
from edge_agent.detect.interpreter import reference_resolver
from edge_agent.errors import ModelError
from edge_agent.preprocess import InputPlan, place
from tests.helpers import IMAGES, SSD, SSD_LABELS


def _image() -> np.ndarray:
    image = cv2.imread(str(sorted(IMAGES.glob("*.jpg"))[0]))
    assert image is not None
    return image


@pytest.mark.parametrize(
    ("exact", "flag"), [(False, cv2.INTER_LINEAR), (True, cv2.INTER_LINEAR_EXACT)]
)
@pytest.mark.parametrize("letterbox", [False, True])
def test_the_resize_follows_the_plan(exact: bool, flag: int, letterbox: bool) -> None:
    image = _image()
    plan = InputPlan(300, 300, np.dtype(np.uint8), letterbox, False, "raw", exact=exact)
    placed, transform = place(image, plan)
    h, w = image.shape[:2]
    size = (300, 300)
    if letterbox:
        ratio = min(300 / w, 300 / h)
        size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    want = cv2.resize(image, size, interpolation=flag)
    inner = placed[
        round(transform.pad_y) : round(transform.pad_y) + size[1],
        round(transform.pad_x) : round(transform.pad_x) + size[0],
    ]
    assert np.array_equal(inner, want)


def test_exact_loads_the_reference_kernels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.detect.interpreter")
    fast = Detector(ModelConfig(path=SSD, labels=SSD_LABELS), 0.3)
    exact = Detector(ModelConfig(path=SSD, labels=SSD_LABELS, exact=True), 0.3)
    assert exact.plan.exact and not fast.plan.exact
    assert "reference kernels" in caplog.text
    image = _image()
    a, _ = fast.detect_arrays(image)
    b, _ = exact.detect_arrays(image)
    # The same objects; the scores may move by a few quantization steps between kernels.
    assert len(a) > 0 and sorted(a.class_id.tolist()) == sorted(b.class_id.tolist())
    again, _ = exact.detect_arrays(image)
    assert np.array_equal(again.score, b.score) and np.array_equal(again.xyxy, b.xyxy)


def test_exact_with_an_accelerator_is_refused() -> None:
    with pytest.raises(ValidationError, match="exact runs the reference kernels on the CPU"):
        ModelConfig(path=SSD, exact=True, delegate="edgetpu")


def test_a_runtime_without_reference_kernels_is_named() -> None:
    with pytest.raises(ModelError, match="json has no reference kernels") as info:
        reference_resolver("json")  # any importable module without OpResolverType
    assert info.value.where == "model.exact"
