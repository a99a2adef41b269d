"""Samples end to end through the real agent and broker: budgets and de-duplication on a
controlled stream equal the rule computed here; on the shared person video, de-duplication
leaves no two samples within the distance inside the window."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from scipy.fft import dctn

from tests.helpers import IMAGES, SSD, SSD_LABELS, VIDEO, Broker, base_config, run_to_end
from tests.test_sampling import FACE_MODEL, _detail

BASE = ["bus.jpg", "zidane.jpg", "grace_hopper.bmp", "kite_and_cold.jpg"]
# Which base image each frame shows: runs of one scene (near-duplicates) and returns to it.
PATTERN = [0] * 6 + [1] * 5 + [0] * 3 + [2] * 8 + [3] * 4 + [1] * 10 + [2, 3] * 12 + [0] * 8
FPS = 0.5  # frame i has ts = start + 2 i: 69 frames span 138 s
PER_MINUTE, PER_HOUR, WINDOW, DISTANCE = 4, 7, 30.0, 6


def independent_hash(image: np.ndarray) -> int:
    """The samples' perceptual hash, computed here with scipy's DCT (not the agent's code):
    32x32 grey (area), sign of the 8x8 lowest frequencies against their median without DC."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    low = dctn(small, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def expected(hashes: list[int]) -> tuple[list[int], dict[str, int]]:
    """The frames the rule samples, and the skips by reason: every frame is a candidate
    (random, probability 1); its strategy allows PER_MINUTE in any 60 s, the camera PER_HOUR
    in any hour; then a frame within DISTANCE bits of a sample of the last WINDOW s is a
    duplicate. Only a sample that passes all three spends budget."""
    taken: list[tuple[float, int]] = []
    frames, skips = [], {"budget_random": 0, "budget_camera": 0, "duplicate": 0}
    for i, h in enumerate(hashes):
        ts = i / FPS
        if sum(1 for t, _ in taken if ts - 60 < t <= ts) >= PER_MINUTE:
            skips["budget_random"] += 1
        elif sum(1 for t, _ in taken if ts - 3600 < t <= ts) >= PER_HOUR:
            skips["budget_camera"] += 1
        elif any(ts - WINDOW < t <= ts and (h ^ g).bit_count() <= DISTANCE for t, g in taken):
            skips["duplicate"] += 1
        else:
            taken.append((ts, h))
            frames.append(i)
    return frames, skips


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("stream")
    bases = [cv2.resize(cv2.imread(str(IMAGES / n)), (640, 480)) for n in BASE]
    frames = []
    for i, b in enumerate(PATTERN):
        # the same scene with a little sensor noise: never byte-identical, near-duplicate
        noise = np.random.default_rng(i).integers(-6, 7, bases[b].shape)
        frame = np.clip(bases[b].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
        frames.append(frame)
    return folder, frames


def test_budgets_and_dedup_equal_the_rule(
    broker: Broker, tmp_path: Path, stream: tuple[Path, list[np.ndarray]]
) -> None:
    folder, frames = stream
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "door": {
                "source": {"type": "images", "path": str(folder), "fps": FPS},
                "motion": {"enabled": False},
                "samples": {
                    "enabled": True,
                    "strategies": {"random": {"probability": 1.0, "per_minute": PER_MINUTE}},
                    "budget": {"per_hour": PER_HOUR},
                    "dedup": {"max_distance": DISTANCE, "window": f"{WINDOW:g}s"},
                    "max_side": 320,
                },
            }
        },
    )
    cfg["device_id"] = "sampling-rule"
    run = run_to_end(broker.port, tmp_path, cfg)
    hashes = [independent_hash(f) for f in frames]
    want, skips = expected(hashes)
    samples = sorted(run.bodies("/door/samples"), key=lambda b: b["frame"])
    assert [s["frame"] for s in samples] == want
    assert skips["duplicate"] > 3 and skips["budget_random"] > 3  # the stream tests both
    counters = run.counters
    for reason, count in skips.items():
        assert counters.get(f"samples.skipped.{reason}.door", 0) == count, reason
    assert counters.get("samples.published.door") == len(want)
    for s in samples:
        assert s["reasons"] == ["random"] and s["v"] == 2
        assert (int(s["phash"], 16) ^ hashes[s["frame"]]).bit_count() <= 1  # same definition
        data = base64.b64decode(s["image"]["data"])
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert (image.shape[1], image.shape[0]) == (s["image"]["width"], s["image"]["height"])
        assert (s["image"]["width"], s["image"]["height"]) == (320, 240)


STRATEGIES: dict[str, Any] = {
    "low_confidence": {"min_score": 0.3, "max_score": 0.5, "per_minute": 6},
    "false_positive_track": {"per_hour": 20},
    "short_track": {"per_hour": 20},
    "label_flip": {"per_hour": 20},
    "random": {"probability": 0.01, "per_hour": 20},
}


@pytest.mark.slow
def test_person_video_dedup_on_and_off(broker: Broker, tmp_path: Path) -> None:
    counts = {}
    published: dict[bool, list[dict[str, Any]]] = {}
    for dedup in (True, False):
        cfg = base_config(
            broker.port,
            SSD,
            SSD_LABELS,
            {
                "lobby": {
                    "source": {"type": "video", "path": str(VIDEO)},
                    "track": {"enabled": True},
                    "samples": {
                        "enabled": True,
                        "strategies": STRATEGIES,
                        "dedup": {"enabled": dedup, "max_distance": DISTANCE, "window": "10m"},
                        "max_side": 320,
                    },
                    "events": {"publish_detections": False},
                }
            },
        )
        cfg["device_id"] = f"sampling-dedup-{dedup}"
        folder = tmp_path / f"dedup-{dedup}"
        folder.mkdir()
        run = run_to_end(broker.port, folder, cfg)
        published[dedup] = run.bodies("/lobby/samples")
        counts[dedup] = len(published[dedup])
        assert run.counters.get("samples.published.lobby") == counts[dedup]
    print(f"person video samples: dedup on {counts[True]}, off {counts[False]}")
    assert 0 < counts[True] < counts[False]
    on = sorted(published[True], key=lambda b: b["ts"])
    for i, a in enumerate(on):
        for b in on[i + 1 :]:
            if b["ts"] - a["ts"] < 600:
                assert (int(a["phash"], 16) ^ int(b["phash"], 16)).bit_count() > DISTANCE
    reasons = {r for b in published[False] for r in b["reasons"]}
    assert {"low_confidence", "random"} <= reasons


MASK = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.25], [0.0, 0.25]]


def _decode(part: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(part["data"])
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and (image.shape[1], image.shape[0]) == (part["width"], part["height"])
    return image


@pytest.mark.parametrize("mode", ["full", "crops"])
def test_privacy_in_every_published_jpeg(broker: Broker, tmp_path: Path, mode: str) -> None:
    """The shared images with faces through the agent: masks black, every face the model
    finds on the unblurred frame (whole frame, and head areas of the sample's person boxes)
    blurred; crops mode sends nothing outside the padded boxes."""
    from edge_agent.sampling.config import FaceBlur, Privacy
    from edge_agent.sampling.privacy import ModelFaces, PrivacyFilter

    folder = tmp_path / "faces"
    folder.mkdir()
    names = ["grace_hopper.bmp", "zidane.jpg", "bus.jpg"]
    originals = {}
    for i, name in enumerate(names):
        image = cv2.imread(str(IMAGES / name))
        cv2.imwrite(str(folder / f"{i}.png"), image)
        originals[i] = image
    privacy = {"masks": [MASK], "blur_faces": {"model": str(FACE_MODEL)}, "mode": mode}
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "door": {
                "source": {"type": "images", "path": str(folder)},
                "motion": {"enabled": False},
                "samples": {
                    "enabled": True,
                    "strategies": {"random": {"probability": 1.0}},
                    "dedup": {"enabled": False},
                    "privacy": privacy,
                    "floor": 0.5,
                    "max_side": 4096,
                },
            }
        },
    )
    cfg["device_id"] = f"privacy-{mode}"
    run = run_to_end(broker.port, tmp_path, cfg)
    samples = {s["frame"]: s for s in run.bodies("/door/samples")}
    assert sorted(samples) == [0, 1, 2]
    finder = PrivacyFilter(Privacy(blur_faces=FaceBlur(model=FACE_MODEL)), ModelFaces(
        FaceBlur(model=FACE_MODEL)))  # fmt: skip
    blurred = 0
    for frame, body in samples.items():
        original = originals[frame]
        h, w = original.shape[:2]
        people = np.array(
            [d["box"] for d in body["detections"] if d["label"] == "person"], np.float32
        ).reshape(-1, 4)
        faces = finder._faces(original, people)
        assert body["privacy"] == {"mode": mode, "masks": 1, "faces": len(faces)}
        if mode == "full":
            image = _decode(body["image"])
            assert image.shape == original.shape
            mx, my = int(MASK[1][0] * w), int(MASK[2][1] * h)
            assert float(image[: my - 2, : mx - 2].mean()) < 3  # black, but for JPEG noise
            for x1, y1, x2, y2 in faces:
                px = (
                    slice(int(y1 * h) + 2, int(y2 * h) - 2),
                    slice(int(x1 * w) + 2, int(x2 * w) - 2),
                )
                assert _detail(image[px]) < 0.1 * _detail(original[px]), (frame, (x1, y1))
                blurred += 1
        else:
            assert "image" not in body and len(body["crops"]) == len(body["detections"])
            covered = np.zeros((h, w), bool)
            for crop in body["crops"]:
                x1, y1, x2, y2 = crop["region"]
                pixels = _decode(crop)
                box = (round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h))
                assert pixels.shape[:2] == (box[3] - box[1], box[2] - box[0])
                covered[box[1] : box[3], box[0] : box[2]] = True
            padded = np.zeros((h, w), bool)
            for d in body["detections"]:
                x1, y1, x2, y2 = d["box"]
                dx, dy = (x2 - x1) * 0.1, (y2 - y1) * 0.1
                padded[
                    max(0, int(np.floor((y1 - dy) * h))) : int(np.ceil((y2 + dy) * h)),
                    max(0, int(np.floor((x1 - dx) * w))) : int(np.ceil((x2 + dx) * w)),
                ] = True
            assert not (covered & ~padded).any()  # no pixel outside the padded boxes
    if mode == "full":
        assert blurred >= 4  # Grace Hopper's face, and faces in zidane.jpg and bus.jpg
