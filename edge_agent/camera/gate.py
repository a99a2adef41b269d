"""The motion gate on the capture thread: every captured frame is checked there, so the
detect workers only invoke and decode, and a still scene never reaches them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edge_agent.camera.motion import MotionConfig, MotionGate
from edge_agent.health import Counters
from edge_agent.pipeline import END, FrameSlot, Job
from edge_agent.publish.payloads import OutMessage, new_id
from edge_agent.types import Frame

log = logging.getLogger(__name__)


class GatedSink:
    """What a camera's capture thread puts frames into: motion gate, then the camera's slot.

    Frames the gate skips are counted (`frames.still.<camera>`) and dropped, or forwarded
    marked `detect=False` when something downstream wants every frame (annotated video).
    The debounced motion state is published retained as `ON`/`OFF` when it changes.
    """

    def __init__(
        self,
        camera: str,
        slot: FrameSlot,
        cfg: MotionConfig,
        fps_hint: float,
        counters: Counters,
        publish: Callable[[OutMessage], None],
        topic: str,
        tracks_active: Callable[[], bool],
        forward_skipped: bool = False,
        detecting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.camera = camera
        self.slot = slot
        self.gate = MotionGate(cfg, fps_hint) if cfg.enabled else None
        self.counters = counters
        self.publish = publish
        self.topic = topic
        self.tracks_active = tracks_active
        self.forward_skipped = forward_skipped
        self.detecting = detecting  # False: detection turned off at run time
        self._motion: bool | None = None

    def put(self, item: Frame | None, stop: threading.Event) -> bool:
        """Gate one frame (or pass END); False if stop was set while waiting for room."""
        if item is not END and not self.detecting():
            # Still captured and counted; the camera thread ends its tracks and keeps the
            # frame for snapshots.
            return self.slot.put(Job(item, False), stop)
        if item is END or self.gate is None:
            return self.slot.put(None if item is END else Job(item, True), stop)
        decision = self.gate.check(item.image, item.ts, self.tracks_active())
        if decision.motion != self._motion:
            self._motion = decision.motion
            self.publish(
                OutMessage(
                    new_id(), self.topic, b"ON" if decision.motion else b"OFF", "state", 1, True
                )
            )
        if decision.run_detector:
            return self.slot.put(Job(item, True), stop)
        self.counters.inc(f"frames.still.{self.camera}")
        if self.forward_skipped:
            return self.slot.put(Job(item, False), stop)
        return True
