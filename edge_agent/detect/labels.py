"""Label lists: plain files, files with a background line, or names embedded in the model."""

from __future__ import annotations

import ast
import codecs
import io
import json
import logging
import re
import zipfile
from pathlib import Path

from edge_agent.config.values import text_problem
from edge_agent.errors import ModelError
from edge_agent.files import open_regular

log = logging.getLogger(__name__)

BACKGROUND_NAMES = frozenset({"???", "background", "__background__", "bg"})


MAX_LABEL_FILE_BYTES = 2**20  # ~100x the largest real label map; bigger is the wrong file
# BOMs, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_LINE_END = re.compile(r"\r\n|\r|\n")


def _decode(data: bytes, where: str) -> str:
    """Text from bytes: UTF-8, or UTF-8/16/32 with a byte order mark; else a ModelError."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ModelError(
            f"labels file is not text ({encoding} decoding fails at byte {exc.start}; "
            "expected one label per line, UTF-8 or UTF-16 with a byte order mark)",
            where=where,
        ) from None


def read_label_file(path: Path) -> list[str]:
    """Read one label per line: BOMs, CRLF/CR line ends and surrounding whitespace are
    normalised, leading/trailing blank lines dropped; anything ambiguous is a ModelError."""
    try:
        with open_regular(path) as stream:
            data = stream.read(MAX_LABEL_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ModelError("labels file not found", where=str(path)) from None
    except OSError as exc:
        raise ModelError(f"cannot read labels file: {exc.strerror}", where=str(path)) from None
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise ModelError(
            f"labels file is larger than {MAX_LABEL_FILE_BYTES} bytes (is it a label file?)",
            where=str(path),
        )
    lines = [line.strip() for line in _LINE_END.split(_decode(data, str(path)))]
    first = next((i for i, line in enumerate(lines) if line), None)
    if first is None:
        raise ModelError("labels file is empty", where=str(path))
    last = max(i for i, line in enumerate(lines) if line)
    for number in range(first, last + 1):
        _check_line(lines[number], f"{path}:{number + 1}")
    labels = lines[first : last + 1]
    _warn_duplicates(labels, path, first)
    return labels


def _check_line(line: str, where: str) -> None:
    """A label line must hold a name: a blank one would shift every class id after it."""
    if not line:
        raise ModelError(
            "blank line in the middle of the labels file: it would shift every class id "
            "after it (remove it, or write a placeholder such as ???)",
            where=where,
        )
    problem = text_problem(line)
    if problem:
        raise ModelError(f"label {problem} (is this a text file of labels?)", where=where)


def _warn_duplicates(labels: list[str], path: Path, offset: int) -> None:
    """Warn once about names used for more than one class (placeholders excepted)."""
    seen: dict[str, int] = {}
    repeats: list[str] = []
    for i, label in enumerate(labels):
        if label.lower() in BACKGROUND_NAMES:
            continue  # COCO maps repeat ??? for unused ids on purpose
        if label in seen:
            repeats.append(f"{label!r} (lines {seen[label]} and {i + offset + 1})")
        else:
            seen[label] = i + offset + 1
    if repeats:
        log.warning(
            "labels file %s names several classes alike: %s; detections of these classes "
            "cannot be told apart by label",
            path,
            ", ".join(repeats[:10]),
        )


def fit_labels(labels: list[str], num_classes: int | None, where: str) -> list[str]:
    """Align a label list with the model's class count, dropping a background line if present."""
    if num_classes is None:
        if labels and labels[0].lower() in BACKGROUND_NAMES:
            return labels[1:]
        return labels
    if len(labels) == num_classes:
        return labels
    if len(labels) == num_classes + 1 and labels[0].lower() in BACKGROUND_NAMES:
        return labels[1:]
    raise ModelError(
        f"labels file has {len(labels)} entries but the model has {num_classes} classes"
        f" (a first line '???' or 'background' is accepted as a background entry)",
        where=where,
    )


def embedded_labels(model_path: Path) -> list[str] | None:
    """Class names from metadata appended to the model (Ultralytics exports), if any."""
    try:
        data = model_path.read_bytes()
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (OSError, zipfile.BadZipFile):
        return None
    with archive:
        for name in archive.namelist():
            names = _names_from(archive.read(name))
            if names:
                log.info("using %d class names embedded in %s (%s)", len(names), model_path, name)
                return names
    return None


def _names_from(blob: bytes) -> list[str] | None:
    text = blob.decode("utf-8", errors="replace")
    meta: object = None
    for parse in (json.loads, ast.literal_eval):
        try:
            meta = parse(text)
            break
        except (ValueError, SyntaxError):
            continue
    if not isinstance(meta, dict):
        return None
    names = meta.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    return None
