"""Topic layout and JSON payloads. Payload version `v` changes only with breaking changes."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_agent.types import Detection, FrameResult, Image

PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class OutMessage:
    """One message to deliver. `kind` orders drop priority: samples go first, detections last."""

    id: str
    topic: str
    payload: bytes
    kind: str
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Topics:
    """`<prefix>/<device_id>/...` topic names."""

    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        """`<prefix>/<device_id>`."""
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        """Retained `online`/`offline`."""
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        """Periodic counters."""
        return f"{self.base}/stats"

    def detections(self, camera: str) -> str:
        """Per-frame detections of one camera."""
        return f"{self.base}/{camera}/detections"

    def samples(self, camera: str) -> str:
        """Low-confidence samples of one camera."""
        return f"{self.base}/{camera}/samples"

    def camera_state(self, camera: str) -> str:
        """Retained state of one camera (starting, running, retrying, stopped, failed)."""
        return f"{self.base}/{camera}/state"


def new_id() -> str:
    """A unique message id (consumers de-duplicate re-sends by it)."""
    return uuid.uuid4().hex


def _header(device_id: str, model: str, result: FrameResult) -> dict[str, Any]:
    frame = result.frame
    return {
        "v": PAYLOAD_VERSION,
        "id": new_id(),
        "device_id": device_id,
        "camera": frame.camera,
        "frame": frame.index,
        "ts": round(frame.ts, 3),
        "width": frame.width,
        "height": frame.height,
        "model": model,
        "inference_ms": round(result.inference_ms, 2),
    }


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def detection_message(
    topics: Topics, device_id: str, model: str, result: FrameResult, qos: int
) -> OutMessage:
    """The `<camera>/detections` message for one processed frame."""
    body = _header(device_id, model, result)
    body["detections"] = [d.to_json() for d in result.detections]
    return OutMessage(
        body["id"], topics.detections(result.frame.camera), _encode(body), "detections", qos
    )


def jpeg(image: Image, max_side: int, quality: int) -> tuple[bytes, int, int]:
    """Encode a BGR frame as JPEG, downscaled so its longer side is at most max_side."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        image = np.asarray(small, np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes(), width, height


@dataclass(frozen=True)
class SampleSpec:
    """Why and how a sample is encoded."""

    reason: str
    detections: tuple[Detection, ...]
    max_side: int
    quality: int


def sample_message(
    topics: Topics, device_id: str, model: str, result: FrameResult, spec: SampleSpec, qos: int
) -> OutMessage:
    """The `<camera>/samples` message: header, reason, detections and the JPEG frame."""
    data, width, height = jpeg(result.frame.image, spec.max_side, spec.quality)
    body = _header(device_id, model, result)
    body["reason"] = spec.reason
    body["detections"] = [d.to_json() for d in spec.detections]
    body["image"] = {
        "format": "jpeg",
        "width": width,
        "height": height,
        "data": base64.b64encode(data).decode("ascii"),
    }
    return OutMessage(
        body["id"], topics.samples(result.frame.camera), _encode(body), "samples", qos
    )


def stats_message(
    topics: Topics,
    device_id: str,
    ts: float,
    counters: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> OutMessage:
    """The `stats` message: counters since start (every drop is counted here), plus `extra`
    sections (camera states, outbox)."""
    msg_id = new_id()
    body = {
        "v": PAYLOAD_VERSION,
        "id": msg_id,
        "device_id": device_id,
        "ts": round(ts, 3),
        "counters": counters,
        **(extra or {}),
    }
    return OutMessage(msg_id, topics.stats, _encode(body), "stats", 1)


def camera_state_message(
    topics: Topics, device_id: str, camera: str, state: dict[str, Any]
) -> OutMessage:
    """The retained `<camera>/state` message."""
    msg_id = new_id()
    body = {"v": PAYLOAD_VERSION, "id": msg_id, "device_id": device_id, "camera": camera, **state}
    return OutMessage(msg_id, topics.camera_state(camera), _encode(body), "state", 1, True)


# Re-encoding steps for a sample over the broker's size limit: lower quality first (cheap,
# keeps the resolution labelers need), then smaller sizes.
_SHRINK_QUALITIES = (70, 55, 40)
_SHRINK_SCALE = 0.7
_SHRINK_MIN_SIDE = 96


def shrink_sample(msg: OutMessage, max_payload: int) -> OutMessage | None:
    """The same sample (same id) re-encoded to fit in max_payload bytes, or None if it cannot."""
    try:
        body = json.loads(msg.payload)
        image = body["image"]
        data = base64.b64decode(image["data"])
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (ValueError, KeyError, TypeError):
        return None
    if decoded is None:
        return None
    pixels = np.asarray(decoded, np.uint8)
    side = max(pixels.shape[:2])
    while side >= _SHRINK_MIN_SIDE:
        for quality in _SHRINK_QUALITIES:
            jpg, width, height = jpeg(pixels, side, quality)
            image.update(width=width, height=height, data=base64.b64encode(jpg).decode("ascii"))
            payload = _encode(body)
            if len(payload) <= max_payload:
                return OutMessage(msg.id, msg.topic, payload, msg.kind, msg.qos, msg.retain)
        side = int(side * _SHRINK_SCALE)
    return None
