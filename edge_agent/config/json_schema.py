"""The config file's JSON Schema, as `edge-agent schema` prints it and editors read it."""

from __future__ import annotations

from typing import Any

from edge_agent import __version__


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the whole config, from the pydantic models."""
    from edge_agent.config.schema import AgentConfig

    body = AgentConfig.model_json_schema(mode="validation")
    body.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"edge-agent {'.'.join(__version__.split('.')[:2])} configuration",
        **body,
    }
