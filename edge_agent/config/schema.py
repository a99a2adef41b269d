"""The configuration schema: one pydantic model per component, strict about unknown keys.

Validation is pure: relative paths are joined to the config file's folder (passed as
validation context) but never touched on disk here; the runtime checks files when it starts.
"""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from edge_agent.camera.events import EventsConfig
from edge_agent.camera.motion import MotionConfig

# DetectConfig and ObjectRule are re-exported: tools import every section from here.
from edge_agent.camera.objects import DetectConfig as DetectConfig
from edge_agent.camera.objects import MaskList, Objects, objects_yaml
from edge_agent.camera.objects import ObjectRule as ObjectRule
from edge_agent.camera.zones import Lines, Zones
from edge_agent.config.base import Strict
from edge_agent.config.values import (
    MAX_BYTES,
    MAX_PIXELS,
    MQTT_MAX_INTERVAL,
    Bytes,
    ConfigPath,
    Seconds,
    Text,
    TopicPrefix,
    TopicSegment,
    bounded,
)
from edge_agent.control.config import (
    CommandsConfig,
    DriftConfig,
    HomeAssistantConfig,
    MetricsConfig,
)
from edge_agent.sampling.config import SamplesConfig as SamplesConfig
from edge_agent.track.config import TrackConfig


class TlsConfig(Strict):
    """TLS to the broker; `ca_file` absent = the system CA store."""

    enabled: bool = False
    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    insecure: bool = Field(False, description="skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self


class MqttConfig(Strict):
    """Broker connection and topic layout."""

    host: Text = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    tls: TlsConfig = TlsConfig()
    message_expiry: Seconds | None = Field(
        None, ge=1, le=MQTT_MAX_INTERVAL, description="MQTT 5: broker drops older, seconds"
    )
    session_expiry: Seconds = Field(
        0, ge=0, le=MQTT_MAX_INTERVAL, description="MQTT 5 session expiry interval, seconds"
    )
    topic_prefix: TopicPrefix = "edge"
    qos: Literal[0, 1, 2] = 1
    client_id: Annotated[str, AfterValidator(bounded(128)), Field(min_length=1)] | None = None
    # An MQTT UTF-8 string carries a two-byte length.
    username: Annotated[str, AfterValidator(bounded(65535))] | None = None
    password_file: ConfigPath | None = None
    keepalive: int = Field(30, ge=5, le=3600, description="seconds")
    reconnect_min_delay: Seconds = Field(1.0, gt=0, le=3600, description="seconds")
    reconnect_max_delay: Seconds = Field(30.0, gt=0, le=3600, description="seconds")
    max_inflight: int = Field(20, ge=1, le=1000)
    # MQTT's largest packet is 268435455 bytes (a four-byte remaining length).
    max_message_bytes: Bytes | None = Field(
        None, ge=1024, le=268435455, description="largest packet the broker accepts"
    )
    quarantine_after: int = Field(
        3, ge=1, le=100, description="disconnects with one message in flight before dead-letter"
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _delays(self) -> MqttConfig:
        if self.reconnect_min_delay > self.reconnect_max_delay:
            raise ValueError("reconnect_min_delay must not exceed reconnect_max_delay")
        return self


# Normalization constants: pixel values are 0..255, so anything beyond is a typo.
_Norm = Annotated[float, Field(ge=-1000, le=1000)]


class MeanStd(Strict):
    """Per-channel normalization: (pixel - mean) / std, in the model's colour order."""

    mean: tuple[_Norm, _Norm, _Norm]
    std: tuple[_Norm, _Norm, _Norm]

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v == 0 for v in value):
            raise ValueError("std values must be non-zero")
        return value


class InputConfig(Strict):
    """How frames are turned into the model's input tensor."""

    normalize: Literal["auto", "0..255", "0..1", "-1..1"] | MeanStd = "auto"
    resize: Literal["auto", "letterbox", "stretch"] = "auto"
    color: Literal["rgb", "bgr"] = "rgb"


class AnchorsConfig(Strict):
    """Anchor grid of SSD-style models decoded without a postprocess op (MediaPipe anchors:
    layers with the same stride share a grid)."""

    strides: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [8, 16, 16, 16], min_length=1, max_length=32
    )
    anchors_per_layer: int = Field(2, ge=1, le=64)


class ModelConfig(Strict):
    """The detector model file and how to decode it."""

    path: ConfigPath
    labels: ConfigPath | None = None
    format: Literal["auto", "ssd", "yolov8", "yolov5", "blazeface"] = "auto"
    threads: int = Field(2, ge=1, le=64)
    delegate: Literal["none", "edgetpu"] = "none"
    exact: bool = Field(
        False,
        description="reference kernels and an exact resize: the same tensors with every TFLite "
        "runtime on x86_64 and arm64 (int8 models bit for bit), 5-11x slower; for checking a "
        "model or a device against another, not for production",
    )
    nms_iou: float | None = Field(None, gt=0, le=1, description="default: the family's")
    anchors: AnchorsConfig = AnchorsConfig()
    max_detections: int = Field(100, ge=1, le=1000)
    input: InputConfig = InputConfig()

    @model_validator(mode="after")
    def _exact_on_the_cpu(self) -> ModelConfig:
        if self.exact and self.delegate != "none":
            raise ValueError("exact runs the reference kernels on the CPU: it needs delegate none")
        return self


class VideoSource(Strict):
    """A video file replayed as a camera."""

    type: Literal["video"]
    path: ConfigPath
    realtime: bool = False
    loop: bool = False


class ImagesSource(Strict):
    """A folder of images (sorted by file name) replayed as a camera."""

    type: Literal["images"]
    path: ConfigPath
    realtime: bool = False
    loop: bool = False
    fps: float = Field(1.0, gt=0, le=1000, description="frames per second of replay time")


class _LiveSource(Strict):
    """What every live camera shares: how a stalled or failed camera is retried."""

    frame_timeout: Seconds = Field(
        10.0, gt=0, le=3600, description="seconds without a frame before reconnecting"
    )
    reconnect_delay: Seconds = Field(
        2.0, gt=0, le=3600, description="seconds before the first retry (then backing off)"
    )


class V4l2Source(_LiveSource):
    """A USB/V4L2 camera opened through OpenCV."""

    type: Literal["v4l2"]
    device: Text | Annotated[int, Field(ge=0, le=255)] = "/dev/video0"
    width: int | None = Field(None, ge=1, le=MAX_PIXELS)
    height: int | None = Field(None, ge=1, le=MAX_PIXELS)
    fps: float | None = Field(None, gt=0, le=1000)


class RtspSource(_LiveSource):
    """An RTSP or HTTP(S) network stream opened through OpenCV/FFmpeg."""

    type: Literal["rtsp"]
    url: Text = Field(max_length=4096)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value.split("://", 1)[0] not in ("rtsp", "rtsps", "http", "https"):
            raise ValueError("must start with rtsp://, rtsps://, http:// or https://")
        return value


class Picamera2Source(_LiveSource):
    """A Raspberry Pi camera module through picamera2."""

    type: Literal["picamera2"]
    camera_num: int = Field(0, ge=0, le=63)
    width: int = Field(1280, ge=64, le=MAX_PIXELS)
    height: int = Field(720, ge=64, le=MAX_PIXELS)
    fps: float | None = Field(None, gt=0, le=1000)


SourceConfig = Annotated[
    VideoSource | ImagesSource | V4l2Source | RtspSource | Picamera2Source,
    Field(discriminator="type"),
]


class ClassifyConfig(Strict):
    """Second stage: a classification model run on each detection's crop."""

    model: ConfigPath
    labels: ConfigPath | None = None
    on_labels: list[str] | None = Field(None, description="detection labels to classify")
    min_score: float = Field(0.0, ge=0, le=1, description="attach only at this confidence")
    padding: float = Field(0.0, ge=0, le=1, description="crop margin, fraction of box size")
    threads: int = Field(1, ge=1, le=64)
    input: InputConfig = InputConfig()
    refresh: Seconds = Field(
        10.0, gt=0, le=86_400, description="a tracked object is classified again this often"
    )


class CameraConfig(Strict):
    """One camera: where frames come from and the ordered steps its frames go through
    (motion -> detect -> objects -> track -> zones/lines -> classify -> events -> samples)."""

    source: SourceConfig
    motion: MotionConfig | None = Field(None, description="default: on for live sources only")
    objects: Objects = Field(default_factory=dict)
    object_masks: MaskList = Field(
        default_factory=list, description="polygons where boxes (bottom centre) are ignored"
    )
    detect: DetectConfig | None = Field(None, description="earlier form of `objects:`")
    track: TrackConfig = TrackConfig()
    zones: Zones = Field(default_factory=dict)
    lines: Lines = Field(default_factory=dict)
    classify: ClassifyConfig | None = None
    events: EventsConfig = EventsConfig()
    publish_empty: bool = False
    samples: SamplesConfig = SamplesConfig()

    @model_validator(mode="after")
    def _one_filter_form(self) -> CameraConfig:
        if (self.zones or self.lines) and not self.track.enabled:
            raise ValueError("zones and lines follow tracks: they need `track: {enabled: true}`")
        if self.detect is not None and self.objects:
            raise ValueError(
                "`detect:` is the earlier form of `objects:`; keep only `objects:`\n"
                + objects_yaml(self.detect.to_objects())
            )
        self._samples_needs()
        return self

    def _samples_needs(self) -> None:
        if not self.samples.enabled:
            return
        on = set(self.samples.strategies.enabled())
        per_track = sorted(on & {"false_positive_track", "short_track", "label_flip"})
        if per_track and not self.track.enabled:
            raise ValueError(
                f"samples.strategies {', '.join(per_track)} sample tracks: they need "
                "`track: {enabled: true}`"
            )
        if "disagreement" in on and self.classify is None:
            raise ValueError(
                "samples.strategies.disagreement compares the detector with the classifier: "
                "it needs `classify:`"
            )

    @property
    def live(self) -> bool:
        """Whether the source is a live camera (not a file replay)."""
        return self.source.type not in ("video", "images")

    @property
    def object_rules(self) -> dict[str, ObjectRule]:
        """`objects:`, or the mapping of a legacy `detect:` section ({} = every label)."""
        return self.detect.to_objects() if self.detect is not None else dict(self.objects)

    @property
    def motion_config(self) -> MotionConfig:
        """`motion:` with its source-dependent default applied."""
        return self.motion if self.motion is not None else MotionConfig(enabled=self.live)


class LogConfig(Strict):
    """Logging output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "json"] = "auto"


class OutboxConfig(Strict):
    """The on-disk spool every message passes through until the broker acknowledges it."""

    enabled: bool = True
    path: ConfigPath | None = Field(None, description="default: <state dir>/outbox-<device>.db")
    # A spool that cannot hold one message, or keeps nothing for a minute, is a mistake.
    max_bytes: Bytes = Field(100 * 2**20, ge=100, le=MAX_BYTES)
    max_age: Seconds = Field(7 * 86400.0, ge=60, le=MQTT_MAX_INTERVAL, description="seconds")
    sync: Literal["normal", "full"] = Field(
        "normal", description="normal: survives a killed agent; full: also power loss (slower)"
    )


class RuntimeConfig(Strict):
    """Threads and shutdown."""

    queue_size: int = Field(4, ge=1, le=256, description="frames buffered per camera")
    shutdown_timeout: Seconds = Field(
        10.0, ge=0, le=3600, description="seconds to deliver pending messages"
    )
    stats_interval: Seconds = Field(
        60.0, gt=0, le=86400, description="seconds between stats messages"
    )
    retry_max_delay: Seconds = Field(
        60.0, ge=1, le=3600, description="cap of the camera reconnect backoff, seconds"
    )
    detect_workers: int = Field(
        1, ge=1, le=16, description="threads running the detector (each with its own model copy)"
    )


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "edge-agent"


class AgentConfig(Strict):
    """The whole agent configuration file."""

    # validate_default: a hostname that is not a valid topic level is reported, not used.
    device_id: TopicSegment = Field(default_factory=_hostname, validate_default=True)
    mqtt: MqttConfig = MqttConfig()
    model: ModelConfig
    cameras: dict[TopicSegment, CameraConfig] = Field(min_length=1)
    outbox: OutboxConfig = OutboxConfig()
    log: LogConfig = LogConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    drift: DriftConfig = DriftConfig()
    metrics: MetricsConfig = MetricsConfig()
    commands: CommandsConfig = CommandsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
