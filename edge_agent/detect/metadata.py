"""Read input normalization from TFLite model metadata (the `TFLITE_METADATA` buffer).

A minimal reader of the two flatbuffer schemas involved (the TFLite model and its metadata),
so edge-agent needs no TFLite support library. Field numbers follow the published schemas:
Model.metadata = 6, Model.buffers = 4, Metadata.{name = 0, buffer = 1}, Buffer.{data = 0,
offset = 1, size = 2}; ModelMetadata.subgraph_metadata = 3, SubGraphMetadata.
input_tensor_metadata = 2, TensorMetadata.process_units = 4, ProcessUnit.{options_type = 0,
options = 1}, NormalizationOptions.{mean = 0, std = 1}.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from flatbuffers import encode
from flatbuffers import number_types as nt
from flatbuffers.table import Table

log = logging.getLogger(__name__)

METADATA_NAME = b"TFLITE_METADATA"
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union tag


def _root(buf: bytes | bytearray) -> Table:
    return Table(buf, encode.Get(nt.UOffsetTFlags.packer_type, buf, 0))


def _slot(t: Table, field: int) -> int:
    return int(t.Offset(4 + 2 * field))


def _tables(t: Table, field: int) -> list[Table]:
    off = _slot(t, field)
    if not off:
        return []
    start = t.Vector(off)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(off))]


def _sub(t: Table, field: int) -> Table | None:
    off = _slot(t, field)
    return Table(t.Bytes, t.Indirect(t.Pos + off)) if off else None


def _scalar(t: Table, field: int, flags: type, default: int) -> int:
    off = _slot(t, field)
    return int(t.Get(flags, t.Pos + off)) if off else default


def _floats(t: Table, field: int) -> list[float]:
    off = _slot(t, field)
    if not off:
        return []
    start = t.Vector(off)
    return [float(t.Get(nt.Float32Flags, start + 4 * i)) for i in range(t.VectorLen(off))]


def _bytes(t: Table, field: int) -> bytes:
    off = _slot(t, field)
    if not off:
        return b""
    start = t.Vector(off)
    return bytes(t.Bytes[start : start + t.VectorLen(off)])


def _metadata_blob(model: bytes) -> bytes | None:
    root = _root(model)
    buffers = _tables(root, 4)
    for entry in _tables(root, 6):
        name_off = _slot(entry, 0)
        if not name_off or entry.String(entry.Pos + name_off) != METADATA_NAME:
            continue
        buffer = buffers[_scalar(entry, 1, nt.Uint32Flags, 0)]
        data = _bytes(buffer, 0)
        if data:
            return data
        offset = _scalar(buffer, 1, nt.Uint64Flags, 0)
        size = _scalar(buffer, 2, nt.Uint64Flags, 0)
        return model[offset : offset + size] if offset > 1 else None
    return None


def read_normalization(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per channel for the first input, if the model's metadata states them."""
    try:
        blob = _metadata_blob(path.read_bytes())
        if blob is None:
            return None
        subgraphs = _tables(_root(blob), 3)
        inputs = _tables(subgraphs[0], 2) if subgraphs else []
        for unit in _tables(inputs[0], 4) if inputs else []:
            if _scalar(unit, 0, nt.Uint8Flags, 0) != NORMALIZATION_OPTIONS:
                continue
            options = _sub(unit, 1)
            if options is None:
                continue
            mean, std = _floats(options, 0), _floats(options, 1)
            if mean and std and all(s != 0 for s in std):
                return _per_channel(mean), _per_channel(std)
    except (OSError, struct.error, IndexError, ValueError) as exc:
        log.debug("no readable metadata in %s: %s", path, exc)
    return None


def _per_channel(values: list[float]) -> tuple[float, ...]:
    """One value applies to every channel (the schema's rule)."""
    return tuple(values * 3) if len(values) == 1 else tuple(values)
