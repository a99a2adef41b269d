"""Config sections of the fleet features: remote commands, Home Assistant discovery, the
Prometheus endpoint and the drift signal. Validation only; no I/O."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Strict
from edge_agent.config.values import Bytes, Seconds, Text, TopicPrefix


class CommandsConfig(Strict):
    """`<prefix>/<device>/cmd/<name>`: off unless enabled; optionally only from listed senders."""

    enabled: bool = False
    # MQTT 5 user property whose value must be in `allow` (absent property = refused).
    allow_property: Text = Field("sender", min_length=1, max_length=128)
    allow: list[Text] | None = Field(
        None, description="accepted values of the user property; null accepts every sender"
    )
    max_model_bytes: Bytes = Field(
        200 * 2**20, ge=1024, le=2**32, description="largest model a `model` command downloads"
    )
    download_timeout: Seconds = Field(120.0, gt=0, le=3600, description="seconds")


class HomeAssistantConfig(Strict):
    """MQTT discovery: one device per agent, entities per camera, label and zone."""

    enabled: bool = False
    discovery_prefix: TopicPrefix = "homeassistant"
    snapshot_interval: Seconds = Field(
        60.0, ge=0, le=86400, description="seconds between image entity snapshots; 0 = never"
    )


class MetricsConfig(Strict):
    """The Prometheus endpoint: off, and bound to the loopback interface, by default."""

    enabled: bool = False
    host: Text = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535, description="0 = any free port (tests)")


class DriftConfig(Strict):
    """Per camera and label: rolling mean confidence and detections per hour against a
    baseline learned over the first `baseline` seconds of frame time after the agent starts."""

    enabled: bool = True
    baseline: Seconds = Field(3600.0, gt=0, le=30 * 86400, description="seconds learning")
    window: Seconds = Field(3600.0, gt=0, le=30 * 86400, description="rolling window, seconds")
    max_drop: float = Field(
        0.3, gt=0, lt=1, description="warn when a figure falls by more than this fraction"
    )
    # A detection is one reported box on one frame: 100 is ~10 s of one object at 10 fps.
    min_count: int = Field(
        100, ge=1, le=10**9, description="detections a label needs in the baseline to be judged"
    )
