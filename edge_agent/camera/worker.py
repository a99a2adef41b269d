"""A camera's post-detection thread: runs its steps on each detected frame, in capture order,
and hands the results to the publisher and the sample encoder."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge_agent.camera.pipeline import CameraPipeline
from edge_agent.core.detections import Detections
from edge_agent.health import Counters
from edge_agent.health.stats import CameraHealth
from edge_agent.pipeline import Job
from edge_agent.types import Frame, Image
from edge_agent.workers import (
    FRAME_ERROR_LOG_INTERVAL,
    POLL,
    Detected,
    Heartbeats,
    PostQueue,
    SampleEncoder,
    Submit,
)

log = logging.getLogger(__name__)


class FrameWriter(Protocol):
    """Something that wants every frame of the camera (an annotated video)."""

    def write(
        self,
        image: Image,
        dets: Detections,
        *,
        line_totals: dict[str, dict[str, int]] | None = None,
        zone_counts: dict[str, int] | None = None,
        motion: bool | None = None,
        skipped: bool = False,
    ) -> None:
        """Draw and write one frame."""
        ...

    def close(self) -> None:
        """Finish the output."""
        ...


@dataclass(frozen=True)
class LastFrame:
    """A camera's last processed frame and the boxes it reported (for snapshots);
    `detected` False when detection was off for it."""

    frame: Frame
    dets: Detections
    detected: bool


class CameraWorker:
    """Owns one camera's steps (tracker, zones, events...) on the thread `post-<camera>`."""

    def __init__(
        self,
        pipeline: CameraPipeline,
        inbox: PostQueue,
        submit: Submit,
        encoder: SampleEncoder,
        heartbeats: Heartbeats,
        abort: threading.Event,
        writer: FrameWriter | None = None,
    ) -> None:
        self.name = pipeline.name
        self.pipeline = pipeline
        self.inbox = inbox
        self.submit = submit
        self.encoder = encoder
        self.counters: Counters = pipeline.env.counters
        self.heartbeats = heartbeats
        self.abort = abort
        self.writer = writer
        self.live = pipeline.cam.live
        self.done = threading.Event()
        self.on_crash: Callable[[str], None] = lambda reason: None
        self._last: tuple[float, int] | None = None
        self.last_frame: LastFrame | None = None  # replaced whole: safe to read elsewhere
        self.health: CameraHealth | None = None  # inference times and drift (the agent sets it)
        self.handled = 0  # items taken from the inbox and fully handled (swap barrier)
        self._tracking = True  # False once tracks were ended because detection is off
        self._next_error_log = 0.0
        self.thread = threading.Thread(target=self._run, name=f"post-{self.name}", daemon=True)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            log.exception("camera %s: post-processing thread failed", self.name)
            self.on_crash(f"post-{self.name} failed: {exc}")
        finally:
            if self.writer is not None:
                self._close_writer()
            self.done.set()

    def _loop(self) -> None:
        beat = f"post-{self.name}"
        while not self.abort.is_set():
            self.heartbeats.beat(beat)
            ok, item = self.inbox.get(POLL)
            if not ok:
                continue
            if item is None:
                self._finish()
                self.heartbeats.forget(beat)
                self.handled += 1
                return
            if isinstance(item, Job):  # detection off, or skipped by the motion gate
                self._skipped(item)
            else:
                self._handle(item)
            self.handled += 1

    def _skipped(self, job: Job) -> None:
        """A frame the detector did not see: with detection off, it ends the live tracks
        (once) and becomes the snapshot frame; either way it goes to the video."""
        frame = job.frame
        if not self.pipeline.detect_enabled:
            self._last = (frame.ts, frame.index)
            self.counters.inc(f"frames.detect_off.{self.name}")
            self.last_frame = LastFrame(frame, Detections(), False)
            if self._tracking:
                self._tracking = False
                for message in self.pipeline.stop_tracking(frame.ts, frame.index):
                    self.submit(message)
        self._write(frame.image, Detections(), skipped=True)

    def _handle(self, item: Detected) -> None:
        frame = item.job.frame
        self._last = (frame.ts, frame.index)
        try:
            if item.error is not None or item.dets is None:
                raise RuntimeError(f"detector failed: {item.error!r}") from item.error
            self.counters.inc(f"detector.runs.{self.name}")
            ctx = self.pipeline.process(frame, item.dets, item.inference_ms, item.model)
            for message in ctx.out:
                self.submit(message)
            for sample in ctx.samples:
                self.encoder.put(sample, wait=not self.live)
            self.counters.inc(f"frames.processed.{self.name}")
        except Exception:
            self._frame_failed(frame.index)
            return
        self._tracking = True
        shown = ctx.dets[ctx.reported]
        if self.health is not None:
            self.health.observe(frame.ts, item.inference_ms, shown)
        self.last_frame = LastFrame(frame, shown, True)
        self._write(frame.image, shown)

    def _frame_failed(self, index: int) -> None:
        # One bad frame must not stop the camera or lose what was already captured; a camera
        # that fails every frame logs once a minute, not at its frame rate.
        self.counters.inc(f"frames.errors.{self.name}")
        now = time.monotonic()
        if now >= self._next_error_log:
            self._next_error_log = now + FRAME_ERROR_LOG_INTERVAL
            failed = self.counters.get(f"frames.errors.{self.name}")
            log.exception(
                "camera %s: frame %d failed (%d frames failed so far, frames.errors.%s)",
                self.name,
                index,
                failed,
                self.name,
            )

    def _write(self, image: Image, dets: Detections, skipped: bool = False) -> None:
        if self.writer is None:
            return
        totals, counts = self.pipeline.overlay()
        try:
            self.writer.write(image, dets, line_totals=totals, zone_counts=counts, skipped=skipped)
        except Exception:
            log.exception("camera %s: annotated video failed; no more frames written", self.name)
            self._close_writer()

    def _close_writer(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                log.exception("camera %s: closing the annotated video failed", self.name)

    def _finish(self) -> None:
        ts, index = self._last if self._last is not None else (time.time(), 0)
        for message in self.pipeline.finish(ts, index):
            self.submit(message)
