"""The body of the stats message, built in one place so the stats message and the Prometheus
endpoint report the same figures.

Interval figures (frame rates, inference percentiles, motion ratio, CPU percent, throttling)
are computed when a stats message is built and cover the time since the previous one; a
scrape repeats them. Everything else (counters, states, outbox, memory, disk, drift) is read
at the moment it is asked for.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.config.schema import AgentConfig
from edge_agent.core.detections import Detections
from edge_agent.health.drift import DriftMonitor
from edge_agent.health.latency import LatencyRing
from edge_agent.health.system import SystemProbe
from edge_agent.publish.stores import default_path

# cameras.<c>.fps key -> the counter (`<name>.<camera>`) whose rate it is
FPS_COUNTERS = {
    "capture": "frames.captured",
    "processed": "frames.processed",
    "skipped": "frames.skipped",
}


class OutboxView(Protocol):
    """What the stats read of the outbox."""

    @property
    def mode(self) -> str:
        """Where messages are kept."""
        ...

    @property
    def bytes(self) -> int:
        """Payload bytes stored."""
        ...

    def __len__(self) -> int:
        """Messages stored."""
        ...

    def dead_letter_count(self) -> int:
        """Messages in the dead letters."""
        ...


@dataclass(frozen=True)
class Feeds:
    """Where the figures come from: cheap calls on the agent's live objects."""

    counters: Callable[[], dict[str, int]]
    cameras: Callable[[], dict[str, dict[str, Any]]]  # name -> state (CameraStatus JSON)
    threads: Callable[[], dict[str, float]]  # heartbeat ages
    outbox: OutboxView | None


class CameraHealth:
    """One camera's inference times and drift, fed by its post thread."""

    def __init__(self, name: str, drift: DriftMonitor | None) -> None:
        self.name = name
        self.latency = LatencyRing()
        self.drift = drift

    def observe(self, ts: float, inference_ms: float, reported: Detections) -> None:
        """One detected frame: its inference time and the boxes the camera reported."""
        self.latency.add(inference_ms)
        if self.drift is not None:
            self.drift.observe(ts, reported.class_id, reported.score)


class _Fed(Protocol):
    """A camera's post thread, which calls `health.observe` on each detected frame."""

    health: CameraHealth | None


class Health:
    """Builds the stats body (`stats()`, starting a new interval) and the same figures for a
    scrape (`snapshot()`). Safe to call from the main loop and a scrape thread at once."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self.cameras: dict[str, CameraHealth] = {}
        self.model = {"name": cfg.model.path.name, "sha256": ""}
        self._feeds: Feeds | None = None
        self._labels: list[str] = []
        self.camera_names: list[str] = []  # every camera configured since start (counters stay)
        self._probe: SystemProbe | None = None
        self._interval: dict[str, dict[str, Any]] = {}
        self._system: dict[str, Any] = {}
        self._prev: tuple[float, Mapping[str, int]] = (self.started, {})
        self._lock = threading.Lock()

    def set_model(self, name: str, sha256: str) -> None:
        """The model now running. Another model has other scores: its drift baseline is
        learned again (a swap without a rebuild keeps the cameras' health objects)."""
        with self._lock:
            changed = sha256 != self.model["sha256"]
            self.model = {"name": name, "sha256": sha256}
            if not changed:
                return
            for name_, cam in self.cameras.items():
                if cam.drift is not None:
                    cam.drift = DriftMonitor(name_, self.cfg.drift, self._labels)

    def attach(
        self,
        labels: Sequence[str],
        model_sha256: str,
        feeds: Feeds,
        posts: Mapping[str, _Fed],
        cfg: AgentConfig | None = None,
    ) -> None:
        """Connect to the prepared agent (again after a reload, with its new `cfg`): its
        labels, model hash, live objects and each camera's post thread. A camera keeps its
        drift baseline across a reload unless the model, labels or `drift:` changed."""
        with self._lock:
            cfg = cfg or self.cfg
            same = (
                self._feeds is not None
                and model_sha256 == self.model["sha256"]
                and list(labels) == self._labels
                and cfg.drift == self.cfg.drift
            )
            if self._feeds is None:  # the first interval starts now, not before the model loaded
                self._prev = (time.monotonic(), {})
            self.cfg, self._labels, self._feeds = cfg, list(labels), feeds
            self.model = {"name": cfg.model.path.name, "sha256": model_sha256}
            # Free space is reported for the filesystem the outbox lives (or would live) on.
            outbox = cfg.outbox.path or default_path(cfg.device_id, os.environ)
            if self._probe is None or self._probe.disk != Path(outbox):
                self._probe = SystemProbe(Path(outbox))
                self._system = self._probe.cached()
            cameras: dict[str, CameraHealth] = {}
            for name, post in posts.items():
                kept = self.cameras.get(name) if same else None
                cameras[name] = post.health = kept or self._camera(name)
            self.cameras = cameras
            self.camera_names += [n for n in cameras if n not in self.camera_names]

    def _camera(self, name: str) -> CameraHealth:
        drift = self.cfg.drift
        monitor = DriftMonitor(name, drift, self._labels) if drift.enabled else None
        return CameraHealth(name, monitor)

    def stats(self) -> tuple[dict[str, int], dict[str, Any]]:
        """(counters, the other sections) of a stats message; starts a new interval."""
        with self._lock:
            feeds, probe = self._parts()
            counters = feeds.counters()
            now = time.monotonic()
            self._interval = {n: self._camera_interval(n, counters, now) for n in self.cameras}
            self._system = probe.sample()
            self._prev = (now, counters)
            return counters, self._body(feeds, counters, self._system)

    def snapshot(self) -> tuple[dict[str, int], dict[str, Any]]:
        """The same as `stats()` now, repeating the last interval's figures (a scrape)."""
        with self._lock:
            feeds, probe = self._parts()
            counters = feeds.counters()
            system = {**probe.cached(), **_interval_system(self._system)}
            return counters, self._body(feeds, counters, system)

    def _parts(self) -> tuple[Feeds, SystemProbe]:
        if self._feeds is None or self._probe is None:
            raise RuntimeError("Health.attach() was not called")
        return self._feeds, self._probe

    def _camera_interval(
        self, name: str, counters: Mapping[str, int], now: float
    ) -> dict[str, Any]:
        since, before = self._prev
        seconds = now - since

        def delta(area: str) -> int:
            key = f"{area}.{name}"
            return counters.get(key, 0) - before.get(key, 0)

        fps = {
            k: (round(delta(c) / seconds, 2) if seconds > 0 else None)
            for k, c in FPS_COUNTERS.items()
        }
        captured, runs = delta("frames.captured"), delta("detector.runs")
        ratio = None
        if self.cfg.cameras[name].motion_config.enabled and captured > 0:
            # Frames captured near the end of one interval may be detected in the next.
            ratio = round(min(1.0, runs / captured), 3)
        inference = self.cameras[name].latency.take_interval()
        return {"fps": fps, "inference_ms": inference, "motion_ratio": ratio}

    def _body(
        self, feeds: Feeds, counters: Mapping[str, int], system: dict[str, Any]
    ) -> dict[str, Any]:
        cameras: dict[str, Any] = {}
        for name, state in feeds.cameras().items():
            interval = self._interval.get(name, {})
            cameras[name] = {
                **state,
                "fps": interval.get("fps", dict.fromkeys(FPS_COUNTERS)),
                "detector_runs": counters.get(f"detector.runs.{name}", 0),
                "inference_ms": interval.get("inference_ms"),
                "motion_ratio": interval.get("motion_ratio"),
            }
        body: dict[str, Any] = {
            "uptime": round(time.monotonic() - self.started, 3),
            "version": __version__,
            "model": dict(self.model),
            "cameras": cameras,
        }
        if feeds.outbox is not None:
            body["outbox"] = _outbox(feeds.outbox, counters)
        body["threads"] = feeds.threads()
        body["system"] = system
        warnings: list[dict[str, Any]] = []
        if self.cfg.drift.enabled:
            body["drift"] = {}
            for name, cam in self.cameras.items():
                if cam.drift is not None:
                    body["drift"][name], found = cam.drift.report()
                    warnings += found
        body["warnings"] = warnings
        return body


def _interval_system(system: dict[str, Any]) -> dict[str, Any]:
    return {k: system.get(k) for k in ("cpu_percent", "throttled")}


def _outbox(outbox: OutboxView, counters: Mapping[str, int]) -> dict[str, Any]:
    dropped = sum(n for k, n in counters.items() if k.startswith("outbox.dropped."))
    return {
        "mode": outbox.mode,
        "messages": len(outbox),
        "bytes": outbox.bytes,
        "dead_letters": outbox.dead_letter_count(),
        "dropped": dropped,
    }
