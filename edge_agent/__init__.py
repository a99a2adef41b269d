"""edge-agent: camera inference runtime that publishes detections over MQTT."""

__version__ = "0.1.0"
