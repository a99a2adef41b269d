"""A samples message (v2) -> a `Sample` ready to store, or a `Rejected` naming why not.

Every check a collector needs before it writes anything happens here: JSON, version, the
JSON Schema shipped with the package (the same file as `schemas/samples.schema.json`), names
that are safe as folder names, box order, and each JPEG: base64, size limit, decodable, and
decoded to the size the message states.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import cv2
import numpy as np

SCHEMA_FILE = "samples.schema.json"
VERSION = 2
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
# A device name or camera becomes a folder: keep it one plain path component.
_SAFE_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")
MAX_DETAIL = 300  # characters of a rejection detail (an error may quote a whole image)


class Rejected(Exception):
    """A message the collector will not store; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:MAX_DETAIL]


@dataclass(frozen=True)
class Picture:
    """One JPEG of a sample as it will be stored: the frame, or one crop of it."""

    stem: str  # file name without extension: <id> or <id>_<k>
    width: int
    height: int
    region: tuple[float, float, float, float] | None  # crops: the part of the frame shown
    tracker_id: int | None  # crops: the track the crop was cut for
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Sample:
    """An accepted samples message: what the index and the exports need."""

    id: str
    device: str
    camera: str
    ts: float
    frame: int
    model: str
    model_sha256: str
    reasons: list[str]
    detections: list[dict[str, Any]]
    pictures: list[Picture]


def load_schema() -> dict[str, Any]:
    """The samples JSON Schema shipped inside the package."""
    text = resources.files("edge_agent.collect").joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class SampleParser:
    """Turns raw payloads into Samples; holds the compiled schema validator."""

    def __init__(self, max_image_bytes: int) -> None:
        from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

        self.validator = Draft202012Validator(load_schema())
        self.max_image_bytes = max_image_bytes

    def parse(self, payload: bytes) -> Sample:
        """The Sample in payload; raises Rejected with the first problem found."""
        body = _json_object(payload)
        if body.get("v") != VERSION:
            raise Rejected("unknown_version", f"v is {body.get('v')!r}; this collector reads v2")
        self._check_schema(body)
        _check_names(body)
        _check_boxes(body)
        return Sample(
            id=body["id"],
            device=body["device_id"],
            camera=body["camera"],
            ts=float(body["ts"]),
            frame=int(body["frame"]),
            model=body["model"],
            model_sha256=body["model_sha256"],
            reasons=list(body["reasons"]),
            detections=list(body["detections"]),
            pictures=self._pictures(body),
        )

    def _check_schema(self, body: dict[str, Any]) -> None:
        if self.validator.is_valid(body):
            return
        from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

        error = best_match(self.validator.iter_errors(body))
        message = error.message
        if len(message) > 160:  # the message quotes the value: an image's base64, maybe
            message = message[:160] + "..."
        raise Rejected("schema", f"{error.json_path}: {message}")

    def _pictures(self, body: dict[str, Any]) -> list[Picture]:
        sample_id = body["id"]
        if "image" in body:
            return [self._picture(body["image"], sample_id, "image")]
        return [
            self._picture(crop, f"{sample_id}_{k}", f"crops[{k}]")
            for k, crop in enumerate(body["crops"])
        ]

    def _picture(self, part: dict[str, Any], stem: str, where: str) -> Picture:
        data = _jpeg_bytes(part["data"], self.max_image_bytes, where)
        width, height = int(part["width"]), int(part["height"])
        if not data.startswith(JPEG_MAGIC):
            raise Rejected("undecodable_jpeg", f"{where}.data is not a JPEG")
        # A cut-off JPEG still decodes (the missing rows come out grey): its end marker tells.
        if not data.rstrip(b"\0").endswith(JPEG_END):
            raise Rejected("undecodable_jpeg", f"{where}.data is truncated (no end marker)")
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise Rejected("undecodable_jpeg", f"{where}.data is not a decodable JPEG")
        got_h, got_w = decoded.shape[:2]
        if (got_w, got_h) != (width, height):
            raise Rejected(
                "size_mismatch",
                f"{where}: the JPEG is {got_w}x{got_h} but the message says {width}x{height}",
            )
        region = _region(part["region"]) if "region" in part else None
        return Picture(stem, width, height, region, part.get("tracker_id"), data)


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("malformed_json", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Rejected("malformed_json", f"a JSON {type(body).__name__}, not an object")
    return body


def _jpeg_bytes(text: str, limit: int, where: str) -> bytes:
    # Refuse by the encoded length first: decoding an oversized image costs memory for nothing.
    if len(text) // 4 * 3 > limit + 2:
        raise Rejected("image_too_large", f"{where} is over {limit} bytes (--max-image-bytes)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected("undecodable_jpeg", f"{where}.data is not base64: {exc}") from None
    if len(data) > limit:
        raise Rejected(
            "image_too_large", f"{where} is {len(data)} bytes, over {limit} (--max-image-bytes)"
        )
    return data


def _check_names(body: dict[str, Any]) -> None:
    for key in ("device_id", "camera"):
        value = body[key]
        if not _SAFE_NAME.match(value) or value in (".", ".."):
            raise Rejected("unsafe_name", f"{key} {value[:60]!r} cannot be a folder name")


def _check_boxes(body: dict[str, Any]) -> None:
    """The schema bounds each coordinate; the order of corners is checked here."""
    for i, det in enumerate(body["detections"]):
        x1, y1, x2, y2 = det["box"]
        if x2 < x1 or y2 < y1:
            raise Rejected("bad_box", f"detections[{i}].box {det['box']} has x2 < x1 or y2 < y1")
    for k, crop in enumerate(body.get("crops", [])):
        x1, y1, x2, y2 = crop["region"]
        if x2 <= x1 or y2 <= y1:
            raise Rejected("bad_box", f"crops[{k}].region {crop['region']} is empty")


def _region(values: list[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in values)
    return (x1, y1, x2, y2)
