"""The parts of an agent's pipeline that come from files the config names: detectors,
classifiers, face finders, replay sources, the outbox and annotated videos. Every user error
is located in the config file (`file:line: key.path: message`). Used at start and by a
reload, which builds the new parts before it stops the running ones."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.camera.pipeline import detector_floor
from edge_agent.camera.worker import FrameWriter
from edge_agent.config.labels_check import check_labels
from edge_agent.config.loader import LoadedConfig
from edge_agent.config.schema import CameraConfig, ModelConfig
from edge_agent.detect.classifier import Classifier
from edge_agent.detect.detector import Detector
from edge_agent.errors import SourceError, UserError
from edge_agent.health import Counters
from edge_agent.publish.outbox import Outbox
from edge_agent.publish.outbox_open import OutboxError, open_outbox
from edge_agent.sampling.privacy import FaceFinder, ModelFaces
from edge_agent.sources import FrameSource, create_source

log = logging.getLogger(__name__)

REPLAY_TYPES = ("video", "images")  # opened at start: a missing file is the user's to fix


@dataclass
class Parts:
    """What one pipeline is built from, besides the config."""

    detectors: list[Detector]
    classifiers: dict[str, Classifier | None]
    faces: dict[str, FaceFinder | None]
    sources: dict[str, FrameSource]
    floor: float  # the lowest score any step needs from the detector

    def apply_floor(self) -> None:
        """Set the floor on the detectors (when the pipeline starts: during a reload the
        same detectors may still be finishing frames for the old config)."""
        for detector in self.detectors:
            detector.min_score = self.floor

    @property
    def labels(self) -> list[str]:
        """The detector's labels."""
        return self.detectors[0].labels


def where_model(loaded: LoadedConfig, exc: UserError) -> str:
    """Where in the config a model error points (the path, the labels or the delegate)."""
    if exc.where == "model.delegate":
        return loaded.where("model", "delegate")
    labels = loaded.config.model.labels
    key = "labels" if labels and str(labels) == exc.where else "path"
    return f"{loaded.where('model', key)}: {exc.where}"


def load_detectors(
    loaded: LoadedConfig, count: int, model: ModelConfig | None = None
) -> list[Detector]:
    """`count` detectors of the config's model (or `model`); the floor is set by
    `build_parts` once the labels are known."""
    cfg = model or loaded.config.model
    try:
        return [Detector(cfg, 1.0) for _ in range(count)]
    except UserError as exc:
        if model is not None:
            raise
        raise type(exc)(exc.message, where=where_model(loaded, exc)) from None


def labels_floor(loaded: LoadedConfig, labels: list[str]) -> float:
    """Check the config's labels against the model's; the lowest score any step needs."""
    check_labels(loaded, labels)
    return min(detector_floor(c, labels) for c in loaded.config.cameras.values())


def build_parts(
    loaded: LoadedConfig, detectors: list[Detector], start_ts: float, counters: Counters
) -> Parts:
    """Check labels, then load classifiers and face models and open the replay sources."""
    floor = labels_floor(loaded, detectors[0].labels)
    cameras = loaded.config.cameras.items()
    classifiers = {name: _classifier(loaded, name, cam) for name, cam in cameras}
    faces = {name: _faces(loaded, name, cam) for name, cam in cameras}
    sources: dict[str, FrameSource] = {}
    for name, cam in cameras:
        try:
            sources[name] = _source(loaded, name, cam, start_ts, counters)
        except SourceError:
            close_sources(sources)
            raise
    return Parts(detectors, classifiers, faces, sources, floor)


def _source(
    loaded: LoadedConfig, name: str, cam: CameraConfig, start_ts: float, counters: Counters
) -> FrameSource:
    source = create_source(name, cam, start_ts, counters)
    if cam.source.type not in REPLAY_TYPES:
        return source  # opened (and retried) by the camera's supervisor
    try:
        source.open()
    except SourceError as exc:
        where = loaded.where("cameras", name, "source")
        raise SourceError(exc.message, where=where) from None
    return source


def _classifier(loaded: LoadedConfig, name: str, cam: CameraConfig) -> Classifier | None:
    if cam.classify is None:
        return None
    try:
        return Classifier(cam.classify)
    except UserError as exc:
        key = "labels" if exc.where == str(cam.classify.labels) else "model"
        where = loaded.where("cameras", name, "classify", key)
        raise type(exc)(exc.message, where=f"{where}: {exc.where}") from None


def _faces(loaded: LoadedConfig, name: str, cam: CameraConfig) -> FaceFinder | None:
    blur = cam.samples.privacy.blur_faces
    if not cam.samples.enabled or blur is None:
        return None
    try:
        return ModelFaces(blur)
    except UserError as exc:
        where = loaded.where("cameras", name, "samples", "privacy", "blur_faces", "model")
        raise type(exc)(exc.message, where=f"{where}: {exc.where}") from None


def open_outbox_at(
    loaded: LoadedConfig, counters: Counters, on_error: Callable[[], None] = lambda: None
) -> Outbox:
    """The config's outbox; `on_error` runs before a located error is raised."""
    cfg = loaded.config
    try:
        return open_outbox(cfg.outbox, cfg.device_id, counters, os.environ)
    except OutboxError as exc:
        on_error()
        where = loaded.where("outbox", "path") if cfg.outbox.path else "outbox"
        raise OutboxError(exc.message, where=where) from None


def writers(
    loaded: LoadedConfig,
    annotate: Path | None,
    sources: dict[str, FrameSource],
    labels: Sequence[str],
) -> dict[str, FrameWriter]:
    """Annotated videos (`--annotate`), one per replay camera."""
    if annotate is None:
        return {}
    from edge_agent.tools.annotate import Annotator

    cameras = loaded.config.cameras
    replays = [n for n, c in cameras.items() if not c.live]
    out: dict[str, FrameWriter] = {}
    for name in replays:
        cam, source = cameras[name], sources[name]
        path = annotate
        if len(replays) > 1:
            path = path.with_name(f"{path.stem}-{name}{path.suffix}")
        fps = float(getattr(source, "fps", None) or 10.0)
        total = getattr(source, "total", None)
        out[name] = Annotator(path, fps, labels, cam.zones, cam.lines, total)
    return out


def close_sources(sources: dict[str, FrameSource]) -> None:
    """Close every source (errors are logged, not raised)."""
    for name, source in sources.items():
        try:
            source.close()
        except Exception:
            log.exception("camera %s: close failed", name)
