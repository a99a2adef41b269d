"""The Prometheus endpoint (`metrics:`): the figures of the stats message at scrape time, from
a collector on the agent's own registry (never the library's global one).

Counters keep their meaning and get labels instead of names with the camera or kind baked in:
`frames.processed.lobby` -> `edge_agent_frames_processed_total{camera="lobby"}`. A counter no
rule knows is still exported (`edge_agent_<name>_total`, the camera as a label when the name
ends with one), or as `edge_agent_counter_total{name=...}` when that would clash.
prometheus_client is imported only when the endpoint starts.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge_agent.control.config import MetricsConfig
from edge_agent.health.stats import Health

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

PREFIX = "edge_agent_"
STOP_TIMEOUT = 2.0
_CAM = ("camera",)
_KIND = ("kind",)
# (counter name prefix, metric name without prefix and `_total`, labels of the name's other
# dot-separated parts, in order; `camera` is matched against the configured camera names)
COUNTER_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("frames.captured", "frames_captured", _CAM),
    ("frames.processed", "frames_processed", _CAM),
    ("frames.skipped", "frames_skipped", _CAM),
    ("frames.still", "frames_still", _CAM),
    ("frames.errors", "frames_errors", _CAM),
    ("frames.corrupt", "frames_corrupt", _CAM),
    ("frames.capture_errors", "frames_capture_errors", _CAM),
    ("frames.detect_off", "frames_detect_off", _CAM),
    ("detector.runs", "detector_runs", _CAM),
    ("classify.runs", "classify_runs", _CAM),
    ("camera.retries", "camera_retries", _CAM),
    ("camera.stalls", "camera_stalls", _CAM),
    ("camera.read_timeouts", "camera_read_timeouts", _CAM),
    ("camera.read_errors", "camera_read_errors", _CAM),
    ("camera.hung", "camera_hung", _CAM),
    ("samples.published", "samples_published", _CAM),
    ("samples.errors", "samples_errors", _CAM),
    ("samples.skipped", "samples_skipped", ("reason", "camera")),
    ("tracks.confirmed", "tracks_confirmed", _CAM),
    ("tracks.unconfirmed", "tracks_unconfirmed", _CAM),
    ("events", "events", ("type", "camera")),
    ("mqtt.queued", "mqtt_queued", _KIND),
    ("mqtt.delivered", "mqtt_delivered", _KIND),
    ("mqtt.resized", "mqtt_resized", _KIND),
    ("mqtt.too_large", "mqtt_too_large", _KIND),
    ("mqtt.poison", "mqtt_poison", _KIND),
    ("mqtt.rejected", "mqtt_rejected", _KIND),
    ("mqtt.rejected", "mqtt_rejected_by_reason", ("kind", "reason")),
    ("outbox.dropped", "outbox_dropped", _KIND),
    ("outbox.expired", "outbox_expired", _KIND),
    ("outbox.quarantined", "outbox_quarantined", _KIND),
)
DRIFT_GAUGES = (  # (figure, metric, help)
    ("mean_score", "drift_mean_score", "mean confidence of the reported boxes"),
    ("per_hour", "drift_detections_per_hour", "reported boxes per hour of frame time"),
    ("count", "drift_detections", "reported boxes in the period"),
)
RULE_PREFIXES = {metric: prefix for prefix, metric, _ in COUNTER_RULES}
GENERIC = "counter"  # edge_agent_counter_total{name=...}: a counter no family can take
THROTTLE_FLAGS = ("under_voltage", "freq_capped", "throttled", "soft_temp_limit")
SYSTEM_GAUGES = (  # (system key, metric, help)
    ("cpu_percent", "cpu_percent", "process CPU over the last stats interval, % of one core"),
    ("rss_bytes", "resident_memory_bytes", "resident memory of the agent"),
    ("cpu_temp_c", "cpu_temperature_celsius", "CPU temperature"),
    ("disk_free_bytes", "disk_free_bytes", "free space on the outbox's filesystem"),
    ("load1", "load1", "1-minute load average"),
)


def _camera_suffix(rest: str, cameras: Sequence[str]) -> str | None:
    """The camera name `rest` ends with (as its last dot-separated part or parts)."""
    for camera in sorted(cameras, key=len, reverse=True):
        if rest == camera or rest.endswith(f".{camera}"):
            return camera
    return None


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _by_rule(name: str, cameras: Sequence[str]) -> tuple[str, dict[str, str]] | None:
    """(metric, labels) from the first rule that fits the counter's name, or None."""
    for prefix, metric, keys in COUNTER_RULES:
        if not name.startswith(f"{prefix}."):
            continue
        rest, labels = name[len(prefix) + 1 :], {}
        if keys[-1] == "camera":
            camera = _camera_suffix(rest, cameras)
            if camera is None:
                continue
            rest, labels = rest[: -len(camera)].rstrip("."), {"camera": camera}
            keys = keys[:-1]
        parts = rest.split(".") if rest else []
        if len(parts) == len(keys):
            return metric, {**dict(zip(keys, parts, strict=True)), **labels}
    return None


def split_counter(name: str, cameras: Sequence[str]) -> tuple[str, dict[str, str]]:
    """A counter's (metric name without prefix and `_total`, labels): by rule, else from the
    name itself (a camera at its end becomes a label)."""
    found = _by_rule(name, cameras)
    if found is not None:
        return found
    camera = _camera_suffix(name, cameras)
    if camera is not None and name != camera:
        return _sanitize(name[: -len(camera) - 1]), {"camera": camera}
    return _sanitize(name), {}


def _counter_help(metric: str, name: str, labels: Mapping[str, str]) -> str:
    """The stats counter a family holds, e.g. `samples.skipped.<reason>.<camera>`."""
    if metric == GENERIC:
        return "edge-agent counters without a family of their own (name: the stats counter)"
    base = RULE_PREFIXES.get(metric) or name.removesuffix(f".{labels.get('camera', '')}")
    return "edge-agent counter " + ".".join([base, *(f"<{k}>" for k in labels)])


def counter_families(counters: Mapping[str, int], cameras: Sequence[str]) -> list[Metric]:
    """Every counter, grouped into labelled families (counters a rule knows claim their
    family first; one that would clash with it goes to the generic family)."""
    from prometheus_client.core import CounterMetricFamily

    families: dict[str, CounterMetricFamily] = {}
    keys: dict[str, tuple[str, ...]] = {}
    ordered = sorted(counters, key=lambda n: (_by_rule(n, cameras) is None, n))
    for name in ordered:
        metric, labels = split_counter(name, cameras)
        if metric == GENERIC or keys.setdefault(metric, tuple(labels)) != tuple(labels):
            metric, labels = GENERIC, {"name": name}
            keys[GENERIC] = ("name",)
        family = families.get(metric)
        if family is None:
            family = CounterMetricFamily(
                PREFIX + metric, _counter_help(metric, name, labels), labels=list(labels)
            )
            families[metric] = family
        family.add_metric(list(labels.values()), counters[name])
    return list(families.values())


class _Gauges:
    """Gauge families built up from the stats body; samples without a value are left out."""

    def __init__(self) -> None:
        self.families: dict[str, Any] = {}

    def add(self, name: str, help_text: str, labels: dict[str, str], value: Any) -> None:
        """One sample of gauge `edge_agent_<name>` (None: not reported, so not exported)."""
        from prometheus_client.core import GaugeMetricFamily

        if value is None:
            return
        family = self.families.get(name)
        if family is None:
            family = GaugeMetricFamily(PREFIX + name, help_text, labels=list(labels))
            self.families[name] = family
        family.add_metric(list(labels.values()), float(value))


def gauge_families(body: Mapping[str, Any]) -> list[Metric]:
    """The stats body's figures as gauges (and the version and model as an info metric)."""
    from prometheus_client.core import InfoMetricFamily

    g = _Gauges()
    g.add("uptime_seconds", "seconds since the agent started", {}, body["uptime"])
    for name, cam in body["cameras"].items():
        _camera_gauges(g, name, cam)
    outbox = body.get("outbox")
    if outbox is not None:
        for key in ("messages", "bytes", "dead_letters"):
            g.add(f"outbox_{key}", f"outbox {key.replace('_', ' ')} now", {}, outbox[key])
    for thread, age in body["threads"].items():
        help_text = "seconds since the thread's last heartbeat"
        g.add("thread_heartbeat_age_seconds", help_text, {"thread": thread}, age)
    _system_gauges(g, body["system"])
    for name, drift in body.get("drift", {}).items():
        _drift_gauges(g, name, drift)
    for w in body["warnings"]:
        labels = {"camera": w["camera"], "label": w["label"], "kind": w["kind"]}
        g.add("drift_warning_drop_ratio", "a drift warning: the fraction lost", labels, w["drop"])
    info = InfoMetricFamily(
        "edge_agent_build",
        "agent version and model",
        value={
            "version": body["version"],
            "model": body["model"]["name"],
            "model_sha256": body["model"]["sha256"],
        },
    )
    return [info, *g.families.values()]


def _camera_gauges(g: _Gauges, name: str, cam: Mapping[str, Any]) -> None:
    g.add(
        "camera_state",
        "1 for the camera's current state",
        {"camera": name, "state": cam["state"]},
        1,
    )
    for stage, fps in cam["fps"].items():
        labels = {"camera": name, "stage": stage}
        g.add("camera_frames_per_second", "frames per second, last stats interval", labels, fps)
    ms = cam["inference_ms"] or {}
    for key, q in (("p50", "0.5"), ("p95", "0.95")):
        value = ms.get(key)
        labels = {"camera": name, "quantile": q}
        help_text = "inference time quantiles over the last stats interval"
        g.add("inference_seconds", help_text, labels, None if value is None else value / 1000)
    g.add("motion_ratio", "detector runs / frames captured", {"camera": name}, cam["motion_ratio"])


def _system_gauges(g: _Gauges, system: Mapping[str, Any]) -> None:
    for key, metric, help_text in SYSTEM_GAUGES:
        g.add(metric, help_text, {}, system.get(key))
    throttled = system.get("throttled")
    if throttled is not None:
        for flag in THROTTLE_FLAGS:
            help_text = "Raspberry Pi firmware throttling flags (vcgencmd get_throttled)"
            g.add("throttled", help_text, {"flag": flag, "when": "now"}, throttled[flag])
            since = throttled["since_boot"][flag]
            g.add("throttled", help_text, {"flag": flag, "when": "since_boot"}, since)


def _drift_gauges(g: _Gauges, camera: str, drift: Mapping[str, Any]) -> None:
    done = drift["baseline_complete"]
    g.add(
        "drift_baseline_complete", "1 once the drift baseline is learned", {"camera": camera}, done
    )
    for label, periods in drift["labels"].items():
        for period in ("baseline", "current"):
            figures = periods[period]
            if figures is None:
                continue
            labels = {"camera": camera, "label": label, "period": period}
            for key, metric, help_text in DRIFT_GAUGES:
                g.add(metric, help_text, labels, figures[key])


class StatsCollector:
    """A prometheus_client collector: every scrape reads the agent's figures once."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        """The counters and gauges now."""
        counters, body = self.health.snapshot()
        yield from counter_families(counters, self.health.camera_names)
        yield from gauge_families(body)


class MetricsServer:
    """The running HTTP endpoint; `stop()` ends it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread
        self.port = int(server.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(STOP_TIMEOUT)


def start_metrics(cfg: MetricsConfig, health: Health) -> MetricsServer | None:
    """Serve /metrics on `metrics.host:metrics.port` when enabled. A port that cannot be
    bound is logged and the agent runs on without the endpoint (detection goes first)."""
    if not cfg.enabled:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(health))
    try:
        server, thread = start_http_server(cfg.port, cfg.host, registry)
    except OSError as exc:
        log.error(
            "metrics: cannot listen on %s:%d (%s); running without the endpoint",
            cfg.host,
            cfg.port,
            exc,
        )
        return None
    metrics = MetricsServer(server, thread)
    log.info("metrics: serving http://%s:%d/metrics", cfg.host, metrics.port)
    return metrics
