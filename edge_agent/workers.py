"""The threads between capture and publish, each with one owner and a bounded queue:

capture (per camera, edge_agent.supervisor) -> FrameSlot -> detect workers (`runtime.
detect_workers`, each holding its own interpreter; cameras served round robin) -> per-camera
post thread (the camera's steps, in frame order) -> publisher; sample JPEGs go to one encoder
thread. Every thread beats a heartbeat; one stop Event and END markers end them all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_agent.core.detections import Detections
from edge_agent.detect.detector import Detector
from edge_agent.health import Counters
from edge_agent.pipeline import FrameSlot, Job
from edge_agent.publish.payloads import OutMessage, Topics
from edge_agent.sampling.encode import EmptyCrops, SampleJob, sample_message
from edge_agent.sampling.privacy import PrivacyError

log = logging.getLogger(__name__)

POLL = 0.1  # seconds a worker waits before rechecking the stop conditions
FRAME_ERROR_LOG_INTERVAL = 60.0  # seconds between tracebacks of failing frames, per camera
Submit = Callable[[OutMessage], None]


class Heartbeats:
    """The last time each thread showed it was alive (monotonic seconds)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def beat(self, name: str) -> None:
        """Record that `name` is alive now (a dict store: safe without a lock)."""
        self._last[name] = time.monotonic()

    def forget(self, name: str) -> None:
        """A thread that ended on purpose (its camera finished) is no longer watched."""
        self._last.pop(name, None)

    def ages(self) -> dict[str, float]:
        """Seconds since each thread's last beat."""
        now = time.monotonic()
        return {name: round(now - t, 3) for name, t in sorted(dict(self._last).items())}


@dataclass(frozen=True)
class ModelId:
    """Which model detected a frame: a name for payloads and the file's sha256."""

    name: str
    sha256: str


@dataclass(frozen=True)
class Detected:
    """A job after the detector: boxes and time, or the error that stopped it. `model` names
    the model that ran (None: the configured one), so a swap never mislabels a frame."""

    job: Job
    dets: Detections | None
    inference_ms: float
    error: BaseException | None = None
    model: ModelId | None = None


class Swap:
    """New detectors for the detect workers, taken at the top of each worker's loop (never
    mid-frame). Each worker then waits for `go`, so whoever swaps can first let the frames
    the old model detected through (and say so) before the new model's frames follow."""

    def __init__(self, detectors: Sequence[Detector], model: ModelId) -> None:
        self.detectors = list(detectors)
        self.model = model
        self.go = threading.Event()
        self._arrived = 0
        self._lock = threading.Condition()

    def arrive(self) -> None:
        """A worker has taken its detector."""
        with self._lock:
            self._arrived += 1
            self._lock.notify_all()

    def wait_arrived(self, count: int, timeout: float) -> bool:
        """Until `count` workers have taken theirs; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._arrived >= count, timeout)


Item = Detected | Job | None  # a detected job, a skipped job (detect False), or END


class Scheduler:
    """Hands waiting jobs to detect workers, cameras in turn, numbering each camera's jobs so
    its post thread can restore frame order when several workers run."""

    def __init__(
        self,
        slots: dict[str, FrameSlot],
        wake: threading.Event,
        abort: threading.Event | None = None,
    ) -> None:
        self._slots = dict(slots)
        self._order = list(self._slots)
        self._turn = 0
        self._seq = dict.fromkeys(self._slots, 0)
        self._open = set(self._slots)
        self._lock = threading.Lock()
        self.wake = wake
        self.captures_done = threading.Event()
        # Stop handing out work: what is queued is abandoned (a crash, or a timeout).
        self.abort = abort or threading.Event()

    def take(self) -> tuple[str, int, Job | None] | None:
        """The next (camera, sequence, job or END), or None when nothing waits."""
        with self._lock:
            n = len(self._order)
            for k in range(n):
                name = self._order[(self._turn + k) % n]
                if name not in self._open:
                    continue
                has, job = self._slots[name].get()
                if not has and self.captures_done.is_set():
                    job, has = None, True  # an abandoned capture never sent END: end it here
                if not has:
                    continue
                self._turn = (self._turn + k + 1) % n
                seq = self._seq[name]
                self._seq[name] = seq + 1
                if job is None:
                    self._open.discard(name)
                return name, seq, job
            return None

    @property
    def finished(self) -> bool:
        """Every camera has been handed its END."""
        with self._lock:
            return not self._open


class DetectWorker:
    """One thread holding one interpreter: invoke and decode, nothing else."""

    def __init__(
        self,
        index: int,
        detector: Detector,
        scheduler: Scheduler,
        posts: dict[str, PostQueue],
        heartbeats: Heartbeats,
        on_crash: Callable[[str], None],
    ) -> None:
        self.name = f"detect-{index}"
        self.detector = detector
        self.scheduler = scheduler
        self.posts = posts
        self.heartbeats = heartbeats
        self.on_crash = on_crash
        self.model: ModelId | None = None  # None: the configured model
        self.index = index
        self.put_counts: dict[str, int] = dict.fromkeys(posts, 0)  # items handed per camera
        self._swap: Swap | None = None
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def swap(self, swap: Swap) -> None:
        """Take `swap`'s detector at the top of the next loop (set from another thread)."""
        self._swap = swap

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            log.exception("%s failed", self.name)
            self.on_crash(f"{self.name} failed: {exc}")

    def _loop(self) -> None:
        sched = self.scheduler
        while not sched.finished and not sched.abort.is_set():
            self.heartbeats.beat(self.name)
            if self._swap is not None:
                self._take_swap(self._swap)
            taken = sched.take()
            if taken is None:
                sched.wake.wait(POLL)
                sched.wake.clear()
                continue
            camera, seq, job = taken
            self.posts[camera].put(seq, self._detect(job))
            self.put_counts[camera] += 1
        self.heartbeats.forget(self.name)

    def _take_swap(self, swap: Swap) -> None:
        self._swap = None
        self.detector, self.model = swap.detectors[self.index], swap.model
        swap.arrive()
        while not swap.go.wait(POLL) and not self.scheduler.abort.is_set():
            self.heartbeats.beat(self.name)

    def _detect(self, job: Job | None) -> Item:
        if job is None or not job.detect:
            return job
        try:
            dets, ms = self.detector.detect_arrays(job.frame.image)
        except Exception as exc:  # one bad frame is counted by the camera, never fatal
            return Detected(job, None, 0.0, exc, self.model)
        return Detected(job, dets, ms, None, self.model)


class PostQueue:
    """A camera's post-processing input: bounded, restored to capture order."""

    def __init__(self, size: int, abort: threading.Event) -> None:
        self._queue: queue.Queue[tuple[int, Item]] = queue.Queue(maxsize=size)
        self._abort = abort
        self._held: dict[int, Item] = {}
        self._next = 0

    def put(self, seq: int, item: Item) -> None:
        """Add a numbered item; blocks while the camera's thread is behind (back-pressure),
        until the pipeline is aborted (the item is then abandoned)."""
        while not self._abort.is_set():
            try:
                self._queue.put((seq, item), timeout=POLL)
                return
            except queue.Full:
                continue

    def get(self, timeout: float) -> tuple[bool, Item]:
        """(True, the next item in order) or (False, None) when it has not arrived."""
        while self._next not in self._held:
            try:
                seq, item = self._queue.get(timeout=timeout)
            except queue.Empty:
                return False, None
            self._held[seq] = item
        item = self._held.pop(self._next)
        self._next += 1
        return True, item


class SampleEncoder:
    """One thread that JPEG-encodes chosen samples and submits them, so a 1080p encode never
    holds up a camera. Live cameras drop samples when it is busy (counted); replays wait."""

    def __init__(
        self, topics: Topics, submit: Submit, counters: Counters, heartbeats: Heartbeats
    ) -> None:
        self.topics = topics
        self.submit = submit
        self.counters = counters
        self.heartbeats = heartbeats
        self._queue: queue.Queue[SampleJob | None] = queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=self._run, name="encoder", daemon=True)

    def put(self, job: SampleJob, wait: bool) -> None:
        """Queue a sample; when full, wait (replay) or drop it and count why (live)."""
        try:
            self._queue.put(job, block=wait)
        except queue.Full:
            self.counters.inc(f"samples.skipped.encoder_busy.{job.camera}")

    def close(self, timeout: float) -> None:
        """Encode what is queued, then end the thread (bounded by timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(None, timeout=POLL)
                break
            except queue.Full:
                if time.monotonic() > deadline or not self.thread.is_alive():
                    return
        self.thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            self.heartbeats.beat("encoder")
            try:
                job = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if job is None:
                return
            self._encode(job)

    def _encode(self, job: SampleJob) -> None:
        camera = job.camera
        try:
            message = sample_message(self.topics, job)
        except PrivacyError as exc:
            # Never sent as is: a sample that cannot be made private is dropped.
            self.counters.inc(f"samples.skipped.privacy_failed.{camera}")
            log.warning("camera %s: sample dropped: %s", camera, exc)
            return
        except EmptyCrops:
            self.counters.inc(f"samples.skipped.no_crops.{camera}")
            return
        except Exception:
            self.counters.inc(f"samples.errors.{camera}")
            log.exception("camera %s: sample encoding failed", camera)
            return
        self.submit(message)
        self.counters.inc(f"samples.published.{camera}")


def start_all(threads: Sequence[threading.Thread]) -> None:
    """Start threads in order."""
    for thread in threads:
        thread.start()
