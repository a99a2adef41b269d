"""The agent: wires sources, the detector and the publisher into threads, supervises the cameras
and stops everything cleanly.

Threads: capture per camera (edge_agent.supervisor, motion gate included) -> FrameSlot ->
detect workers -> per-camera steps -> MqttPublisher's sender (edge_agent.assemble builds the
middle). One stop Event ends them all; signal handlers only set events, the main loop does
the work. How a run ends is in edge_agent.app.shutdown; progress and systemd reporting in
edge_agent.app.status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from edge_agent.app import build
from edge_agent.app.build import Parts, build_parts, load_detectors, open_outbox_at
from edge_agent.app.reload import ActiveModel, apply_config
from edge_agent.app.shutdown import FINAL_STATS_WAIT as FINAL_STATS_WAIT  # moved; re-exported
from edge_agent.app.shutdown import shutdown
from edge_agent.app.status import progress, service
from edge_agent.assemble import Threads
from edge_agent.camera.pipeline import CameraEnv
from edge_agent.camera.worker import FrameWriter
from edge_agent.config.loader import LoadedConfig, load_config
from edge_agent.control.commands import CommandError
from edge_agent.control.service import ControlService, topics_of
from edge_agent.detect.detector import Detector
from edge_agent.errors import UserError
from edge_agent.health import Counters
from edge_agent.health.prometheus import MetricsServer, start_metrics
from edge_agent.health.stats import Feeds, Health
from edge_agent.notify import Notifier
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.outbox import Outbox
from edge_agent.publish.payloads import OutMessage, camera_state_message, stats_message
from edge_agent.sources import FrameSource, create_source
from edge_agent.supervisor import CameraRunner, CameraStatus

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 5.0
CAPTURE_STOP_TIMEOUT = 2.0  # a capture blocked in I/O delays shutdown by no more than this
PROGRESS_INTERVAL = 10.0  # seconds between progress log lines
REUSE_JOIN_TIMEOUT = 60.0  # seconds a reload waits for a detect worker still in an invoke


class Agent:
    """One configured agent. `prepare()` validates everything touching disk; `run()` runs."""

    def __init__(self, loaded: LoadedConfig, annotate: Path | None = None) -> None:
        self.loaded = loaded
        self.annotate = annotate
        self.cfg = loaded.config
        self.stop = threading.Event()  # everything stops (a signal, or the pipeline is done)
        self.signalled = threading.Event()  # SIGTERM/SIGINT: bounded waits from here on
        self.reload = threading.Event()  # SIGHUP
        self._reload_postponed = False  # logged once while a model update runs
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
        self.health = Health(self.cfg)  # the stats body and the metrics endpoint
        self.metrics: MetricsServer | None = None
        self.control: ControlService | None = None  # remote commands, periodic snapshots
        self.model: ActiveModel | None = None  # what the detect workers run
        self.capture_stop = threading.Event()  # the current cameras stop (a reload, a stop)

    def prepare(self) -> None:
        """Load the model, check labels, open replay sources and the outbox; errors are
        located UserErrors. Live cameras are opened by their supervisor (and retried)."""
        cfg = self.cfg
        detectors = load_detectors(self.loaded, cfg.runtime.detect_workers)
        self.model = ActiveModel.of(cfg.model)
        parts = build_parts(self.loaded, detectors, self.start_ts, self.counters)
        self.sources = parts.sources
        self.outbox = open_outbox_at(self.loaded, self.counters, self._close_sources)
        self.publisher = MqttPublisher(cfg.mqtt, cfg.device_id, self.counters, self.outbox)
        self.control = ControlService(self, time.monotonic())
        self.control.attach(self.publisher)
        self._build_threads(
            parts, build.writers(self.loaded, self.annotate, parts.sources, parts.labels)
        )

    def _build_threads(self, parts: Parts, writers: dict[str, FrameWriter] | None = None) -> None:
        """The threads of the current config from `parts` (at start and after a reload)."""
        cfg, model = self.cfg, self._model()
        parts.apply_floor()
        self.detector, self.sources, labels = parts.detectors[0], parts.sources, parts.labels
        env = CameraEnv(
            cfg.device_id,
            model.id.name,
            labels,
            topics_of(cfg),
            cfg.mqtt.qos,
            self.counters,
            model.id.sha256,
        )
        self.threads = Threads(
            cfg, env, parts.detectors, parts.classifiers, self.submit, writers, parts.faces
        )
        threads = self.threads
        self.health.attach(
            labels,
            env.model_sha256,
            Feeds(
                lambda: {**self.counters.snapshot(), **threads.counters()},
                lambda: {n: r.status.to_json() for n, r in self.runners.items()},
                threads.heartbeats.ages,
                self.outbox,
            ),
            threads.workers,
            cfg,
        )
        self.health.set_model(model.id.name, model.id.sha256)

    def submit(self, msg: OutMessage) -> None:
        """Hand a message to the current publisher (it changes when a reload replaces it)."""
        self._pub().submit(msg)

    def publish_stats(self) -> None:
        """Publish the stats message now (the `stats` command)."""
        self._publish_stats()

    def reload_config(self) -> dict[str, Any]:
        """Re-read the config file and apply it (SIGHUP, the `reload` command). An invalid
        file is refused (CommandError with the located error): the running config stays."""
        if self.control is not None and self.control.models.busy:
            raise CommandError("a model update is in progress; reload once it is done")
        self.notifier.status("reloading the config")
        self.notifier.watchdog(time.monotonic(), {})  # the main loop waits for the reload
        try:
            result = apply_config(self, load_config(self.loaded.file))
        except UserError as exc:
            log.error("config reload refused, the running config stays: %s", exc)
            raise CommandError(str(exc)) from None
        except Exception as exc:  # a bug: the pipeline may be half rebuilt; stop (exit 1)
            log.exception("config reload failed")
            self._internal_failure = f"config reload failed: {exc}"
            self.stop.set()
            raise CommandError(self._internal_failure) from None
        finally:
            self.notifier.watchdog(time.monotonic(), {})
        self.notifier.status(progress(self))
        return result

    def stop_pipeline(self) -> None:
        """Stop the cameras; the workers process what was captured and end every track."""
        self.capture_stop.set()
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
        for runner in self.runners.values():
            runner.close()

    def start_pipeline(self, parts: Parts) -> None:
        """After a reload: build the threads of the new config and start them (detection
        stays off where a `detect` command turned it off)."""
        pub = self._pub()
        # An interpreter is not thread-safe: a detector is handed on only once the worker
        # that held it has left its last invoke (an aborted worker may still be inside one).
        for worker in self._threads().detect:
            worker.thread.join(REUSE_JOIN_TIMEOUT)
            if worker.thread.is_alive() and worker.detector in parts.detectors:
                raise RuntimeError(f"{worker.name} is stuck in the detector; restart needed")
        for name, runner in self.runners.items():
            halted = runner.halt()  # the old capture threads no longer speak for cameras
            if halted is not None and name not in self.cfg.cameras:
                state = halted.to_json()
                pub.submit(camera_state_message(pub.topics, self.cfg.device_id, name, state))
        off = [n for n, p in self._threads().pipelines.items() if not p.detect_enabled]
        self._build_threads(parts)
        for name in set(off) & set(self._threads().pipelines):
            self._threads().pipelines[name].detect_enabled = False
        self._announce()
        self._start_threads()
        if self.control is not None:
            self.control.reconfigure(time.monotonic())

    def run(self) -> int:
        """Run until every replay has finished and been delivered, or until `stop` is set.
        Returns the exit code: 0, 1 (an internal failure) or 2 (cameras failed by user error)."""
        if self.publisher is None:
            self.prepare()
        self._pub().start()
        self.metrics = start_metrics(self.cfg.metrics, self.health)
        self._announce()
        self._start_threads()
        next_stats = time.monotonic() + self.cfg.runtime.stats_interval
        next_progress = time.monotonic() + PROGRESS_INTERVAL
        while not self.stop.is_set() and not self._threads().done.is_set():
            self.stop.wait(0.2)
            now = time.monotonic()
            for runner in self.runners.values():
                runner.check_stalled(now)
            service(self, now)
            if self.control is not None:
                self.control.tick(now)
            if self.reload.is_set():
                self._reload()
            if now >= next_stats:
                self._publish_stats()
                next_stats += self.cfg.runtime.stats_interval
            if now >= next_progress:
                self._log_progress()
                next_progress += PROGRESS_INTERVAL
        shutdown(self)
        return self._exit_code()

    def _announce(self) -> None:
        """Home Assistant discovery (at start and after a reload)."""
        if self.cfg.homeassistant.enabled:
            from edge_agent import __version__
            from edge_agent.control.homeassistant import announce, discovery_state_dir

            pub, model = self._pub(), self.cfg.model.path.name
            labels = self.detector.labels if self.detector is not None else []
            state_dir = discovery_state_dir(self.cfg, os.environ)
            announce(self.cfg, pub.topics, labels, __version__, model, pub.submit, state_dir)

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
        threads = self._threads()
        retry_max = self.cfg.runtime.retry_max_delay
        forward = self.annotate is not None
        self.capture_stop, self.runners = threading.Event(), {}
        for name in self.sources:
            cam = self.cfg.cameras[name]
            first = getattr(cam.source, "reconnect_delay", 1.0)
            self.runners[name] = CameraRunner(
                name,
                partial(create_source, name, cam, self.start_ts, self.counters),
                threads.sink(name, self.sources[name], self.submit, forward and not cam.live),
                self.counters,
                self.capture_stop,
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
        """SIGHUP: re-read the config and apply it (a refusal is logged); while a model
        update is in progress, once it is done."""
        if self.control is not None and self.control.models.busy:
            if not self._reload_postponed:
                log.info("SIGHUP: a model update is in progress; reloading once it is done")
                self._reload_postponed = True
            return
        self._reload_postponed = False
        self.reload.clear()
        with contextlib.suppress(CommandError):
            self.reload_config()

    def _log_progress(self) -> None:
        text = progress(self)
        log.info("progress: %s", text)
        self.notifier.status(text)

    def _pub(self) -> MqttPublisher:
        if self.publisher is None:
            raise RuntimeError("prepare() was not called")
        return self.publisher

    def _model(self) -> ActiveModel:
        if self.model is None:
            raise RuntimeError("prepare() was not called")
        return self.model

    def _publish_stats(self) -> None:
        pub = self._pub()
        counters, extra = self.health.stats()
        pub.submit(stats_message(pub.topics, self.cfg.device_id, time.time(), counters, extra))

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
