"""Configuration: schema and located loading."""

from edge_agent.config.loader import LoadedConfig, load_config
from edge_agent.config.schema import AgentConfig, CameraConfig, ModelConfig, MqttConfig

__all__ = [
    "AgentConfig",
    "CameraConfig",
    "LoadedConfig",
    "ModelConfig",
    "MqttConfig",
    "load_config",
]
