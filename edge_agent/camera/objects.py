"""The `objects:` section of a camera and the filter step built from it.

Per-label rules (min_score, the track confirmation threshold, min/max area) become arrays
indexed by class id once, so filtering a frame is a handful of numpy operations whatever the
number of boxes. The legacy `detect:` section (min_score, labels, per_label) maps onto the
same rules, so configs written for earlier releases keep their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, Field, model_validator

from edge_agent.camera.motion import Polygon
from edge_agent.config.base import Strict
from edge_agent.config.values import bounded
from edge_agent.core.detections import Detections
from edge_agent.core.geometry import PolygonSet

ANY = "*"  # the objects key whose rule applies to every label not listed
DEFAULT_MIN_SCORE = 0.5
FloatArray = npt.NDArray[np.float32]
LabelKey = Annotated[str, AfterValidator(bounded(128)), Field(min_length=1)]


class ObjectRule(Strict):
    """What a camera reports about one label."""

    min_score: float = Field(
        DEFAULT_MIN_SCORE, ge=0, le=1, description="boxes below this are not reported"
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="median score that confirms a track (default: track's)"
    )
    min_area: float = Field(0.0, ge=0, le=1, description="fraction of the frame, boxes below drop")
    max_area: float = Field(1.0, gt=0, le=1, description="fraction of the frame, boxes above drop")

    @model_validator(mode="after")
    def _areas(self) -> ObjectRule:
        if self.min_area >= self.max_area:
            raise ValueError("min_area must be below max_area")
        return self


Objects = Annotated[dict[LabelKey, ObjectRule], Field(max_length=1000)]


class LegacyLabelRule(Strict):
    """`detect.per_label.<label>` of earlier releases."""

    min_score: float = Field(ge=0, le=1)


class DetectConfig(Strict):
    """The `detect:` section of earlier releases: kept valid, mapped onto `objects:`."""

    min_score: float = Field(DEFAULT_MIN_SCORE, ge=0, le=1)
    labels: list[str] | None = None
    per_label: dict[str, LegacyLabelRule] = Field(default_factory=dict)

    def to_objects(self) -> dict[str, ObjectRule]:
        """The equivalent `objects:` mapping."""
        rules = {k: ObjectRule(min_score=v.min_score) for k, v in self.per_label.items()}
        if self.labels is None:
            return {ANY: ObjectRule(min_score=self.min_score), **rules}
        return {lab: rules.get(lab, ObjectRule(min_score=self.min_score)) for lab in self.labels}


def objects_yaml(objects: Mapping[str, ObjectRule]) -> str:
    """`objects:` as YAML lines (how check-config tells users to rewrite `detect:`)."""
    lines = ["objects:"]
    for label, rule in objects.items():
        key = f'"{label}"' if label == ANY else label
        lines.append(f"  {key}: {{min_score: {rule.min_score:g}}}")
    return "\n".join(lines)


@dataclass(frozen=True)
class FilterResult:
    """One frame after the filters: `kept` goes to the tracker (low-score boxes included when
    tracking); `reported` marks, within `kept`, the boxes at or above their label's min_score."""

    kept: Detections
    reported: npt.NDArray[np.bool_]


class ObjectFilter:
    """Label allow-list, per-label min_score / area bounds and masks, as arrays by class id."""

    def __init__(
        self,
        objects: Mapping[str, ObjectRule],
        labels: Sequence[str],
        track_floor: float | None,
        default_threshold: float,
        masks: Sequence[Sequence[tuple[float, float]]] = (),
    ) -> None:
        """`labels`: the model's; `track_floor`: the tracker's low_score (None: no tracker)."""
        n = len(labels) + 1  # the last row: ids the label list does not name
        fallback = objects.get(ANY) if objects else ObjectRule()
        self.allowed = np.zeros(n, np.bool_)
        self.min_score = np.ones(n, np.float32)
        self.min_area = np.zeros(n, np.float32)
        self.max_area = np.ones(n, np.float32)
        self.thresholds: dict[int, float] = {}
        for i in range(n):
            rule = objects.get(labels[i]) if i < len(labels) else None
            rule = rule or fallback
            if rule is None:
                continue
            self.allowed[i] = True
            self.min_score[i] = rule.min_score
            self.min_area[i], self.max_area[i] = rule.min_area, rule.max_area
            if i < len(labels):
                self.thresholds[i] = default_threshold if rule.threshold is None else rule.threshold
        keep_floor = (
            self.min_score if track_floor is None else np.minimum(self.min_score, track_floor)
        )
        self.keep_floor = keep_floor.astype(np.float32)
        self._masks = PolygonSet([np.asarray(m, np.float64) for m in masks]) if masks else None

    @property
    def floor(self) -> float:
        """The lowest score any allowed label keeps: the detector's floor for this camera."""
        allowed = self.keep_floor[self.allowed]
        return float(allowed.min()) if allowed.size else 1.0

    def rows(self, class_id: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Row of each class id in the rule arrays (unknown ids share the last row)."""
        last = len(self.allowed) - 1
        return np.where((class_id >= 0) & (class_id < last), class_id, last)

    def apply(self, dets: Detections) -> FilterResult:
        """Drop what no rule allows; mark what is reported."""
        rows = self.rows(dets.class_id)
        area = dets.area()
        keep = (
            self.allowed[rows]
            & (dets.score >= self.keep_floor[rows])
            & (area >= self.min_area[rows])
            & (area <= self.max_area[rows])
        )
        if self._masks is not None and len(dets):
            keep &= ~self._masks.contains(dets.anchors("bottom_center")).any(axis=1)
        kept = dets[keep]
        reported = kept.score >= self.min_score[rows[keep]]
        return FilterResult(kept, reported)


MaskList = Annotated[list[Polygon], Field(max_length=64)]
