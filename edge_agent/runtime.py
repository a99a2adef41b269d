"""The agent: wires sources, the detector and the publisher into threads, and stops them cleanly.

Threads: one capture thread per camera -> per-camera FrameSlot -> one inference thread (the
interpreter is not thread-safe) -> MqttPublisher's sender thread. One stop Event ends them all;
signal handlers only set it.
"""

from __future__ import annotations

import difflib
import logging
import os
import sqlite3
import threading
import time

from edge_agent.config.loader import LoadedConfig
from edge_agent.config.schema import CameraConfig
from edge_agent.detect.classifier import Classifier
from edge_agent.detect.detector import Detector
from edge_agent.errors import ConfigError, SourceError, UserError
from edge_agent.health import Counters
from edge_agent.pipeline import END, CameraStage, FrameSlot, PublishContext
from edge_agent.postprocess import score_floor
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.outbox import MemoryStore, Outbox, default_path, open_store
from edge_agent.publish.payloads import stats_message
from edge_agent.sources import FrameSource, create_source
from edge_agent.types import Frame

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 5.0
PROGRESS_INTERVAL = 10.0  # seconds between progress log lines


class Agent:
    """One configured agent. `prepare()` validates everything touching disk; `run()` runs."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.stop = threading.Event()
        self.counters = Counters()
        self._wake = threading.Event()
        self._pipeline_done = threading.Event()
        self.detector: Detector | None = None
        self.sources: dict[str, FrameSource] = {}
        self.slots: dict[str, FrameSlot] = {}
        self.stages: dict[str, CameraStage] = {}
        self.publisher: MqttPublisher | None = None
        self._threads: list[threading.Thread] = []

    def prepare(self) -> None:
        """Load the model, check labels and open every source; errors are located UserErrors."""
        cfg = self.cfg
        floor = min(
            min(score_floor(c.detect), c.samples.min_score if c.samples.enabled else 1.0)
            for c in cfg.cameras.values()
        )
        try:
            self.detector = Detector(cfg.model, floor)
        except UserError as exc:
            raise type(exc)(exc.message, where=self._where_model(exc)) from None
        self._check_labels(self.detector.labels)
        start_ts = time.time()
        for name, cam in cfg.cameras.items():
            source = create_source(name, cam, start_ts)
            try:
                source.open()
            except SourceError as exc:
                self._close_sources()
                raise SourceError(
                    exc.message, where=self.loaded.where("cameras", name, "source")
                ) from None
            self.sources[name] = source
        self.publisher = MqttPublisher(cfg.mqtt, cfg.device_id, self.counters, self._outbox())
        ctx = PublishContext(
            self.publisher.topics,
            cfg.device_id,
            cfg.model.path.name,
            cfg.mqtt.qos,
            self.publisher.submit,
            self.counters,
        )
        for name, cam in cfg.cameras.items():
            self.slots[name] = FrameSlot(
                name, self.sources[name].live, cfg.runtime.queue_size, self.counters, self._wake
            )
            self.stages[name] = CameraStage(name, cam, ctx, self._classifier(name, cam))

    def _classifier(self, name: str, cam: CameraConfig) -> Classifier | None:
        if cam.classify is None:
            return None
        try:
            return Classifier(cam.classify)
        except UserError as exc:
            key = "labels" if exc.where == str(cam.classify.labels) else "model"
            where = self.loaded.where("cameras", name, "classify", key)
            raise type(exc)(exc.message, where=f"{where}: {exc.where}") from None

    def _outbox(self) -> Outbox:
        cfg = self.cfg.outbox
        if not cfg.enabled:
            log.warning("outbox disabled: undelivered messages are lost if the agent stops")
            return Outbox(MemoryStore(), cfg, self.counters)
        path = cfg.path or default_path(self.cfg.device_id, dict(os.environ))
        try:
            store = open_store(path, cfg.sync, self.counters)
        except (OSError, sqlite3.Error) as exc:
            where = self.loaded.where("outbox", "path") if cfg.path else "outbox"
            raise ConfigError(f"cannot open outbox {path}: {exc}", where=where) from None
        log.info("outbox: %s (max %d bytes, max age %.0fs)", path, cfg.max_bytes, cfg.max_age)
        return Outbox(store, cfg, self.counters)

    def _where_model(self, exc: UserError) -> str:
        if exc.where == "model.delegate":
            return self.loaded.where("model", "delegate")
        key = (
            "labels"
            if self.cfg.model.labels and str(self.cfg.model.labels) == exc.where
            else "path"
        )
        return f"{self.loaded.where('model', key)}: {exc.where}"

    def _check_labels(self, known: list[str]) -> None:
        for name, cam in self.cfg.cameras.items():
            # (key path under the camera, label) for every label the config names
            named: list[tuple[tuple[str | int, ...], str]] = [
                (("detect", "labels", i), lab) for i, lab in enumerate(cam.detect.labels or [])
            ]
            named += [(("detect", "per_label", lab), lab) for lab in cam.detect.per_label]
            if cam.classify is not None:
                named += [
                    (("classify", "on_labels", i), lab)
                    for i, lab in enumerate(cam.classify.on_labels or [])
                ]
            for path, label in named:
                if label in known:
                    continue
                close = difflib.get_close_matches(label, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"label {label!r} is not one of the model's {len(known)} labels{hint}",
                    where=self.loaded.where("cameras", name, *path),
                )

    def run(self) -> int:
        """Run until every replay has finished and been delivered, or until `stop` is set."""
        if self.publisher is None:
            self.prepare()
        self._pub().start()
        self._start_threads()
        next_stats = time.monotonic() + self.cfg.runtime.stats_interval
        next_progress = time.monotonic() + PROGRESS_INTERVAL
        while not self.stop.is_set() and not self._pipeline_done.is_set():
            self.stop.wait(0.2)
            now = time.monotonic()
            if now >= next_stats:
                self._publish_stats()
                next_stats += self.cfg.runtime.stats_interval
            if now >= next_progress:
                self._log_progress()
                next_progress += PROGRESS_INTERVAL
        self._shutdown()
        return 0

    def _start_threads(self) -> None:
        for name in self.sources:
            self._threads.append(
                threading.Thread(
                    target=self._capture, args=(name,), name=f"capture-{name}", daemon=True
                )
            )
        self._threads.append(threading.Thread(target=self._infer, name="inference", daemon=True))
        for thread in self._threads:
            thread.start()

    def _capture(self, name: str) -> None:
        source, slot = self.sources[name], self.slots[name]
        try:
            while not self.stop.is_set():
                frame = source.read()
                if frame is None:
                    break
                self.counters.inc(f"frames.captured.{name}")
                if not slot.put(frame, self.stop):
                    break
        except Exception:
            self.counters.inc(f"frames.capture_errors.{name}")
            log.exception("camera %s: capture failed; camera stopped", name)
        slot.put(END, self.stop)
        log.info("camera %s: capture ended", name)

    def _infer(self) -> None:
        active = set(self.slots)
        while active:
            got = False
            for name in sorted(active):
                has, item = self.slots[name].get()
                if not has:
                    continue
                got = True
                if item is END:
                    active.discard(name)
                else:
                    self._process(name, item)
            if not got:
                self._wake.wait(0.1)
                self._wake.clear()
        self._pipeline_done.set()
        log.info("all cameras finished")

    def _process(self, name: str, frame: Frame) -> None:
        if self.detector is None:
            raise RuntimeError("prepare() was not called")
        try:
            raw, ms = self.detector.detect(frame.image)
            self.stages[name].handle(frame, raw, ms)
            self.counters.inc(f"frames.processed.{name}")
        except Exception:
            # One bad frame must not stop the camera or lose what was already captured.
            self.counters.inc(f"frames.errors.{name}")
            log.exception("camera %s: frame %d failed", name, frame.index)

    def _log_progress(self) -> None:
        parts = []
        for name, source in self.sources.items():
            done = self.counters.get(f"frames.processed.{name}")
            total = getattr(source, "total", None)
            parts.append(f"{name} {done}/{total}" if total else f"{name} {done}")
        pending = self.publisher.undelivered() if self.publisher is not None else 0
        log.info("progress: frames %s; %d messages undelivered", ", ".join(parts), pending)

    def _pub(self) -> MqttPublisher:
        if self.publisher is None:
            raise RuntimeError("prepare() was not called")
        return self.publisher

    def _publish_stats(self) -> None:
        self.publisher = self._pub()
        counters = self.counters.snapshot()
        self.publisher.submit(
            stats_message(self.publisher.topics, self.cfg.device_id, time.time(), counters)
        )

    def _shutdown(self) -> None:
        self.publisher = self._pub()
        signalled = self.stop.is_set()
        if signalled:
            log.info("stopping: finishing captured frames")
        self.stop.set()  # capture threads stop; inference drains what was captured
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("thread %s did not stop within %.0fs", thread.name, JOIN_TIMEOUT)
        self._close_sources()
        self._publish_stats()
        # Batch runs wait for delivery until signalled; a signalled stop waits a bounded time.
        timeout = self.cfg.runtime.shutdown_timeout
        if not signalled:
            self._wait_batch_delivery(timeout)
        elif not self.publisher.wait_delivered(timeout):
            log.warning("shutdown timeout: %d messages undelivered", self.publisher.undelivered())
        self.publisher.close()
        log.info("stopped; counters %s", self.counters.snapshot())

    def _wait_batch_delivery(self, timeout: float) -> None:
        self.publisher = self._pub()
        self.stop.clear()  # from here on, stop means "a signal arrived while delivering"
        if not self.publisher.wait_delivered(None, self.stop):
            self.publisher.wait_delivered(timeout)

    def _close_sources(self) -> None:
        for name, source in self.sources.items():
            try:
                source.close()
            except Exception:
                log.exception("camera %s: close failed", name)
