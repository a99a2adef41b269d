"""`edge-agent collect` pieces without a broker: the shipped schema, every rejection reason
(table-driven; tests/test_collect_rejects.py sends the same table through a real broker),
the box geometry of downscaled images and crops, and the store-then-acknowledge order."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.collect.collector import Collector
from edge_agent.collect.geometry import in_crop, picture_boxes, to_pixels
from edge_agent.collect.index import Index
from edge_agent.collect.mqtt import Delivery
from edge_agent.collect.payload import Rejected, SampleParser, load_schema
from tests.helpers import IMAGES, ROOT
from tests.test_collect import coco8_detections, det, dumps, sample

MAX_IMAGE_BYTES = 200_000  # the collector runs with this limit in the rejection tests


def test_the_package_ships_the_repository_schema_unchanged() -> None:
    shipped = ROOT / "edge_agent" / "collect" / "samples.schema.json"
    assert shipped.read_bytes() == (ROOT / "schemas" / "samples.schema.json").read_bytes()
    # load_schema reads it through importlib.resources, as an installed package does
    assert load_schema() == json.loads(shipped.read_text())
    assert load_schema()["properties"]["v"]["const"] == 2


def _frame() -> np.ndarray:
    frame = cv2.imread(str(IMAGES / "coco8" / "train" / "000000000030.jpg"))
    assert frame is not None
    return frame


def good_full() -> dict[str, Any]:
    """A valid full-frame sample (stored at half size)."""
    return sample(_frame(), coco8_detections("000000000030"), max_side=320)


def good_crops() -> dict[str, Any]:
    """A valid crops-mode sample."""
    return sample(_frame(), coco8_detections("000000000030"), mode="crops", max_side=160)


def _edit(base: Callable[[], dict[str, Any]], change: Callable[[dict[str, Any]], None]) -> bytes:
    body = copy.deepcopy(base())
    change(body)
    return dumps(body)


def _jpeg_data(body: dict[str, Any], data: bytes) -> None:
    body["image"]["data"] = base64.b64encode(data).decode()


def _png(body: dict[str, Any]) -> None:
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    assert ok
    _jpeg_data(body, buf.tobytes())


def _truncated(body: dict[str, Any]) -> None:
    data = base64.b64decode(body["image"]["data"])
    _jpeg_data(body, data[: len(data) // 2])


def _garbage(body: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    _jpeg_data(body, b"\xff\xd8\xff\xe0" + rng.bytes(3000) + b"\xff\xd9")


def _oversized(side: int) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        noise = np.random.default_rng(1).integers(0, 255, (side, side, 3), np.uint8)
        ok, buf = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 100])
        assert ok
        body["image"].update(width=side, height=side)
        _jpeg_data(body, buf.tobytes())

    return change


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return change


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(key)


INVERTED = [0.5, 0.5, 0.2, 0.9]
# (case, payload maker, reason): every kind of bad message a collector must survive.
BAD: list[tuple[str, Callable[[], bytes], str]] = [
    ("not JSON", lambda: b"{not json", "malformed_json"),
    ("not UTF-8", lambda: b"\xff\xfe\x00garbage", "malformed_json"),
    ("a JSON array", lambda: b"[1, 2]", "malformed_json"),
    ("v 3", lambda: _edit(good_full, _set("v", 3)), "unknown_version"),
    ("v 1 (the old payload)", lambda: _edit(good_full, _set("v", 1)), "unknown_version"),
    ("no v", lambda: _edit(good_full, _delete("v")), "unknown_version"),
    ("no phash", lambda: _edit(good_full, _delete("phash")), "schema"),
    ("score above 1", lambda: _edit(good_full, _set("detections.0.score", 1.5)), "schema"),
    ("unknown key", lambda: _edit(good_full, _set("extra", 1)), "schema"),
    ("short id", lambda: _edit(good_full, _set("id", "abc")), "schema"),
    ("image and crops", lambda: _edit(good_full, _set("crops", good_crops()["crops"])), "schema"),
    ("base64 alphabet", lambda: _edit(good_full, _set("image.data", "@@@@")), "schema"),
    ("base64 padding", lambda: _edit(good_full, _set("image.data", "abcde")), "undecodable_jpeg"),
    ("a PNG", lambda: _edit(good_full, _png), "undecodable_jpeg"),
    ("a truncated JPEG", lambda: _edit(good_full, _truncated), "undecodable_jpeg"),
    ("JPEG markers around noise", lambda: _edit(good_full, _garbage), "undecodable_jpeg"),
    ("JPEG over the limit", lambda: _edit(good_full, _oversized(400)), "image_too_large"),
    ("2 MB payload", lambda: _edit(good_full, _oversized(1100)), "image_too_large"),
    ("width wrong", lambda: _edit(good_full, _set("image.width", 321)), "size_mismatch"),
    ("crop height wrong", lambda: _edit(good_crops, _set("crops.0.height", 7)), "size_mismatch"),
    ("inverted box", lambda: _edit(good_full, _set("detections.0.box", INVERTED)), "bad_box"),
    ("device '..'", lambda: _edit(good_full, _set("device_id", "..")), "schema"),
    ("camera with '/'", lambda: _edit(good_full, _set("camera", "a/b")), "schema"),
    ("camera with '\\'", lambda: _edit(good_full, _set("camera", "a\\b")), "unsafe_name"),
    ("mode crops, image", lambda: _edit(good_full, _set("privacy.mode", "crops")), "schema"),
]  # fmt: skip


@pytest.fixture(scope="module")
def parser() -> SampleParser:
    """A parser with the limit the rejection tests use."""
    return SampleParser(MAX_IMAGE_BYTES)


@pytest.mark.parametrize(("case", "make", "reason"), BAD, ids=[b[0] for b in BAD])
def test_every_bad_payload_is_rejected_with_its_reason(
    parser: SampleParser, case: str, make: Callable[[], bytes], reason: str
) -> None:
    with pytest.raises(Rejected) as info:
        parser.parse(make())
    assert info.value.reason == reason, f"{case}: {info.value}"
    assert len(info.value.detail) <= 300


def test_good_payloads_parse_full_and_crops(parser: SampleParser) -> None:
    full = parser.parse(dumps(good_full()))
    assert [(p.width, p.height, p.region) for p in full.pictures] == [(320, 214, None)]
    crops = parser.parse(dumps(good_crops()))
    assert len(crops.pictures) == 2 and all(p.region is not None for p in crops.pictures)
    assert crops.pictures[0].stem == f"{crops.id}_0"


def test_a_schema_rejection_names_the_field() -> None:
    body = good_full()
    body["detections"][1]["score"] = 1.5
    with pytest.raises(Rejected) as info:
        SampleParser(MAX_IMAGE_BYTES).parse(json.dumps(body).encode())
    assert info.value.detail.startswith("$.detections[1].score: 1.5 is greater than")


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("box", "size", "region", "pixels"),
    [
        ((0.25, 0.5, 0.75, 1.0), (640, 360), None, (160, 180, 480, 360)),
        ((0.25, 0.5, 0.75, 1.0), (320, 180), None, (80, 90, 240, 180)),  # JPEG at half size
        # a crop of the right half scaled to 100 px wide: x 0.5 -> 0, 0.75 -> 50
        ((0.6, 0.2, 0.75, 0.4), (100, 80), (0.5, 0.0, 1.0, 0.4), (20, 40, 50, 80)),
        # sticking out of the crop: clipped to it
        ((0.4, 0.1, 0.75, 0.5), (100, 80), (0.5, 0.0, 1.0, 0.4), (0, 20, 50, 80)),
        ((0.1, 0.1, 0.2, 0.2), (100, 80), (0.5, 0.0, 1.0, 0.4), None),  # outside
    ],
)
def test_boxes_map_to_pixels_of_the_stored_image(
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    region: tuple[float, float, float, float] | None,
    pixels: tuple[float, float, float, float] | None,
) -> None:
    got = to_pixels(box, *size, region)
    if pixels is None:
        assert got is None
    else:
        assert got is not None and np.allclose(got, pixels, atol=1e-6)


def test_a_crop_shows_boxes_mostly_inside_it_or_of_its_track() -> None:
    region = (0.5, 0.0, 1.0, 0.5)
    assert in_crop((0.6, 0.1, 0.7, 0.2), region, same_track=False)
    assert not in_crop((0.3, 0.1, 0.55, 0.2), region, same_track=False)  # 20% inside
    assert in_crop((0.3, 0.1, 0.55, 0.2), region, same_track=True)
    assert not in_crop((0.1, 0.1, 0.2, 0.2), region, same_track=True)  # not inside at all
    dets = [det("person", 0.5, [0.3, 0.1, 0.55, 0.2], 7), det("car", 0.4, [0.6, 0.1, 0.7, 0.2])]
    boxes = picture_boxes(dets, 200, 200, region, tracker_id=7)
    assert [(b.label, round(b.x1), round(b.x2)) for b in boxes] == [
        ("person", 0, 20),
        ("car", 40, 80),
    ]


# --------------------------------------------------------------------------- crash ordering


class _Crash(Exception):
    """The process dying between the index commit and the acknowledgement."""


def _collector(out: Path, ack: Callable[[Delivery], bool]) -> Collector:
    return Collector(out, Index(out / "index.db"), SampleParser(MAX_IMAGE_BYTES), ack, "", 60.0)


def test_a_crash_after_the_commit_makes_the_redelivered_message_a_duplicate(
    tmp_path: Path,
) -> None:
    body = good_full()
    delivery = Delivery(1, 7, 1, "edge/dev-1/cam/samples", dumps(body))

    def crash(_d: Delivery) -> bool:
        raise _Crash

    first = _collector(tmp_path, crash)
    with pytest.raises(_Crash):
        first.handle([delivery])  # stored and committed; never acknowledged
    first.index.close()
    image = tmp_path / "images" / "dev-1" / "cam" / f"{body['id']}.jpg"
    written = image.stat().st_mtime_ns
    acked: list[Delivery] = []
    again = _collector(tmp_path, lambda d: acked.append(d) is None)
    again.handle([delivery])  # the broker sends the unacknowledged message again
    assert (again.counts.accepted, again.counts.duplicates) == (0, 1)
    assert acked == [delivery] and again.index.count() == 1
    assert image.stat().st_mtime_ns == written  # not written again


def test_a_disk_error_before_the_commit_acknowledges_nothing(tmp_path: Path) -> None:
    body = good_full()
    delivery = Delivery(1, 7, 1, "edge/dev-1/cam/samples", dumps(body))
    (tmp_path / "images").write_text("in the way")  # images/ cannot be created
    acked: list[Delivery] = []
    collector = _collector(tmp_path, lambda d: acked.append(d) is None)
    with pytest.raises(OSError):
        collector.handle([delivery])
    assert acked == [] and collector.index.count() == 0
    (tmp_path / "images").unlink()
    collector.handle([delivery])  # the retry after the disk is fixed
    assert acked == [delivery] and collector.index.count() == 1
