"""Camera supervision: each camera's capture runs in its own thread, reports a state, and is
retried with capped exponential backoff when it cannot deliver frames, while the other cameras
run on. A capture blocked in I/O past its own timeout is abandoned and replaced."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.errors import CameraUnavailable, SourceError
from edge_agent.health import Counters
from edge_agent.pipeline import END, FrameSink
from edge_agent.publish.client import Backoff
from edge_agent.sources import FrameSource

log = logging.getLogger(__name__)

STALL_GRACE = 5.0  # seconds past frame_timeout before a blocked capture thread is abandoned
MAX_ABANDONED = 2  # blocked threads per camera before no new attempt is started


@dataclass(frozen=True)
class CameraStatus:
    """A camera's state: starting, running, retrying (with the reason and the next attempt),
    stopped (end of a replay, or the agent stopping) or failed (a user error, or internal)."""

    state: str
    reason: str = ""
    since: float = field(default_factory=time.time)
    next_attempt: float | None = None
    internal: bool = False  # failed by a bug rather than the user's input

    def to_json(self) -> dict[str, object]:
        """The status as published (retained) and in the stats."""
        out: dict[str, object] = {"state": self.state, "since": round(self.since, 3)}
        if self.reason:
            out["reason"] = self.reason
        if self.next_attempt is not None:
            out["next_attempt"] = round(self.next_attempt, 3)
        return out


Report = Callable[[str, CameraStatus], None]


class CameraRunner:
    """Owns one camera's capture thread(s) and its state."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], FrameSource],
        slot: FrameSink,
        counters: Counters,
        stop: threading.Event,
        report: Report,
        delays: tuple[float, float],
        frame_timeout: float | None,
    ) -> None:
        self.name = name
        self.factory = factory
        self.slot = slot
        self.counters = counters
        self.stop = stop
        self.report = report
        self.delays = delays
        self.frame_timeout = frame_timeout  # None for replay: no stall detection
        self.status = CameraStatus("starting")
        self.source: FrameSource | None = None
        self.threads: list[threading.Thread] = []
        self.last_frame = time.monotonic()
        # Set when abandoning blocked capture threads no longer helps: the watchdog's concern.
        self.stuck_since: float | None = None
        self._generation = 0
        self._opened = False

    def start(self, source: FrameSource, opened: bool) -> None:
        """Start capturing from `source` (`opened`: already opened by the caller)."""
        self.source, self._opened = source, opened
        # Replaces whatever a previous run left retained (e.g. `running` after a kill -9).
        self.report(self.name, self.status)
        self._spawn(source, opened)

    def halt(self) -> CameraStatus | None:
        """At shutdown: no thread speaks for the camera any more (a late return of a blocked
        capture cannot publish a stale state); the final state, when it changed."""
        self._generation += 1
        if self.finished:
            return None
        self.status = CameraStatus("stopped", "the agent stopped")
        return self.status

    def _spawn(self, source: FrameSource, opened: bool) -> None:
        self._generation += 1
        self.last_frame = time.monotonic()
        thread = threading.Thread(
            target=self._run,
            args=(self._generation, source, opened),
            name=f"capture-{self.name}",
            daemon=True,  # a thread blocked in device I/O must not keep the process alive
        )
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    @property
    def finished(self) -> bool:
        """True when the camera will deliver no more frames (stopped or failed)."""
        return self.status.state in ("stopped", "failed")

    def _set(self, status: CameraStatus, generation: int) -> None:
        if generation != self._generation:
            return  # an abandoned thread no longer speaks for the camera
        previous, self.status = self.status, status
        if (previous.state, previous.reason) != (status.state, status.reason):
            self.report(self.name, status)

    def _run(self, generation: int, source: FrameSource, opened: bool) -> None:
        backoff = Backoff(*self.delays)
        while True:
            try:
                self._capture(generation, source, opened, backoff)
                break
            except Exception as exc:
                self.counters.inc(f"frames.capture_errors.{self.name}")
                log.exception("camera %s: capture failed", self.name)
                if self.frame_timeout is None:  # replay: a bug, not a flaky device
                    status = CameraStatus("failed", f"internal error: {exc}", internal=True)
                    self._set(status, generation)
                    break
                self._close(source)  # live: a backend error is retried like a lost device
                opened = False
                self._retry(generation, f"capture error: {exc}", backoff)
        if generation == self._generation:
            self.slot.put(END, self.stop)
        else:
            self._close(source)  # abandoned earlier: release what the replacement does not use

    def _capture(
        self, generation: int, source: FrameSource, opened: bool, backoff: Backoff
    ) -> None:
        while not self.stop.is_set() and generation == self._generation:
            if not opened:
                result = self._open(generation, source, backoff)
                if result is None:
                    return
                opened = result
                continue
            try:
                frame = source.read()
            except CameraUnavailable as exc:
                self._close(source)
                opened = False
                self._retry(generation, str(exc), backoff)
                continue
            if generation != self._generation:
                return
            if frame is None:
                self._set(CameraStatus("stopped", "end of the replay"), generation)
                return
            self.last_frame = time.monotonic()
            self.stuck_since = None
            if self.status.state != "running":
                self._set(CameraStatus("running"), generation)
            backoff.reset()
            self.counters.inc(f"frames.captured.{self.name}")
            if not self.slot.put(frame, self.stop):
                return

    def _open(self, generation: int, source: FrameSource, backoff: Backoff) -> bool | None:
        """True when open, False after a retry wait, None when the camera has failed."""
        if self.status.state != "retrying":
            self._set(CameraStatus("starting"), generation)
        try:
            source.open()
        except CameraUnavailable as exc:
            self._retry(generation, str(exc), backoff)
            return False
        except SourceError as exc:
            # What a restart cannot fix (e.g. picamera2 not installed): this camera stops.
            self._set(CameraStatus("failed", exc.message), generation)
            return None
        self.last_frame = time.monotonic()
        return True

    def _retry(self, generation: int, reason: str, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        self.counters.inc(f"camera.retries.{self.name}")
        status = CameraStatus("retrying", reason, next_attempt=time.time() + delay)
        if self.status.state != "retrying" or self.status.reason != reason:
            log.warning("camera %s: %s; retrying in %.1fs", self.name, reason, delay)
        self._set(status, generation)
        self.stop.wait(delay)

    def _close(self, source: FrameSource) -> None:
        try:
            source.close()
        except Exception:
            log.exception("camera %s: close failed", self.name)

    def check_stalled(self, now: float) -> None:
        """Replace a capture thread blocked in I/O past the source's own frame timeout."""
        if self.frame_timeout is None or self.status.state != "running":
            return
        blocked = now - self.last_frame
        if blocked < self.frame_timeout + STALL_GRACE:
            return
        reason = f"capture blocked in I/O for {blocked:.0f} s (no frame, no error)"
        alive = [t for t in self.threads if t.is_alive()]
        if len(alive) > MAX_ABANDONED:
            # No new attempt while this many are stuck; stay `running` so this check repeats.
            log.error("camera %s: %s; %d capture threads stuck", self.name, reason, len(alive))
            if self.stuck_since is None:
                self.stuck_since = self.last_frame
            self.last_frame = now
            return
        self.counters.inc(f"camera.stalls.{self.name}")
        self._set(CameraStatus("retrying", reason), self._generation)
        log.warning("camera %s: %s; abandoning it and reconnecting", self.name, reason)
        self.source = self.factory()
        self._spawn(self.source, opened=False)

    def stuck_age(self, now: float) -> float | None:
        """Seconds since the last frame once reconnecting no longer helps (every capture
        thread blocked), else None: a camera that is down and retrying is not stuck."""
        if self.stuck_since is None or self.status.state != "running":
            return None
        return now - self.stuck_since

    def join(self, deadline: float) -> bool:
        """Wait for the capture thread until `deadline` (monotonic); False if still blocked."""
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def close(self) -> None:
        """Release the source unless a blocked thread still uses it."""
        if self.source is not None and not any(t.is_alive() for t in self.threads):
            self._close(self.source)
