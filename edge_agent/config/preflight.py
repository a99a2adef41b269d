"""What `check-config` verifies beyond validation, without starting the agent: every file the
config names exists (and is readable), the model loads, and every label the config names is
one of the model's. Each problem is a located UserError; all of them are reported at once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from edge_agent.config.loader import LoadedConfig
from edge_agent.errors import ConfigError, UserError

KeyPath = tuple[str | int, ...]
# Files the agent creates rather than reads: only their folder has to exist.
CREATED = {("outbox", "path")}


def config_paths(node: object, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Path]]:
    """Every path value in a validated config, with its key path."""
    if isinstance(node, Path):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from config_paths(getattr(node, name), (*path, name))
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from config_paths(value, (*path, str(key)))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from config_paths(value, (*path, index))


def _file_problem(key: KeyPath, path: Path) -> str | None:
    if key in CREATED:
        folder = path.parent
        return None if folder.is_dir() else f"folder {folder} does not exist"
    if not path.exists():
        return f"{path}: not found"
    if not os.access(path, os.R_OK):
        return f"{path}: not readable by this user"
    return None


def missing_files(loaded: LoadedConfig) -> dict[KeyPath, UserError]:
    """A located error for every named file or folder that is absent or unreadable."""
    problems: dict[KeyPath, UserError] = {}
    for key, path in config_paths(loaded.config):
        problem = _file_problem(key, path)
        if problem is not None:
            problems[key] = ConfigError(problem, where=loaded.where(*key))
    return problems


def model_problems(loaded: LoadedConfig) -> list[UserError]:
    """Load the detector (as `run` would) and check the config's labels against its own."""
    from edge_agent.config.labels_check import check_labels
    from edge_agent.detect.detector import Detector

    cfg = loaded.config
    try:
        detector = Detector(cfg.model, 1.0)
    except UserError as exc:
        if exc.where == "model.delegate":
            return [type(exc)(exc.message, where=loaded.where("model", "delegate"))]
        key = "labels" if cfg.model.labels and str(cfg.model.labels) == exc.where else "path"
        where = loaded.where("model", key)
        return [type(exc)(exc.message, where=f"{where}: {exc.where}" if exc.where else where)]
    try:
        check_labels(loaded, detector.labels)
    except UserError as exc:
        return [exc]
    return []


def preflight(loaded: LoadedConfig) -> list[UserError]:
    """Every problem found on disk; the model is loaded only when its files are there."""
    missing = missing_files(loaded)
    problems = list(missing.values())
    if not any(key[0] == "model" for key in missing):
        problems += model_problems(loaded)
    return problems
