"""The per-camera steps after detection, in order: objects -> track -> zones/lines -> classify
-> events -> samples -> detections. Each step reads and extends one `FrameContext`; each owns
its state and config section, so the camera thread is the only one touching it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.camera.events import EventBuilder, SubLabel
from edge_agent.camera.objects import ObjectFilter
from edge_agent.camera.zones import ZoneLineState, ZoneUpdate
from edge_agent.config.schema import ClassifyConfig
from edge_agent.core.detections import NO_TRACK, Detections
from edge_agent.detect.classifier import Classifier
from edge_agent.health import Counters
from edge_agent.publish.payloads import OutMessage, boxes_json, header
from edge_agent.sampling.config import SamplesConfig
from edge_agent.sampling.encode import SampleJob, sample_job
from edge_agent.sampling.privacy import PrivacyFilter
from edge_agent.sampling.select import FrameView, Selector
from edge_agent.track.bytetrack import Tracker, TrackUpdate
from edge_agent.types import Frame

log = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]


@dataclass(eq=False)
class FrameContext:
    """One frame on its way through a camera's steps.

    raw: the detector's boxes (above the detector floor); dets: the current view (filtered,
    then tracked); reported: which of `dets` the camera reports (>= their label's min_score);
    out: messages to publish, in order; samples: JPEG work for the encoder thread.
    """

    frame: Frame
    raw: Detections
    inference_ms: float
    dets: Detections = field(default_factory=Detections)
    reported: BoolArray = field(default_factory=lambda: np.zeros(0, np.bool_))
    track: TrackUpdate | None = None
    zones: ZoneUpdate | None = None
    sub_labels: dict[int, SubLabel | None] = field(default_factory=dict)
    out: list[OutMessage] = field(default_factory=list)
    samples: list[SampleJob] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=dict)
    model_sha256: str = ""  # of the model that detected this frame ("" = the configured one)


Step = Callable[[FrameContext], None]


class SamplesEnv(Protocol):
    """What the samples step reads of the camera's environment."""

    @property
    def labels(self) -> Sequence[str]:
        """The model's labels."""

    @property
    def counters(self) -> Counters:
        """The agent's counters."""

    @property
    def model_sha256(self) -> str:
        """sha256 of the model file."""

    @property
    def qos(self) -> int:
        """MQTT QoS of the camera's messages."""


class FilterStep:
    """`objects:` and `object_masks:`: drop what the camera does not want."""

    def __init__(self, objects: ObjectFilter, index: bool = False) -> None:
        self.objects = objects
        self.index = index  # only the samples step reads the raw index

    def __call__(self, ctx: FrameContext) -> None:
        """Filter `raw` into `dets` and mark what is reported."""
        raw = ctx.raw
        if self.index:
            # The raw index survives filtering and tracking: samples map tracker ids back
            # to every raw box of the frame.
            raw = raw.with_data(raw_index=np.arange(len(raw)))
        result = self.objects.apply(raw)
        ctx.dets, ctx.reported = result.kept, result.reported


class TrackStep:
    """`track:`: boxes become tracks; each kept box carries its track's voted label."""

    def __init__(self, tracker: Tracker, objects: ObjectFilter) -> None:
        self.tracker = tracker
        self.objects = objects

    def __call__(self, ctx: FrameContext) -> None:
        """Update the tracker; keep tracked boxes and reported untracked ones."""
        update = self.tracker.update(ctx.dets, ctx.frame.ts, ctx.frame.index, ctx.reported)
        dets = update.detections
        reported = dets.score >= self.objects.min_score[self.objects.rows(dets.class_id)]
        ctx.track, ctx.dets = update, dets
        ctx.reported = reported | (dets.tracked != NO_TRACK)


class ZonesStep:
    """`zones:` and `lines:`: who is where, who crossed."""

    def __init__(self, state: ZoneLineState) -> None:
        self.state = state

    def __call__(self, ctx: FrameContext) -> None:
        """Advance the tracked boxes; ended tracks leave their zones."""
        tracked = ctx.dets[ctx.dets.tracked != NO_TRACK]
        ctx.zones = self.state.update(tracked, (ctx.frame.width, ctx.frame.height))
        if ctx.track is not None and ctx.track.ended:
            self.state.forget([t.id for t in ctx.track.ended])


class ClassifyStep:
    """`classify:`: a second model on the crop of each reported box of the wanted labels:
    with tracking, once per confirmed track and again every `refresh` seconds; without it,
    on every frame."""

    def __init__(
        self,
        classifier: Classifier,
        cfg: ClassifyConfig,
        labels: Sequence[str],
        counters: Counters,
        camera: str,
    ) -> None:
        self.classifier = classifier
        self.cfg = cfg
        self.counters = counters
        self._runs = f"classify.runs.{camera}"  # the second model's invocations (CPU cost)
        wanted = cfg.on_labels
        self.wanted = np.array([wanted is None or lab in wanted for lab in labels] + [False])
        self.sub_index = {lab: i for i, lab in enumerate(classifier.labels)}
        self._cache: dict[int, tuple[float, SubLabel | None]] = {}

    def __call__(self, ctx: FrameContext) -> None:
        """Classify what is due; every reported box gets its (cached) sub-label arrays."""
        dets, ts = ctx.dets, ctx.frame.ts
        last = len(self.wanted) - 1
        rows = np.where((dets.class_id >= 0) & (dets.class_id < last), dets.class_id, last)
        sub_id = np.full(len(dets), -1, np.int64)
        sub_score = np.zeros(len(dets), np.float32)
        due = ctx.reported & self.wanted[rows]
        if ctx.track is not None:
            # Tracking on: only confirmed tracks are classified (once, then every refresh); a
            # box of a track not confirmed yet would cost one run per frame until it is.
            due &= dets.tracked != NO_TRACK
        for i in np.flatnonzero(due):
            tid = int(dets.tracked[i])
            cached = self._cache.get(tid) if tid != NO_TRACK else None
            if cached is None or ts - cached[0] >= self.cfg.refresh:
                box = tuple(float(v) for v in dets.xyxy[i])
                label, score = self.classifier.top(ctx.frame.image, box)  # type: ignore[arg-type]
                self.counters.inc(self._runs)
                result = (label, score) if score >= self.cfg.min_score else None
                if tid != NO_TRACK:
                    self._cache[tid] = (ts, result)
                    ctx.sub_labels[tid] = result
                cached = (ts, result)
            if cached[1] is not None:
                sub_id[i] = self.sub_index[cached[1][0]]
                sub_score[i] = cached[1][1]
        if ctx.track is not None:
            for t in ctx.track.ended:
                self._cache.pop(t.id, None)
        ctx.dets = dets.with_data(sub_label_id=sub_id, sub_score=sub_score)


class EventsStep:
    """`events:`: track changes become events; presence and crossings become counts."""

    def __init__(self, builder: EventBuilder) -> None:
        self.builder = builder

    def __call__(self, ctx: FrameContext) -> None:
        """Add this frame's event, count and line messages."""
        if ctx.track is None:
            return
        ctx.out += self.builder.frame(
            ctx.track, ctx.zones, ctx.frame.ts, ctx.frame.index, ctx.sub_labels
        )


class SamplesStep:
    """`samples:`: frames worth labeling, chosen by the strategies within their budgets;
    privacy and JPEG encoding happen later, on the encoder thread."""

    def __init__(
        self,
        cfg: SamplesConfig,
        camera: str,
        objects: ObjectFilter,
        env: SamplesEnv,
        privacy: PrivacyFilter,
    ) -> None:
        self.cfg = cfg
        self.labels = list(env.labels)
        self.selector = Selector(cfg, camera, env.labels, objects.allowed, env.counters)
        self.objects = objects
        self.sha = env.model_sha256
        self.privacy = privacy
        self.settings = (cfg.max_side, cfg.jpeg_quality, env.qos)

    def __call__(self, ctx: FrameContext) -> None:
        """Queue the samples this frame yields."""
        raw = ctx.raw
        keep = raw.score >= self.cfg.floor
        tids = np.full(len(raw), NO_TRACK, np.int64)
        index = ctx.dets.data.get("raw_index")
        if index is not None and ctx.dets.tracker_id is not None:
            tids[index.astype(np.intp)] = ctx.dets.tracker_id
        raw = raw.with_tracker_id(tids)[keep]
        reported = raw.score >= self.objects.min_score[self.objects.rows(raw.class_id)]
        view = FrameView(ctx.frame, raw, reported, ctx.head, ctx.track, ctx.sub_labels)
        for chosen in self.selector(view):
            boxes = boxes_json(chosen.view.raw, self.labels)
            sha = ctx.model_sha256 or self.sha
            ctx.samples.append(
                sample_job(chosen, boxes, sha, self.labels, self.privacy, self.settings)
            )


class DetectionsStep:
    """The per-frame `detections` message (reported boxes, with tracker ids)."""

    def __init__(
        self,
        build: Callable[[dict[str, Any], list[dict[str, Any]]], OutMessage],
        labels: Sequence[str],
        sub_labels: Sequence[str],
        publish_empty: bool,
    ) -> None:
        self.build = build
        self.labels = labels
        self.sub_labels = sub_labels
        self.publish_empty = publish_empty

    def __call__(self, ctx: FrameContext) -> None:
        """Add the message when there is something to report (or empty frames are wanted)."""
        shown = ctx.dets[ctx.reported]
        if len(shown) or self.publish_empty:
            ctx.out.insert(0, self.build(ctx.head, boxes_json(shown, self.labels, self.sub_labels)))


def start_context(
    frame: Frame, raw: Detections, ms: float, device: str, model: str, sha256: str = ""
) -> FrameContext:
    """A context for one detected frame, with the header its messages share; `model` and
    `sha256` name the model that detected it."""
    head = header(device, model, frame, ms)
    return FrameContext(frame, raw, ms, head=head, model_sha256=sha256)
