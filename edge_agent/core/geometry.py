"""Plane geometry for zones, lines and datasets, vectorized over points and boxes.

Coordinates are image coordinates: x grows to the right, y grows DOWN. Functions are unit
agnostic (normalized 0..1 or pixels) unless their name says otherwise; every one takes and
returns numpy arrays and loops in Python over nothing but polygon validation pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
PointsLike = npt.ArrayLike
FrameSize = tuple[int, int]  # (width, height) in pixels

# Points closer than this to a polygon edge count as on it: float32 anchors of float64
# polygons differ by ~1e-8 in normalized units, and a user's "on the edge" means exactly on.
EDGE_TOLERANCE = 1e-6


def as_points(points: PointsLike) -> Array:
    """`points` as a float64 (N,2) array; a ValueError for any other shape or a non-finite."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"expected [x, y] points, got an array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("points must be finite numbers")
    return array


def polygon_area(polygon: PointsLike) -> float:
    """Signed shoelace area: positive when the vertices run clockwise on screen (y down)."""
    p = as_points(polygon)
    x, y = p[:, 0], p[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def _orientation(a: Array, b: Array, c: Array) -> Array:
    """Sign of the turn a -> b -> c for broadcastable (...,2) arrays: +1, -1, or 0 collinear."""
    cross = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
        c[..., 0] - a[..., 0]
    )
    return np.sign(cross)


def _on_segment_box(a: Array, b: Array, p: Array) -> BoolArray:
    """p lies within the bounding box of segment a-b (used for collinear cases)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    inside: BoolArray = np.all((p >= lo) & (p <= hi), axis=-1)
    return inside


def segments_intersect(a: Array, b: Array, c: Array, d: Array) -> BoolArray:
    """Whether segments a-b and c-d share at least one point (touching counts), broadcast."""
    o1, o2 = _orientation(a, b, c), _orientation(a, b, d)
    o3, o4 = _orientation(c, d, a), _orientation(c, d, b)
    proper = (o1 * o2 < 0) & (o3 * o4 < 0)
    touch = (
        ((o1 == 0) & _on_segment_box(a, b, c))
        | ((o2 == 0) & _on_segment_box(a, b, d))
        | ((o3 == 0) & _on_segment_box(c, d, a))
        | ((o4 == 0) & _on_segment_box(c, d, b))
    )
    result: BoolArray = proper | touch
    return result


def validate_polygon(polygon: PointsLike) -> Array:
    """A simple polygon as float64 (M,2), or a ValueError saying what is wrong with it.

    An explicitly closed polygon (last point == first) is accepted and the copy dropped.
    Refused: fewer than 3 points, a repeated consecutive point, all points on one line, an
    edge that doubles back on the previous one, and edges that cross or touch each other
    (a bow tie has zero net area: it is refused as crossing itself).
    """
    p = as_points(polygon)
    if len(p) > 3 and np.array_equal(p[0], p[-1]):
        p = p[:-1]
    if len(p) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(p)}")
    nxt = np.roll(p, -1, axis=0)
    repeated = np.flatnonzero(np.all(p == nxt, axis=1))
    if len(repeated):
        k = int(repeated[0])
        raise ValueError(f"point {k + 1} repeats point {(k + 1) % len(p) + 1}")
    # All points on one line: say so before the edges "cross" (they overlap).
    if np.all(_orientation(p[0], p[1], p) == 0):
        raise ValueError("the polygon has zero area (all points on one line)")
    # A simple polygon with points off one line has a positive area, so this is the last check.
    _refuse_self_intersection(p, nxt)
    return p


def _refuse_self_intersection(p: Array, nxt: Array) -> None:
    """Raise if two edges of the closed polygon p (edges p[i] -> nxt[i]) meet improperly."""
    m = len(p)
    edge = nxt - p
    # Adjacent edges share a vertex; they are wrong only when the second folds back on the first.
    following = np.roll(edge, -1, axis=0)
    cross = edge[:, 0] * following[:, 1] - edge[:, 1] * following[:, 0]
    folds = np.flatnonzero((cross == 0) & (np.sum(edge * following, axis=1) < 0))
    if len(folds):
        k = int(folds[0])
        raise ValueError(f"the edge after point {(k + 1) % m + 1} doubles back on itself")
    i, j = np.triu_indices(m, k=2)
    keep = ~((i == 0) & (j == m - 1))  # first and last edges are adjacent too
    i, j = i[keep], j[keep]
    hits = segments_intersect(p[i], nxt[i], p[j], nxt[j])
    if hits.any():
        a, b = int(i[hits][0]), int(j[hits][0])
        raise ValueError(
            f"the polygon crosses itself: edge {a + 1} (point {a + 1} to {(a + 1) % m + 1}) "
            f"meets edge {b + 1} (point {b + 1} to {(b + 1) % m + 1})"
        )


class PolygonSet:
    """Several validated polygons stacked edge by edge, to test many points in one pass."""

    def __init__(self, polygons: Sequence[Array]) -> None:
        """Stack `polygons` (each already validated, (M,2))."""
        if not polygons:
            raise ValueError("PolygonSet needs at least one polygon")
        self.count = len(polygons)
        starts = np.cumsum([0] + [len(p) for p in polygons[:-1]])
        self._starts = starts.astype(np.intp)
        a = np.concatenate(polygons)
        b = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
        self._ax, self._ay = a[:, 0], a[:, 1]
        self._by = b[:, 1]
        dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
        self._dx, self._dy = dx, dy
        # x of the crossing with a horizontal ray = ax + (py - ay) * dx / dy; dy is never 0
        # where that is used (only edges that straddle the ray), so 0 is a harmless filler.
        self._slope = np.divide(dx, dy, out=np.zeros_like(dx), where=dy != 0)
        self._inv_len2 = 1 / (dx * dx + dy * dy)  # validated polygons have no empty edge

    def contains(self, points: PointsLike, tolerance: float = EDGE_TOLERANCE) -> BoolArray:
        """(N,P) membership of N points in each of the P polygons (edges count as inside)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:  # reduceat cannot reduce an empty axis
            return np.zeros((0, self.count), np.bool_)
        px, py = pts[:, :1], pts[:, 1:]
        rel_y = py - self._ay
        straddle = (self._ay > py) != (self._by > py)
        crossings = straddle & (px < self._ax + rel_y * self._slope)
        rel_x = px - self._ax
        t = np.minimum(np.maximum((rel_x * self._dx + rel_y * self._dy) * self._inv_len2, 0), 1)
        dist2 = (rel_x - t * self._dx) ** 2 + (rel_y - t * self._dy) ** 2
        on_edge = dist2 <= tolerance * tolerance
        odd = np.logical_xor.reduceat(crossings, self._starts, axis=1)
        touching = np.logical_or.reduceat(on_edge, self._starts, axis=1)
        inside: BoolArray = odd | touching
        return inside


def points_in_polygon(
    points: PointsLike, polygon: PointsLike, tolerance: float = EDGE_TOLERANCE
) -> BoolArray:
    """(N,) whether each point is inside `polygon` (even-odd rule; on an edge or a vertex,
    within `tolerance`, counts as inside). The polygon is validated first."""
    return PolygonSet([validate_polygon(polygon)]).contains(points, tolerance)[:, 0]


def line_side(points: PointsLike, a: PointsLike, b: PointsLike) -> Array:
    """Signed distance of (...,2) points from the infinite line a -> b (broadcast).

    Positive on the side a left-to-right line has BELOW it (y down): the right-hand side when
    walking from a to b on screen. That side is "in" for `segment_crossings`.
    """
    p, pa, pb = (np.asarray(v, dtype=np.float64) for v in (points, a, b))
    u = pb - pa
    length = np.hypot(u[..., 0], u[..., 1])
    if np.any(length == 0):
        raise ValueError("a line needs two different points")
    cross = u[..., 0] * (p[..., 1] - pa[..., 1]) - u[..., 1] * (p[..., 0] - pa[..., 0])
    distance: Array = cross / length
    return distance


def crossing_within(
    prev: Array, cur: Array, d_prev: Array, d_cur: Array, a: Array, b: Array
) -> BoolArray:
    """Whether the move prev -> cur meets the line a -> b within the segment's extent, given
    the signed distances of both ends (only meaningful where the sides differ)."""
    denom = d_prev - d_cur
    frac = np.divide(d_prev, denom, out=np.zeros_like(denom), where=denom != 0)
    hit = prev + frac[..., None] * (cur - prev)
    u = b - a
    along = np.sum((hit - a) * u, axis=-1) / np.sum(u * u, axis=-1)
    slack = 1e-9  # crossing exactly at an end point counts despite rounding
    within: BoolArray = (along >= -slack) & (along <= 1 + slack)
    return within


def segment_crossings(
    prev: PointsLike, cur: PointsLike, a: PointsLike, b: PointsLike
) -> npt.NDArray[np.int8]:
    """(N,) +1 where the move prev -> cur crossed segment a-b "in", -1 "out", 0 not at all.

    The line splits the plane into two half-planes, the line itself belonging to the "in"
    side (see `line_side`), so every move between them is counted exactly once. A move that
    passes beside the segment's ends does not cross it.
    """
    p0, p1 = as_points(prev), as_points(cur)
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d0, d1 = line_side(p0, pa, pb), line_side(p1, pa, pb)
    in0, in1 = d0 >= 0, d1 >= 0
    crossed = (in0 != in1) & crossing_within(p0, p1, d0, d1, pa, pb)
    result: npt.NDArray[np.int8] = np.where(crossed, np.where(in1, 1, -1), 0).astype(np.int8)
    return result


def _frame_scale(frame_size: FrameSize) -> Array:
    width, height = frame_size
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    return np.array([width, height], dtype=np.float64)


def to_normalized(points: PointsLike, frame_size: FrameSize) -> Array:
    """Pixel (x, y) points -> normalized 0..1 of a (width, height) frame."""
    return as_points(points) / _frame_scale(frame_size)


def to_pixels(points: PointsLike, frame_size: FrameSize) -> Array:
    """Normalized (x, y) points -> pixels of a (width, height) frame (not rounded)."""
    return as_points(points) * _frame_scale(frame_size)


def _boxes(boxes: PointsLike) -> Array:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"expected boxes of 4 numbers, got an array of shape {array.shape}")
    return array


def xywh_to_xyxy(boxes: PointsLike) -> Array:
    """COCO [x_min, y_min, width, height] -> [x1, y1, x2, y2] (same units)."""
    b = _boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: PointsLike) -> Array:
    """[x1, y1, x2, y2] -> COCO [x_min, y_min, width, height] (same units)."""
    b = _boxes(boxes)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def cxcywh_to_xyxy(boxes: PointsLike) -> Array:
    """YOLO [cx, cy, width, height] -> [x1, y1, x2, y2] (same units)."""
    b = _boxes(boxes)
    half = b[:, 2:] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def xyxy_to_cxcywh(boxes: PointsLike) -> Array:
    """[x1, y1, x2, y2] -> YOLO [cx, cy, width, height] (same units)."""
    b = _boxes(boxes)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)


def boxes_to_normalized(boxes: PointsLike, frame_size: FrameSize) -> Array:
    """Pixel boxes in any of the layouts above -> normalized 0..1 (x by width, y by height)."""
    return _boxes(boxes) / np.tile(_frame_scale(frame_size), 2)


def boxes_to_pixels(boxes: PointsLike, frame_size: FrameSize) -> Array:
    """Normalized boxes in any of the layouts above -> pixels of a (width, height) frame."""
    return _boxes(boxes) * np.tile(_frame_scale(frame_size), 2)
