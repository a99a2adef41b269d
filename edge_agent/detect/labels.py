"""Label lists: plain files, files with a background line, or names embedded in the model."""

from __future__ import annotations

import ast
import io
import json
import logging
import zipfile
from pathlib import Path

from edge_agent.errors import ModelError

log = logging.getLogger(__name__)

BACKGROUND_NAMES = frozenset({"???", "background", "__background__", "bg"})


def read_label_file(path: Path) -> list[str]:
    """Read one label per line; trailing blank lines are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError("labels file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file: {exc}", where=str(path)) from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ModelError("labels file is empty", where=str(path))
    return lines


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
