"""A chosen sample -> the `samples` message (v2), with privacy applied. The job is built on
the camera's thread (cheap: references and JSON-ready boxes); `sample_message` runs on the
encoder thread (face model, JPEG encoding, base64)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.publish.payloads import OutMessage, Topics, jpeg, new_id
from edge_agent.sampling.phash import hex64
from edge_agent.sampling.privacy import PrivacyFilter
from edge_agent.sampling.select import Chosen
from edge_agent.track.tracks import Track
from edge_agent.types import Image

SAMPLES_VERSION = 2


@dataclass(frozen=True)
class SampleJob:
    """A sample chosen on the camera's thread, made private and encoded on the encoder's."""

    body: dict[str, Any]  # every field but the image
    image: Image = field(repr=False)
    xyxy: np.ndarray = field(repr=False)  # the boxes, for crops
    scores: np.ndarray = field(repr=False)
    tracker_ids: list[int | None]
    heads: np.ndarray = field(repr=False)  # boxes whose head area is searched for faces
    privacy: PrivacyFilter
    max_side: int
    quality: int
    qos: int

    @property
    def camera(self) -> str:
        """The camera the sample comes from."""
        return str(self.body["camera"])


def track_summary(t: Track, labels: list[str]) -> dict[str, Any]:
    """The `track` object of a track-level sample."""
    name = labels[t.label] if 0 <= t.label < len(labels) else f"class_{t.label}"
    return {
        "id": t.id,
        "label": name,
        "start_ts": round(t.first_ts, 3),
        "end_ts": round(t.last_ts, 3),
        "start_frame": t.first_frame,
        "end_frame": t.last_frame,
        "hits": max(1, t.hits),
        "median_score": round(min(1.0, max(0.0, t.median_score)), 4),
        "top_score": round(min(1.0, max(0.0, t.best_score)), 4),
        "confirmed": t.confirmed,
        "labels": {
            (labels[c] if 0 <= c < len(labels) else f"class_{c}"): round(w, 4)
            for c, w in sorted(t.votes.items())
        },
    }


def sample_job(
    chosen: Chosen,
    boxes: list[dict[str, Any]],
    model_sha256: str,
    labels: list[str],
    privacy: PrivacyFilter,
    settings: tuple[int, int, int],
) -> SampleJob:
    """The job for one chosen sample; settings = (max_side, jpeg quality, qos)."""
    view = chosen.view
    head = {k: v for k, v in view.head.items() if k != "id"}
    body: dict[str, Any] = {
        **head,
        "v": SAMPLES_VERSION,
        "id": new_id(),
        "model_sha256": model_sha256,
        "reasons": chosen.reasons,
        "detections": boxes,
        "phash": hex64(chosen.phash),
    }
    if chosen.track is not None:
        body["track"] = track_summary(chosen.track, labels)
    raw = view.raw
    blur = privacy.cfg.blur_faces
    wanted = set(blur.on_labels) if blur is not None else set()
    heads = raw.xyxy[[0 <= c < len(labels) and labels[c] in wanted for c in raw.class_id]]
    return SampleJob(
        body,
        view.frame.image,
        raw.xyxy,
        raw.score,
        [int(t) if t > 0 else None for t in raw.tracked],
        np.asarray(heads, np.float32).reshape(-1, 4),
        privacy,
        *settings,
    )


def _jpeg_object(image: Image, max_side: int, quality: int) -> dict[str, Any]:
    data, width, height = jpeg(image, max_side, quality)
    return {
        "format": "jpeg",
        "width": width,
        "height": height,
        "data": base64.b64encode(data).decode("ascii"),
    }


def sample_message(topics: Topics, job: SampleJob) -> OutMessage:
    """The `<camera>/samples` message; PrivacyError when it cannot be made private."""
    private = job.privacy.apply(job.image, job.xyxy, job.scores, job.tracker_ids, job.heads)
    body = dict(job.body)
    body["privacy"] = {
        "mode": job.privacy.cfg.mode,
        "masks": private.masks,
        "faces": private.faces,
    }
    if private.image is not None:
        body["image"] = _jpeg_object(private.image, job.max_side, job.quality)
    else:
        if not private.crops:
            raise EmptyCrops("crops mode and no box to crop")
        body["crops"] = [
            {
                "region": [round(v, 6) for v in region],
                **({"tracker_id": tid} if tid is not None else {}),
                **_jpeg_object(pixels, job.max_side, job.quality),
            }
            for region, tid, pixels in private.crops
        ]
    payload = json.dumps(body, separators=(",", ":")).encode()
    return OutMessage(body["id"], topics.samples(job.camera), payload, "samples", job.qos)


class EmptyCrops(Exception):
    """Crops mode, and the sample has no box: nothing to send."""
