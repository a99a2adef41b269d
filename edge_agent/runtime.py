"""The agent: wires sources, the detector and the publisher into threads, supervises the cameras
and stops everything cleanly.

Threads: one capture thread per camera (edge_agent.supervisor) -> per-camera FrameSlot -> one
inference thread (the interpreter is not thread-safe) -> MqttPublisher's sender thread. One stop
Event ends them all; signal handlers only set events, the main loop does the work.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from functools import partial

from edge_agent.config.loader import LoadedConfig, load_config
from edge_agent.config.schema import CameraConfig
from edge_agent.detect.classifier import Classifier
from edge_agent.detect.detector import Detector
from edge_agent.errors import ConfigError, SourceError, UserError
from edge_agent.health import Counters
from edge_agent.pipeline import END, CameraStage, FrameSlot, PublishContext
from edge_agent.postprocess import score_floor
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.outbox import Outbox
from edge_agent.publish.outbox_open import OutboxError, open_outbox
from edge_agent.publish.payloads import camera_state_message, stats_message
from edge_agent.sources import FrameSource, create_source
from edge_agent.supervisor import CameraRunner, CameraStatus
from edge_agent.types import Frame

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 5.0
CAPTURE_STOP_TIMEOUT = 2.0  # a capture blocked in I/O delays shutdown by no more than this
PROGRESS_INTERVAL = 10.0  # seconds between progress log lines
FRAME_ERROR_LOG_INTERVAL = 60.0  # seconds between tracebacks of failing frames, per camera
FINAL_STATS_WAIT = 5.0  # seconds the final stats message may add to a stop
REPLAY_TYPES = ("video", "images")  # opened at start: a missing file is the user's to fix


class Agent:
    """One configured agent. `prepare()` validates everything touching disk; `run()` runs."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.stop = threading.Event()  # everything stops (a signal, or the pipeline is done)
        self.signalled = threading.Event()  # SIGTERM/SIGINT: bounded waits from here on
        self.reload = threading.Event()  # SIGHUP
        self.counters = Counters()
        self._wake = threading.Event()
        self._pipeline_done = threading.Event()
        self._captures_done = threading.Event()  # no capture thread will put frames any more
        self._internal_failure = ""
        self._next_frame_error_log: dict[str, float] = {}
        self.detector: Detector | None = None
        self.start_ts = time.time()
        self.sources: dict[str, FrameSource] = {}
        self.runners: dict[str, CameraRunner] = {}
        self.slots: dict[str, FrameSlot] = {}
        self.stages: dict[str, CameraStage] = {}
        self.publisher: MqttPublisher | None = None
        self.outbox: Outbox | None = None
        self._inference: threading.Thread | None = None

    def prepare(self) -> None:
        """Load the model, check labels, open replay sources and the outbox; errors are
        located UserErrors. Live cameras are opened by their supervisor (and retried)."""
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
        for name, cam in cfg.cameras.items():
            self.sources[name] = self._source(name, cam)
        self.outbox = self._outbox()
        self.publisher = MqttPublisher(cfg.mqtt, cfg.device_id, self.counters, self.outbox)
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

    def _source(self, name: str, cam: CameraConfig) -> FrameSource:
        source = create_source(name, cam, self.start_ts, self.counters)
        if cam.source.type not in REPLAY_TYPES:
            return source  # opened (and retried) by the camera's supervisor
        try:
            source.open()
        except SourceError as exc:
            self._close_sources()
            where = self.loaded.where("cameras", name, "source")
            raise SourceError(exc.message, where=where) from None
        return source

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
        try:
            return open_outbox(self.cfg.outbox, self.cfg.device_id, self.counters, os.environ)
        except OutboxError as exc:
            self._close_sources()
            where = self.loaded.where("outbox", "path") if self.cfg.outbox.path else "outbox"
            raise OutboxError(exc.message, where=where) from None

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
        """Run until every replay has finished and been delivered, or until `stop` is set.
        Returns the exit code: 0, 1 (an internal failure) or 2 (cameras failed by user error)."""
        if self.publisher is None:
            self.prepare()
        self._pub().start()
        self._start_threads()
        next_stats = time.monotonic() + self.cfg.runtime.stats_interval
        next_progress = time.monotonic() + PROGRESS_INTERVAL
        while not self.stop.is_set() and not self._pipeline_done.is_set():
            self.stop.wait(0.2)
            now = time.monotonic()
            for runner in self.runners.values():
                runner.check_stalled(now)
            if self.reload.is_set():
                self._reload()
            if now >= next_stats:
                self._publish_stats()
                next_stats += self.cfg.runtime.stats_interval
            if now >= next_progress:
                self._log_progress()
                next_progress += PROGRESS_INTERVAL
        self._shutdown()
        return self._exit_code()

    def _exit_code(self) -> int:
        if self._internal_failure:
            log.error("exiting with an internal failure: %s", self._internal_failure)
            return 1
        failed = {n: r.status for n, r in self.runners.items() if r.status.state == "failed"}
        if any(s.internal for s in failed.values()):
            return 1
        if failed:
            names = ", ".join(f"{n} ({s.reason})" for n, s in failed.items())
            log.error("cameras failed: %s", names)
            return 2
        return 0

    def _start_threads(self) -> None:
        retry_max = self.cfg.runtime.retry_max_delay
        for name in self.sources:
            cam = self.cfg.cameras[name]
            live = cam.source.type not in REPLAY_TYPES
            first = getattr(cam.source, "reconnect_delay", 1.0)
            self.runners[name] = CameraRunner(
                name,
                partial(create_source, name, cam, self.start_ts, self.counters),
                self.slots[name],
                self.counters,
                self.stop,
                self._on_camera_state,
                (first, max(first, retry_max)),
                getattr(cam.source, "frame_timeout", None) if live else None,
            )
        # Every runner exists before any capture thread reports a state.
        for name, runner in self.runners.items():
            live = self.cfg.cameras[name].source.type not in REPLAY_TYPES
            runner.start(self.sources[name], opened=not live)
        self._inference = threading.Thread(target=self._infer, name="inference", daemon=True)
        self._inference.start()

    def _on_camera_state(self, name: str, status: CameraStatus) -> None:
        """Log and publish (retained) a camera's state change."""
        quiet = status.state in ("starting", "running", "stopped")
        detail = f" ({status.reason})" if status.reason else ""
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "camera %s: %s%s",
            name,
            status.state,
            detail,
        )
        pub = self._pub()
        pub.submit(camera_state_message(pub.topics, self.cfg.device_id, name, status.to_json()))
        if self.runners and all(r.finished for r in self.runners.values()):
            self._wake.set()

    def _infer(self) -> None:
        try:
            self._infer_loop()
        except Exception as exc:
            # The detector thread is the pipeline: without it nothing is processed. Exit
            # non-zero so systemd restarts the agent.
            log.exception("inference thread failed")
            self._internal_failure = f"inference thread failed: {exc}"
            self.stop.set()
        self._pipeline_done.set()

    def _infer_loop(self) -> None:
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
                if self._captures_done.is_set():
                    break  # every captured frame is processed; blocked captures are abandoned
                self._wake.wait(0.1)
                self._wake.clear()
        log.info("all cameras finished")

    def _process(self, name: str, frame: Frame) -> None:
        if self.detector is None:
            raise RuntimeError("prepare() was not called")
        try:
            raw, ms = self.detector.detect(frame.image)
            self.stages[name].handle(frame, raw, ms)
            self.counters.inc(f"frames.processed.{name}")
        except Exception:
            # One bad frame must not stop the camera or lose what was already captured; a
            # camera that fails every frame logs once a minute, not at its frame rate.
            self.counters.inc(f"frames.errors.{name}")
            now = time.monotonic()
            if now >= self._next_frame_error_log.get(name, 0.0):
                self._next_frame_error_log[name] = now + FRAME_ERROR_LOG_INTERVAL
                failed = self.counters.get(f"frames.errors.{name}")
                log.exception(
                    "camera %s: frame %d failed (%d frames failed so far, frames.errors.%s)",
                    name,
                    frame.index,
                    failed,
                    name,
                )

    def _reload(self) -> None:
        """SIGHUP: re-read the config; the running config stays until a restart applies it."""
        self.reload.clear()
        try:
            fresh = load_config(self.loaded.file)
        except UserError as exc:
            log.error("config reload refused, the running config stays: %s", exc)
            return
        if fresh.config == self.cfg:
            log.info("SIGHUP: %s is unchanged", self.loaded.file)
        else:
            log.warning(
                "SIGHUP: %s is valid but changed; restart the agent to apply it "
                "(live reload is not supported yet); the running config stays",
                self.loaded.file,
            )

    def _log_progress(self) -> None:
        parts = []
        for name, source in self.sources.items():
            done = self.counters.get(f"frames.processed.{name}")
            total = getattr(source, "total", None)
            state = self.runners[name].status.state if name in self.runners else "?"
            shown = f"{done}/{total}" if total else str(done)
            parts.append(f"{name} {shown}" + (f" ({state})" if state != "running" else ""))
        pending = self.publisher.undelivered() if self.publisher is not None else 0
        log.info("progress: frames %s; %d messages undelivered", ", ".join(parts), pending)

    def _pub(self) -> MqttPublisher:
        if self.publisher is None:
            raise RuntimeError("prepare() was not called")
        return self.publisher

    def _publish_stats(self) -> None:
        pub = self._pub()
        extra: dict[str, object] = {
            "cameras": {n: r.status.to_json() for n, r in self.runners.items()},
        }
        if self.outbox is not None:
            extra["outbox"] = {
                "mode": self.outbox.mode,
                "messages": len(self.outbox),
                "bytes": self.outbox.bytes,
                "dead_letters": self.outbox.dead_letter_count(),
            }
        counters = self.counters.snapshot()
        pub.submit(stats_message(pub.topics, self.cfg.device_id, time.time(), counters, extra))

    def _shutdown(self) -> None:
        pub = self._pub()
        signalled = self.signalled.is_set()
        if signalled:
            log.info("stopping: finishing captured frames")
        self.stop.set()  # capture threads stop; inference drains what was captured
        self._wake.set()
        deadline = time.monotonic() + CAPTURE_STOP_TIMEOUT
        for name, runner in self.runners.items():
            if not runner.join(deadline):
                log.warning("camera %s: capture blocked in I/O; not waiting for it", name)
        self._captures_done.set()
        self._wake.set()
        if self._inference is not None:
            # Captured frames are processed before the final messages (a slow model needs time).
            wait = max(JOIN_TIMEOUT, self.cfg.runtime.shutdown_timeout)
            self._inference.join(wait)
            if self._inference.is_alive():
                log.warning("inference did not stop within %.0fs", wait)
        for name, runner in self.runners.items():
            runner.close()
            halted = runner.halt()
            if halted is not None:
                pub.submit(
                    camera_state_message(pub.topics, self.cfg.device_id, name, halted.to_json())
                )
        # Batch runs wait for delivery until signalled; a signalled stop waits a bounded time.
        # The final stats go last, so they count what happened to every message before them.
        # From the signal on, everything (final stats included) fits in shutdown_timeout.
        timeout = self.cfg.runtime.shutdown_timeout
        until: float | None = time.monotonic() + timeout if signalled else None
        if until is None and not pub.wait_delivered(None, self.signalled):
            until = time.monotonic() + timeout  # a signal arrived while delivering
        if until is not None and not pub.wait_delivered(until - time.monotonic()):
            log.warning("shutdown timeout: %d messages undelivered", pub.undelivered())
        self._publish_stats()
        if until is None:
            self._wait_batch_delivery(min(FINAL_STATS_WAIT, timeout))
        else:
            pub.wait_delivered(max(min(FINAL_STATS_WAIT, until - time.monotonic()), 0.2))
        pub.close()
        log.info("stopped; counters %s", self.counters.snapshot())

    def _wait_batch_delivery(self, timeout: float) -> None:
        """Until delivered; once a signal arrives, at most `timeout` more."""
        pub = self._pub()
        if not pub.wait_delivered(None, self.signalled):
            pub.wait_delivered(timeout)

    def force_exit_flush(self) -> None:
        """Second signal: commit what is staged (bounded), so the outbox keeps it."""
        if self.outbox is not None:
            self.outbox.flush()

    def _close_sources(self) -> None:
        for name, source in self.sources.items():
            try:
                source.close()
            except Exception:
                log.exception("camera %s: close failed", name)
