"""Annotated video output (edge_agent.tools.annotate): clips written and read back with OpenCV."""

from __future__ import annotations

import io
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.camera.zones import LineConfig, ZoneConfig
from edge_agent.core.detections import Detections
from edge_agent.errors import UserError
from edge_agent.tools import annotate
from edge_agent.tools.annotate import Annotator, colour_of
from tests.helpers import MEDIA

CARS = MEDIA / "video" / "car-detection.mp4"  # 768x432, 12.5 fps
LABELS = ["person", "bicycle", "car"]
CAR = 2
W, H = 768, 432
# A zone over the lower left quarter, given in pixels, and one over the top right, normalized.
ZONES = {
    "lot": ZoneConfig(polygon=[[40, 260], [340, 260], [340, 420], [40, 420]], units="px"),
    "road": ZoneConfig(polygon=[[0.6, 0.1], [0.95, 0.1], [0.95, 0.4], [0.6, 0.4]]),
}
LINES = {"gate": LineConfig(points=[[0.0, 0.5], [0.5, 0.5]])}
BOX = (0.45, 0.15, 0.55, 0.45)  # in neither zone, below no label but its own
BOX_PX = (
    round(0.45 * (W - 1)),
    round(0.15 * (H - 1)),
    round(0.55 * (W - 1)),
    round(0.45 * (H - 1)),
)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """The first 12 frames of the parking-lot clip."""
    cap = cv2.VideoCapture(str(CARS))
    out = []
    while len(out) < 12:
        ok, image = cap.read()
        assert ok
        out.append(image)
    cap.release()
    return out


def one_box(track: int | None, box: tuple[float, ...] = BOX, cls: int = CAR) -> Detections:
    return Detections(
        np.array([box], np.float32),
        np.array([0.87], np.float32),
        np.array([cls], np.int64),
        None if track is None else np.array([track], np.int64),
    )


def read_back(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    images = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    return images, fps


def diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference per channel value."""
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def outline(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of a box's left and right edges (the top edge carries the label)."""
    x1, y1, x2, y2 = box
    return np.concatenate([image[y1 + 20 : y2 - 2, x1], image[y1 + 20 : y2 - 2, x2]])


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_clip_written_with_zones_lines_and_boxes(
    tmp_path: Path, frames: list[np.ndarray], suffix: str
) -> None:
    path = tmp_path / f"out{suffix}"
    originals = [f.copy() for f in frames]
    with Annotator(path, 12.5, LABELS, ZONES, LINES, total=len(frames)) as ann:
        for i, image in enumerate(frames):
            ann.write(
                image,
                one_box(7),
                line_totals={"gate": {"in": i, "out": 0}},
                zone_counts={"lot": 1, "road": 0},
                motion=i % 2 == 0,
                skipped=i % 3 == 1,
            )
        assert ann.codec in annotate.CODECS[suffix]
    assert all(np.array_equal(a, b) for a, b in zip(frames, originals, strict=True))
    images, fps = read_back(path)
    assert len(images) == len(frames)
    assert images[0].shape == (H, W, 3)
    assert fps == pytest.approx(12.5, abs=0.01)
    src, out = frames[5], images[5]
    lot, road = (slice(300, 400), slice(80, 300)), (slice(80, 160), slice(490, 700))
    untouched = (slice(300, 400), slice(420, 500))  # under the line, in no zone, no box
    noise = diff(out[untouched], src[untouched])  # what the codec alone changes
    assert noise < 4
    assert diff(out[lot], src[lot]) > 5 * noise + 10
    assert diff(out[road], src[road]) > 5 * noise + 10
    assert diff(outline(out, BOX_PX), outline(src, BOX_PX)) > 5 * noise + 20
    header = (slice(0, 12), slice(0, 150))
    assert diff(out[header], src[header]) > 5 * noise + 20


def test_track_colour_is_stable_and_untracked_boxes_are_drawn(tmp_path: Path) -> None:
    grey = np.full((H, W, 3), 128, np.uint8)
    path = tmp_path / "ids.avi"
    with Annotator(path, 10, LABELS, {}, {}) as ann:
        ann.write(grey, one_box(7))
        ann.write(grey, one_box(7))
        ann.write(grey, one_box(None, cls=1))  # tracker_id None: coloured by label
    images, _ = read_back(path)
    assert len(images) == 3
    edges = [outline(image, BOX_PX).reshape(-1, 3).mean(axis=0) for image in images]
    # MJPEG shifts colours a little; the drawn colour must be far nearer than the grey.
    for edge, expected in zip(edges, [colour_of(7), colour_of(7), colour_of(1)], strict=True):
        assert np.abs(edge - expected).mean() < 0.5 * np.abs(128 - np.array(expected)).mean()
    assert colour_of(7) != colour_of(1)


@pytest.mark.parametrize("points", [[[0.0, 0.5], [1.0, 0.5]], [[1.0, 0.5], [0.0, 0.5]]])
def test_arrow_points_to_the_in_side(tmp_path: Path, points: list[list[float]]) -> None:
    grey = np.full((H, W, 3), 128, np.uint8)
    path = tmp_path / "line.avi"
    with Annotator(path, 10, LABELS, {}, {"gate": LineConfig(points=points)}) as ann:
        ann.write(grey, Detections())
    (out,), _ = read_back(path)
    y, x = round(0.5 * (H - 1)), round(0.5 * (W - 1))
    below = diff(out[y + 4 : y + 12, x - 3 : x + 4], grey[:8, :7])
    above = diff(out[y - 11 : y - 3, x - 3 : x + 4], grey[:8, :7])
    # Drawn left to right, "in" is down the image; right to left, up.
    drawn, empty = (below, above) if points[0][0] < points[1][0] else (above, below)
    assert drawn > 20
    assert empty < 5


def test_frames_of_another_size_are_resized(tmp_path: Path, frames: list[np.ndarray]) -> None:
    path = tmp_path / "sizes.mp4"
    with Annotator(path, 12.5, LABELS, ZONES, LINES) as ann:
        ann.write(frames[0], one_box(1))
        ann.write(cv2.resize(frames[1], (W // 2, H // 2)), one_box(1))
        ann.write(cv2.resize(frames[2], (1280, 720)), one_box(1))
    images, _ = read_back(path)
    assert [i.shape for i in images] == [(H, W, 3)] * 3
    sources = [frames[0], frames[1], frames[2]]  # what each output frame shows, unannotated
    road = (slice(80, 160), slice(490, 700))  # normalized: the same place at every size
    assert min(diff(images[i][road], sources[i][road]) for i in range(3)) > 10
    # Pixel zones are in pixels of the frame they come with (as the zone counting does): the
    # 1280x720 frame's `lot` lands at 0.6x, the 384x216 frame's lies below its bottom edge.
    lot, lot_at_720 = (slice(300, 400), slice(80, 300)), (slice(170, 245), slice(40, 190))
    assert diff(images[0][lot], sources[0][lot]) > 10
    assert diff(images[1][lot], sources[1][lot]) < 5
    assert diff(images[2][lot_at_720], sources[2][lot_at_720]) > 10
    assert diff(images[2][lot], sources[2][lot]) < 5


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing/out.mp4", "does not exist"),
        ("out.mkv", "'.mkv'"),
        ("out", "no extension"),
        ("folder.mp4", "is a folder"),
    ],
)
def test_bad_paths_name_the_path(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "folder.mp4").mkdir()
    path = tmp_path / name
    with pytest.raises(UserError, match=message) as err:
        Annotator(path, 10, LABELS, {}, {})
    assert str(path) in str(err.value)
    assert not (tmp_path / "missing").exists()


def test_folder_without_permission(tmp_path: Path) -> None:
    """A folder nobody may write to, root included: a read-only tmpfs (the suite runs as root
    in CI, where a chmod would not stop it)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], check=True)
    try:
        with pytest.raises(UserError, match="permission") as err:
            Annotator(folder / "out.mp4", 10, LABELS, {}, {})
        assert str(folder / "out.mp4") in str(err.value)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_no_codec_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(annotate.CODECS, ".mp4", ("XXXX",))
    path = tmp_path / "out.mp4"
    ann = Annotator(path, 10, LABELS, {}, {})
    with pytest.raises(UserError, match="XXXX") as err:
        ann.write(np.zeros((48, 64, 3), np.uint8), Detections())
    assert str(path) in str(err.value)
    ann.close()


def test_close_is_idempotent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = Annotator(tmp_path / "empty.mp4", 10, LABELS, {}, {})
    empty.close()
    empty.close()
    assert not (tmp_path / "empty.mp4").exists()  # no frame, no file
    ann = Annotator(tmp_path / "two.avi", 10, LABELS, {}, {})
    ann.write(np.zeros((48, 64, 3), np.uint8), one_box(None))
    ann.close()
    ann.close()
    with pytest.raises(ValueError, match="closed"):
        ann.write(np.zeros((48, 64, 3), np.uint8), Detections())
    assert len(read_back(tmp_path / "two.avi")[0]) == 1
    assert ann.frames == 1


@pytest.mark.parametrize("image", [np.zeros((48, 64), np.uint8), np.zeros((48, 64, 3), np.float32)])
def test_rejects_non_bgr_images(tmp_path: Path, image: np.ndarray) -> None:
    with Annotator(tmp_path / "x.avi", 10, LABELS, {}, {}) as ann, pytest.raises(ValueError):
        ann.write(image, Detections())


def test_unusable_fps_falls_back(tmp_path: Path) -> None:
    with Annotator(tmp_path / "fps.avi", 0.0, LABELS, {}, {}) as ann:
        ann.write(np.zeros((48, 64, 3), np.uint8), Detections())
    assert read_back(tmp_path / "fps.avi")[1] == pytest.approx(annotate.DEFAULT_FPS)


def test_progress_logs_every_tenth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.tools.annotate")
    with Annotator(tmp_path / "p.avi", 10, LABELS, {}, {}, total=20) as ann:
        for _ in range(20):
            ann.write(np.zeros((48, 64, 3), np.uint8), Detections())
    lines = [r.getMessage() for r in caplog.records if "frames of p.avi" in r.getMessage()]
    assert lines == [f"annotated {n}/20 frames of p.avi" for n in range(2, 21, 2)]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    caplog.set_level(logging.INFO, logger="edge_agent.tools.annotate")
    with Annotator(tmp_path / "bar.avi", 10, LABELS, {}, {}, total=5) as ann:
        for _ in range(5):
            ann.write(np.zeros((48, 64, 3), np.uint8), Detections())
    assert "annotating bar.avi" in terminal.getvalue()
    assert not [r for r in caplog.records if "frames of bar.avi" in r.getMessage()]


def test_codec_noise_is_held_back_other_output_kept(capfd: Any) -> None:
    with annotate._quiet_codec_errors():
        os.write(2, b"[h264_v4l2m2m @ 0x55d0] Could not find a valid device\n")
        os.write(2, b"[ERROR:0@0.010] global cap_ffmpeg_impl.hpp:3568 open Could not open\n")
        os.write(2, b"camera 2: reconnecting\n")
    assert capfd.readouterr().err == "camera 2: reconnecting\n"
