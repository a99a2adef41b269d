"""Load the YAML config with line numbers, reject duplicate keys, and report errors by location."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edge_agent.config.schema import AgentConfig
from edge_agent.errors import ConfigError

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where each key was written, for located runtime errors."""

    config: AgentConfig
    file: Path
    lines: dict[KeyPath, int]

    def where(self, *path: str | int) -> str:
        """Return `file:line: key.path` for a key path, using the nearest written ancestor."""
        return f"{self.file}:{_line_for(self.lines, path)}: {_dotted(path)}"


def _dotted(path: typing.Sequence[str | int]) -> str:
    return ".".join(str(p) for p in path) or "<top>"


def _line_for(lines: dict[KeyPath, int], path: typing.Sequence[str | int]) -> int:
    probe = tuple(path)
    while probe and probe not in lines:
        probe = probe[:-1]
    return lines.get(probe, 1)


class _Builder:
    """Turn a composed YAML node tree into Python objects while recording line numbers."""

    def __init__(self, loader: yaml.SafeLoader, file: Path) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[KeyPath, int] = {}

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key == "<<":
                raise ConfigError("YAML merge keys are not supported", where=f"{self.file}:{line}")
            if key in out:
                first = self.lines.get((*path, key), "?")
                raise ConfigError(
                    f"duplicate key (first defined on line {first})",
                    where=f"{self.file}:{line}: {_dotted((*path, key))}",
                )
            self.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        return out


def parse_yaml(text: str, file: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML text into objects and a key-path -> line map; syntax errors become ConfigError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        builder = _Builder(loader, file)
        return builder.build(node, ()), builder.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", where=f"{file}:{line}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", where=str(file)) from None
    finally:
        loader.dispose()


def load_config(path: str | Path) -> LoadedConfig:
    """Read, parse and validate a config file; every user error is a located ConfigError."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", where=str(file)) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", where=str(file)) from None
    data, lines = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys", where=f"{file}:1")
    try:
        config = AgentConfig.model_validate(data, context={"base_dir": file.parent})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, file, lines)) from None
    return LoadedConfig(config, file, lines)


def _format_errors(exc: ValidationError, file: Path, lines: dict[KeyPath, int]) -> str:
    messages = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(loc)
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown type {err['ctx']['tag']!r} (known: {err['ctx']['expected_tags']})"
        messages.append(f"{file}:{_line_for(lines, loc)}: {_dotted(loc)}: {msg}")
    return "\n".join(messages)


def _clean_loc(loc: tuple[str | int, ...]) -> KeyPath:
    """Drop pydantic's internal location parts (union tags, `[key]` markers)."""
    tags = {"video", "images", "v4l2", "rtsp", "picamera2"}
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if part in tags and i > 0 and loc[i - 1] == "source":
            continue
        out.append(part)
    return tuple(out)


def _suggest(loc: KeyPath) -> str:
    """Return ` (did you mean 'x'?)` for a misspelled key, or `` if nothing is close."""
    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), sorted(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known keys: {', '.join(sorted(known))})" if known else ""


def _known_keys(parent: KeyPath) -> set[str]:
    """The field names allowed under a key path, walking the schema's annotations."""
    candidates: list[Any] = [AgentConfig]
    for part in parent:
        nxt: list[Any] = []
        for ann in candidates:
            for model in _models_in(ann):
                field = model.model_fields.get(str(part))
                if field is not None:
                    nxt.append(field.annotation)
            nxt.extend(_dict_values(ann))
        candidates = nxt
    return {name for ann in candidates for m in _models_in(ann) for name in m.model_fields}


def _models_in(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(ann) for m in _models_in(arg)]
    return []


def _dict_values(ann: Any) -> list[Any]:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _dict_values(typing.get_args(ann)[0])
    if origin is dict:
        return [typing.get_args(ann)[1]]
    if origin in (typing.Union, types.UnionType):
        return [v for arg in typing.get_args(ann) for v in _dict_values(arg)]
    return []
