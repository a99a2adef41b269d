"""Zones and counting lines: which tracks are where, who entered or left, who crossed.

Per-frame work is numpy over all boxes, zones and lines at once; per-track state lives in
slot arrays (one row per live track) so nothing loops over boxes in Python. Only events
(rare) and the on-demand counts are built as Python objects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, Field, model_validator

from edge_agent.camera.track_table import (
    COL_HALF,
    COL_PREV_D,
    COL_PREV_X,
    COL_PREV_Y,
    COL_SIDE,
    COL_THROUGH,
    TrackTable,
    unique_tracks,
)
from edge_agent.config.base import Strict
from edge_agent.config.values import MAX_PIXELS, TopicSegment, bounded
from edge_agent.core.detections import NO_TRACK, Anchor, Detections, FloatArray
from edge_agent.core.geometry import (
    Array,
    BoolArray,
    FrameSize,
    PolygonSet,
    crossing_within,
    to_normalized,
    validate_polygon,
)
from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
Direction = Literal["in", "out"]
DIRECTIONS: tuple[Direction, Direction] = ("in", "out")
MAX_VERTICES = 100
MAX_ZONES = 64  # per camera; each zone and line is a topic segment and a column of work

Coordinate = Annotated[float, Field(ge=0, le=MAX_PIXELS)]
Point = tuple[Coordinate, Coordinate]
LabelName = Annotated[str, AfterValidator(bounded(128)), Field(min_length=1)]


def _check_units(points: Sequence[Point], units: str) -> None:
    if units == "norm" and any(v > 1 for point in points for v in point):
        raise ValueError("normalized coordinates must be within 0..1 (for pixels set `units: px`)")


class _Placed(Strict):
    """What zones and lines share: coordinate units, label filter, the box's anchor point."""

    units: Literal["norm", "px"] = "norm"
    labels: list[LabelName] | None = Field(None, min_length=1)
    anchor: Anchor = "bottom_center"


class ZoneConfig(_Placed):
    """A polygon of the frame; tracks whose anchor point is inside are in the zone."""

    polygon: list[Point] = Field(min_length=3, max_length=MAX_VERTICES)
    min_frames: int = Field(
        2, ge=1, le=1000, description="frames in a row inside to enter, outside to leave"
    )

    @model_validator(mode="after")
    def _shape(self) -> ZoneConfig:
        _check_units(self.polygon, self.units)
        validate_polygon(self.polygon)
        return self


class LineConfig(_Placed):
    """A counting line from points[0] to points[1]; crossing it to its right is "in"."""

    points: tuple[Point, Point]
    margin: float = Field(
        0.02, ge=0, le=0.5, description="distance past the line to count, fraction of frame"
    )

    @model_validator(mode="after")
    def _shape(self) -> LineConfig:
        _check_units(self.points, self.units)
        if self.points[0] == self.points[1]:
            raise ValueError("a line needs two different points")
        return self


Zones = Annotated[dict[TopicSegment, ZoneConfig], Field(max_length=MAX_ZONES)]
Lines = Annotated[dict[TopicSegment, LineConfig], Field(max_length=MAX_ZONES)]


@dataclass(frozen=True)
class ZoneEvent:
    """A track entered or left a zone."""

    track_id: int
    zone: str
    label: str


@dataclass(frozen=True)
class LineEvent:
    """A track crossed a line in one direction."""

    track_id: int
    line: str
    direction: Direction
    label: str


@dataclass(frozen=True, eq=False)
class ZoneUpdate:
    """What one frame changed.

    box_zones: (N,Z) raw membership of every input box (tracked or not, label filters
    applied, no min_frames); track_ids: (T,) the tracks seen this frame; track_zones: (T,Z)
    the zones each of them is in now (after min_frames).
    """

    zone_names: tuple[str, ...]
    box_zones: BoolArray
    track_ids: IntArray
    track_zones: BoolArray
    entered: tuple[ZoneEvent, ...]
    left: tuple[ZoneEvent, ...]
    crossed: tuple[LineEvent, ...]

    def zones_of(self, track_id: int) -> tuple[str, ...]:
        """The zones a track seen this frame is in now (empty if it was not seen)."""
        rows = np.flatnonzero(self.track_ids == track_id)
        if not len(rows):
            return ()
        return tuple(
            n
            for n, inside in zip(self.zone_names, self.track_zones[rows[0]], strict=True)
            if inside
        )


@dataclass(frozen=True, eq=False)
class _Geometry:
    """Zones and lines in normalized coordinates for one frame size."""

    zone_groups: tuple[tuple[Anchor, npt.NDArray[np.intp], PolygonSet], ...]
    line_a: Array  # (L,2) first points
    line_b: Array  # (L,2) second points
    line_normal: Array  # (L,2) unit vectors: signed distance = rel . normal


class ZoneLineState:
    """Per-track zone membership and line crossings for one camera."""

    def __init__(
        self,
        zones: Mapping[str, ZoneConfig],
        lines: Mapping[str, LineConfig],
        labels: Sequence[str],
    ) -> None:
        """Check the zones' and lines' labels against the model's `labels`."""
        self.zone_names, self.line_names = tuple(zones), tuple(lines)
        self._zones, self._lines = tuple(zones.values()), tuple(lines.values())
        self._labels = tuple(labels)
        self._zone_allowed = self._allowed("zones", zones)
        self._line_allowed = self._allowed("lines", lines)
        self._min_frames = np.array([z.min_frames for z in self._zones], np.int32)
        self._margin = np.array([ln.margin for ln in self._lines], np.float64)
        self._line_kinds = tuple(ln.anchor for ln in self._lines)
        self._kinds = tuple(dict.fromkeys([*(z.anchor for z in self._zones), *self._line_kinds]))
        self._pixel = "px" in {z.units for z in self._zones} | {ln.units for ln in self._lines}
        self._geometry: tuple[FrameSize | None, _Geometry] | None = None  # the last size only
        self._warned: set[str] = set()
        self._tracks = TrackTable(len(self._zones), len(self._lines))
        self._totals: dict[str, dict[Direction, dict[str, int]]] = {
            name: {d: {} for d in DIRECTIONS} for name in self.line_names
        }

    def _allowed(
        self, section: str, items: Mapping[str, ZoneConfig | LineConfig]
    ) -> BoolArray | None:
        """(labels+1, items) which label ids each item counts, or None when none filters;
        the last row is any id the label list does not name (only unfiltered items count it)."""
        allowed = np.ones((len(self._labels) + 1, len(items)), np.bool_)
        index = {name: i for i, name in enumerate(self._labels)}
        for col, (name, item) in enumerate(items.items()):
            if item.labels is None:
                continue
            unknown = [label for label in item.labels if label not in index]
            if unknown:
                known = ", ".join(self._labels[:10]) + (", ..." if len(self._labels) > 10 else "")
                raise ConfigError(
                    f"{unknown[0]!r} is not a label of the model (labels: {known})",
                    where=f"{section}.{name}.labels",
                )
            allowed[:, col] = False
            allowed[[index[label] for label in item.labels], col] = True
        return None if allowed.all() else allowed

    def _label_rows(self, label_ids: IntArray) -> IntArray:
        """Rows of the `_allowed` tables for these label ids."""
        known = (label_ids >= 0) & (label_ids < len(self._labels))
        return np.where(known, label_ids, len(self._labels))

    def label_name(self, label_id: int) -> str:
        """The name of a label id (class_<id> for ids the label list does not name)."""
        return self._labels[label_id] if 0 <= label_id < len(self._labels) else f"class_{label_id}"

    def _geometry_for(self, frame_size: FrameSize | None) -> _Geometry:
        key = frame_size if self._pixel else None
        if self._geometry is None or self._geometry[0] != key:
            if key is None and self._pixel:
                raise ValueError("zones or lines in pixels need the frame size")
            self._geometry = (key, self._build_geometry(key))
        return self._geometry[1]

    def _build_geometry(self, frame_size: FrameSize | None) -> _Geometry:
        def norm(points: Sequence[Point], units: str, name: str) -> Array:
            array = np.asarray(points, np.float64)
            if units != "px" or frame_size is None:
                return array
            if np.any(array > np.asarray(frame_size, np.float64)) and name not in self._warned:
                self._warned.add(name)  # once: an image folder may change size every frame
                log.warning(
                    "%s has points outside the %dx%d frame: those parts never match",
                    name,
                    *frame_size,
                )
            return to_normalized(array, frame_size)

        names = self.zone_names
        polygons = [
            norm(z.polygon, z.units, f"zone {n!r}") for n, z in zip(names, self._zones, strict=True)
        ]
        groups = []
        for anchor in dict.fromkeys(z.anchor for z in self._zones):
            idx = np.array([i for i, z in enumerate(self._zones) if z.anchor == anchor], np.intp)
            groups.append((anchor, idx, PolygonSet([polygons[i] for i in idx])))
        names = self.line_names
        ends = [
            norm(ln.points, ln.units, f"line {n!r}")
            for n, ln in zip(names, self._lines, strict=True)
        ]
        stacked = np.stack(ends) if ends else np.zeros((0, 2, 2))
        a, b = stacked[:, 0], stacked[:, 1]
        u = b - a
        normal = np.stack([-u[:, 1], u[:, 0]], axis=1) / np.hypot(u[:, 0], u[:, 1])[:, None]
        return _Geometry(tuple(groups), a, b, normal)

    def update(self, dets: Detections, frame_size: FrameSize | None = None) -> ZoneUpdate:
        """Advance every track seen in `dets` (boxes with tracker_id) by one frame.

        frame_size (width, height) is needed only when a zone or line is in pixels. Label
        ids come from dets.data["label_id"] (a track's voted class) if present, else class_id.
        """
        geo = self._geometry_for(frame_size)
        raw = dets.data.get("label_id")
        label_ids = (dets.class_id if raw is None else raw).astype(np.int64, copy=False)
        anchors = {kind: dets.anchors(kind) for kind in self._kinds}
        if len(geo.zone_groups) == 1:
            box_zones = geo.zone_groups[0][2].contains(anchors[geo.zone_groups[0][0]])
        else:
            box_zones = np.zeros((len(dets), len(self._zones)), np.bool_)
            for anchor, idx, polygons in geo.zone_groups:
                box_zones[:, idx] = polygons.contains(anchors[anchor])
        if self._zone_allowed is not None:
            box_zones &= self._zone_allowed[self._label_rows(label_ids)]
        rows, track_ids = unique_tracks(dets.tracked)
        slots = self._tracks.slots_for(track_ids)
        self._tracks.label[slots] = label_ids[rows]
        entered, left, now = self._step_zones(slots, track_ids, box_zones[rows])
        crossed = self._step_lines(geo, slots, track_ids, anchors, rows, label_ids[rows])
        return ZoneUpdate(self.zone_names, box_zones, track_ids, now, entered, left, crossed)

    def _step_zones(
        self, slots: npt.NDArray[np.intp], track_ids: IntArray, inside: BoolArray
    ) -> tuple[tuple[ZoneEvent, ...], tuple[ZoneEvent, ...], BoolArray]:
        t, most = self._tracks, self._min_frames
        run, was = t.run[slots], t.present[slots]
        # Saturating at min_frames keeps the counters bounded for tracks parked for years.
        run = np.where(
            inside,
            np.minimum(np.maximum(run, 0) + 1, most),
            np.maximum(np.minimum(run, 0) - 1, -most),
        )
        now = (run == most) | (was & (run != -most))
        t.run[slots], t.present[slots] = run, now
        changed = now != was
        if not changed.any():
            return (), (), now
        entered = self._zone_events(np.nonzero(changed & now), track_ids, slots)
        left = self._zone_events(np.nonzero(changed & was), track_ids, slots)
        return entered, left, now

    def _zone_events(
        self,
        hits: tuple[npt.NDArray[np.intp], ...],
        track_ids: IntArray,
        slots: npt.NDArray[np.intp],
    ) -> tuple[ZoneEvent, ...]:
        rows, zones = hits
        return tuple(
            ZoneEvent(
                int(track_ids[r]),
                self.zone_names[z],
                self.label_name(int(self._tracks.label[slots[r]])),
            )
            for r, z in zip(rows.tolist(), zones.tolist(), strict=True)
        )

    def _step_lines(
        self,
        geo: _Geometry,
        slots: npt.NDArray[np.intp],
        track_ids: IntArray,
        anchors: Mapping[Anchor, FloatArray],
        rows: npt.NDArray[np.intp],
        label_ids: IntArray,
    ) -> tuple[LineEvent, ...]:
        if not self._lines or not len(slots):
            return ()
        if len(set(self._line_kinds)) == 1:
            pts = anchors[self._line_kinds[0]][rows][:, None, :].astype(np.float64)
        else:
            pts = np.stack([anchors[kind][rows] for kind in self._line_kinds], axis=1)
        rel = pts - geo.line_a  # (T,L,2); pts may be (T,1,2): one anchor for every line
        d = rel[..., 0] * geo.line_normal[:, 0] + rel[..., 1] * geo.line_normal[:, 1]
        half = d >= 0
        state = self._tracks.line[slots]
        side = state[..., COL_SIDE]
        seen = side != 0
        changed = seen & (half != (state[..., COL_HALF] > 0))
        if changed.any():
            prev = state[..., COL_PREV_X : COL_PREV_Y + 1]
            now = crossing_within(prev, pts, state[..., COL_PREV_D], d, geo.line_a, geo.line_b)
            state[..., COL_THROUGH] = np.where(changed, now, state[..., COL_THROUGH])
        # The committed side flips only once the anchor is `margin` past the line.
        flip = seen & (side * d < -self._margin)
        new_side = np.where(seen, side, np.where(half, 1.0, -1.0))
        events: tuple[LineEvent, ...] = ()
        if flip.any():
            new_side = np.where(flip, -new_side, new_side)
            counts = flip & (state[..., COL_THROUGH] > 0)
            events = self._count(slots, track_ids, counts, new_side, label_ids)
        state[..., COL_SIDE], state[..., COL_HALF], state[..., COL_PREV_D] = new_side, half, d
        state[..., COL_PREV_X : COL_PREV_Y + 1] = pts
        self._tracks.line[slots] = state
        return events

    def _count(
        self,
        slots: npt.NDArray[np.intp],
        track_ids: IntArray,
        flips: BoolArray,
        new_side: Array,
        label_ids: IntArray,
    ) -> tuple[LineEvent, ...]:
        """Count the flips through a segment that this track has not counted that way yet."""
        bit = np.where(new_side > 0, 1, 2).astype(np.uint8)  # 1 = "in", 2 = "out"
        flips &= (self._tracks.counted[slots] & bit) == 0
        if self._line_allowed is not None:
            flips &= self._line_allowed[self._label_rows(label_ids)]
        events = []
        for row, line in zip(*(a.tolist() for a in np.nonzero(flips)), strict=True):
            self._tracks.counted[slots[row], line] |= bit[row, line]
            label = self.label_name(int(label_ids[row]))
            direction = DIRECTIONS[int(bit[row, line]) - 1]
            events.append(LineEvent(int(track_ids[row]), self.line_names[line], direction, label))
            by_label = self._totals[self.line_names[line]][direction]
            by_label[label] = by_label.get(label, 0) + 1
        return tuple(events)

    def forget(self, track_ids: Sequence[int] | IntArray) -> tuple[ZoneEvent, ...]:
        """Drop ended tracks; a track that ends inside a zone leaves it (returned)."""
        ids = np.unique(np.asarray(track_ids, np.int64))
        slots, found = self._tracks.find(ids)
        slots, ids = slots[found], ids[found]
        left = self._zone_events(np.nonzero(self._tracks.present[slots]), ids, slots)
        self._tracks.release(slots)
        return left

    def present_counts(self) -> dict[str, dict[str, int]]:
        """Per zone, per label: the tracks in it now (every zone listed, even when empty)."""
        t = self._tracks
        live = t.ids != NO_TRACK
        counts: dict[str, dict[str, int]] = {}
        for z, name in enumerate(self.zone_names):
            found, n = np.unique(t.label[live & t.present[:, z]], return_counts=True)
            counts[name] = {self.label_name(int(k)): int(c) for k, c in zip(found, n, strict=True)}
        return counts

    def line_totals(self) -> dict[str, dict[Direction, dict[str, int]]]:
        """Per line, per direction, per label: crossings counted since the start."""
        return {
            line: {d: dict(by_label) for d, by_label in per_dir.items()}
            for line, per_dir in self._totals.items()
        }
