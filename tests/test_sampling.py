"""The flywheel on the device: strategies, budgets, near-duplicates, privacy (unit level, with
the real face model and the real tracker behind a camera's steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.camera.pipeline import CameraEnv, CameraPipeline
from edge_agent.config.schema import CameraConfig
from edge_agent.core.detections import Detections
from edge_agent.health import Counters
from edge_agent.publish.payloads import Topics
from edge_agent.sampling.budget import Budgets, Draw
from edge_agent.sampling.config import Budget, FaceBlur, Privacy, SamplesConfig
from edge_agent.sampling.encode import sample_message
from edge_agent.sampling.phash import Deduper, distance, phash
from edge_agent.sampling.privacy import ModelFaces, PrivacyError, PrivacyFilter
from edge_agent.types import Frame
from tests.helpers import IMAGES, MODELS, SSD, SSD_LABELS, base_config, cli, write_config

FACE_MODEL = MODELS / "blazeface_short_range" / "face_detection_short_range.tflite"
LABELS = ["person", "car", "bicycle"]
SHA = "0" * 63 + "1"


# ---- budgets: the sliding windows against the rule computed here, independently


def _reference(times: list[float], limits: list[tuple[float, int]]) -> list[bool]:
    taken: list[float] = []
    out = []
    for t in times:
        ok = all(sum(1 for x in taken if t - w < x <= t) < n for w, n in limits)
        if ok:
            taken.append(t)
        out.append(ok)
    return out


@pytest.mark.parametrize(
    "budget",
    [
        Budget(per_minute=3),
        Budget(per_hour=10),
        Budget(per_minute=2, per_hour=7),
        Budget(per_minute=5, per_hour=20, per_day=30),
        Budget(),
    ],
    ids=["minute", "hour", "minute+hour", "all-three", "none"],
)
def test_budgets_equal_the_sliding_window_rule(budget: Budget) -> None:
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.exponential(20.0, 3000)).tolist()  # ~17 hours of candidates
    budgets = Budgets(budget)
    got = []
    for t in times:
        ok = budgets.allows(t)
        if ok:
            budgets.take(t)
        got.append(ok)
    assert got == _reference(times, budget.limits())


def test_random_draw_is_seeded_by_camera() -> None:
    def draws(camera: str) -> list[bool]:
        draw = Draw(camera, 0.1)
        return [draw() for _ in range(2000)]

    a = draws("gate")
    assert a == draws("gate") and 150 < sum(a) < 250
    assert a != draws("lobby")


# ---- perceptual hash and de-duplication


def _image(name: str) -> np.ndarray:
    image = cv2.imread(str(IMAGES / name))
    assert image is not None
    return image


def test_phash_survives_jpeg_and_scaling_and_tells_scenes_apart() -> None:
    names = ["bus.jpg", "zidane.jpg", "grace_hopper.bmp", "kite_and_cold.jpg", "cat.bmp"]
    hashes = {n: phash(_image(n)) for n in names}
    for n in names:
        image = _image(n)
        _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])
        again = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        small = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        assert distance(hashes[n], phash(again)) <= 4, n
        assert distance(hashes[n], phash(small)) <= 4, n
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    assert min(distance(hashes[a], hashes[b]) for a, b in pairs) > 12


def test_dedup_window_in_frame_time() -> None:
    d = Deduper(SamplesConfig().dedup.model_copy(update={"window": 60.0, "max_distance": 2}))
    d.add(0b1111, 0.0)
    assert d.duplicate(0b1100, 30.0)  # 2 bits apart, 30 s later
    assert not d.duplicate(0b0000, 30.0)  # 4 bits apart
    assert not d.duplicate(0b1111, 60.0)  # the window has passed


# ---- config: the first release's keys, defaults, errors


def test_legacy_keys_are_the_low_confidence_strategy() -> None:
    cfg = SamplesConfig.model_validate(
        {"enabled": True, "min_score": 0.2, "max_score": 0.6, "max_per_minute": 3}
    )
    low = cfg.strategies.low_confidence
    assert low is not None and (low.min_score, low.max_score, low.per_minute) == (0.2, 0.6, 3)
    assert SamplesConfig(enabled=True).strategies.enabled() == ["low_confidence"]
    assert cfg.needs_floor == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ({"min_score": 0.2, "strategies": {}}, "not both"),
        ({"strategies": {"low_confidence": {"min_score": 0.5, "max_score": 0.4}}}, "below"),
        ({"strategies": {"random": {"probability": 0}}}, "greater than 0"),
        ({"privacy": {"masks": [[[0, 0], [2, 0], [0, 1]]]}}, "normalized"),
        ({"privacy": {"mode": "thumbnails"}}, "full"),
        ({"strategies": {"rare_class": {"labels": []}}}, "at least 1"),
        ({"dedup": {"max_distance": 65}}, "less than or equal to 64"),
    ],
)
def test_bad_samples_config(samples: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SamplesConfig.model_validate({"enabled": True, **samples})


# ---- privacy, with the real BlazeFace model


@pytest.fixture(scope="module")
def faces() -> ModelFaces:
    return ModelFaces(FaceBlur(model=FACE_MODEL))


def _region(image: np.ndarray, box: np.ndarray, shrink: float = 0.2) -> np.ndarray:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * shrink, (y2 - y1) * shrink
    return image[int((y1 + dy) * h) : int((y2 - dy) * h), int((x1 + dx) * w) : int((x2 - dx) * w)]


def _detail(pixels: np.ndarray) -> float:
    """Variance of the Laplacian: the fine detail a face is recognised by."""
    grey = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@pytest.mark.parametrize(
    ("name", "people"),
    [
        ("grace_hopper.bmp", []),  # one large face: found on the whole frame
        # small faces: found in the head area of the person boxes (SSD boxes, rounded)
        ("zidane.jpg", [[0.09, 0.21, 0.54, 1.0], [0.59, 0.01, 0.86, 0.5]]),
        ("bus.jpg", [[0.06, 0.34, 0.27, 0.9], [0.26, 0.35, 0.44, 0.9]]),
    ],
)
def test_faces_found_are_blurred(faces: ModelFaces, name: str, people: list[list[float]]) -> None:
    image = _image(name)
    heads = np.array(people, np.float32).reshape(-1, 4)
    cfg = Privacy(blur_faces=FaceBlur(model=FACE_MODEL))
    out = PrivacyFilter(cfg, faces).apply(image, heads, np.ones(len(heads), np.float32), [], heads)
    assert out.image is not None and out.faces >= max(1, len(people))
    found = PrivacyFilter(cfg, faces)._faces(image, heads)
    assert len(found) == out.faces
    for box in found:  # every face the model finds on the unblurred frame
        before, after = _region(image, box), _region(out.image, box)
        assert _detail(after) < 0.05 * _detail(before), (name, box)
        grey_before = cv2.cvtColor(before, cv2.COLOR_BGR2GRAY).std()
        grey_after = cv2.cvtColor(after, cv2.COLOR_BGR2GRAY).std()
        assert grey_after < 0.5 * grey_before, (name, box, grey_before, grey_after)
    assert not np.shares_memory(out.image, image)
    assert np.array_equal(image, _image(name))  # the captured frame is never changed


def test_masks_are_black_and_crops_hold_only_the_padded_boxes() -> None:
    image = _image("bus.jpg")
    h, w = image.shape[:2]
    mask = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.3), (0.0, 0.3)]
    boxes = np.array([[0.1, 0.4, 0.3, 0.9], [0.6, 0.5, 0.9, 0.8]], np.float32)
    scores = np.array([0.9, 0.6], np.float32)
    full = PrivacyFilter(Privacy(masks=[mask]), None).apply(image, boxes, scores, [4, None])
    assert full.image is not None and full.masks == 1
    assert not full.image[: int(0.3 * h) - 1, : int(0.5 * w) - 1].any()
    assert np.array_equal(full.image[int(0.3 * h) + 1 :], image[int(0.3 * h) + 1 :])
    crops = PrivacyFilter(Privacy(mode="crops", padding=0.1), None).apply(
        image, boxes, scores, [4, None]
    )
    assert crops.image is None and [c[1] for c in crops.crops] == [4, None]
    for (x1, y1, x2, y2), _, pixels in crops.crops:
        px = (round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h))
        assert np.array_equal(pixels, image[px[1] : px[3], px[0] : px[2]])
    for box, (region, _, _) in zip(boxes, crops.crops, strict=True):
        bw, bh = box[2] - box[0], box[3] - box[1]
        padded = [box[0] - 0.1 * bw, box[1] - 0.1 * bh, box[2] + 0.1 * bw, box[3] + 0.1 * bh]
        assert np.allclose(region, np.clip(padded, 0, 1), atol=1.5 / min(w, h))


class _BrokenFaces:
    """A face finder whose interpreter fails (as a corrupt or missing delegate would)."""

    def find(self, image: np.ndarray) -> np.ndarray:
        raise RuntimeError("Invoke failed: tensor arena exhausted")


def test_face_model_failure_drops_the_sample() -> None:
    cfg = Privacy(blur_faces=FaceBlur(model=FACE_MODEL))
    image = _image("grace_hopper.bmp")
    with pytest.raises(PrivacyError, match="face model failed"):
        PrivacyFilter(cfg, _BrokenFaces()).apply(image, np.zeros((0, 4), np.float32), [], [])


# ---- strategies behind a camera's steps, with the real tracker


def _camera(tmp: Path, samples: dict[str, Any], classify: bool = False) -> CameraConfig:
    return CameraConfig.model_validate(
        {
            "source": {"type": "images", "path": str(tmp)},
            "track": {"enabled": True},
            "objects": {"person": {"min_score": 0.5}, "car": {}, "bicycle": {}},
            "samples": {"enabled": True, "dedup": {"enabled": False}, **samples},
            "events": {"publish_detections": False},
        }
    )


def _run(cam: CameraConfig, frames: list[list[tuple[int, float, float]]]) -> tuple[list, Counters]:
    """Feed frames of (class id, score, x) boxes at 10 fps; the sample jobs in order."""
    counters = Counters()
    env = CameraEnv("dev", "m.tflite", LABELS, Topics("edge", "dev"), 1, counters, SHA)
    pipeline = CameraPipeline("cam", cam, env, None)
    rng = np.random.default_rng(3)
    jobs = []
    empty: list[tuple[int, float, float]] = []
    for i, boxes in enumerate([*frames, *[empty] * 40]):  # then 4 s of nothing: tracks end
        image = rng.integers(0, 255, (48, 64, 3), np.uint8)  # no two frames alike
        raw = Detections(
            np.array([[x, 0.3, x + 0.2, 0.8] for _, _, x in boxes], np.float32).reshape(-1, 4),
            np.array([s for _, s, _ in boxes], np.float32),
            np.array([c for c, _, _ in boxes], np.int64),
        )
        ctx = pipeline.process(Frame("cam", i, 1000.0 + i / 10, image), raw, 1.0)
        jobs += ctx.samples
    return jobs, counters


def _bodies(jobs: list) -> list[dict[str, Any]]:
    topics = Topics("edge", "dev")
    return [json.loads(sample_message(topics, j).payload) for j in jobs]


TRACK_CASES = [
    # (name, strategies, frames, expected reasons per sample, track ids sampled)
    (
        "false positive: 20 frames at 0.6, median below the 0.7 threshold",
        {"false_positive_track": {}},
        [[(1, 0.6, 0.1)]] * 20,
        [["false_positive_track"]],
    ),
    (
        "short: 5 frames, too few to confirm",
        {"short_track": {}, "false_positive_track": {}},
        [[(1, 0.9, 0.1)]] * 5,
        [["short_track"]],
    ),
    (
        "confirmed track: no track-level sample",
        {"short_track": {}, "false_positive_track": {}},
        [[(1, 0.9, 0.1)]] * 30,
        [],
    ),
    (
        "label flip: car then bicycle, sampled once",
        {"label_flip": {}},
        [[(1, 0.9, 0.1)]] * 12 + [[(2, 0.95, 0.1)]] * 30,
        [["label_flip"]],
    ),
    (
        "rare class once per track",
        {"rare_class": {"labels": ["bicycle"]}},
        [[(2, 0.9, 0.1)]] * 40,
        [["rare_class"]],
    ),
]


@pytest.mark.parametrize(
    ("strategies", "frames", "reasons"),
    [c[1:] for c in TRACK_CASES],
    ids=[c[0] for c in TRACK_CASES],
)
def test_track_level_strategies(
    tmp_path: Path, strategies: dict[str, Any], frames: list, reasons: list[list[str]]
) -> None:
    jobs, _ = _run(_camera(tmp_path, {"strategies": strategies}), frames)
    bodies = _bodies(jobs)
    assert [b["reasons"] for b in bodies] == reasons
    for body in bodies:
        assert body["track"]["id"] >= 1 and body["v"] == 2
        # a track-level sample is one of the track's frames, with its box in the detections
        assert body["track"]["start_frame"] <= body["frame"] <= body["track"]["end_frame"]
        assert any(d.get("tracker_id") == body["track"]["id"] for d in body["detections"])


def test_budgets_and_skips_are_counted_by_reason(tmp_path: Path) -> None:
    strategies = {"low_confidence": {"per_minute": 2}, "random": {"probability": 1.0}}
    cam = _camera(tmp_path, {"strategies": strategies, "budget": {"per_minute": 3}})
    frames = [[(0, 0.4, 0.1)]] * 10
    jobs, counters = _run(cam, frames)
    bodies = _bodies(jobs)
    # frame 0: both reasons; frame 1: both; frame 2: random only (low_confidence spent);
    # then the camera's 3 per minute are spent.
    assert [b["reasons"] for b in bodies] == [
        ["low_confidence", "random"],
        ["low_confidence", "random"],
        ["random"],
    ]
    assert counters.get("samples.skipped.budget_low_confidence.cam") == 8
    assert counters.get("samples.skipped.budget_camera.cam") >= 7


@pytest.mark.parametrize(
    ("camera", "message"),
    [
        (
            {"track": {"enabled": False}, "samples": {"strategies": {"label_flip": {}}}},
            "label_flip sample tracks",
        ),
        (
            {
                "track": {"enabled": False},
                "samples": {"strategies": {"short_track": {}, "false_positive_track": {}}},
            },
            "false_positive_track, short_track sample tracks",
        ),
        ({"samples": {"strategies": {"disagreement": {}}}}, "it needs `classify:`"),
    ],
)
def test_strategies_name_what_they_need(camera: dict[str, Any], message: str) -> None:
    camera["samples"]["enabled"] = True
    with pytest.raises(ValidationError, match=message):
        CameraConfig.model_validate({"source": {"type": "images", "path": "/x"}, **camera})


def test_rare_class_label_unknown_to_the_model_is_located(tmp_path: Path) -> None:
    cfg = base_config(
        1883,
        SSD,
        SSD_LABELS,
        {
            "door": {
                "source": {"type": "images", "path": str(IMAGES)},
                "samples": {"enabled": True, "strategies": {"rare_class": {"labels": ["bycicle"]}}},
            }
        },
    )
    proc = cli("run", "--config", str(write_config(tmp_path, cfg)))
    assert proc.returncode == 2
    assert "samples.strategies.rare_class.labels[0]" in proc.stderr or (
        "rare_class" in proc.stderr and "labels" in proc.stderr
    )
    assert "did you mean 'bicycle'" in proc.stderr and "Traceback" not in proc.stderr


# ---- disagreement: the real (generated) colour classifier against the detector's label

COLOURS = ["reddish", "greenish", "bluish"]


@pytest.mark.parametrize(
    ("pixel", "label", "sampled"),
    [
        ((0, 0, 220), 0, False),  # red box labelled reddish: they agree
        ((0, 220, 0), 0, True),  # green box labelled reddish: the classifier says greenish
        ((120, 120, 120), 0, True),  # grey: the classifier is unsure (1/3 each < 0.5)
    ],
    ids=["agree", "other-label", "unsure"],
)
def test_disagreement_once_per_track(
    tmp_path: Path, pixel: tuple[int, int, int], label: int, sampled: bool
) -> None:
    from edge_agent.detect.classifier import Classifier
    from tests.tflite_builder import colour_classifier

    model = colour_classifier(tmp_path / "colour.tflite", size=16)
    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    cam = CameraConfig.model_validate(
        {
            "source": {"type": "images", "path": str(tmp_path)},
            "track": {"enabled": True},
            "classify": {"model": str(model), "labels": str(tmp_path / "colours.txt")},
            "samples": {"enabled": True, "strategies": {"disagreement": {"min_score": 0.5}}},
            "events": {"publish_detections": False},
        }
    )
    assert cam.classify is not None
    counters = Counters()
    env = CameraEnv("dev", "m.tflite", COLOURS, Topics("edge", "dev"), 1, counters, SHA)
    pipeline = CameraPipeline("cam", cam, env, Classifier(cam.classify))
    image = np.full((60, 80, 3), pixel, np.uint8)
    jobs = []
    for i in range(150):  # 15 s: the classifier runs again after its 10 s refresh
        raw = Detections(
            np.array([[0.2, 0.2, 0.6, 0.8]], np.float32),
            np.array([0.9], np.float32),
            np.array([label], np.int64),
        )
        jobs += pipeline.process(Frame("cam", i, 1000.0 + i / 10, image), raw, 1.0).samples
    bodies = _bodies(jobs)
    assert [b["reasons"] for b in bodies] == ([["disagreement"]] if sampled else [])
    assert counters.get("classify.runs.cam") == 2
    for body in bodies:
        assert body["track"]["label"] == "reddish" and body["track"]["id"] >= 1


def test_check_config_shows_the_strategies_form_of_the_first_release_keys(tmp_path: Path) -> None:
    cfg = base_config(
        1883,
        SSD,
        SSD_LABELS,
        {
            "door": {
                "source": {"type": "images", "path": str(IMAGES)},
                "samples": {"enabled": True, "min_score": 0.25, "max_per_minute": 3},
            }
        },
    )
    proc = cli("check-config", str(write_config(tmp_path, cfg)))
    assert proc.returncode == 0, proc.stderr
    assert "samples.min_score: `min_score`, `max_per_minute` are the earlier form" in proc.stdout
    assert "low_confidence: {per_minute: 3, min_score: 0.25, max_score: 0.5}" in proc.stdout


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (
            {"frame": 3, "reasons": ["label_flip", "random"], "image": {},
             "detections": [{"label": "car", "score": 0.41}]},
            "t frame 3: car 0.41 [label_flip, random; jpeg]",
        ),
        (
            {"frame": 4, "reasons": ["low_confidence"], "crops": [{}, {}], "detections": []},
            "t frame 4: - [low_confidence; 2 crops]",
        ),
    ],
)  # fmt: skip
def test_watch_shows_why_a_sample_was_sent(body: dict[str, Any], line: str) -> None:
    from edge_agent.watch import summarize

    assert summarize("t", json.dumps(body).encode()) == line
