"""The ByteTrack-class tracker: ids through misses and crossings, label votes, stillness,
confirmation by median score, the two score stages, end reports and per-frame cost."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.core.detections import NO_TRACK, Detections
from edge_agent.track import TrackConfig, Tracker

CAR, TRUCK, BUS = 2, 7, 5


def dets(boxes, scores=None, classes=None) -> Detections:
    """Detections from (cx, cy, w, h) normalized boxes."""
    b = np.array(boxes, np.float32).reshape(-1, 4)
    xyxy = np.hstack([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2])
    n = len(b)
    s = np.full(n, 0.9, np.float32) if scores is None else np.array(scores, np.float32)
    c = np.zeros(n, np.int64) if classes is None else np.array(classes, np.int64)
    return Detections(xyxy, s, c)


def ids_of(update) -> list[int]:
    return update.detections.tracked.tolist()


@pytest.mark.parametrize(
    ("velocity", "size"),
    [((0.01, 0.0), (0.1, 0.2)), ((0.0, 0.008), (0.05, 0.05)), ((-0.012, 0.006), (0.2, 0.1))],
)
def test_constant_velocity_keeps_id_through_five_missed_frames(velocity, size) -> None:
    tracker, seen = Tracker(), set()
    for f in range(30):
        cx, cy = 0.5 + velocity[0] * (f - 15), 0.5 + velocity[1] * (f - 15)
        missing = 10 <= f < 15
        up = tracker.update(dets([] if missing else [(cx, cy, *size)]), f / 10, f)
        if not missing and f >= 1:
            seen.update(ids_of(up))
    assert seen == {1}


def test_crossing_objects_keep_their_ids() -> None:
    tracker = Tracker()
    by_side: dict[int, set[int]] = {0: set(), 1: set()}
    for f in range(40):
        x = 0.1 + 0.02 * f  # one goes right, the other left; they overlap mid-way
        up = tracker.update(dets([(x, 0.5, 0.1, 0.3), (0.9 - 0.02 * f, 0.52, 0.1, 0.3)]), f, f)
        if f >= 1:
            for k, tid in enumerate(ids_of(up)):
                by_side[k].add(tid)
    assert by_side == {0: {1}, 1: {2}}


@pytest.mark.parametrize(
    ("labels", "voted"),
    [
        ([CAR, TRUCK, CAR, BUS, CAR, CAR, TRUCK, CAR], CAR),
        ([TRUCK, TRUCK, CAR, TRUCK, BUS, TRUCK], TRUCK),
        ([BUS, CAR, BUS, BUS], BUS),
    ],
)
def test_label_flip_keeps_one_track_and_votes_the_majority(labels, voted) -> None:
    tracker = Tracker()
    for f, label in enumerate(labels):
        up = tracker.update(dets([(0.3 + 0.01 * f, 0.5, 0.2, 0.1)], classes=[label]), f, f)
    assert len(tracker.tracks) == 1
    assert ids_of(up) == [1]
    assert tracker.tracks[0].label == voted


def test_label_vote_is_score_weighted_and_flags_changes() -> None:
    tracker = Tracker()
    changes = []
    for f, (label, score) in enumerate([(CAR, 0.5), (TRUCK, 0.9), (CAR, 0.3), (CAR, 0.3)]):
        tracker.update(dets([(0.5, 0.5, 0.2, 0.1)], [score], [label]), f, f)
        changes += [(t.label, t.label_changed) for t in tracker.tracks]  # an id from frame 1
    # truck 0.9 outweighs car 0.5 + 0.3, until the second 0.3 brings the car to 1.1
    assert changes == [(TRUCK, True), (TRUCK, False), (CAR, True)]


@pytest.mark.parametrize(
    ("step", "stationary"), [(0.0, True), (0.001, True), (0.02, False), (0.05, False)]
)
def test_static_box_becomes_stationary_and_moving_one_not(step, stationary) -> None:
    tracker = Tracker()
    rng = np.random.default_rng(1)
    for f in range(25):
        jitter = rng.normal(0, 0.001, 2)
        tracker.update(dets([(0.3 + step * f + jitter[0], 0.5 + jitter[1], 0.1, 0.2)]), f, f)
    assert tracker.tracks[0].stationary is stationary


def test_stationary_has_hysteresis() -> None:
    cfg = TrackConfig(stationary_frames=5, stationary_enter=0.1, stationary_exit=0.5)
    tracker, states = Tracker(cfg), []
    xs = [0.5] * 8 + [0.5 + 0.003 * k for k in range(1, 8)] + [0.6 + 0.05 * k for k in range(6)]
    for f, x in enumerate(xs):
        tracker.update(dets([(x, 0.5, 0.1, 0.1)]), f, f)
        states += [t.stationary for t in tracker.tracks] or [None]  # no id at frame 0
    assert states[4:8] == [True] * 4
    assert all(states[8:15])  # a slow creep (< exit x size over the window) keeps it stationary
    assert not states[-1]  # real motion ends it


@pytest.mark.parametrize(
    ("scores", "threshold", "confirmed"),
    [
        ([0.45] * 20, 0.5, False),
        ([0.9, 0.3, 0.3, 0.3, 0.9, 0.3] * 3, 0.5, False),  # a few high frames are not enough
        ([0.4] + [0.6] * 10, 0.5, True),
        ([0.9] * 9, 0.5, False),  # a burst shorter than the median window: not yet
        ([0.9] * 10, 0.5, True),
        ([0.45] * 20, 0.4, True),
    ],
)
def test_confirmed_only_when_median_reaches_threshold(scores, threshold, confirmed) -> None:
    tracker = Tracker(TrackConfig(), {CAR: threshold})
    ever = False
    for f, s in enumerate(scores):
        tracker.update(dets([(0.5, 0.5, 0.2, 0.2)], [s], [CAR]), f, f)
        ever = ever or any(t.confirmed for t in tracker.tracks)
    assert ever is confirmed
    assert tracker.tracks[0].median_score == pytest.approx(float(np.median(scores[-10:])))


def test_low_score_boxes_extend_a_track_but_never_start_one() -> None:
    tracker = Tracker()
    low = tracker.cfg.high_score / 2
    for f in range(10):  # a low box alone: nothing starts
        up = tracker.update(dets([(0.2, 0.2, 0.1, 0.1)], [low]), f, f)
        assert len(up.detections) == 0 and not up.created
    assert tracker.tracks == ()
    for f in range(10, 20):  # a track from high boxes, then kept alive by low ones
        score = 0.9 if f < 13 else low
        up = tracker.update(dets([(0.6 + 0.005 * f, 0.5, 0.1, 0.1)], [score]), f, f)
    assert ids_of(up) == [1]
    assert tracker.tracks[0].hits == 10
    assert tracker.tracks[0].best_score == pytest.approx(0.9)
    assert tracker.tracks[0].best_frame == 10


def test_ended_tracks_are_reported_once_after_the_buffer() -> None:
    tracker = Tracker(TrackConfig(buffer_frames=5))
    ended = []
    for f in range(20):
        up = tracker.update(dets([(0.5, 0.5, 0.1, 0.1)] if f < 4 else []), f, f)
        ended += [(f, t.id) for t in up.ended]
    assert ended == [(9, 1)]  # last hit at frame 3, 6 misses > buffer of 5
    assert tracker.tracks == ()


def test_buffer_in_seconds_uses_timestamps() -> None:
    tracker = Tracker(TrackConfig(buffer_seconds=1.0, buffer_frames=0))
    ended = []
    for f in range(30):  # 10 fps: ends once more than 1 s passed since the last hit
        up = tracker.update(dets([(0.5, 0.5, 0.1, 0.1)] if f < 3 else []), f / 10, f)
        ended += [f for _ in up.ended]
    assert ended == [13]


def test_update_reports_created_updated_and_drops_unmatched_low_boxes() -> None:
    tracker = Tracker()
    first = tracker.update(dets([(0.5, 0.5, 0.1, 0.1), (0.1, 0.1, 0.05, 0.05)], [0.9, 0.15]), 0, 0)
    assert ids_of(first) == [NO_TRACK]  # the high box is kept (no id yet), the low one dropped
    second = tracker.update(dets([(0.5, 0.5, 0.1, 0.1)]), 0.1, 1)
    assert [t.id for t in second.created] == [1] and second.updated == ()
    third = tracker.update(dets([(0.5, 0.5, 0.1, 0.1)]), 0.2, 2)
    assert [t.id for t in third.updated] == [1] and third.created == ()
    t = tracker.tracks[0]
    assert (t.first_frame, t.last_frame, t.hits, t.age) == (0, 2, 3, 2)
    assert list(t.scores) == pytest.approx([0.9] * 3)


def test_history_is_bounded_and_low_floor_is_exposed() -> None:
    tracker = Tracker(TrackConfig(history=5, median_window=3, low_score=0.05))
    assert tracker.needs_low_scores == 0.05
    for f in range(50):
        tracker.update(dets([(0.5, 0.5, 0.1, 0.1)]), f, f)
    assert len(tracker.tracks[0].scores) == 5


@pytest.mark.parametrize(
    "bad",
    [
        {"low_score": 0.6, "high_score": 0.5},
        {"high_score": 0.7, "new_track_score": 0.6},
        {"stationary_enter": 0.5, "stationary_exit": 0.1},
        {"buffer_frames": -1},
        {"unknown": 1},
    ],
)
def test_config_refuses_inconsistent_settings(bad) -> None:
    with pytest.raises(ValidationError):
        TrackConfig(**bad)


def test_boxes_are_normalized_so_scale_does_not_matter() -> None:
    tracker = Tracker()
    for f in range(10):  # a tiny, fast box: ~2 px wide in a 1080p frame
        up = tracker.update(dets([(0.1 + 0.001 * f, 0.5, 0.002, 0.004)]), f, f)
    assert ids_of(up) == [1]


def test_update_with_20_tracks_and_30_boxes_is_fast() -> None:
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.1, 0.9, (30, 2))
    vel = rng.normal(0, 0.002, (30, 2))
    tracker = Tracker()
    times = []
    for f in range(200):
        c = centres + vel * f
        boxes = [(x, y, 0.04, 0.08) for x, y in c]
        scores = np.where(np.arange(30) < 20, 0.8, 0.15)  # 20 tracked objects + 10 low boxes
        d = dets(boxes, scores)
        t0 = time.perf_counter()
        tracker.update(d, f / 10, f)
        times.append(time.perf_counter() - t0)
    assert len(tracker.tracks) == 20
    per_frame = float(np.median(times[20:]))
    print(f"median update: {per_frame * 1e3:.3f} ms")
    assert per_frame < 0.005  # ~0.3 ms measured alone; generous for a shared, slow machine


def _track_cli(*argv: str) -> int:
    import argparse

    from edge_agent.tools import track_cli

    parser = argparse.ArgumentParser()
    track_cli.add_parser(parser.add_subparsers())
    return track_cli.run(parser.parse_args(["track", *argv]))


def test_track_cli_turns_mot_detections_into_tracks(tmp_path) -> None:
    from bench import mot

    gt = np.loadtxt(mot.gt_path("TUD-Stadtmitte"), delimiter=",")
    det = tmp_path / "det" / "det.txt"
    det.parent.mkdir()
    rows = [
        f"{f},-1,{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f},{s:.3f}"
        for f, boxes, scores in mot.corrupt(gt, 0)
        for (x1, y1, x2, y2), s in zip(boxes, scores, strict=True)
    ]
    det.write_text("\n".join(rows) + "\n")
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nimWidth=640\nimHeight=480\n")
    cfg = tmp_path / "track.yaml"
    cfg.write_text("track: {min_hits: 2}\n")
    out = tmp_path / "tracks.txt"
    assert _track_cli("--detections", str(det), "--out", str(out), "--config", str(cfg)) == 0
    got = np.loadtxt(out, delimiter=",")
    assert got.shape[1] == 10 and (got[:, 1] >= 1).all()
    score = mot.score(
        "TUD-Stadtmitte", [(int(r[0]), int(r[1]), r[2:6] + np.r_[0, 0, r[2:4]]) for r in got]
    )
    assert score["idf1"] > 0.9  # pixels in, pixels out: the boxes match the ground truth


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        ("1,-1,10,10,5,5,0.9\n2,-1,10,x,5,5,0.9\n", "det.txt:2", "not a number"),
        ("1,-1,10,10\n", "det.txt:1", "fields"),
        ("1,-1,10,10,0,5,0.9\n", "det.txt:1", "width and height"),
        ("1.5,-1,10,10,5,5,0.9\n", "det.txt:1", "whole number"),
        ("1,-1,10,10,5,nan,0.9\n", "det.txt:1", "finite"),
    ],
)
def test_track_cli_names_the_bad_line(tmp_path, content, where, message) -> None:
    from edge_agent.errors import UserError

    det = tmp_path / "det.txt"
    det.write_text(content)
    with pytest.raises(UserError) as err:
        _track_cli("--detections", str(det), "--out", str(tmp_path / "o.txt"), "--size", "64x48")
    assert err.value.where.endswith(where) and message in str(err.value)


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--size", "64by48"], "--size 64by48"),
        (["--config", "{cfg}"], "track.yaml"),
        (["--detections", "{tmp}/missing.txt"], "missing.txt"),
    ],
)
def test_track_cli_refuses_bad_options(tmp_path, args, where) -> None:
    from edge_agent.errors import UserError

    det = tmp_path / "det.txt"
    det.write_text("1,-1,10,10,5,5,0.9\n")
    cfg = tmp_path / "track.yaml"
    cfg.write_text("track: {high_score: 2}\n")
    args = [a.format(cfg=cfg, tmp=tmp_path) for a in args]
    base = ["--detections", str(det), "--out", str(tmp_path / "o.txt")]
    with pytest.raises(UserError) as err:
        _track_cli(*base, *args)
    assert where in str(err.value)
