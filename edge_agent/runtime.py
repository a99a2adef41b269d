"""The agent: wires sources, the detector and the publisher into threads, supervises the cameras
and stops everything cleanly.

Threads: capture per camera (edge_agent.supervisor, motion gate included) -> FrameSlot ->
detect workers -> per-camera steps -> MqttPublisher's sender (edge_agent.assemble builds the
middle). One stop Event ends them all; signal handlers only set events, the main loop does
the work.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import partial
from pathlib import Path

from edge_agent.assemble import Threads
from edge_agent.camera.pipeline import CameraEnv, detector_floor
from edge_agent.camera.worker import FrameWriter
from edge_agent.config.labels_check import check_labels
from edge_agent.config.loader import LoadedConfig, load_config
from edge_agent.config.schema import CameraConfig
from edge_agent.detect.classifier import Classifier
from edge_agent.detect.detector import Detector
from edge_agent.errors import SourceError, UserError
from edge_agent.files import file_sha256
from edge_agent.health import Counters
from edge_agent.notify import Notifier
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.outbox import Outbox
from edge_agent.publish.outbox_open import OutboxError, open_outbox
from edge_agent.publish.payloads import camera_state_message, stats_message
from edge_agent.sampling.privacy import FaceFinder, ModelFaces
from edge_agent.sources import FrameSource, create_source
from edge_agent.supervisor import CameraRunner, CameraStatus

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 5.0
CAPTURE_STOP_TIMEOUT = 2.0  # a capture blocked in I/O delays shutdown by no more than this
PROGRESS_INTERVAL = 10.0  # seconds between progress log lines
FINAL_STATS_WAIT = 5.0  # seconds the final stats message may add to a stop
REPLAY_TYPES = ("video", "images")  # opened at start: a missing file is the user's to fix


class Agent:
    """One configured agent. `prepare()` validates everything touching disk; `run()` runs."""

    def __init__(self, loaded: LoadedConfig, annotate: Path | None = None) -> None:
        self.loaded = loaded
        self.annotate = annotate
        self.cfg = loaded.config
        self.stop = threading.Event()  # everything stops (a signal, or the pipeline is done)
        self.signalled = threading.Event()  # SIGTERM/SIGINT: bounded waits from here on
        self.reload = threading.Event()  # SIGHUP
        self.counters = Counters()
        self._internal_failure = ""
        self.detector: Detector | None = None
        self.threads: Threads | None = None
        self.start_ts = time.time()
        self.sources: dict[str, FrameSource] = {}
        self.runners: dict[str, CameraRunner] = {}
        self.publisher: MqttPublisher | None = None
        self.outbox: Outbox | None = None
        self.notifier = Notifier()  # systemd readiness and watchdog (no-op outside systemd)

    def prepare(self) -> None:
        """Load the model, check labels, open replay sources and the outbox; errors are
        located UserErrors. Live cameras are opened by their supervisor (and retried)."""
        cfg = self.cfg
        detectors = [self._detector() for _ in range(cfg.runtime.detect_workers)]
        self.detector = detectors[0]
        labels = self.detector.labels
        check_labels(self.loaded, labels)
        floor = min(detector_floor(c, labels) for c in cfg.cameras.values())
        for detector in detectors:
            detector.min_score = floor
        classifiers = {name: self._classifier(name, cam) for name, cam in cfg.cameras.items()}
        faces = {name: self._faces(name, cam) for name, cam in cfg.cameras.items()}
        for name, cam in cfg.cameras.items():
            self.sources[name] = self._source(name, cam)
        self.outbox = self._outbox()
        self.publisher = MqttPublisher(cfg.mqtt, cfg.device_id, self.counters, self.outbox)
        env = CameraEnv(
            cfg.device_id,
            cfg.model.path.name,
            labels,
            self.publisher.topics,
            cfg.mqtt.qos,
            self.counters,
            file_sha256(cfg.model.path),
        )
        self.threads = Threads(
            cfg, env, detectors, classifiers, self.publisher.submit, self._writers(), faces
        )

    def _detector(self) -> Detector:
        try:
            return Detector(self.cfg.model, 1.0)  # the floor is set once the labels are known
        except UserError as exc:
            raise type(exc)(exc.message, where=self._where_model(exc)) from None

    def _writers(self) -> dict[str, FrameWriter]:
        """Annotated videos (`--annotate`), one per replay camera."""
        if self.annotate is None:
            return {}
        from edge_agent.tools.annotate import Annotator

        replays = [n for n, c in self.cfg.cameras.items() if not c.live]
        out: dict[str, FrameWriter] = {}
        for name in replays:
            cam, source = self.cfg.cameras[name], self.sources[name]
            path = self.annotate
            if len(replays) > 1:
                path = path.with_name(f"{path.stem}-{name}{path.suffix}")
            fps = float(getattr(source, "fps", None) or 10.0)
            labels = self.detector.labels if self.detector is not None else []
            total = getattr(source, "total", None)
            out[name] = Annotator(path, fps, labels, cam.zones, cam.lines, total)
        return out

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

    def _faces(self, name: str, cam: CameraConfig) -> FaceFinder | None:
        blur = cam.samples.privacy.blur_faces
        if not cam.samples.enabled or blur is None:
            return None
        try:
            return ModelFaces(blur)
        except UserError as exc:
            where = self.loaded.where("cameras", name, "samples", "privacy", "blur_faces", "model")
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

    def run(self) -> int:
        """Run until every replay has finished and been delivered, or until `stop` is set.
        Returns the exit code: 0, 1 (an internal failure) or 2 (cameras failed by user error)."""
        if self.publisher is None:
            self.prepare()
        self._pub().start()
        self._start_threads()
        next_stats = time.monotonic() + self.cfg.runtime.stats_interval
        next_progress = time.monotonic() + PROGRESS_INTERVAL
        done = self._threads().done
        while not self.stop.is_set() and not done.is_set():
            self.stop.wait(0.2)
            now = time.monotonic()
            for runner in self.runners.values():
                runner.check_stalled(now)
            self._service(now)
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
        if self.threads is not None and self.threads.failure:
            self._internal_failure = self.threads.failure
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
        threads, pub = self._threads(), self._pub()
        retry_max = self.cfg.runtime.retry_max_delay
        forward = self.annotate is not None
        for name in self.sources:
            cam = self.cfg.cameras[name]
            first = getattr(cam.source, "reconnect_delay", 1.0)
            self.runners[name] = CameraRunner(
                name,
                partial(create_source, name, cam, self.start_ts, self.counters),
                threads.sink(name, self.sources[name], pub.submit, forward and not cam.live),
                self.counters,
                self.stop,
                self._on_camera_state,
                (first, max(first, retry_max)),
                getattr(cam.source, "frame_timeout", None) if cam.live else None,
            )
        threads.start()
        # Every runner exists before any capture thread reports a state.
        for name, runner in self.runners.items():
            runner.start(self.sources[name], opened=not self.cfg.cameras[name].live)

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
        if self.threads is not None and all(r.finished for r in self.runners.values()):
            self.threads.wake.set()

    def _threads(self) -> Threads:
        if self.threads is None:
            raise RuntimeError("prepare() was not called")
        return self.threads

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

    def _progress(self) -> str:
        parts = []
        for name, source in self.sources.items():
            done = self.counters.get(f"frames.processed.{name}")
            total = getattr(source, "total", None)
            state = self.runners[name].status.state if name in self.runners else "?"
            shown = f"{done}/{total}" if total else str(done)
            parts.append(f"{name} {shown}" + (f" ({state})" if state != "running" else ""))
        pending = self.publisher.undelivered() if self.publisher is not None else 0
        return f"frames {', '.join(parts)}; {pending} messages undelivered"

    def _log_progress(self) -> None:
        text = self._progress()
        log.info("progress: %s", text)
        self.notifier.status(text)

    def _service(self, now: float) -> None:
        """systemd: READY=1 once every camera has delivered a frame or is retrying (or has
        finished, or failed); the watchdog fed while every pipeline thread beats."""
        if not self.notifier.ready_sent and all(
            r.status.state != "starting" for r in self.runners.values()
        ):
            self.notifier.ready(self._progress())
        self.notifier.watchdog(now, self._threads().heartbeats.ages())

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
        extra["threads"] = self._threads().heartbeats.ages()
        counters = {**self.counters.snapshot(), **self._threads().counters()}
        pub.submit(stats_message(pub.topics, self.cfg.device_id, time.time(), counters, extra))

    def _shutdown(self) -> None:
        pub = self._pub()
        signalled = self.signalled.is_set()
        self.notifier.stopping("stopping: finishing captured frames, delivering messages")
        if signalled:
            log.info("stopping: finishing captured frames")
        self.stop.set()  # capture threads stop; the workers drain what was captured
        threads = self._threads()
        threads.wake.set()
        deadline = time.monotonic() + CAPTURE_STOP_TIMEOUT
        for name, runner in self.runners.items():
            if not runner.join(deadline):
                log.warning("camera %s: capture blocked in I/O; not waiting for it", name)
        # Captured frames are processed before the final messages (a slow model needs time).
        wait = max(JOIN_TIMEOUT, self.cfg.runtime.shutdown_timeout)
        if not threads.finish(wait):
            log.warning("captured frames not processed within %.0fs were abandoned", wait)
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
        log.info("stopped; counters %s", {**self.counters.snapshot(), **threads.counters()})

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
