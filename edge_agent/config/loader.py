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
from edge_agent.config.values import show, text_problem
from edge_agent.errors import ConfigError
from edge_agent.files import open_regular

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


MAX_FILE_BYTES = 2**20  # a config is a few KiB; anything this big is the wrong file
MAX_VALUES = 10_000  # values written in the file: a real config has a few hundred
MAX_NODES = 100_000  # values once aliases are expanded: stops "billion laughs" in milliseconds
MAX_ALIASES = 1_000
MAX_DEPTH = 64  # far deeper than the schema; keeps every walk far from Python's recursion limit


def _part(part: str | int) -> str:
    """A key as printed in messages: escaped when unsafe, shortened when long."""
    text = str(part)
    return show(text) if text_problem(text) or len(text) > 40 else text


def _dotted(path: typing.Sequence[str | int]) -> str:
    return ".".join(_part(p) for p in path) or "<top>"


def _line_for(lines: dict[KeyPath, int], path: typing.Sequence[str | int]) -> int:
    probe = tuple(path)
    while probe and probe not in lines:
        probe = probe[:-1]
    return lines.get(probe, 1)


class _Loader(yaml.SafeLoader):
    """A SafeLoader whose composer bounds nesting depth, node count and alias uses."""

    def __init__(self, text: str, file: Path) -> None:
        super().__init__(text)
        self.file = file
        self.depth = 0
        self.nodes = 0
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, refusing documents that would exhaust memory or the stack."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        where = f"{self.file}:{event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases", where=where)
            return super().compose_node(parent, index)
        self.nodes += 1
        if self.nodes > MAX_VALUES:
            raise ConfigError(f"YAML document has more than {MAX_VALUES} values", where=where)
        if self.depth >= MAX_DEPTH:
            raise ConfigError(f"YAML nested deeper than {MAX_DEPTH} levels", where=where)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _check_expansion(root: yaml.Node, file: Path) -> None:
    """Refuse documents whose aliases expand past MAX_NODES values or MAX_DEPTH levels.

    Aliases share nodes, so the composed graph stays small while building it would not:
    sizes are computed once per node (memoized), which takes microseconds even for a
    "billion laughs" document, before anything is built."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)

    def walk(node: yaml.Node, depth: int) -> tuple[int, int]:
        where = f"{file}:{node.start_mark.line + 1}"
        known = memo.get(id(node))
        if known == (-1, 0):
            raise ConfigError("YAML alias refers to a node that contains it", where=where)
        if known is None:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [v for _, v in node.value]
            memo[id(node)] = (-1, 0)  # in progress: meeting it again means a cycle
            if depth >= MAX_DEPTH:
                raise ConfigError(f"YAML aliases nest deeper than {MAX_DEPTH} levels", where=where)
            sizes = [walk(child, depth + 1) for child in children]
            known = (1 + sum(n for n, _ in sizes), 1 + max((h for _, h in sizes), default=0))
            memo[id(node)] = known
        if known[0] > MAX_NODES:
            raise ConfigError(f"YAML aliases expand to more than {MAX_NODES} nodes", where=where)
        if depth + known[1] > MAX_DEPTH:
            raise ConfigError(f"YAML aliases nest deeper than {MAX_DEPTH} levels", where=where)
        return known

    walk(root, 0)


class _Builder:
    """Turn a composed YAML node tree into Python objects while recording line numbers;
    every key and string value is checked for unsafe characters on the way."""

    def __init__(self, loader: _Loader, file: Path) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[KeyPath, int] = {}

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        """The Python value of `node`, written at key path `path`."""
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path, "")

    def _scalar(self, node: yaml.Node, path: KeyPath, what: str) -> Any:
        where = f"{self.file}:{node.start_mark.line + 1}: {_dotted(path)}"
        try:
            value = self.loader.construct_object(node, deep=True)
        except (ValueError, OverflowError) as exc:  # e.g. a 5000-digit int, month 13
            reason = "too many digits" if node.tag.endswith(":int") else str(exc)
            message = f"{what}cannot use {show(str(node.value))}: {reason} (quote it for text)"
            raise ConfigError(message, where=where) from None
        if isinstance(value, bytes):
            raise ConfigError(f"{what}binary (!!binary) values are not supported", where=where)
        problem = text_problem(value) if isinstance(value, str) else None
        if problem:
            raise ConfigError(f"{what}{problem}", where=where)
        return value

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    "a key must be a plain name, not a list or mapping",
                    where=f"{self.file}:{line}: {_dotted(path)}",
                )
            if key_node.tag.endswith(":merge"):  # `<<`: checked before construction fails
                raise ConfigError("YAML merge keys are not supported", where=f"{self.file}:{line}")
            key = self._scalar(key_node, (*path, key_node.value), "key ")
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
    loader: _Loader | None = None
    try:
        loader = _Loader(text, file)  # the reader refuses unprintable characters right here
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        _check_expansion(node, file)
        builder = _Builder(loader, file)
        return builder.build(node, ()), builder.lines
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else "a character"
        raise ConfigError(
            f"invalid YAML: character {char} is not allowed in a config file",
            where=f"{file}:{line}",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", where=f"{file}:{line}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", where=str(file)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_text(file: Path) -> str:
    """The file as text; too big, unreadable or non-UTF-8 files are located ConfigErrors."""
    try:
        with open_regular(file) as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", where=str(file)) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"config file is larger than {MAX_FILE_BYTES} bytes", where=str(file))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("config file is not UTF-8 text", where=f"{file}:{line}") from None


def load_config(path: str | Path) -> LoadedConfig:
    """Read, parse and validate a config file; every user error is a located ConfigError."""
    file = Path(path)
    data, lines = parse_yaml(_read_text(file), file)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys", where=f"{file}:1")
    try:
        config = AgentConfig.model_validate(data, context={"base_dir": file.parent})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, file, lines, data)) from None
    return LoadedConfig(config, file, lines)


def _format_errors(
    exc: ValidationError, file: Path, lines: dict[KeyPath, int], data: object
) -> str:
    # One line per key: a union reports each member's failure, and only the most specific
    # one (a bound, not "should be a string" from the member that never applied) is shown.
    chosen: dict[KeyPath, Any] = {}
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"], data, err["type"])
        first = chosen.get(loc)
        if first is None or (first["type"].endswith("_type") and not err["type"].endswith("_type")):
            chosen[loc] = err
    messages = []
    for loc, err in chosen.items():
        if any(other[: len(loc)] == loc and other != loc for other in chosen):
            continue  # a union member that got further explains the problem better
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(loc)
        elif err["type"] == "missing":
            msg = "too few values" if isinstance(loc[-1], int) else "required key is missing"
        elif err["type"] == "union_tag_not_found":
            msg = f"required key '{err['ctx']['discriminator'].strip(chr(39))}' is missing"
        elif err["type"] == "value_error":  # a validator's own words, without pydantic's prefix
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "union_tag_invalid":
            tag = show(str(err["ctx"]["tag"]))
            msg = f"unknown type {tag} (known: {err['ctx']['expected_tags']})"
        messages.append(f"{file}:{_line_for(lines, loc)}: {_dotted(loc)}: {msg}")
    return "\n".join(messages)


def _clean_loc(loc: tuple[str | int, ...], data: object, kind: str) -> KeyPath:
    """The written key path of an error: pydantic's own location parts (union member tags
    such as `v4l2` or `constrained-int`, `[key]` markers) are not keys of the input."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_list or (isinstance(data, dict) and part in data):
            data = data[part]  # type: ignore[index]
        elif not (kind == "missing" and i == len(loc) - 1):
            continue  # a tag: a missing key is the only part absent from the input
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
