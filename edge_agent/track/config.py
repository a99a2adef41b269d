"""`TrackConfig`: the `track:` section of a camera (ByteTrack-style tracker settings)."""

from __future__ import annotations

from pydantic import Field, model_validator

from edge_agent.config.base import Strict


class TrackConfig(Strict):
    """How detections become tracks: association thresholds, buffer, confirmation, stillness."""

    enabled: bool = True
    high_score: float = Field(0.25, ge=0, le=1, description="first-stage boxes: score >= this")
    low_score: float = Field(0.1, ge=0, le=1, description="second-stage boxes: score >= this")
    new_track_score: float = Field(
        0.35, ge=0, le=1, description="an unmatched box starts a track only from this score"
    )
    match_iou: float = Field(0.2, ge=0, le=1, description="least IoU, high boxes to tracks")
    low_match_iou: float = Field(0.5, ge=0, le=1, description="least IoU, low boxes to tracks")
    new_match_iou: float = Field(0.3, ge=0, le=1, description="least IoU to a one-hit track")
    fuse_score: bool = Field(False, description="weigh first-stage IoU by the box score")
    buffer_frames: int = Field(30, ge=0, le=100_000, description="frames a lost track is kept")
    buffer_seconds: float | None = Field(
        None, gt=0, le=86_400, description="seconds a lost track is kept (replaces frames)"
    )
    min_hits: int = Field(2, ge=1, le=1000, description="hits before a track gets an id")
    threshold: float = Field(
        0.7, ge=0, le=1, description="median score that confirms a track (labels without one)"
    )
    median_window: int = Field(10, ge=1, le=1000, description="scores the median is taken over")
    history: int = Field(30, ge=1, le=10_000, description="scores kept per track")
    stationary_frames: int = Field(10, ge=2, le=10_000, description="stillness window, frames")
    stationary_enter: float = Field(
        0.1, ge=0, le=10, description="moved less than this x box size: stationary"
    )
    stationary_exit: float = Field(
        0.25, ge=0, le=10, description="moved more than this x box size: moving again"
    )

    @model_validator(mode="after")
    def _ordered(self) -> TrackConfig:
        if not self.low_score <= self.high_score <= self.new_track_score:
            raise ValueError("need low_score <= high_score <= new_track_score")
        if self.stationary_exit < self.stationary_enter:
            raise ValueError("stationary_exit must be >= stationary_enter (hysteresis)")
        return self
