"""Builds the threads between capture and publish from the config (see edge_agent.workers for
the shape) and ends them in order: detect workers drain the slots, camera threads drain their
queues and end their tracks, the encoder encodes what was chosen."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from edge_agent.camera.gate import GatedSink
from edge_agent.camera.pipeline import CameraEnv, CameraPipeline
from edge_agent.camera.worker import CameraWorker, FrameWriter
from edge_agent.config.schema import AgentConfig
from edge_agent.detect.classifier import Classifier
from edge_agent.detect.detector import Detector
from edge_agent.pipeline import FrameSlot
from edge_agent.sampling.privacy import FaceFinder
from edge_agent.sources import FrameSource
from edge_agent.workers import (
    DetectWorker,
    Heartbeats,
    PostQueue,
    SampleEncoder,
    Scheduler,
    Submit,
    start_all,
)

log = logging.getLogger(__name__)

POST_QUEUE = 8  # detected frames waiting for a camera's steps
DEFAULT_FPS = 10.0


class Threads:
    """The detect workers, camera threads and encoder of one agent."""

    def __init__(
        self,
        cfg: AgentConfig,
        env: CameraEnv,
        detectors: list[Detector],
        classifiers: Mapping[str, Classifier | None],
        submit: Submit,
        writers: Mapping[str, FrameWriter] | None = None,
        faces: Mapping[str, FaceFinder | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.heartbeats = Heartbeats()
        self.wake = threading.Event()
        self.failure = ""
        self.encoder = SampleEncoder(env.topics, submit, env.counters, self.heartbeats)
        self.pipelines: dict[str, CameraPipeline] = {}
        self.slots: dict[str, FrameSlot] = {}
        self.workers: dict[str, CameraWorker] = {}
        self.abort = threading.Event()  # give up on queued work (a crash, or a timeout)
        posts: dict[str, PostQueue] = {}
        writers = writers or {}
        for name, cam in cfg.cameras.items():
            self.pipelines[name] = CameraPipeline(
                name, cam, env, classifiers.get(name), (faces or {}).get(name)
            )
            self.slots[name] = FrameSlot(
                name, cam.live, cfg.runtime.queue_size, env.counters, self.wake
            )
            posts[name] = PostQueue(POST_QUEUE, self.abort)
            worker = CameraWorker(
                self.pipelines[name],
                posts[name],
                submit,
                self.encoder,
                self.heartbeats,
                self.abort,
                writers.get(name),
            )
            worker.on_crash = self._crashed
            self.workers[name] = worker
        self.scheduler = Scheduler(self.slots, self.wake, self.abort)
        self.detect = [
            DetectWorker(i, d, self.scheduler, posts, self.heartbeats, self._crashed)
            for i, d in enumerate(detectors)
        ]
        self.done = threading.Event()  # every camera thread has ended

    def _crashed(self, reason: str) -> None:
        self.failure = self.failure or reason
        self.abort.set()
        self.done.set()

    def sink(
        self, name: str, source: FrameSource, submit: Submit, forward_skipped: bool
    ) -> GatedSink:
        """The motion-gated entry of camera `name`'s frames (given to its capture thread)."""
        cam = self.cfg.cameras[name]
        pipeline = self.pipelines[name]
        fps = float(getattr(source, "fps", None) or DEFAULT_FPS)
        return GatedSink(
            name,
            self.slots[name],
            cam.motion_config,
            fps,
            self.env.counters,
            submit,
            self.env.topics.motion(name),
            lambda: pipeline.tracks_active,
            forward_skipped,
            lambda: pipeline.detect_enabled,
        )

    def start(self) -> None:
        """Start the encoder, the camera threads, then the detect workers."""
        for pipeline in self.pipelines.values():
            for message in pipeline.initial_messages():
                self.encoder.submit(message)
        start_all(
            [self.encoder.thread]
            + [w.thread for w in self.workers.values()]
            + [d.thread for d in self.detect]
        )
        threading.Thread(target=self._watch_done, name="pipeline-done", daemon=True).start()

    def _watch_done(self) -> None:
        for worker in self.workers.values():
            worker.done.wait()
        if not self.abort.is_set():
            log.info("all cameras finished")
        self.done.set()

    def finish(self, timeout: float) -> bool:
        """Captures have ended: process what they captured, end every track, encode the
        chosen samples. False when that took longer than `timeout` (the rest is abandoned)."""
        deadline = time.monotonic() + timeout
        self.scheduler.captures_done.set()
        self.wake.set()
        for worker in self.workers.values():
            worker.done.wait(max(0.0, deadline - time.monotonic()))
        finished = all(w.done.is_set() for w in self.workers.values())
        if not finished:
            self.abort.set()  # camera threads stop at their next poll
        for detect in self.detect:
            detect.thread.join(max(0.1, deadline - time.monotonic()))
        self.encoder.close(max(1.0, deadline - time.monotonic()))
        return finished

    def counters(self) -> dict[str, int]:
        """Track and event counters of every camera."""
        out: dict[str, int] = {}
        for pipeline in self.pipelines.values():
            out.update(pipeline.counters())
        return out
