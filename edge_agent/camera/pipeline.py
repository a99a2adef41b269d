"""One camera's ordered steps, built from its config section: the path of a frame after the
detector reads top to bottom in `CameraPipeline.process`.

motion (before the detector, on the capture thread: see camera/gate.py) -> detect (a detect
worker) -> objects -> track -> zones/lines -> classify -> events -> samples -> detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.camera.events import EventBuilder
from edge_agent.camera.objects import ANY, ObjectFilter
from edge_agent.camera.steps import (
    ClassifyStep,
    DetectionsStep,
    EventsStep,
    FilterStep,
    FrameContext,
    SamplesStep,
    Step,
    TrackStep,
    ZonesStep,
    start_context,
)
from edge_agent.camera.zones import ZoneLineState
from edge_agent.config.schema import CameraConfig
from edge_agent.core.detections import Detections
from edge_agent.detect.classifier import Classifier
from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage, Topics, detection_message
from edge_agent.sampling.privacy import FaceFinder, PrivacyFilter
from edge_agent.track.bytetrack import Tracker
from edge_agent.types import Frame
from edge_agent.workers import ModelId


@dataclass(frozen=True)
class CameraEnv:
    """What every camera's steps share: names, topics, the model's labels, counters."""

    device_id: str
    model: str
    labels: Sequence[str]
    topics: Topics
    qos: int
    counters: Counters
    model_sha256: str


def detector_floor(cam: CameraConfig, labels: Sequence[str]) -> float:
    """The lowest score this camera's steps need from the detector (the tracker's low boxes,
    each label's min_score, the samples band)."""
    objects = _objects(cam, labels)
    floor = objects.floor
    if cam.samples.enabled:
        floor = min(floor, cam.samples.needs_floor)
    return floor


def _objects(cam: CameraConfig, labels: Sequence[str]) -> ObjectFilter:
    track_floor = cam.track.low_score if cam.track.enabled else None
    masks = [list(m) for m in cam.object_masks]
    return ObjectFilter(cam.object_rules, labels, track_floor, cam.track.threshold, masks)


class CameraPipeline:
    """The steps of one camera after detection. Owned by that camera's thread only."""

    def __init__(
        self,
        name: str,
        cam: CameraConfig,
        env: CameraEnv,
        classifier: Classifier | None,
        faces: FaceFinder | None = None,
    ) -> None:
        self.name, self.cam, self.env = name, cam, env
        # Set by the `detect` command (main thread), read by the capture and camera threads.
        self.detect_enabled = True
        self.objects = _objects(cam, env.labels)
        self.track_step: TrackStep | None = None
        self.tracker: Tracker | None = None
        self.zones: ZoneLineState | None = None
        self.events: EventBuilder | None = None
        steps: list[Step] = [FilterStep(self.objects, index=cam.samples.enabled)]
        if cam.track.enabled:
            self.tracker = Tracker(cam.track, self.objects.thresholds)
            self.track_step = TrackStep(self.tracker, self.objects)
            steps.append(self.track_step)
            if cam.zones or cam.lines:
                self.zones = ZoneLineState(cam.zones, cam.lines, env.labels)
                steps.append(ZonesStep(self.zones))
        sub_labels: Sequence[str] = ()
        if classifier is not None and cam.classify is not None:
            steps.append(ClassifyStep(classifier, cam.classify, env.labels, env.counters, name))
            sub_labels = classifier.labels
        if self.tracker is not None:
            self.events = EventBuilder(
                name, env.device_id, env.labels, env.topics, cam.events, env.qos
            )
            steps.append(EventsStep(self.events))
        if cam.samples.enabled:
            privacy = PrivacyFilter(cam.samples.privacy, faces)
            steps.append(SamplesStep(cam.samples, name, self.objects, env, privacy))
        if cam.events.publish_detections:
            steps.append(
                DetectionsStep(self._detections_message, env.labels, sub_labels, cam.publish_empty)
            )
        self.steps = tuple(steps)

    def _detections_message(
        self, head: dict[str, object], boxes: list[dict[str, object]]
    ) -> OutMessage:
        return detection_message(self.env.topics, head, boxes, self.env.qos)

    @property
    def tracks_active(self) -> bool:
        """Whether a track was seen on the last detected frame (the motion gate keeps the
        detector running then; a lost track is found again by motion or the keyframe)."""
        return self.tracker is not None and any(t.state == "tracked" for t in self.tracker.tracks)

    def initial_messages(self) -> list[OutMessage]:
        """Retained zeros for the counts and line totals this camera publishes."""
        if self.events is None:
            return []
        listed = [label for label in self.cam.object_rules if label != ANY]
        for item in (*self.cam.zones.values(), *self.cam.lines.values()):
            listed += item.labels or []
        return self.events.initial_state(
            list(self.cam.zones), list(self.cam.lines), list(dict.fromkeys(listed))
        )

    def process(
        self, frame: Frame, raw: Detections, inference_ms: float, model: ModelId | None = None
    ) -> FrameContext:
        """Run every step on one detected frame (by `model`, default the configured one);
        the context holds what to publish."""
        name, sha = (model.name, model.sha256) if model else (self.env.model, "")
        ctx = start_context(frame, raw, inference_ms, self.env.device_id, name, sha)
        for step in self.steps:
            step(ctx)
        return ctx

    def counters(self) -> dict[str, int]:
        """Track and event counters for the stats message (plain ints: safe to read from
        another thread)."""
        return self.events.counters() if self.events is not None else {}

    def finish(self, ts: float, frame: int) -> list[OutMessage]:
        """The camera stops: end every live track."""
        return self.events.finish(ts, frame) if self.events is not None else []

    def stop_tracking(self, ts: float, frame: int) -> list[OutMessage]:
        """Detection was turned off: end every live track (`end` events, counts to 0) and
        start tracking afresh when it is turned on again."""
        out = self.finish(ts, frame)
        old = self.tracker
        if old is None or self.track_step is None:
            return out
        if self.zones is not None:
            self.zones.forget([t.id for t in old.tracks])
        fresh = Tracker(self.cam.track, self.objects.thresholds)
        fresh._next_id = old._next_id  # ids stay unique within the run
        self.tracker = self.track_step.tracker = fresh
        return out

    def overlay(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """(line totals {line: {in, out}}, zone counts {zone: n}) for annotated video."""
        if self.zones is None:
            return {}, {}
        totals: dict[str, dict[str, int]] = {
            line: {str(d): sum(by_label.values()) for d, by_label in per_dir.items()}
            for line, per_dir in self.zones.line_totals().items()
        }
        counts = {z: sum(n.values()) for z, n in self.zones.present_counts().items()}
        return totals, counts
