"""Per-track state of zones and lines in slot arrays, so a frame gathers and scatters it with
a few numpy operations whatever the number of tracks."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from edge_agent.core.detections import NO_TRACK

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Array = npt.NDArray[np.float64]

# Per (track, line) state, packed in one float array so a frame gathers and scatters it once.
COL_SIDE, COL_HALF, COL_THROUGH, COL_PREV_X, COL_PREV_Y, COL_PREV_D = range(6)


class TrackTable:
    """Per-track state in slot arrays (row = slot) that double when full; a free slot has
    id NO_TRACK. Ids map to slots through a sorted copy, so lookups are one searchsorted.

    run: frames in a row inside (> 0) or outside (< 0) each zone, saturated at min_frames;
    line: COL_SIDE the committed side (+1 "in", -1, 0 unseen), COL_HALF the half-plane now,
    COL_THROUGH whether the last change of half-plane went through the segment, the previous
    anchor and distance; counted: bit 1 "in" and bit 2 "out" already counted.
    """

    def __init__(self, zones: int, lines: int, capacity: int = 64) -> None:
        self._shapes = {
            "label": ((), np.int64), "run": ((zones,), np.int32),
            "present": ((zones,), np.bool_), "line": ((lines, 6), np.float64),
            "counted": ((lines,), np.uint8),
        }  # fmt: skip
        self.ids: IntArray = np.full(capacity, NO_TRACK, np.int64)
        for name, (shape, dtype) in self._shapes.items():
            setattr(self, name, np.zeros((capacity, *shape), dtype))
        self._sorted_ids: IntArray = np.zeros(0, np.int64)
        self._sorted_slots: npt.NDArray[np.intp] = np.zeros(0, np.intp)

    label: IntArray
    run: npt.NDArray[np.int32]
    present: BoolArray
    line: Array
    counted: npt.NDArray[np.uint8]

    def find(self, ids: IntArray) -> tuple[npt.NDArray[np.intp], BoolArray]:
        """The slots of `ids` and which of them are known."""
        if not len(self._sorted_ids):
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), np.bool_)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self._sorted_ids) - 1)
        return self._sorted_slots[pos], self._sorted_ids[pos] == ids

    def slots_for(self, ids: IntArray) -> npt.NDArray[np.intp]:
        """The slots of unique `ids`, taking free (zeroed) slots for new ones."""
        slots, found = self.find(ids)
        if found.all():
            return slots
        new = ids[~found]
        free = np.flatnonzero(self.ids == NO_TRACK)
        if len(free) < len(new):
            self._grow(max(2 * len(self.ids), len(self.ids) + len(new)))
            free = np.flatnonzero(self.ids == NO_TRACK)
        slots[~found] = free[: len(new)]
        self.ids[free[: len(new)]] = new
        self._reindex()
        return slots

    def release(self, slots: npt.NDArray[np.intp]) -> None:
        """Free `slots` and zero their state for the next track."""
        self.ids[slots] = NO_TRACK
        for name in self._shapes:
            getattr(self, name)[slots] = 0
        self._reindex()

    def _grow(self, capacity: int) -> None:
        if capacity > 4096 >= len(self.ids):
            log.warning("zones: more than 4096 live tracks; are ended tracks forgotten?")
        old = len(self.ids)
        self.ids = np.concatenate([self.ids, np.full(capacity - old, NO_TRACK, np.int64)])
        for name, (shape, dtype) in self._shapes.items():
            pad: npt.NDArray[np.generic] = np.zeros((capacity - old, *shape), dtype)
            setattr(self, name, np.concatenate([getattr(self, name), pad]))

    def _reindex(self) -> None:
        live = np.flatnonzero(self.ids != NO_TRACK)
        order = np.argsort(self.ids[live], kind="stable")
        self._sorted_ids = self.ids[live][order]
        self._sorted_slots = live[order]


def unique_tracks(tids: IntArray) -> tuple[npt.NDArray[np.intp], IntArray]:
    """Rows of the tracked boxes and their ids, sorted by id; a tracker never repeats an id
    in one frame, but if one does its first box wins rather than counting twice."""
    rows = np.flatnonzero(tids != NO_TRACK)
    order = np.argsort(tids[rows], kind="stable")
    rows = rows[order]
    ids = tids[rows]
    if len(ids) > 1:
        repeat = ids[1:] == ids[:-1]
        if repeat.any():
            keep = np.concatenate([[True], ~repeat])
            rows, ids = rows[keep], ids[keep]
    return rows, ids
