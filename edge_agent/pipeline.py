"""Per-camera stages after detection: filters, detection messages and samples."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.config.schema import CameraConfig
from edge_agent.detect.classifier import Classifier
from edge_agent.health import Counters
from edge_agent.postprocess import camera_filter
from edge_agent.publish.payloads import (
    OutMessage,
    SampleSpec,
    Topics,
    detection_message,
    sample_message,
)
from edge_agent.sampling import LowConfidenceSampler
from edge_agent.types import Detection, Frame, FrameResult

log = logging.getLogger(__name__)

END = None  # end-of-stream marker placed in a slot after a finite source's last frame


@dataclass(frozen=True)
class PublishContext:
    """What every camera needs to build messages."""

    topics: Topics
    device_id: str
    model: str
    qos: int
    submit: Callable[[OutMessage], None]
    counters: Counters


class CameraStage:
    """Turns one camera's raw detections into published messages."""

    def __init__(
        self,
        name: str,
        cfg: CameraConfig,
        ctx: PublishContext,
        classifier: Classifier | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.ctx = ctx
        self.sampler = LowConfidenceSampler(cfg.samples, cfg.detect)
        self.classifier = classifier

    def handle(self, frame: Frame, raw: tuple[Detection, ...], inference_ms: float) -> None:
        """Filter, publish detections, and publish a sample when the frame qualifies."""
        ctx = self.ctx
        detections = camera_filter(raw, self.cfg.detect)
        if self.classifier is not None and detections:
            detections = self.classifier.apply(frame.image, detections)
        result = FrameResult(frame, raw, detections, inference_ms)
        if result.detections or self.cfg.publish_empty:
            ctx.submit(detection_message(ctx.topics, ctx.device_id, ctx.model, result, ctx.qos))
        if not self.cfg.samples.enabled or not self.sampler.candidate(result):
            return
        chosen = self.sampler.select(result)
        if chosen is None:
            ctx.counters.inc(f"samples.rate_limited.{self.name}")
            return
        spec = SampleSpec(
            self.sampler.reason, chosen, self.cfg.samples.max_side, self.cfg.samples.jpeg_quality
        )
        ctx.submit(sample_message(ctx.topics, ctx.device_id, ctx.model, result, spec, ctx.qos))
        ctx.counters.inc(f"samples.published.{self.name}")


class FrameSlot:
    """Frames waiting for the detector: a bounded FIFO for replay (back-pressure, nothing
    skipped), or a single newest-frame slot for live cameras (older frames are skipped and
    counted, so latency never grows)."""

    def __init__(
        self, camera: str, live: bool, size: int, counters: Counters, wake: threading.Event
    ) -> None:
        self.camera = camera
        self.live = live
        self.counters = counters
        self.wake = wake
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=1 if live else size)

    def put(self, item: Frame | None, stop: threading.Event) -> bool:
        """Add a frame (or END); False if stop was set while waiting for room."""
        if self.live and item is not END:
            return self._replace(item)
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                self.wake.set()
                return True
            except queue.Full:
                if stop.is_set() and item is not END:
                    return False

    def _replace(self, item: Frame) -> bool:
        while True:
            try:
                self._queue.put_nowait(item)
                self.wake.set()
                return True
            except queue.Full:
                try:
                    old = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if old is END:  # never discard the end marker
                    self._queue.put_nowait(old)
                    return False
                self.counters.inc(f"frames.skipped.{self.camera}")

    def get(self) -> tuple[bool, Frame | None]:
        """(True, item) when something was waiting, else (False, None)."""
        try:
            return True, self._queue.get_nowait()
        except queue.Empty:
            return False, None

    def empty(self) -> bool:
        """True when nothing waits."""
        return self._queue.empty()
