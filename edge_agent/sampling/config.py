"""`cameras.<name>.samples`: strategies with budgets, near-duplicate suppression, privacy."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from edge_agent.camera.zones import MAX_VERTICES, LabelName, Point
from edge_agent.config.base import Strict
from edge_agent.config.values import MAX_PIXELS, ConfigPath, Seconds
from edge_agent.core.geometry import validate_polygon

Count = Annotated[int, Field(ge=0, le=1_000_000)]

REASONS = (
    "low_confidence",
    "false_positive_track",
    "short_track",
    "label_flip",
    "rare_class",
    "random",
    "disagreement",
)


class Budget(Strict):
    """At most this many samples in any sliding minute, hour and day of frame time (`ts`,
    so a replay gives the same samples every run). Absent: no limit at that scale."""

    per_minute: Count | None = None
    per_hour: Count | None = None
    per_day: Count | None = None

    def limits(self) -> list[tuple[float, int]]:
        """(window seconds, limit) of each limit set."""
        pairs = ((60.0, self.per_minute), (3600.0, self.per_hour), (86400.0, self.per_day))
        return [(window, limit) for window, limit in pairs if limit is not None]


class LowConfidence(Budget):
    """A detection of a reported label scoring in [min_score, max_score)."""

    min_score: float = Field(0.3, ge=0, le=1)
    max_score: float = Field(0.5, ge=0, le=1)
    per_minute: Count | None = 6

    @model_validator(mode="after")
    def _band(self) -> LowConfidence:
        if self.min_score >= self.max_score:
            raise ValueError("min_score must be below max_score")
        return self


class TrackBudget(Budget):
    """A track-level strategy: one sample per track (needs `track: {enabled: true}`)."""

    per_hour: Count | None = 20


class RareClass(Budget):
    """Frames with a reported detection of one of `labels` (once per track when tracked)."""

    labels: list[LabelName] = Field(min_length=1)
    per_hour: Count | None = 20


class RandomPick(Budget):
    """An unbiased baseline: each processed frame with this probability."""

    probability: float = Field(gt=0, le=1)
    per_day: Count | None = 50


class Disagreement(Budget):
    """The second-stage classifier names another detector label than the track's, or is
    unsure (top score below `min_score`). Needs `classify:`."""

    min_score: float = Field(0.5, ge=0, le=1)
    per_hour: Count | None = 20


class Strategies(Strict):
    """Each strategy present is on; a sample lists every strategy that chose it."""

    low_confidence: LowConfidence | None = None
    false_positive_track: TrackBudget | None = None
    short_track: TrackBudget | None = None
    label_flip: TrackBudget | None = None
    rare_class: RareClass | None = None
    random: RandomPick | None = None
    disagreement: Disagreement | None = None

    def enabled(self) -> list[str]:
        """Names of the strategies that are on, in a fixed order."""
        return [name for name in REASONS if getattr(self, name) is not None]


class Dedup(Strict):
    """Near-duplicate suppression: a 64-bit perceptual hash of the frame; a candidate within
    `max_distance` bits of a sample published in the last `window` is skipped."""

    enabled: bool = True
    max_distance: int = Field(6, ge=0, le=64)
    window: Seconds = Field(600.0, gt=0, le=7 * 86400)


class FaceBlur(Strict):
    """Blur the faces a face detector finds (e.g. BlazeFace) before encoding."""

    model: ConfigPath
    labels: ConfigPath | None = None
    min_score: float = Field(0.5, ge=0, le=1)
    padding: float = Field(0.25, ge=0, le=2, description="blurred margin, fraction of face size")
    threads: int = Field(1, ge=1, le=16)
    on_labels: list[LabelName] = Field(
        default_factory=lambda: ["person"],
        description="also search the head area of these boxes (faces too small in the frame)",
    )


Polygon = Annotated[list[Point], Field(min_length=3, max_length=MAX_VERTICES)]


class Privacy(Strict):
    """Applied to every sample before it is encoded; a sample that cannot be made private
    (the face model fails) is dropped and counted, never sent as is."""

    masks: list[Polygon] = Field(default_factory=list, description="normalized, blacked out")
    blur_faces: FaceBlur | None = None
    mode: Literal["full", "crops"] = "full"
    padding: float = Field(0.1, ge=0, le=2, description="crops: margin, fraction of box size")

    @model_validator(mode="after")
    def _shapes(self) -> Privacy:
        for polygon in self.masks:
            if any(v > 1 for point in polygon for v in point):
                raise ValueError("mask coordinates are normalized: within 0..1")
            validate_polygon(polygon)
        return self


LEGACY_KEYS = ("min_score", "max_score", "max_per_minute")


class SamplesConfig(Strict):
    """Frames worth labeling, sent home within budgets and with privacy applied."""

    enabled: bool = False
    strategies: Strategies = Strategies()
    budget: Budget = Budget()
    dedup: Dedup = Dedup()
    privacy: Privacy = Privacy()
    floor: float = Field(
        0.2, ge=0, le=1, description="detections down to this score are sent with a sample"
    )
    max_pending: int = Field(
        4, ge=0, le=64, description="frames kept for tracks that may end as false positives"
    )
    jpeg_quality: int = Field(85, ge=1, le=100)
    max_side: int = Field(1280, ge=16, le=MAX_PIXELS)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """`min_score`, `max_score`, `max_per_minute` (the first release's keys) are the
        `low_confidence` strategy; both forms at once is an error."""
        if not isinstance(data, dict) or not any(k in data for k in LEGACY_KEYS):
            return data
        if "strategies" in data:
            raise ValueError(
                "use either strategies.low_confidence or the older min_score/max_score/"
                "max_per_minute keys, not both"
            )
        data = dict(data)
        low: dict[str, Any] = {}
        for old, new in (("min_score", "min_score"), ("max_score", "max_score"),
                         ("max_per_minute", "per_minute")):  # fmt: skip
            if old in data:
                low[new] = data.pop(old)
        data["strategies"] = {"low_confidence": low}
        return data

    @model_validator(mode="after")
    def _default_strategy(self) -> SamplesConfig:
        if self.enabled and not self.strategies.enabled():
            # `samples: {enabled: true}` alone samples low-confidence frames, as it always did.
            object.__setattr__(self, "strategies", Strategies(low_confidence=LowConfidence()))
        return self

    @property
    def needs_floor(self) -> float:
        """The lowest detector score the strategies look at."""
        low = self.strategies.low_confidence
        return min(self.floor, low.min_score) if low is not None else self.floor
