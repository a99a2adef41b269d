"""`edge-agent collect` end to end: a real mosquitto, the real CLI in a subprocess, v2 samples
built here from real images (COCO8 with its ground-truth boxes, bus, zidane), and the exports
read back by pycocotools, supervision and label-studio-sdk.

The helpers at the top (payload builder, collector process, publisher) are shared with the
other tests/test_collect_*.py files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import IMAGES, MEDIA, ROOT, YOLO_LABELS, AgentProcess, Broker, wait_until

COCO8 = IMAGES / "coco8" / "train"
COCO8_LABELS = MEDIA / "annotations" / "coco8" / "labels" / "train"
NAMES = YOLO_LABELS.read_text().split("\n")
SHA = hashlib.sha256(b"model").hexdigest()
TOLERANCE = 1.0  # pixels: the acceptance bar for every export


# --------------------------------------------------------------------------- payloads


def det(
    label: str, score: float, box: list[float], tracker_id: int | None = None
) -> dict[str, Any]:
    """A detection as devices send it (box normalized to the captured frame)."""
    out: dict[str, Any] = {"label": label, "class_id": NAMES.index(label) if label in NAMES else 0}
    out.update(score=score, box=[round(v, 6) for v in box])
    if tracker_id is not None:
        out["tracker_id"] = tracker_id
    return out


def coco8_detections(stem: str) -> list[dict[str, Any]]:
    """COCO8's ground-truth boxes of one image as detections with made-up scores."""
    dets = []
    lines = (COCO8_LABELS / f"{stem}.txt").read_text().split("\n")
    for k, line in enumerate(x for x in lines if x.strip()):
        cls, cx, cy, w, h = line.split()
        x, y, bw, bh = float(cx), float(cy), float(w), float(h)
        box = [
            max(0.0, x - bw / 2),
            max(0.0, y - bh / 2),
            min(1.0, x + bw / 2),
            min(1.0, y + bh / 2),
        ]
        dets.append(det(NAMES[int(cls)], 0.3 + 0.05 * (k % 10), box, tracker_id=k + 1))
    return dets


def encode(image: np.ndarray, max_side: int, quality: int = 85) -> tuple[bytes, int, int]:
    """JPEG of image, scaled so its longer side is at most max_side (as devices do)."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes(), width, height


def _jpeg_object(image: np.ndarray, max_side: int) -> dict[str, Any]:
    data, width, height = encode(image, max_side)
    return {
        "format": "jpeg",
        "width": width,
        "height": height,
        "data": base64.b64encode(data).decode(),
    }


def crop_regions(
    frame: np.ndarray, dets: list[dict[str, Any]], pad: float = 0.15
) -> list[tuple[list[float], np.ndarray, int | None]]:
    """Padded, pixel-aligned regions of every box, as devices cut them in crops mode."""
    height, width = frame.shape[:2]
    out = []
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        dx, dy = (x2 - x1) * pad, (y2 - y1) * pad
        px1, py1 = (
            max(0, int(np.floor((x1 - dx) * width))),
            max(0, int(np.floor((y1 - dy) * height))),
        )
        px2, py2 = (
            min(width, int(np.ceil((x2 + dx) * width))),
            min(height, int(np.ceil((y2 + dy) * height))),
        )
        region = [px1 / width, py1 / height, px2 / width, py2 / height]
        out.append((region, frame[py1:py2, px1:px2].copy(), d.get("tracker_id")))
    return out


def sample(
    frame: np.ndarray,
    dets: list[dict[str, Any]],
    *,
    device: str = "dev-1",
    camera: str = "cam",
    mode: str = "full",
    max_side: int = 1280,
    sid: str | None = None,
    frame_no: int = 0,
) -> dict[str, Any]:
    """A valid v2 samples message for a frame and its detections."""
    height, width = frame.shape[:2]
    body: dict[str, Any] = {
        "v": 2,
        "id": sid or uuid.uuid4().hex,
        "device_id": device,
        "camera": camera,
        "frame": frame_no,
        "ts": 1_760_000_000.0 + frame_no,
        "width": width,
        "height": height,
        "model": "detect.tflite",
        "model_sha256": SHA,
        "inference_ms": 12.5,
        "detections": dets,
        "reasons": ["low_confidence"],
        "phash": "0123456789abcdef",
        "privacy": {"mode": mode, "masks": 0, "faces": 0},
    }
    if mode == "full":
        body["image"] = _jpeg_object(frame, max_side)
    else:
        body["crops"] = []
        for region, pixels, tid in crop_regions(frame, dets):
            crop = {"region": [round(v, 6) for v in region], **_jpeg_object(pixels, max_side)}
            if tid is not None:
                crop["tracker_id"] = tid
            body["crops"].append(crop)
    return body


def expected_boxes(body: dict[str, Any]) -> dict[str, list[tuple[str, float, list[float]]]]:
    """Independent reference: per stored image stem, (label, score, xyxy pixels) of the boxes
    it should carry (crops: boxes mostly inside the region, moved and scaled to the crop)."""
    if "image" in body:
        w, h = body["image"]["width"], body["image"]["height"]
        boxes = [
            (
                d["label"],
                d["score"],
                [d["box"][0] * w, d["box"][1] * h, d["box"][2] * w, d["box"][3] * h],
            )
            for d in body["detections"]
        ]
        return {body["id"]: boxes}
    out = {}
    for k, crop in enumerate(body["crops"]):
        rx1, ry1, rx2, ry2 = crop["region"]
        sx, sy = crop["width"] / (rx2 - rx1), crop["height"] / (ry2 - ry1)
        boxes = []
        for d in body["detections"]:
            x1, y1, x2, y2 = d["box"]
            ix = max(0.0, min(x2, rx2) - max(x1, rx1))
            iy = max(0.0, min(y2, ry2) - max(y1, ry1))
            mine = crop.get("tracker_id") is not None and crop.get("tracker_id") == d.get(
                "tracker_id"
            )
            if ix * iy <= 0 or not (mine or ix * iy >= 0.5 * (x2 - x1) * (y2 - y1)):
                continue
            px = [(max(x1, rx1) - rx1) * sx, (max(y1, ry1) - ry1) * sy]
            px += [(min(x2, rx2) - rx1) * sx, (min(y2, ry2) - ry1) * sy]
            boxes.append((d["label"], d["score"], px))
        out[f"{body['id']}_{k}"] = boxes
    return out


def dumps(body: dict[str, Any]) -> bytes:
    """A message payload."""
    return json.dumps(body, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- processes


class CollectorProcess(AgentProcess):
    """`edge-agent collect` in the background, its output collected line by line."""

    def __init__(self, port: int, out: Path, *extra: str, wait: bool = True) -> None:
        self.out = out
        args = ["--host", "127.0.0.1", "--port", str(port), "--out", str(out)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "collect", *args, "--log-format", "text", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait and not self.wait_for_line("subscribed to", 30):
            self.kill()  # a failed start must not leave the process behind
            raise AssertionError(f"the collector did not subscribe:\n{self.output}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def finished(self) -> str:
        """The final counts line."""
        return next(line for line in self.lines if "collect finished:" in line)

    def totals(self) -> dict[str, int]:
        """The latest totals the collector logged (needs --log-level debug)."""
        for line in reversed(list(self.lines)):
            if "totals: " in line:
                pairs = line.split("totals: ", 1)[1].split()
                return {k: int(v) for k, v in (p.split("=") for p in pairs)}
        return {"accepted": 0, "duplicates": 0, "rejected": 0}

    def wait_handled(self, n: int, timeout: float) -> bool:
        """Wait until n messages were accepted, found duplicate or rejected in all."""
        return wait_until(lambda: sum(self.totals().values()) >= n, timeout)


def index_ids(out: Path) -> list[str]:
    """Sample ids in a dataset's index (read-only, while a collector may write)."""
    db = out / "index.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM samples ORDER BY seq")]


class Publisher:
    """A paho client publishing at QoS 1 and waiting for every PUBACK."""

    def __init__(self, port: int, login: tuple[str, str] | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payloads: list[bytes]) -> None:
        """Publish every payload on topic and wait until the broker has them all."""
        infos = [self.client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(60)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def unique_prefix() -> str:
    """A topic prefix of its own, so tests sharing the broker do not see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- the dataset


@dataclass
class Dataset:
    """One collector run over known samples, and what was sent."""

    out: Path
    bodies: list[dict[str, Any]]
    first_run: str
    second_run: str
    image_root: str = "http://files.example/ds/"

    def expected(self) -> dict[str, list[tuple[str, float, list[float]]]]:
        """Stem -> expected pixel boxes of every stored image."""
        out: dict[str, list[tuple[str, float, list[float]]]] = {}
        for body in self.bodies:
            out.update(expected_boxes(body))
        return out


def _bodies() -> list[dict[str, Any]]:
    bodies = []
    for n, path in enumerate(sorted(COCO8.glob("*.jpg"))):
        frame = cv2.imread(str(path))
        dets = coco8_detections(path.stem)
        # max_side 320: the stored JPEG is half the captured frame.
        bodies.append(sample(frame, dets, camera="kitchen", max_side=320, frame_no=n))
    zidane = cv2.imread(str(IMAGES / "zidane.jpg"))
    z_dets = [
        det("person", 0.81, [0.0977, 0.0611, 0.8938, 0.9986], 1),
        det("person", 0.47, [0.3445, 0.3403, 0.4891, 0.9972], 2),
        det("tie", 0.33, [0.5699, 0.3778, 0.5922, 0.5521], 3),
    ]
    bodies.append(sample(zidane, z_dets, device="dev-2", camera="lobby", max_side=640))
    bus = cv2.imread(str(IMAGES / "bus.jpg"))
    b_dets = [
        det("bus", 0.62, [0.0185, 0.2130, 0.9938, 0.7361], 1),
        det("person", 0.44, [0.0599, 0.3694, 0.3049, 0.8741], 2),
        det("person", 0.38, [0.8210, 0.3620, 0.9988, 0.8713], 3),
    ]
    bodies.append(sample(bus, b_dets, device="dev-2", camera="street"))
    # Crops mode: each padded box region sent alone; one crop scaled down by max_side.
    bodies.append(
        sample(zidane, z_dets, device="dev-3", camera="lobby", mode="crops", max_side=300)
    )
    bodies.append(sample(bus, b_dets, device="dev-3", camera="street", mode="crops"))
    return bodies


@pytest.fixture(scope="module")
def dataset(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    """Two collector runs on one folder: the samples once, then the same messages again."""
    out = tmp_path_factory.mktemp("collect") / "ds"
    prefix = unique_prefix()
    bodies = _bodies()
    pub = Publisher(broker.port)
    runs = []
    try:
        for _ in range(2):
            col = CollectorProcess(
                broker.port, out, "--topic", f"{prefix}/+/+/samples",
                "--image-root", "http://files.example/ds/", "--log-level", "debug",
            )  # fmt: skip
            try:
                for body in bodies:
                    pub.send(
                        f"{prefix}/{body['device_id']}/{body['camera']}/samples", [dumps(body)]
                    )
                assert col.wait_handled(len(bodies), 30), col.output
                assert col.stop() == 0, col.output
            finally:
                col.kill()
            runs.append(col.finished())
    finally:
        pub.close()
    yield Dataset(out, bodies, runs[0], runs[1])


# --------------------------------------------------------------------------- exports


def _stem(path: str) -> str:
    return Path(path).stem


def assert_same_boxes(
    got: dict[str, list[tuple[str, list[float]]]],
    expected: dict[str, list[tuple[str, float, list[float]]]],
    what: str,
) -> None:
    """Every stored image carries exactly the expected boxes, each within TOLERANCE pixels."""
    assert sorted(got) == sorted(expected), what
    for stem, want in expected.items():
        have = sorted(got[stem], key=lambda b: (b[0], b[1]))
        ref = sorted(((label, box) for label, _, box in want), key=lambda b: (b[0], b[1]))
        assert [b[0] for b in have] == [b[0] for b in ref], f"{what} {stem}"
        for (label, box), (_, ref_box) in zip(have, ref, strict=True):
            err = float(np.max(np.abs(np.subtract(box, ref_box))))
            assert err <= TOLERANCE, f"{what} {stem} {label}: {box} vs {ref_box} ({err:.2f} px)"


def coco_boxes(coco: dict[str, Any]) -> dict[str, list[tuple[str, list[float]]]]:
    """Stem -> (label, xyxy pixels) of a COCO file's annotations."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    stems = {im["id"]: _stem(im["file_name"]) for im in coco["images"]}
    out: dict[str, list[tuple[str, list[float]]]] = {s: [] for s in stems.values()}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        out[stems[a["image_id"]]].append((names[a["category_id"]], [x, y, x + w, y + h]))
    return out


def test_first_run_stores_every_sample_and_a_second_run_over_the_same_messages_none(
    dataset: Dataset,
) -> None:
    n = len(dataset.bodies)
    assert f"{n} accepted, 0 duplicates, 0 rejected" in dataset.first_run
    assert f"0 accepted, {n} duplicates, 0 rejected" in dataset.second_run
    ids = index_ids(dataset.out)
    assert sorted(ids) == sorted(b["id"] for b in dataset.bodies)
    for body in dataset.bodies:
        folder = dataset.out / "images" / body["device_id"] / body["camera"]
        parts = [body["image"]] if "image" in body else body["crops"]
        stems = (
            [body["id"]] if "image" in body else [f"{body['id']}_{k}" for k in range(len(parts))]
        )
        for stem, part in zip(stems, parts, strict=True):
            assert (folder / f"{stem}.jpg").read_bytes() == base64.b64decode(part["data"])
    jpgs = list((dataset.out / "images").rglob("*.jpg"))
    assert len(jpgs) == len(dataset.expected())  # nothing written twice under other names
    assert not (dataset.out / "rejected").exists()
    assert not list(dataset.out.rglob("*.tmp"))


def test_coco_loads_in_pycocotools_and_accepts_the_predictions(dataset: Dataset) -> None:
    from pycocotools.coco import COCO

    path = dataset.out / "annotations" / "coco.json"
    coco = COCO(str(path))
    data = json.loads(path.read_text())
    assert len(coco.getImgIds()) == len(dataset.expected())
    results = [
        {k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in data["annotations"]
    ]
    loaded = coco.loadRes(results)
    assert len(loaded.getAnnIds()) == len(results) > 20
    assert all(0 < a["score"] <= 1 for a in data["annotations"])
    names = [c["name"] for c in data["categories"]]
    assert len(set(names)) == len(names)
    assert {"person", "bus", "tie", "giraffe", "zebra", "orange"} <= set(names)
    assert_same_boxes(coco_boxes(data), dataset.expected(), "coco")


def test_supervision_reads_the_coco_and_yolo_exports_with_the_same_boxes(dataset: Dataset) -> None:
    import supervision as sv

    out = dataset.out
    from_coco = sv.DetectionDataset.from_coco(
        images_directory_path=str(out / "images"),
        annotations_path=str(out / "annotations" / "coco.json"),
    )
    got = {
        _stem(path): [
            (from_coco.classes[c], list(box)) for box, c in zip(d.xyxy, d.class_id, strict=True)
        ]
        for path, _, d in from_coco
    }
    assert_same_boxes(got, dataset.expected(), "supervision from_coco")
    yolo: dict[str, list[tuple[str, list[float]]]] = {}
    for folder in sorted((out / "images").glob("*/*")):
        rel = folder.relative_to(out / "images")
        part = sv.DetectionDataset.from_yolo(
            images_directory_path=str(folder),
            annotations_directory_path=str(out / "labels" / rel),
            data_yaml_path=str(out / "data.yaml"),
        )
        for path, _, d in part:
            yolo[_stem(path)] = [
                (part.classes[c], list(b)) for b, c in zip(d.xyxy, d.class_id, strict=True)
            ]
    assert_same_boxes(yolo, dataset.expected(), "supervision from_yolo")


def test_label_studio_tasks_validate_with_label_studio_sdk(
    dataset: Dataset, tmp_path: Path
) -> None:
    """Checked by label-studio-sdk itself: each task parses as its TaskValue (pydantic), each
    prediction passes LabelInterface.validate_prediction against the exported config.xml, and
    the SDK's own Converter turns the tasks (predictions taken as annotations) into COCO boxes
    equal to the expected ones within a pixel."""
    try:
        from label_studio_sdk.converter.converter import Converter
        from label_studio_sdk.label_interface import LabelInterface
        from label_studio_sdk.label_interface.objects import TaskValue
    except ImportError as exc:  # fail, never skip: the check is part of the acceptance
        pytest.fail(f"{exc}: install it alone, `pip install --no-deps 'label-studio-sdk==2.1.*'`")

    out = dataset.out
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    config = (out / "label_studio" / "config.xml").read_text()
    interface = LabelInterface(config)
    assert len(tasks) == len(dataset.expected())
    for task in tasks:
        TaskValue.model_validate(task)
        path = task["data"]["image"].removeprefix(dataset.image_root)
        assert (out / path).is_file()
        [prediction] = task["predictions"]
        assert prediction["model_version"] == f"detect.tflite@{SHA[:12]}"
        assert interface.validate_prediction(prediction, return_errors=True) == []
    export = [
        {
            "id": i,
            "data": t["data"],
            "annotations": [{"id": i, "result": t["predictions"][0]["result"]}],
        }
        for i, t in enumerate(tasks)
    ]
    (tmp_path / "export.json").write_text(json.dumps(export))
    converter = Converter(config, project_dir=str(tmp_path), download_resources=False)
    converter.convert_to_coco(str(tmp_path / "export.json"), str(tmp_path / "coco"), is_dir=False)
    converted = json.loads((tmp_path / "coco" / "result.json").read_text())
    for image, task in zip(converted["images"], tasks, strict=True):
        image["file_name"] = task["data"]["image"]
    assert_same_boxes(coco_boxes(converted), dataset.expected(), "label studio converter")


def test_rebuild_regenerates_identical_exports_from_the_index_alone(
    dataset: Dataset, tmp_path: Path
) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(dataset.out, copy)
    exports = ["annotations", "label_studio", "labels", "data.yaml"]
    before = {p.relative_to(copy): p.read_bytes() for e in exports for p in _files(copy / e)}
    assert len(before) > 10
    for name in exports:
        target = copy / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    # No broker: port 1 would refuse a connection; a rebuild never connects.
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "collect", "--out", str(copy), "--rebuild",
         "--port", "1", "--image-root", dataset.image_root],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = {p.relative_to(copy): p.read_bytes() for e in exports for p in _files(copy / e)}
    assert after == before


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def test_data_yaml_names_follow_the_coco_category_ids(dataset: Dataset) -> None:
    import yaml

    data = yaml.safe_load((dataset.out / "data.yaml").read_text())
    coco = json.loads((dataset.out / "annotations" / "coco.json").read_text())
    by_id = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    assert [data["names"][k] for k in range(len(by_id))] == by_id
    assert data["train"] == data["val"] == "images" and data["nc"] == len(by_id)
