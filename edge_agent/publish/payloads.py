"""Topic layout and JSON payloads. Payload version `v` changes only with breaking changes."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_agent.core.detections import NO_TRACK, Detections
from edge_agent.types import Frame, Image

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

    def motion(self, camera: str) -> str:
        """Retained `ON`/`OFF` of one camera's motion gate."""
        return f"{self.base}/{camera}/motion"

    def snapshot(self, camera: str) -> str:
        """Retained annotated JPEG of one camera's last processed frame."""
        return f"{self.base}/{camera}/snapshot"

    def cmd(self, name: str) -> str:
        """A remote command addressed to this device."""
        return f"{self.base}/cmd/{name}"

    def cmd_result(self, name: str) -> str:
        """Where a command's result goes when the sender named no response topic."""
        return f"{self.base}/cmd/{name}/result"


def new_id() -> str:
    """A unique message id (consumers de-duplicate re-sends by it)."""
    return uuid.uuid4().hex


def label_of(labels: Sequence[str], class_id: int) -> str:
    """The name of a class id (`class_<id>` for ids the label list does not name)."""
    return labels[class_id] if 0 <= class_id < len(labels) else f"class_{class_id}"


def boxes_json(
    dets: Detections, labels: Sequence[str], sub_labels: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The boxes as they appear in payloads (rounded for size): rounding is one numpy pass,
    the per-box work is only building the JSON objects."""
    boxes = np.round(dets.xyxy.astype(np.float64), 5).tolist()
    scores = np.round(dets.score.astype(np.float64), 4).tolist()
    out: list[dict[str, Any]] = [
        {"label": label_of(labels, c), "class_id": c, "score": s, "box": b}
        for c, s, b in zip(dets.class_id.tolist(), scores, boxes, strict=True)
    ]
    if dets.tracker_id is not None:
        for item, tid in zip(out, dets.tracker_id.tolist(), strict=True):
            if tid != NO_TRACK:
                item["tracker_id"] = tid
    if dets.keypoints is not None and dets.keypoints.shape[1]:
        kps = np.round(dets.keypoints.astype(np.float64), 5).tolist()
        for item, points in zip(out, kps, strict=True):
            item["keypoints"] = points
    sub_id, sub_score = dets.data.get("sub_label_id"), dets.data.get("sub_score")
    if sub_id is not None and sub_score is not None:
        scores = np.round(sub_score.astype(np.float64), 4).tolist()
        for item, k, score in zip(out, sub_id.tolist(), scores, strict=True):
            if k >= 0:
                item["classification"] = {"label": label_of(sub_labels, k), "score": score}
    return out


def header(device_id: str, model: str, frame: Frame, inference_ms: float) -> dict[str, Any]:
    """The fields every per-frame message starts with."""
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
        "inference_ms": round(inference_ms, 2),
    }


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def detection_message(
    topics: Topics, head: dict[str, Any], boxes: list[dict[str, Any]], qos: int
) -> OutMessage:
    """The `<camera>/detections` message for one processed frame."""
    body = {**head, "detections": boxes}
    return OutMessage(
        body["id"], topics.detections(head["camera"]), _encode(body), "detections", qos
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
    """The same sample (same id) re-encoded to fit in max_payload bytes, or None if it cannot.
    Every picture in it (the image, or each crop) is scaled by the same factor."""
    try:
        body = json.loads(msg.payload)
        parts = [body["image"]] if "image" in body else list(body["crops"])
        pixels = [_decoded(part) for part in parts]
    except (ValueError, KeyError, TypeError):
        return None
    images = [p for p in pixels if p is not None]
    if not parts or len(images) != len(parts):
        return None
    scale = 1.0
    while max(max(p.shape[:2]) for p in images) * scale >= _SHRINK_MIN_SIDE:
        for quality in _SHRINK_QUALITIES:
            for part, image in zip(parts, images, strict=True):
                side = max(1, int(max(image.shape[:2]) * scale))
                jpg, width, height = jpeg(image, side, quality)
                part.update(width=width, height=height, data=base64.b64encode(jpg).decode("ascii"))
            payload = _encode(body)
            if len(payload) <= max_payload:
                return OutMessage(msg.id, msg.topic, payload, msg.kind, msg.qos, msg.retain)
        scale *= _SHRINK_SCALE
    return None


def _decoded(part: dict[str, Any]) -> Image | None:
    data = base64.b64decode(part["data"])
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if decoded is None else np.asarray(decoded, np.uint8)


# Sections of a stats message left out, in this order, when it exceeds a broker's packet
# limit; the ids, time, counters and warnings stay (they say what was lost and why).
_STATS_OPTIONAL = ("drift", "threads", "system", "cameras", "outbox", "model")


def shrink_stats(msg: OutMessage, max_payload: int) -> OutMessage | None:
    """The same stats message (same id) without its optional sections, then without zero
    counters, until it fits in max_payload bytes; `truncated` names what was left out."""
    try:
        body = json.loads(msg.payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    left_out: list[str] = []
    for key in (*_STATS_OPTIONAL, "zero_counters"):
        if key == "zero_counters":
            counters = body.get("counters") or {}
            body["counters"] = {k: v for k, v in counters.items() if v}
        elif body.pop(key, None) is None:
            continue
        left_out.append(key)
        body["truncated"] = left_out
        payload = _encode(body)
        if len(payload) <= max_payload:
            return OutMessage(msg.id, msg.topic, payload, msg.kind, msg.qos, msg.retain)
    return None
