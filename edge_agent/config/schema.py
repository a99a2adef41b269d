"""The configuration schema: one pydantic model per component, strict about unknown keys.

Validation is pure: relative paths are joined to the config file's folder (passed as
validation context) but never touched on disk here; the runtime checks files when it starts.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

_FORBIDDEN_TOPIC_CHARS = ("+", "#", "/", "\x00")


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Join a relative path to the config file's folder (no filesystem access)."""
    base = (info.context or {}).get("base_dir")
    if value.is_absolute() or base is None:
        return value
    return Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve)]


def check_topic_segment(value: str) -> str:
    """Reject names that would break or widen an MQTT topic."""
    if not value:
        raise ValueError("must not be empty")
    bad = [c for c in _FORBIDDEN_TOPIC_CHARS if c in value]
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ValueError(f"{value!r} contains {shown}, not allowed in an MQTT topic segment")
    return value


TopicSegment = Annotated[str, AfterValidator(check_topic_segment)]


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def _duration(value: object) -> object:
    """Accept seconds as a number or a string like `90s`, `15m`, `24h`, `7d`."""
    if isinstance(value, str):
        text = value.strip().lower()
        unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
        number = text[:-1] if text[-1:] in _DURATION_UNITS else text
        try:
            return float(number) * _DURATION_UNITS[unit]
        except ValueError:
            raise ValueError(f"{value!r} is not a duration (e.g. 30, 90s, 15m, 24h, 7d)") from None
    return value


def _size(value: object) -> object:
    """Accept bytes as a number or a string like `500MB`, `1GiB`."""
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits) :] or "b"
        if unit not in _SIZE_UNITS or not digits:
            raise ValueError(f"{value!r} is not a size (e.g. 104857600, 100MB, 1GiB)")
        return int(float(digits) * _SIZE_UNITS[unit])
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Bytes = Annotated[int, BeforeValidator(_size), Field(ge=0)]


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

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    tls: TlsConfig = TlsConfig()
    message_expiry: Seconds | None = Field(None, description="MQTT 5: broker drops older")
    session_expiry: Seconds = Field(0, description="MQTT 5 session expiry interval")
    topic_prefix: str = "edge"
    qos: Literal[0, 1, 2] = 1
    client_id: str | None = None
    username: str | None = None
    password_file: ConfigPath | None = None
    keepalive: int = Field(30, ge=5, le=3600, description="seconds")
    reconnect_min_delay: float = Field(1.0, gt=0, description="seconds")
    reconnect_max_delay: float = Field(30.0, gt=0, description="seconds")
    max_inflight: int = Field(20, ge=1, le=1000)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in ("+", "#", "\x00")):
            raise ValueError("must be a non-empty topic without wildcards")
        return value.strip("/")


class MeanStd(Strict):
    """Per-channel normalization: (pixel - mean) / std, in the model's colour order."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

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

    strides: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [8, 16, 16, 16], min_length=1
    )
    anchors_per_layer: int = Field(2, ge=1)


class ModelConfig(Strict):
    """The detector model file and how to decode it."""

    path: ConfigPath
    labels: ConfigPath | None = None
    format: Literal["auto", "ssd", "yolov8", "yolov5", "blazeface"] = "auto"
    threads: int = Field(2, ge=1, le=64)
    delegate: Literal["none", "edgetpu"] = "none"
    nms_iou: float | None = Field(None, gt=0, le=1, description="default: the family's")
    anchors: AnchorsConfig = AnchorsConfig()
    max_detections: int = Field(100, ge=1, le=1000)
    input: InputConfig = InputConfig()


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
    fps: float = Field(1.0, gt=0, description="frames per second of replay time")


class V4l2Source(Strict):
    """A USB/V4L2 camera opened through OpenCV."""

    type: Literal["v4l2"]
    device: str | int = "/dev/video0"
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    fps: float | None = Field(None, gt=0)


class RtspSource(Strict):
    """An RTSP or HTTP(S) network stream opened through OpenCV/FFmpeg."""

    type: Literal["rtsp"]
    url: str
    reconnect_delay: float = Field(2.0, gt=0, description="seconds")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value.split("://", 1)[0] not in ("rtsp", "rtsps", "http", "https"):
            raise ValueError("must start with rtsp://, rtsps://, http:// or https://")
        return value


class Picamera2Source(Strict):
    """A Raspberry Pi camera module through picamera2."""

    type: Literal["picamera2"]
    camera_num: int = Field(0, ge=0)
    width: int = Field(1280, ge=64)
    height: int = Field(720, ge=64)
    fps: float | None = Field(None, gt=0)


SourceConfig = Annotated[
    VideoSource | ImagesSource | V4l2Source | RtspSource | Picamera2Source,
    Field(discriminator="type"),
]


class LabelRule(Strict):
    """Per-label overrides of the camera's filters."""

    min_score: float = Field(ge=0, le=1)


class DetectConfig(Strict):
    """Which detections a camera reports."""

    min_score: float = Field(0.5, ge=0, le=1)
    labels: list[str] | None = None
    per_label: dict[str, LabelRule] = {}


class SamplesConfig(Strict):
    """Low-confidence frames published for relabeling."""

    enabled: bool = False
    min_score: float = Field(0.3, ge=0, le=1)
    max_score: float = Field(0.5, ge=0, le=1)
    max_per_minute: int = Field(6, ge=0)
    jpeg_quality: int = Field(85, ge=1, le=100)
    max_side: int = Field(1280, ge=16)

    @model_validator(mode="after")
    def _band(self) -> SamplesConfig:
        if self.min_score >= self.max_score:
            raise ValueError("min_score must be below max_score")
        return self


class ClassifyConfig(Strict):
    """Second stage: a classification model run on each detection's crop."""

    model: ConfigPath
    labels: ConfigPath | None = None
    on_labels: list[str] | None = Field(None, description="detection labels to classify")
    min_score: float = Field(0.0, ge=0, le=1, description="attach only at this confidence")
    padding: float = Field(0.0, ge=0, le=1, description="crop margin, fraction of box size")
    threads: int = Field(1, ge=1, le=64)
    input: InputConfig = InputConfig()


class CameraConfig(Strict):
    """One camera: where frames come from and what is published about them."""

    source: SourceConfig
    detect: DetectConfig = DetectConfig()
    classify: ClassifyConfig | None = None
    publish_empty: bool = False
    samples: SamplesConfig = SamplesConfig()


class LogConfig(Strict):
    """Logging output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "json"] = "auto"


class OutboxConfig(Strict):
    """The on-disk spool every message passes through until the broker acknowledges it."""

    enabled: bool = True
    path: ConfigPath | None = Field(None, description="default: <state dir>/outbox-<device>.db")
    max_bytes: Bytes = 100 * 2**20
    max_age: Seconds = 7 * 86400.0
    sync: Literal["normal", "full"] = Field(
        "normal", description="normal: survives a killed agent; full: also power loss (slower)"
    )


class RuntimeConfig(Strict):
    """Threads and shutdown."""

    queue_size: int = Field(4, ge=1, le=256, description="frames buffered per camera")
    shutdown_timeout: float = Field(10.0, ge=0, description="seconds to deliver pending messages")
    stats_interval: float = Field(60.0, gt=0, description="seconds between stats messages")


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "edge-agent"


class AgentConfig(Strict):
    """The whole agent configuration file."""

    device_id: TopicSegment = Field(default_factory=_hostname)
    mqtt: MqttConfig = MqttConfig()
    model: ModelConfig
    cameras: dict[TopicSegment, CameraConfig] = Field(min_length=1)
    outbox: OutboxConfig = OutboxConfig()
    log: LogConfig = LogConfig()
    runtime: RuntimeConfig = RuntimeConfig()
