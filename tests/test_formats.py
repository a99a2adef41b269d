"""Format logic on golden tensors: other input sizes, quantization, output orders and layouts.

A model exported at another size or with other quantization must work with no code change.
These tests build the interpreter's outputs by hand (a known box and score encoded the way
each family encodes them) and check the Detector recovers them with `format: auto`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config.schema import ModelConfig
from edge_agent.detect.detector import Detector
from edge_agent.detect.interpreter import LoadedModel, TensorSpec
from edge_agent.errors import ModelError

FRAME = np.zeros((480, 640, 3), np.uint8)  # 4:3 frame: letterboxed into square inputs


class GoldenInterpreter:
    """Returns fixed output tensors; records the input it was given."""

    def __init__(self, outputs: dict[int, np.ndarray]) -> None:
        self.outputs = outputs
        self.input: np.ndarray | None = None

    def allocate_tensors(self) -> None:
        pass

    def get_input_details(self) -> list[dict[str, Any]]:
        return []

    def get_output_details(self) -> list[dict[str, Any]]:
        return []

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self.input = value

    def invoke(self) -> None:
        pass

    def get_tensor(self, index: int) -> np.ndarray:
        return self.outputs[index]


def _spec(
    index: int, shape: tuple[int, ...], dtype: Any, scale: float = 0.0, zp: int = 0, name: str = ""
) -> TensorSpec:
    return TensorSpec(name or f"t{index}", index, shape, np.dtype(dtype), scale, zp)


def _model(inp: TensorSpec, outs: list[tuple[TensorSpec, np.ndarray]]) -> LoadedModel:
    interp = GoldenInterpreter({spec.index: arr for spec, arr in outs})
    return LoadedModel(interp, "golden", [inp], [s for s, _ in outs], [], {})


def _labels(tmp: Path, n: int) -> Path:
    path = tmp / "labels.txt"
    path.write_text("\n".join(f"c{i}" for i in range(n)))
    return path


def _letterboxed(box: tuple[float, float, float, float], size: int) -> tuple[float, ...]:
    """Where a frame-normalized box of the 640x480 frame lands in a square input (0..1)."""
    r = size / 640
    pad_y = (size - round(480 * r)) // 2
    x1, y1, x2, y2 = box
    return (
        x1 * 640 * r / size,
        (y1 * 480 * r + pad_y) / size,
        x2 * 640 * r / size,
        (y2 * 480 * r + pad_y) / size,
    )


def _quantize(values: np.ndarray, scale: float, zp: int, dtype: Any) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zp), info.min, info.max).astype(dtype)


TARGET = (0.25, 0.30, 0.55, 0.80)  # frame-normalized box the golden tensors encode


def _yolov8_output(size: int, classes: int, cls: int, score: float, pixels: bool) -> np.ndarray:
    n = (size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2
    out = np.zeros((1, 4 + classes, n), np.float32)
    x1, y1, x2, y2 = _letterboxed(TARGET, size)
    box = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], np.float32)
    out[0, :4, n // 3] = box * (size if pixels else 1)
    out[0, 4 + cls, n // 3] = score
    return out


YOLOV8_CASES = [
    # (input size, input dtype, output dtype/quant, classes, box in pixels)
    (320, np.int8, (np.int8, 0.0041, -120), 80, False),
    (416, np.uint8, (np.uint8, 0.0039, 3), 20, False),
    (256, np.float32, (np.float32, 0.0, 0), 3, True),
    (640, np.int8, (np.int8, 0.0039063, -128), 80, False),
]


@pytest.mark.parametrize(("size", "in_dtype", "out_q", "classes", "pixels"), YOLOV8_CASES)
def test_yolov8_any_size_and_quantization(
    tmp_path: Path,
    size: int,
    in_dtype: Any,
    out_q: tuple[Any, float, int],
    classes: int,
    pixels: bool,
) -> None:
    dtype, scale, zp = out_q
    raw = _yolov8_output(size, classes, cls=classes - 1, score=0.9, pixels=pixels)
    data = _quantize(raw, scale, zp, dtype) if scale else raw
    out = _spec(1, data.shape, dtype, scale, zp)
    inp = _spec(
        0,
        (1, size, size, 3),
        in_dtype,
        1 / 255 if in_dtype != np.float32 else 0.0,
        -128 if in_dtype == np.int8 else 0,
    )
    cfg = ModelConfig(path=tmp_path / "m.tflite", labels=_labels(tmp_path, classes))
    det = Detector(cfg, 0.5, model=_model(inp, [(out, data)]))
    assert det.family == "yolov8" and det.plan.letterbox
    dets, _ = det.detect(FRAME)
    assert len(dets) == 1
    assert dets[0].label == f"c{classes - 1}"
    assert dets[0].score == pytest.approx(0.9, abs=scale or 1e-6)
    assert dets[0].box == pytest.approx(TARGET, abs=0.01)
    fed = det.model.interpreter.input  # type: ignore[attr-defined]
    assert fed.shape == (1, size, size, 3) and fed.dtype == in_dtype


@pytest.mark.parametrize("size", [320, 512])
def test_yolov5_any_size(tmp_path: Path, size: int) -> None:
    n = 3 * ((size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2)
    raw = np.zeros((1, n, 85), np.float32)
    x1, y1, x2, y2 = _letterboxed(TARGET, size)
    raw[0, 7, :4] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    raw[0, 7, 4] = 0.95  # objectness
    raw[0, 7, 5 + 16] = 0.8  # class 16
    scale, zp = 0.0045, 3
    data = _quantize(raw, scale, zp, np.uint8)
    cfg = ModelConfig(path=tmp_path / "m.tflite", labels=_labels(tmp_path, 80))
    det = Detector(
        cfg,
        0.5,
        model=_model(
            _spec(0, (1, size, size, 3), np.uint8, 1 / 255, 0),
            [(_spec(1, data.shape, np.uint8, scale, zp), data)],
        ),
    )
    assert det.family == "yolov5"
    dets, _ = det.detect(FRAME)
    assert [d.label for d in dets] == ["c16"]
    assert dets[0].score == pytest.approx(0.95 * 0.8, abs=0.01)
    assert dets[0].box == pytest.approx(TARGET, abs=0.01)


def _ssd_outputs(order: list[str]) -> list[tuple[TensorSpec, np.ndarray]]:
    k = 7
    arrays = {
        "boxes": np.zeros((1, k, 4), np.float32),
        "classes": np.zeros((1, k), np.float32),
        "scores": np.zeros((1, k), np.float32),
        "count": np.array([2.0], np.float32),
    }
    x1, y1, x2, y2 = TARGET
    arrays["boxes"][0, 0] = [y1, x1, y2, x2]
    arrays["boxes"][0, 1] = [0.1, 0.1, 0.2, 0.2]
    arrays["classes"][0, :2] = [17, 0]
    arrays["scores"][0, :2] = [0.81, 0.62]
    return [
        (
            _spec(i, arrays[name].shape, np.float32, name=f"StatefulPartitionedCall:{i}"),
            arrays[name],
        )
        for i, name in enumerate(order)
    ]


@pytest.mark.parametrize(
    "order",
    [
        ["boxes", "classes", "scores", "count"],  # TF1 export order
        ["scores", "boxes", "count", "classes"],  # TF2 export order
        ["count", "scores", "classes", "boxes"],
    ],
)
@pytest.mark.parametrize(("size", "labels_with_background"), [(300, True), (320, False)])
def test_ssd_outputs_told_apart_by_shape_and_content(
    tmp_path: Path, order: list[str], size: int, labels_with_background: bool
) -> None:
    names = [f"c{i}" for i in range(90)]
    (tmp_path / "labels.txt").write_text(
        "\n".join((["???"] if labels_with_background else []) + names)
    )
    cfg = ModelConfig(path=tmp_path / "m.tflite", labels=tmp_path / "labels.txt")
    inp = _spec(0, (1, size, size, 3), np.uint8, 0.0078125, 128)
    det = Detector(cfg, 0.5, model=_model(inp, _ssd_outputs(order)))
    assert det.family == "ssd" and not det.plan.letterbox
    dets, _ = det.detect(FRAME)
    assert [(d.label, round(d.score, 2)) for d in dets] == [("c17", 0.81), ("c0", 0.62)]
    assert dets[0].box == pytest.approx(TARGET, abs=1e-5)


@pytest.mark.parametrize(
    ("size", "strides", "per_layer"),
    [
        (128, [8, 16, 16, 16], 2),
        (256, [16, 32, 32, 32], 2),
        (192, [8, 16], 1),
    ],
)
def test_anchor_model_grid_from_config(
    tmp_path: Path, size: int, strides: list[int], per_layer: int
) -> None:
    from edge_agent.detect.anchors import ssd_anchors

    centres = ssd_anchors(strides, per_layer, size, size)
    n = len(centres)
    reg = np.zeros((1, n, 16), np.float32)
    logits = np.full((1, n, 1), -10.0, np.float32)
    i = int(np.argmin(np.abs(centres - 0.5).sum(axis=1)))  # an anchor near the middle
    # A box centred 5 input pixels right of anchor i, 40x30 pixels, eyes 8 px either side.
    reg[0, i, :4] = [5, 0, 40, 30]
    reg[0, i, 4:8] = [5 - 8, -4, 5 + 8, -4]
    logits[0, i, 0] = 3.0
    (tmp_path / "labels.txt").write_text("face\n")
    cfg = ModelConfig.model_validate(
        {
            "path": str(tmp_path / "m.tflite"),
            "labels": str(tmp_path / "labels.txt"),
            "anchors": {"strides": strides, "anchors_per_layer": per_layer},
        }
    )
    outs = [
        (_spec(1, reg.shape, np.float32, name="regressors"), reg),
        (_spec(2, logits.shape, np.float32, name="classificators"), logits),
    ]
    det = Detector(cfg, 0.5, model=_model(_spec(0, (1, size, size, 3), np.float32), outs))
    assert det.family == "blazeface" and det.plan.normalize == "-1..1"
    square = np.zeros((size * 2, size * 2, 3), np.uint8)  # square frame: no letterbox bars
    dets, _ = det.detect(square)
    assert len(dets) == 1 and dets[0].score == pytest.approx(1 / (1 + np.exp(-3.0)))
    cx, cy = centres[i][0] + 5 / size, centres[i][1]
    assert dets[0].box == pytest.approx(
        (cx - 20 / size, cy - 15 / size, cx + 20 / size, cy + 15 / size), abs=1e-5
    )
    assert dets[0].keypoints[0] == pytest.approx(
        (centres[i][0] - 3 / size, cy - 4 / size), abs=1e-5
    )


def test_anchor_count_mismatch_is_explained(tmp_path: Path) -> None:
    outs = [
        (_spec(1, (1, 100, 16), np.float32), np.zeros((1, 100, 16), np.float32)),
        (_spec(2, (1, 100, 1), np.float32), np.zeros((1, 100, 1), np.float32)),
    ]
    cfg = ModelConfig(path=tmp_path / "m.tflite")
    with pytest.raises(ModelError, match=r"give 896 anchors but the model has 100"):
        Detector(cfg, 0.5, model=_model(_spec(0, (1, 128, 128, 3), np.float32), outs))


@pytest.mark.parametrize(
    "shapes",
    [
        [(1, 1000)],
        [(1, 10, 4), (1, 10)],
        [(1, 7, 7, 512)],
    ],
)
def test_unsupported_signature_names_shapes_and_formats(
    tmp_path: Path, shapes: list[tuple[int, ...]]
) -> None:
    outs = [(_spec(i + 1, s, np.float32), np.zeros(s, np.float32)) for i, s in enumerate(shapes)]
    cfg = ModelConfig(path=tmp_path / "m.tflite")
    with pytest.raises(ModelError) as info:
        Detector(cfg, 0.5, model=_model(_spec(0, (1, 224, 224, 3), np.float32), outs))
    text = str(info.value)
    assert "unsupported output signature" in text
    for shape in shapes:
        assert "x".join(str(d) for d in shape) in text
    for family in ("ssd", "yolov8", "yolov5", "blazeface"):
        assert family in text


def test_forced_format_that_does_not_fit(tmp_path: Path) -> None:
    data = np.zeros((1, 84, 2100), np.float32)
    cfg = ModelConfig(path=tmp_path / "m.tflite", format="ssd")
    with pytest.raises(ModelError, match=r"format 'ssd' does not fit the outputs \(.*1x84x2100"):
        Detector(
            cfg,
            0.5,
            model=_model(
                _spec(0, (1, 320, 320, 3), np.float32), [(_spec(1, data.shape, np.float32), data)]
            ),
        )


def test_anchor_model_with_quantized_outputs(tmp_path: Path) -> None:
    from edge_agent.detect.anchors import ssd_anchors

    centres = ssd_anchors([8, 16, 16, 16], 2, 128, 128)
    n = len(centres)
    i = int(np.argmin(np.abs(centres - 0.5).sum(axis=1)))
    reg = np.zeros((1, n, 16), np.float32)
    reg[0, i, :4] = [4, -2, 32, 24]
    logits = np.full((1, n, 1), -8.0, np.float32)
    logits[0, i, 0] = 2.0
    reg_q = _quantize(reg, 0.5, 0, np.int8)
    log_q = _quantize(logits, 0.1, 20, np.int8)
    outs = [
        (_spec(1, reg.shape, np.int8, 0.5, 0), reg_q),
        (_spec(2, logits.shape, np.int8, 0.1, 20), log_q),
    ]
    (tmp_path / "labels.txt").write_text("face\n")
    cfg = ModelConfig(path=tmp_path / "m.tflite", labels=tmp_path / "labels.txt")
    det = Detector(cfg, 0.5, model=_model(_spec(0, (1, 128, 128, 3), np.uint8, 1 / 128, 128), outs))
    assert det.plan.normalize == "raw"  # integer input: the quantization carries the scaling
    dets, _ = det.detect(np.zeros((256, 256, 3), np.uint8))
    assert len(dets) == 1 and dets[0].score == pytest.approx(1 / (1 + np.exp(-2.0)), abs=0.01)
    cx, cy = centres[i][0] + 4 / 128, centres[i][1] - 2 / 128
    assert dets[0].box == pytest.approx(
        (cx - 16 / 128, cy - 12 / 128, cx + 16 / 128, cy + 12 / 128), abs=1e-4
    )


@pytest.mark.parametrize(
    ("mean", "std", "expected"),
    [
        ([127.5], [127.5], ((127.5,) * 3, (127.5,) * 3)),
        (
            [123.675, 116.28, 103.53],
            [58.395, 57.12, 57.375],
            ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
        ),
    ],
)
def test_float_normalization_read_from_model_metadata(
    tmp_path: Path,
    mean: list[float],
    std: list[float],
    expected: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    from edge_agent.detect.metadata import read_normalization
    from tests.tflite_builder import colour_classifier, normalization_metadata

    path = colour_classifier(tmp_path / "m.tflite", metadata=normalization_metadata(mean, std))
    got = read_normalization(path)
    assert got is not None
    assert got[0] == pytest.approx(expected[0]) and got[1] == pytest.approx(expected[1])
    # The interpreter still loads the model with metadata attached.
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_path=str(path)).allocate_tensors()
    # A detector whose float input has no explicit normalize takes the metadata's values.
    raw = _yolov8_output(256, 3, cls=1, score=0.9, pixels=False)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    det = Detector(
        ModelConfig(path=path, labels=tmp_path / "labels.txt"),
        0.5,
        model=_model(
            _spec(0, (1, 256, 256, 3), np.float32), [(_spec(1, raw.shape, np.float32), raw)]
        ),
    )
    assert det.plan.normalize == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    det.detect(FRAME)
    fed = det.model.interpreter.input  # type: ignore[attr-defined]
    pad = (256 - 192) // 2  # 640x480 letterboxed into 256: rows above the image are padding
    mid = fed[0, pad + 10, 10]
    assert mid == pytest.approx(
        (np.zeros(3) - np.array(expected[0])) / np.array(expected[1]), abs=1e-4
    )


def test_model_without_metadata_uses_family_convention(tmp_path: Path) -> None:
    from edge_agent.detect.metadata import read_normalization
    from tests.tflite_builder import colour_classifier

    assert read_normalization(colour_classifier(tmp_path / "m.tflite")) is None
    assert read_normalization(tmp_path / "absent.tflite") is None
