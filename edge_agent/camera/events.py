"""Events and counts: track changes become `events` messages, presence and crossings become
retained `count`, `zones/<zone>/count` and `lines` topics.

Only confirmed tracks are published: a track that ends without confirming is the likely false
positive, counted (`tracks.unconfirmed`) and handed to the sampler, never announced. Work is
per track change, not per box: tracks are few, so per-track state is plain Python.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from edge_agent.camera.zones import DIRECTIONS, Direction, LineEvent, ZoneUpdate
from edge_agent.config.base import Strict
from edge_agent.config.values import Seconds
from edge_agent.publish.payloads import PAYLOAD_VERSION, OutMessage, Topics, new_id
from edge_agent.track.bytetrack import TrackUpdate
from edge_agent.track.tracks import Box, Track

log = logging.getLogger(__name__)

EventType = Literal["new", "update", "end"]
# Every reason an `update` can have, in the order `changes` lists them.
CHANGES = ("zone_entered", "zone_left", "line_crossed", "label", "sub_label", "score", "stationary")
# Where a track is and what it crossed is what automations wait for: never held back.
URGENT = frozenset({"zone_entered", "zone_left", "line_crossed"})
SubLabel = tuple[str, float]


class EventsConfig(Strict):
    """The `events:` section of a camera: what is published about tracks and how often."""

    enabled: bool = Field(True, description="publish `events` messages (counts still work)")
    update_interval: Seconds = Field(
        5.0, ge=0, le=86_400, description="least seconds between two score/label updates"
    )
    min_score_change: float = Field(
        0.05, ge=0, le=1, description="a new top score must beat the published one by this"
    )
    publish_detections: bool = Field(True, description="also publish per-frame `detections`")
    counts: bool = Field(True, description="publish retained count and line totals topics")


@dataclass(frozen=True)
class _Sent:
    """What the last event of a track said (the base the next update is compared to)."""

    label: str
    sub_label: str | None
    stationary: bool
    top_score: float
    ts: float


@dataclass(eq=False)
class _TrackState:
    """The builder's view of one track that has an id."""

    track: Track
    event_id: str
    sub_label: SubLabel | None = None
    zones: list[str] = field(default_factory=list)
    entered: list[str] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    uncounted: list[LineEvent] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # urgent changes since the last event
    sent: _Sent | None = None  # None until the `new` event


def topic_segment(label: str) -> str:
    """A label as one topic level: MQTT wildcards, separators and whitespace become `_`
    (`cell phone` -> `cell_phone`, easy to type in a subscription)."""
    cleaned = "".join("_" if c in "/+#\x00" or c.isspace() else c for c in label)
    return cleaned or "_"


def _box(box: Box) -> list[float]:
    return [round(v, 5) for v in box]


def _encode(body: Mapping[str, Any] | int) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class EventBuilder:
    """Turns one camera's tracker and zone output into event, count and line messages."""

    def __init__(
        self,
        camera: str,
        device_id: str,
        labels: Sequence[str],
        topics: Topics,
        cfg: EventsConfig | None = None,
        qos: int = 1,
    ) -> None:
        """`labels`: the model's label list (class id -> name)."""
        self.camera, self.device_id, self.qos = camera, device_id, qos
        self.cfg = cfg or EventsConfig()
        self._labels = tuple(labels)
        self._base = f"{topics.base}/{camera}"
        self._live: dict[int, _TrackState] = {}
        self._counts: dict[str, int] = {}  # count topic suffix -> last published value
        self._totals: dict[str, dict[Direction, dict[str, int]]] = {}
        self._dirty_lines: set[str] = set()
        self.confirmed = 0
        self.unconfirmed = 0
        self.published: Counter[str] = Counter()
        self.last_unconfirmed: tuple[Track, ...] = ()

    def counters(self) -> dict[str, int]:
        """Counters for the stats message, named `<area>.<what>.<camera>`."""
        out = {
            f"tracks.confirmed.{self.camera}": self.confirmed,
            f"tracks.unconfirmed.{self.camera}": self.unconfirmed,
        }
        out.update({f"events.{k}.{self.camera}": n for k, n in sorted(self.published.items())})
        return out

    def label_name(self, label_id: int) -> str:
        """The name of a class id (class_<id> for ids the label list does not name)."""
        return self._labels[label_id] if 0 <= label_id < len(self._labels) else f"class_{label_id}"

    def initial_state(
        self, zones: Sequence[str], lines: Sequence[str], labels: Sequence[str]
    ) -> list[OutMessage]:
        """Retained zeros for every count and line this camera can publish, so values retained
        by a previous run do not linger on the broker as if they were current."""
        if not self.cfg.counts:
            return []
        keys = [f"count/{topic_segment(label)}" for label in labels]
        keys += [f"zones/{z}/count/{topic_segment(label)}" for z in zones for label in labels]
        out = [self._count_message(key, 0) for key in keys]
        for line in lines:
            self._totals.setdefault(line, {d: {} for d in DIRECTIONS})
            out.append(self._line_message(line, 0.0))
        return out

    def frame(
        self,
        track_update: TrackUpdate,
        zone_update: ZoneUpdate | None,
        ts: float,
        frame: int,
        sub_labels: Mapping[int, SubLabel | None] | None = None,
    ) -> list[OutMessage]:
        """The messages one frame causes: events first, then changed counts and lines."""
        self.last_unconfirmed = ()
        seen = self._admit((*track_update.created, *track_update.updated))
        for track_id, sub in (sub_labels or {}).items():
            if sub is not None and track_id in self._live:
                self._live[track_id].sub_label = sub
        if zone_update is not None:
            self._apply_zones(zone_update, ts)
        events: list[OutMessage] = []
        for state in seen:
            events += self._event_for(state, ts, frame)
        events += self._end(track_update.ended, ts, frame)
        return self._outgoing(events, ts)

    def finish(self, ts: float, frame: int) -> list[OutMessage]:
        """End every live track (the camera stops): `end` events, counts back to 0."""
        self.last_unconfirmed = ()
        events = self._end([s.track for s in self._live.values()], ts, frame)
        return self._outgoing(events, ts)

    def _outgoing(self, events: list[OutMessage], ts: float) -> list[OutMessage]:
        out = events if self.cfg.enabled else []
        if self.cfg.counts:
            out = out + self._count_messages() + self._line_messages(ts)
        self._dirty_lines.clear()
        return out

    def _admit(self, tracks: Iterable[Track]) -> list[_TrackState]:
        """The states of the tracks seen this frame, created for tracks new to the builder."""
        seen: dict[int, _TrackState] = {}
        for t in tracks:
            state = self._live.get(t.id)
            if state is None:
                # Frame time and camera make the id unique per device run: track ids restart
                # at 1 with every tracker, and replays of two cameras share timestamps.
                event_id = f"{t.first_ts:.3f}-{self.camera}-{t.id}"
                state = self._live[t.id] = _TrackState(t, event_id)
            seen[t.id] = state
        return list(seen.values())

    def _apply_zones(self, update: ZoneUpdate, ts: float) -> None:
        """Fold zone entries/exits and line crossings into the tracks' state."""
        for ev in update.entered:
            if (state := self._live.get(ev.track_id)) is not None:
                state.zones.append(ev.zone)
                if ev.zone not in state.entered:
                    state.entered.append(ev.zone)
                state.pending.append("zone_entered")
        for ev in update.left:
            if (state := self._live.get(ev.track_id)) is not None and ev.zone in state.zones:
                state.zones.remove(ev.zone)
                state.pending.append("zone_left")
        for cross in update.crossed:
            if (state := self._live.get(cross.track_id)) is None:
                log.debug("camera %s: crossing by unknown track %d", self.camera, cross.track_id)
                continue
            state.lines.append(
                {"line": cross.line, "direction": cross.direction, "ts": round(ts, 3)}
            )
            state.pending.append("line_crossed")
            if state.track.confirmed:
                self._add_total(cross, state.track)
            else:
                state.uncounted.append(cross)  # counted if and when the track confirms

    def _add_total(self, cross: LineEvent, track: Track) -> None:
        # The voted label at counting time: it has seen more frames than the crossing's label.
        per_dir = self._totals.setdefault(cross.line, {d: {} for d in DIRECTIONS})
        by_label = per_dir[cross.direction]
        label = self.label_name(track.label)
        by_label[label] = by_label.get(label, 0) + 1
        self._dirty_lines.add(cross.line)

    def _event_for(self, state: _TrackState, ts: float, frame: int) -> list[OutMessage]:
        """`new` when a track is first confirmed, `update` on a meaningful change."""
        if not state.track.confirmed:
            return []
        if state.sent is None:
            self.confirmed += 1
            for cross in state.uncounted:
                self._add_total(cross, state.track)
            state.uncounted.clear()
            return [self._event("new", state, ts, frame, [])]
        changes = self._changes(state, state.sent)
        if not changes:
            return []
        if URGENT.isdisjoint(changes) and ts - state.sent.ts < self.cfg.update_interval:
            return []  # held back: still different next frame, so nothing is lost
        return [self._event("update", state, ts, frame, changes)]

    def _changes(self, state: _TrackState, sent: _Sent) -> list[str]:
        t = state.track
        found = set(state.pending)
        if self.label_name(t.label) != sent.label:
            found.add("label")
        if (state.sub_label[0] if state.sub_label else None) != sent.sub_label:
            found.add("sub_label")
        # A hair of tolerance: 0.6 + 0.05 must count as a change of 0.05.
        if t.best_score >= sent.top_score + self.cfg.min_score_change - 1e-9:
            found.add("score")
        if t.stationary != sent.stationary:
            found.add("stationary")
        return [c for c in CHANGES if c in found]

    def _end(self, ended: Iterable[Track], ts: float, frame: int) -> list[OutMessage]:
        out: list[OutMessage] = []
        unconfirmed: list[Track] = []
        for t in ended:
            state = self._live.pop(t.id, None)
            if state is not None and state.sent is not None:
                out.append(self._event("end", state, ts, frame, []))
            elif not t.confirmed:
                self.unconfirmed += 1
                unconfirmed.append(t)
        self.last_unconfirmed = tuple(unconfirmed)
        return out

    def _event(
        self, kind: EventType, state: _TrackState, ts: float, frame: int, changes: list[str]
    ) -> OutMessage:
        """Build one event message and remember what it said."""
        t, sub = state.track, state.sub_label
        msg_id = new_id()
        body: dict[str, Any] = {
            "v": PAYLOAD_VERSION,
            "id": state.event_id,
            "msg_id": msg_id,
            "type": kind,
            "device_id": self.device_id,
            "camera": self.camera,
            "ts": round(ts, 3),
            "frame": frame,
            "track_id": t.id,
            "label": self.label_name(t.label),
            "class_id": t.label,
            "sub_label": sub[0] if sub else None,
            "sub_label_score": round(sub[1], 4) if sub else None,
            "score": round(t.scores[-1], 4) if t.scores else 0.0,
            "median_score": round(t.median_score, 4),
            "top_score": round(max(t.best_score, 0.0), 4),
            "start_ts": round(t.first_ts, 3),
            "end_ts": round(t.last_ts, 3) if kind == "end" else None,
            "start_frame": t.first_frame,
            "end_frame": t.last_frame if kind == "end" else None,
            "box": _box(t.box),
            "top_box": _box(t.best_box),
            "top_frame": t.best_frame,
            "current_zones": list(state.zones),
            "entered_zones": list(state.entered),
            "lines": list(state.lines),
            "stationary": t.stationary,
            "false_positive": False,
            "changes": changes,
        }
        state.sent = _Sent(body["label"], body["sub_label"], t.stationary, t.best_score, ts)
        state.pending.clear()
        self.published[kind] += 1
        return OutMessage(msg_id, f"{self._base}/events", _encode(body), "events", self.qos)

    def _count_message(self, key: str, value: int) -> OutMessage:
        self._counts[key] = value
        topic = f"{self._base}/{key}"
        return OutMessage(new_id(), topic, _encode(value), "state", self.qos, True)

    def _count_messages(self) -> list[OutMessage]:
        """Retained counts that differ from what was last published (a 0 is sent once)."""
        now: Counter[str] = Counter()
        for state in self._live.values():
            if state.sent is None:
                continue
            label = topic_segment(self.label_name(state.track.label))
            now[f"count/{label}"] += 1
            for zone in state.zones:
                now[f"zones/{zone}/count/{label}"] += 1
        keys = sorted(now.keys() | self._counts.keys())
        return [self._count_message(k, now[k]) for k in keys if self._counts.get(k) != now[k]]

    def _line_message(self, line: str, ts: float) -> OutMessage:
        per_dir = self._totals[line]
        by_label: dict[str, dict[str, int]] = {}
        for direction in DIRECTIONS:
            for label, n in per_dir[direction].items():
                by_label.setdefault(label, dict.fromkeys(DIRECTIONS, 0))[direction] = n
        body = {
            "v": PAYLOAD_VERSION,
            "ts": round(ts, 3),
            "in": sum(per_dir["in"].values()),
            "out": sum(per_dir["out"].values()),
            "by_label": dict(sorted(by_label.items())),
        }
        topic = f"{self._base}/lines/{line}"
        return OutMessage(new_id(), topic, _encode(body), "state", self.qos, True)

    def _line_messages(self, ts: float) -> list[OutMessage]:
        return [self._line_message(line, ts) for line in sorted(self._dirty_lines)]
