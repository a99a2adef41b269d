"""Sources: replay determinism, and the picamera2 backend against a fake module with its API."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from edge_agent.config.schema import CameraConfig
from edge_agent.errors import CameraUnavailable, SourceError
from edge_agent.sources import create_source
from tests.helpers import IMAGES, VIDEO


def _camera(source: dict[str, Any]) -> CameraConfig:
    return CameraConfig.model_validate({"source": source})


def test_video_replay_indices_and_timestamps() -> None:
    src = create_source("v", _camera({"type": "video", "path": str(VIDEO)}), start_ts=1000.0)
    src.open()
    frames = [src.read() for _ in range(25)]
    src.close()
    assert [f.index for f in frames if f] == list(range(25))
    assert [f.ts for f in frames if f] == pytest.approx([1000.0 + i / 10 for i in range(25)])
    assert frames[0] is not None and frames[0].image.shape == (432, 768, 3)


@pytest.mark.parametrize(
    "source",
    [
        {"type": "video", "path": str(VIDEO), "realtime": True},
        {"type": "images", "path": str(IMAGES), "fps": 10, "realtime": True},
    ],
    ids=["video", "images"],
)
def test_realtime_replay_clock_starts_at_first_frame(source: dict[str, Any]) -> None:
    """A realtime replay's clock starts when frames are first read, not at open (the model
    loads in between): no burst of overdue frames, and `ts` is the release time."""
    opened = time.time()
    src = create_source("r", _camera(source), start_ts=opened)
    src.open()
    time.sleep(1.0)  # a model loading
    first = time.time()
    frames = [src.read() for _ in range(4)]
    src.close()
    assert all(f is not None for f in frames)
    took = time.time() - first
    assert took >= 0.29  # 4 frames at 10 fps: paced, not released at once
    assert frames[0] is not None and frames[-1] is not None
    assert frames[0].ts == pytest.approx(first, abs=0.25)
    assert frames[-1].ts - frames[0].ts == pytest.approx(0.3, abs=1e-6)


def test_video_loop_restarts() -> None:
    src = create_source("v", _camera({"type": "video", "path": str(VIDEO), "loop": True}), 0.0)
    src.open()
    count = 0
    while count < 1400:
        frame = src.read()
        assert frame is not None
        count += 1
    assert frame.index == 1399
    src.close()


def test_images_sorted_and_ends(tmp_path: Path) -> None:
    src = create_source("i", _camera({"type": "images", "path": str(IMAGES), "fps": 2}), 0.0)
    src.open()
    frames = []
    while (frame := src.read()) is not None:
        frames.append(frame)
    names = sorted(p.name for p in IMAGES.iterdir() if p.is_file())
    assert len(frames) == len(names)
    assert [f.ts for f in frames] == pytest.approx([i / 2 for i in range(len(names))])


def test_images_skip_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes((IMAGES / "zidane.jpg").read_bytes())
    src = create_source("i", _camera({"type": "images", "path": str(tmp_path)}), 0.0)
    src.open()
    frame = src.read()
    assert frame is not None and frame.index == 1  # index stays the sorted position
    assert src.read() is None
    assert src.unreadable == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "source",
    [
        {"type": "images", "path": "/nonexistent/folder"},
        {"type": "video", "path": "/nonexistent/clip.mp4"},
    ],
)
def test_missing_replay_path(source: dict[str, Any]) -> None:
    with pytest.raises(SourceError, match="not found"):
        create_source("x", _camera(source), 0.0).open()


class FakePicamera2:
    """Mimics the picamera2.Picamera2 calls edge-agent makes (hardware fake only)."""

    instances: ClassVar[list[FakePicamera2]] = []

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num = camera_num
        self.config: dict[str, Any] | None = None
        self.started = False
        self.closed = False
        FakePicamera2.instances.append(self)

    def create_video_configuration(
        self, main: dict[str, Any], controls: dict[str, Any]
    ) -> dict[str, Any]:
        return {"main": main, "controls": controls}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(
        self, name: str = "main", wait: bool | None = None, signal_function: Any = None
    ) -> Any:
        assert self.started and name == "main" and self.config is not None
        w, h = self.config["main"]["size"]
        image = np.full((h, w, 4), 7, np.uint8)  # XBGR8888-style 4 channels
        return ("job", image) if wait is False else image

    def wait(self, job: Any, timeout: float | None = None) -> np.ndarray:
        assert job[0] == "job" and timeout is not None and timeout > 0
        return job[1]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


def test_picamera2_backend_with_fake_module(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("picamera2")
    fake.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    cfg = _camera({"type": "picamera2", "camera_num": 1, "width": 320, "height": 240, "fps": 5})
    src = create_source("pi", cfg, 0.0)
    src.open()
    cam = FakePicamera2.instances[-1]
    assert cam.camera_num == 1
    assert cam.config == {
        "main": {"size": (320, 240), "format": "RGB888"},
        "controls": {"FrameDurationLimits": (200000, 200000)},
    }
    frames = [src.read(), src.read()]
    assert [f.index for f in frames if f] == [0, 1]
    assert frames[0] is not None and frames[0].image.shape == (240, 320, 3)
    assert src.live
    src.close()
    assert cam.closed


def test_picamera2_missing_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import raises ImportError
    src = create_source("pi", _camera({"type": "picamera2"}), 0.0)
    with pytest.raises(SourceError, match="picamera2 is not installed"):
        src.open()


def test_rtsp_unreachable_is_clear() -> None:
    src = create_source(
        "net", _camera({"type": "rtsp", "url": "rtsp://user:secret@127.0.0.1:9/x"}), 0.0
    )
    with pytest.raises(CameraUnavailable) as info:
        src.open()
    assert str(info.value) == (
        "stream rtsp://***@127.0.0.1:9/x: connection refused (camera down, booting, or wrong port)"
    )
