"""Replay integrity: damaged videos and unreadable images are skipped, counted and logged, and
never end a replay early, renumber it or make it spin.

Damage is real: bytes of a copy of a shared clip are overwritten (zeros, random bytes), cut off,
or the MP4 index (moov sample tables) is broken. Every expectation is checked against an
independent decode of the same damaged file: grab() frame by frame, placing each decoded frame by
its own timestamp.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config.schema import CameraConfig
from edge_agent.errors import SourceError
from edge_agent.health import Counters
from edge_agent.sources import FrameSource, create_source
from edge_agent.sources import replay as replay_module
from edge_agent.types import Frame
from tests.helpers import (
    IMAGES,
    MEDIA,
    SSD,
    SSD_LABELS,
    VIDEO,
    AgentProcess,
    Broker,
    Subscriber,
    base_config,
    write_config,
)

CAR = MEDIA / "video" / "car-detection.mp4"  # 377 frames, 12.5 fps, moov at the start
PERSON = VIDEO  # 1394 frames, 10 fps
NOBODY = 65534
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


# ---------------------------------------------------------------- MP4 layout and damage


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset, size) of the MP4 boxes in data[start:end], descending into containers."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            size = end - pos
        yield kind, pos, size
        if kind in CONTAINERS:
            yield from _boxes(data, pos + 8, pos + size)
        pos += size


def _box(data: bytes, kind: bytes, video_track: bool = False) -> tuple[int, int]:
    """Offset and size of the first box of a kind (inside the video track if asked)."""
    in_video = not video_track
    for found, offset, size in _boxes(data, 0, len(data)):
        if found == b"trak" and video_track:
            in_video = False
        if found == b"hdlr" and data[offset + 16 : offset + 20] == b"vide":
            in_video = True  # the media handler; the minf-level hdlr that follows is not
        if found == kind and in_video:
            return offset, size
    raise AssertionError(f"no {kind!r} box")


def _overwrite(fill: str, start: float, size: int) -> Callable[[bytes], bytes]:
    """Damage: `size` bytes at fraction `start` of the file (not before the media data),
    zeros or random bytes."""

    def damage(data: bytes) -> bytes:
        mdat, _ = _box(data, b"mdat")
        pos = max(int(len(data) * start), mdat + 16)
        out = bytearray(data)
        new = bytes(size) if fill == "zeros" else random.Random(pos).randbytes(size)
        out[pos : pos + size] = new
        return bytes(out)

    return damage


def _stretches(count: int, size: int) -> Callable[[bytes], bytes]:
    """Damage: `count` zeroed stretches spread over the media data."""

    def damage(data: bytes) -> bytes:
        for i in range(count):
            data = _overwrite("zeros", (i + 1) / (count + 1), size)(data)
        return data

    return damage


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _table(kind: bytes, fill: str, skip: int, size: int) -> Callable[[bytes], bytes]:
    """Damage in the index: bytes of the video track's sample table `kind` (stsz sizes or
    stco chunk offsets), `skip` bytes after its header."""

    def damage(data: bytes) -> bytes:
        offset, _ = _box(data, kind, video_track=True)
        pos = offset + 20 + skip
        out = bytearray(data)
        out[pos : pos + size] = bytes(size) if fill == "zeros" else random.Random(7).randbytes(size)
        return bytes(out)

    return damage


def _damaged_copy(tmp: Path, clip: Path, damage: Callable[[bytes], bytes]) -> Path:
    path = tmp / f"damaged-{clip.name}"
    path.write_bytes(damage(clip.read_bytes()))
    return path


@dataclass
class Decode:
    """An independent decode: every successful grab(), placed by its own timestamp."""

    raw: int  # frames the decoder produced
    positions: list[int]  # their positions in the file, in order, keeping only increasing ones
    count: int  # frames per the container


def independent_decode(path: Path) -> Decode:
    """Grab frame by frame to the real end (a generous bound on failures in a row)."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    raw, positions, failures = 0, [], 0
    while failures < count + 50:
        if not cap.grab():
            failures += 1
            continue
        failures = 0
        raw += 1
        position = round(cap.get(cv2.CAP_PROP_POS_MSEC) * fps / 1000)
        if not positions or position > positions[-1]:
            positions.append(position)
    cap.release()
    return Decode(raw, positions, count)


def _camera(source: dict[str, Any]) -> CameraConfig:
    return CameraConfig.model_validate({"source": source})


def _video(path: Path, counters: Counters, loop: bool = False) -> FrameSource:
    cfg = _camera({"type": "video", "path": str(path), "loop": loop})
    source = create_source("cam", cfg, 1000.0, counters)
    source.open()
    return source


def _drain(source: FrameSource, limit: int = 100_000) -> list[Frame]:
    frames = []
    while len(frames) < limit and (frame := source.read()) is not None:
        frames.append(frame)
    return frames


def _gaps(indexes: list[int], count: int) -> tuple[int, int | None]:
    """Frames missing between 0, the yielded indexes and the container's count; and the
    first missing index."""
    expected = [*indexes, count]
    missing = indexes[0]
    first = 0 if indexes[0] > 0 else None
    for a, b in itertools.pairwise(expected):
        if b - a > 1 and first is None:
            first = a + 1
        missing += b - a - 1
    return missing, first


# ---------------------------------------------------------------- damaged videos


@dataclass
class Case:
    clip: Path
    damage: Callable[[bytes], bytes]
    ends: str = "at the end"  # where the decodable data ends: "at the end" | "early"
    exact: bool = True  # yielded indexes == the independent decode's positions
    dropped: int = 0  # decoded frames dropped for coming out of order


CASES = {
    "zeros 256 KiB mid-file": Case(CAR, _overwrite("zeros", 0.5, 256 * 1024)),
    "random 64 KiB mid-file": Case(CAR, _overwrite("random", 0.5, 64 * 1024)),
    "random 16 KiB mid-file": Case(CAR, _overwrite("random", 0.5, 16 * 1024)),
    "zeros at the start of the media data": Case(CAR, _overwrite("zeros", 0.0, 200_000)),
    "three zeroed stretches": Case(CAR, _stretches(3, 64 * 1024)),
    # Frame threads deliver a frame decoded before the damage after the failed reads, then
    # jump: the frame after the jump must still get its true position.
    "zeros 16 KiB, delayed jump": Case(PERSON, _overwrite("zeros", 0.25, 16 * 1024)),
    # A frame comes out behind one already yielded (out of order): it is dropped.
    "zeros 4 KiB, out-of-order frame": Case(PERSON, _overwrite("zeros", 0.4, 4096), dropped=1),
    "truncated at half": Case(CAR, _truncate, ends="early"),
    "index: chunk offsets (stco) random": Case(CAR, _table(b"stco", "random", 40, 20), "early"),
    # Zeroed sample sizes: the decoder drops those frames with no failed read, so the frames
    # after them keep consecutive indexes (not their positions); the loss is counted at the end.
    "index: sample sizes (stsz) zeroed": Case(CAR, _table(b"stsz", "zeros", 600, 200), exact=False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_video_reads_to_the_real_end(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[name]
    path = _damaged_copy(tmp_path, case.clip, case.damage)
    truth = independent_decode(path)
    assert truth.raw < truth.count, "the damage must cost frames for this test to mean anything"
    counters = Counters()
    caplog.set_level(logging.WARNING, logger="edge_agent.sources.replay")
    source = _video(path, counters)
    frames = _drain(source)
    source.close()
    indexes = [f.index for f in frames]

    assert len(frames) == len(truth.positions) == truth.raw - case.dropped
    assert all(b > a for a, b in itertools.pairwise(indexes))
    fps = 12.5 if case.clip == CAR else 10.0
    assert [f.ts for f in frames] == pytest.approx([1000.0 + i / fps for i in indexes])
    if case.ends == "at the end":
        assert truth.positions[-1] == truth.count - 1
    else:
        assert truth.positions[-1] < truth.count // 2
    if case.exact:
        assert indexes == truth.positions
    else:
        assert indexes == list(range(len(frames)))
    missing, first = _gaps(indexes, truth.count)
    assert counters.get("frames.corrupt.cam") == missing == truth.count - len(frames)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(str(path) in w for w in warnings)
    if indexes[-1] == truth.count - 1:  # gaps inside the file: the first one is named
        assert f"frame {first} " in warnings[0] or f"frames {first}-" in warnings[0]
    else:
        assert f"{truth.count - len(frames)} of the {truth.count} frames" in warnings[-1]
        assert f"last frame read: {indexes[-1]}" in warnings[-1]


def test_healthy_video_is_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    caplog.set_level(logging.WARNING)
    source = _video(CAR, counters)
    frames = _drain(source)
    source.close()
    assert [f.index for f in frames] == list(range(377))
    assert counters.get("frames.corrupt.cam") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("interval", [3600.0, 0.0], ids=["rate-limited", "no limit"])
def test_long_damage_is_a_few_warning_lines(
    interval: float,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_module, "DAMAGE_LOG_INTERVAL", interval)
    path = _damaged_copy(tmp_path, PERSON, _stretches(12, 64 * 1024))
    truth = independent_decode(path)
    counters = Counters()
    caplog.set_level(logging.WARNING, logger="edge_agent.sources.replay")
    source = _video(path, counters)
    indexes = [f.index for f in _drain(source)]
    source.close()
    missing, first = _gaps(indexes, truth.count)
    stretches = sum(1 for a, b in itertools.pairwise(indexes) if b - a > 1)
    warnings = [r.getMessage() for r in caplog.records]
    assert stretches >= 10 and counters.get("frames.corrupt.cam") == missing
    assert f"frames {first}-" in warnings[0]
    if interval:  # the first stretch, then one summary of the rest at the end
        assert len(warnings) == 2, warnings
        assert f"skipped ({stretches - 1} stretches)" in warnings[1]
    else:
        assert len(warnings) == stretches


REAL_CAPTURE = cv2.VideoCapture


class CountingCapture:
    """The real decoder, counting property reads (the happy path must make none). A wrapper:
    a Python subclass of cv2.VideoCapture corrupts memory (segfault seen with OpenCV 5)."""

    gets = 0

    def __init__(self, path: str) -> None:
        self._cap = REAL_CAPTURE(path)

    def get(self, prop: int) -> float:
        CountingCapture.gets += 1
        return float(self._cap.get(prop))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cap, name)


@pytest.mark.parametrize(
    ("damage", "max_gets"),
    [(None, 0), (_overwrite("zeros", 0.5, 256 * 1024), 2 * replay_module.VERIFY_FRAMES)],
)
def test_property_reads_only_after_damage(
    damage: Callable[[bytes], bytes] | None,
    max_gets: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_module.cv2, "VideoCapture", CountingCapture)
    path = CAR if damage is None else _damaged_copy(tmp_path, CAR, damage)
    source = _video(path, Counters())
    CountingCapture.gets = 0
    frames = _drain(source)
    source.close()
    assert len(frames) > 300
    assert CountingCapture.gets <= max_gets


@pytest.mark.parametrize(
    ("damage", "first_gap", "per_pass"),
    [
        (_overwrite("zeros", 0.5, 256 * 1024), (170, 229), 318),
        (_truncate, (170, 377), 170),
    ],
    ids=["damaged mid-file", "truncated"],
)
def test_looping_damaged_video_advances(
    damage: Callable[[bytes], bytes], first_gap: tuple[int, int], per_pass: int, tmp_path: Path
) -> None:
    path = _damaged_copy(tmp_path, CAR, damage)
    counters = Counters()
    source = _video(path, counters, loop=True)
    frames = _drain(source, limit=3 * per_pass + 1)
    source.close()
    indexes = [f.index for f in frames]
    assert len(frames) == 3 * per_pass + 1  # three passes and the start of a fourth
    assert all(b > a for a, b in itertools.pairwise(indexes))
    assert first_gap[0] - 1 in indexes and first_gap[0] not in indexes
    assert first_gap[1] in indexes
    # each pass keeps the file's numbering, shifted by the container's 377 frames
    assert indexes[per_pass : per_pass + 3] == [377, 378, 379]
    assert indexes[-1] == 3 * 377
    assert counters.get("frames.corrupt.cam") == 3 * (377 - per_pass)


def _zero_media(data: bytes) -> bytes:
    mdat, _ = _box(data, b"mdat")
    return data[: mdat + 16] + bytes(len(data) - mdat - 16)


def _rename_moov(data: bytes) -> bytes:
    offset, _ = _box(data, b"moov")
    return data[: offset + 4] + b"xxxx" + data[offset + 8 :]


@pytest.mark.parametrize(
    "damage",
    [lambda _: b"\x00\x01garbage" * 100, _rename_moov, _zero_media, lambda d: d[:4000]],
    ids=["not a video", "no moov box", "all media data zeroed", "cut inside the index"],
)
def test_unopenable_video_is_a_source_error(
    damage: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    path = _damaged_copy(tmp_path, CAR, damage)
    source = create_source("cam", _camera({"type": "video", "path": str(path)}), 0.0)
    with pytest.raises(SourceError, match="cannot decode video file"):
        source.open()


# ---------------------------------------------------------------- unreadable images

GOOD_JPEG = (IMAGES / "zidane.jpg").read_bytes()


def _progressive_jpeg() -> bytes:
    image = cv2.imread(str(IMAGES / "bus.jpg"))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    return bytes(data.tobytes())


def _with_exif_thumbnail(jpeg: bytes) -> bytes:
    """The JPEG with an APP1 segment holding a complete small JPEG (as cameras write)."""
    ok, thumb = cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))
    assert ok
    payload = b"Exif\x00\x00" + bytes(thumb.tobytes())
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _png_bytes() -> bytes:
    ok, data = cv2.imencode(".png", cv2.imread(str(IMAGES / "cat.bmp")))
    assert ok
    return bytes(data.tobytes())


IMAGE_CASES: dict[str, tuple[bytes | None, str | None]] = {
    # name: (bytes of b.jpg, or None for a directory; reason logged, or None when readable)
    "zero bytes": (b"", "empty file"),
    "truncated JPEG (last KiB cut)": (GOOD_JPEG[:-1024], "truncated JPEG"),
    "JPEG without its end marker": (GOOD_JPEG[:-2], "truncated JPEG"),
    "JPEG cut inside its headers": (GOOD_JPEG[:300], "truncated JPEG"),
    "truncated JPEG with a thumbnail": (_with_exif_thumbnail(GOOD_JPEG)[:-5000], "truncated JPEG"),
    "truncated PNG": (_png_bytes()[:-4096], "not a decodable image"),
    "text named .jpg": (b"hello, not an image\n" * 50, "not a decodable image"),
    "progressive JPEG (readable)": (_progressive_jpeg(), None),
    "JPEG with a thumbnail (readable)": (_with_exif_thumbnail(GOOD_JPEG), None),
    "JPEG with bytes after its end (readable)": (GOOD_JPEG + b"\x00" * 4096, None),
}


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_unreadable_image_counted(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content, reason = IMAGE_CASES[name]
    (tmp_path / "a.jpg").write_bytes(GOOD_JPEG)
    assert content is not None
    (tmp_path / "b.jpg").write_bytes(content)
    (tmp_path / "c.png").write_bytes(_png_bytes())
    counters = Counters()
    caplog.set_level(logging.WARNING, logger="edge_agent.sources.replay")
    source = create_source("i", _camera({"type": "images", "path": str(tmp_path)}), 0.0, counters)
    source.open()
    indexes = [f.index for f in _drain(source)]
    source.close()
    bad = 0 if reason is None else 1
    assert indexes == ([0, 1, 2] if bad == 0 else [0, 2])
    assert source.unreadable == bad  # type: ignore[attr-defined]
    assert counters.get("frames.corrupt.i") == bad
    messages = [r.getMessage() for r in caplog.records]
    if reason is None:
        assert messages == []
    else:
        assert len(messages) == 1
        assert f"cannot read image {tmp_path / 'b.jpg'} ({reason}" in messages[0]


def test_directory_named_like_an_image_is_not_a_frame(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(GOOD_JPEG)
    (tmp_path / "b.jpg").mkdir()
    (tmp_path / "c.jpg").write_bytes(GOOD_JPEG)
    counters = Counters()
    source = create_source("i", _camera({"type": "images", "path": str(tmp_path)}), 0.0, counters)
    source.open()
    assert [f.index for f in _drain(source)] == [0, 1]  # positions of the files only
    assert counters.get("frames.corrupt.i") == 0


def test_image_deleted_after_listing_is_counted(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(GOOD_JPEG)
    counters = Counters()
    source = create_source("i", _camera({"type": "images", "path": str(tmp_path)}), 0.0, counters)
    source.open()
    (tmp_path / "b.jpg").unlink()
    assert [f.index for f in _drain(source)] == [0, 2]
    assert counters.get("frames.corrupt.i") == 1


def test_looping_folder_of_unreadable_images_ends(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(GOOD_JPEG[:-2])
    counters = Counters()
    cfg = _camera({"type": "images", "path": str(tmp_path), "loop": True})
    source = create_source("i", cfg, 0.0, counters)
    source.open()
    result: list[Frame | None] = []
    reader = threading.Thread(target=lambda: result.append(source.read()), daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "read() spins on a folder with no readable image"
    assert result == [None]
    assert counters.get("frames.corrupt.i") == 2


def test_looping_folder_names_each_bad_file_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.jpg").write_bytes(GOOD_JPEG)
    (tmp_path / "b.jpg").write_bytes(b"")
    counters = Counters()
    caplog.set_level(logging.WARNING, logger="edge_agent.sources.replay")
    cfg = _camera({"type": "images", "path": str(tmp_path), "loop": True})
    source = create_source("i", cfg, 0.0, counters)
    source.open()
    indexes = [f.index for f in _drain(source, limit=5)]
    assert indexes == [0, 2, 4, 6, 8]
    assert counters.get("frames.corrupt.i") == 4
    assert len(caplog.records) == 1 and "b.jpg (empty file)" in caplog.records[0].getMessage()


@contextlib.contextmanager
def _effective_user(uid: int) -> Iterator[None]:
    """Run as `uid` (file permission checks use the effective ids); the saved uid stays root,
    so the test can switch back. (The venv interpreter lives under /root, 0700, so a child
    process exec'd as nobody could not start.)"""
    if uid == 0:
        yield
        return
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.parametrize("user", ["nobody", "root"])
def test_image_without_read_permission(user: str, caplog: pytest.LogCaptureFixture) -> None:
    """As an unprivileged user a file without read permission is skipped and counted; root
    reads it anyway (so the agent's own user decides, as it should)."""
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-perm-"))  # tmp_path is 0700 for root
    caplog.set_level(logging.WARNING, logger="edge_agent.sources.replay")
    try:
        folder.chmod(0o755)
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            (folder / name).write_bytes(GOOD_JPEG)
            (folder / name).chmod(0o644)
        (folder / "b.jpg").chmod(0o000)
        counters = Counters()
        cfg = _camera({"type": "images", "path": str(folder)})
        with _effective_user(NOBODY if user == "nobody" else 0):
            source = create_source("i", cfg, 0.0, counters)
            source.open()
            indexes = [f.index for f in _drain(source)]
        if user == "nobody":
            assert indexes == [0, 2] and counters.get("frames.corrupt.i") == 1
            assert "b.jpg (Permission denied)" in caplog.records[0].getMessage()
        else:
            assert indexes == [0, 1, 2] and counters.get("frames.corrupt.i") == 0
    finally:
        shutil.rmtree(folder)


# ---------------------------------------------------------------- end to end


def test_agent_replays_damaged_video_to_the_end(broker: Broker, tmp_path: Path) -> None:
    path = _damaged_copy(tmp_path, CAR, _overwrite("zeros", 0.5, 256 * 1024))
    truth = independent_decode(path)
    device = "replay-integrity"
    cameras = {
        "lot": {
            "source": {"type": "video", "path": str(path)},
            "detect": {"min_score": 0.5},
            "publish_empty": True,
        }
    }
    cfg = base_config(broker.port, SSD, SSD_LABELS, cameras)
    cfg["device_id"] = device
    sub = Subscriber(broker.port, f"edge/{device}/#")
    try:
        agent = AgentProcess(write_config(tmp_path, cfg))
        try:
            code = agent.wait(300)
        finally:
            agent.kill()
        assert code == 0, agent.output[-3000:]
        assert sub.wait_for(lambda s: s.on(f"{device}/stats"), 10)
        published = sorted({m.json()["frame"] for m in sub.on("lot/detections")})
        counters = sub.on(f"{device}/stats")[-1].json()["counters"]
    finally:
        sub.close()
    missing, first = _gaps(truth.positions, truth.count)
    assert first is not None and first < truth.count // 2
    assert published == truth.positions
    assert published[-1] == truth.count - 1  # frames after the damage were published
    assert counters["frames.corrupt.lot"] == missing > 0
    assert counters["frames.processed.lot"] == len(truth.positions)
    assert f"frames {first}-" in agent.output
