"""The face tracker on synthetic score sequences (the real-clip properties are in tests/server/test_clips.py)."""

from __future__ import annotations

import itertools
import math

import pytest

from fer_async.labels import EMOTIONS, Face
from fer_async.tracker import DEFAULT_MAX_UNSEEN_MS, TrackedFace, Tracker, centre_shift, iou
from fer_async.tracker_defaults import DEFAULT_SMOOTHING_MS, DEFAULT_SWITCH_MARGIN

HAPPY = EMOTIONS.index("happy")
NEUTRAL = EMOTIONS.index("neutral")
SAD = EMOTIONS.index("sad")


def scores(**named: float) -> tuple[float, ...]:
    """A score vector with the named classes set and the rest sharing what is left."""
    rest = (1.0 - sum(named.values())) / (len(EMOTIONS) - len(named))
    return tuple(named.get(name, rest) for name in EMOTIONS)


def face(x: int, y: int, *, size: int = 100, **named: float) -> Face:
    return Face((x, y, size, size), scores(**named) if named else scores(neutral=0.7))


def test_defaults_are_sane() -> None:
    assert DEFAULT_SMOOTHING_MS > 0 and 0 < DEFAULT_SWITCH_MARGIN < 0.5 and DEFAULT_MAX_UNSEEN_MS > 0


def test_geometry() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert centre_shift((0, 0, 10, 10), (10, 0, 10, 10)) == pytest.approx(1.0)


def test_one_face_keeps_its_id_and_two_faces_get_two() -> None:
    tracker = Tracker()
    ids = []
    for i in range(30):
        (tracked,) = tracker.update([face(100 + 3 * i, 50)], i / 30)
        ids.append(tracked.id)
    assert set(ids) == {1}
    # A second face appears far away: a new id; the first keeps its own, whatever the order.
    a, b = tracker.update([face(400, 300), face(190, 50)], 1.0)
    assert (a.id, b.id) == (2, 1)
    b2, a2 = tracker.update([face(192, 52), face(405, 298)], 1.05)
    assert (b2.id, a2.id) == (1, 2)


def test_output_follows_input_order_and_json_shape() -> None:
    tracker = Tracker(smoothing_ms=0)
    faces = [face(0, 0, happy=0.9), face(300, 0, sad=0.8)]
    out = tracker.update(faces, 0.0)
    assert [t.box for t in out] == [f.box for f in faces]
    assert [t.emotion for t in out] == ["happy", "sad"]
    payload = out[0].to_json()
    assert set(payload) == {"id", "box", "emotion", "scores", "raw_scores"}
    assert payload["id"] == 1 and payload["box"] == [0, 0, 100, 100]
    assert list(payload["scores"]) == list(EMOTIONS) and payload["scores"] == payload["raw_scores"]
    assert payload["scores"]["happy"] == 0.9
    assert isinstance(out[0], TrackedFace) and out[0].as_face().scores == out[0].scores


def test_fast_move_between_slow_frames_is_matched_by_centre() -> None:
    tracker = Tracker()
    (first,) = tracker.update([face(100, 100)], 0.0)
    # Moved diagonally by 35 % of its size: IoU 0.27 (< min_iou), centres 0.49 sides apart.
    assert iou((100, 100, 100, 100), (135, 135, 100, 100)) < 0.3
    (second,) = tracker.update([face(135, 135)], 0.2)
    assert first.id == second.id == 1
    (far,) = tracker.update([face(400, 100)], 0.4)
    assert far.id == 2


def test_a_face_crossing_the_picture_fast_keeps_one_id_there_and_back() -> None:
    # 30 frames/s, 100 px face moving 70 px a frame (0.7 sides: beyond the centre gate), then back.
    tracker = Tracker()
    xs = [100 + 70 * i for i in range(12)]
    ids = [tracker.update([face(x, 200)], i / 30)[0].id for i, x in enumerate(xs + xs[::-1])]
    assert set(ids) == {1}


def test_two_faces_crossing_fast_keep_their_ids() -> None:
    tracker = Tracker()
    for i in range(14):  # 60 px a frame towards each other: they overlap around frames 6-8
        left, right = tracker.update([face(60 * i, 200), face(800 - 60 * i, 200, size=110)], i / 30)
        assert (left.id, right.id) == (1, 2), f"frame {i}"


def test_a_face_appearing_far_or_of_another_size_where_one_was_lost_gets_a_new_id() -> None:
    tracker = Tracker()
    tracker.update([face(100, 100)], 0.0)
    (far,) = tracker.update([face(280, 100)], 1 / 30)  # 1.8 sides from the lost one
    assert far.id == 2
    tracker.update([face(280, 100)], 2 / 30)
    (other,) = tracker.update([face(380, 100, size=200)], 3 / 30)  # near, but twice the size
    assert other.id == 3


def test_a_jump_links_only_a_track_seen_on_the_frame_before() -> None:
    tracker = Tracker()
    tracker.update([face(100, 100)], 0.0)
    tracker.update([], 1 / 30)  # missed once: still alive, but not seen on the frame before
    (later,) = tracker.update([face(200, 100)], 2 / 30)
    assert later.id == 2


def test_a_face_appearing_beside_a_still_one_the_detector_missed_is_someone_else() -> None:
    # Two people 1.2 sides apart: the still one is missed on the frame the other turns to the camera.
    tracker = Tracker()
    for i in range(10):
        (still,) = tracker.update([face(100, 100, happy=0.9)], i / 30)
    (other,) = tracker.update([face(220, 100, sad=0.9)], 10 / 30)
    assert other.id == 2 and other.emotion == "sad"  # not the missed one's id and smoothed label
    back, beside = tracker.update([face(100, 100, happy=0.9), face(220, 100, sad=0.9)], 11 / 30)
    assert (back.id, beside.id) == (still.id, 2)


def test_a_missed_track_is_not_moved_on_past_its_prediction_limit() -> None:
    tracker = Tracker()
    for i in range(4):  # moving right at 40 px a frame, 1200 px/s, last seen at x 220
        tracker.update([face(100 + 40 * i, 100)], i / 30)
    # Missed for 0.6 s: a face where its course would have taken it (its velocity, 1050 px/s after
    # three frames, from x 220) is someone else.
    (elsewhere,) = tracker.update([face(850, 100)], 0.1 + 0.6)
    assert elsewhere.id == 2
    # Where it was last seen, or a little on its way, it is the same face.
    tracker = Tracker()
    for i in range(4):
        tracker.update([face(100 + 40 * i, 100)], i / 30)
    (back,) = tracker.update([face(240, 100)], 0.1 + 0.6)
    assert back.id == 1


def test_jitter_between_frames_milliseconds_apart_is_not_a_velocity() -> None:
    tracker = Tracker()
    tracker.update([face(100, 100)], 0.0)
    tracker.update([face(102, 100)], 0.005)  # a live client's burst: 2 px of the detector's jitter
    # 0.2 s on, the face is missed and another appears 90 px along the jitter's direction: read as
    # 400 px/s, the track would have been moved on onto it.
    (other,) = tracker.update([face(192, 100)], 0.205)
    assert other.id == 2


def test_track_dies_after_max_unseen() -> None:
    tracker = Tracker(max_unseen_ms=500)
    tracker.update([face(100, 100)], 0.0)
    assert tracker.update([], 0.4) == ()
    (back,) = tracker.update([face(100, 100)], 0.45)
    assert back.id == 1  # unseen 450 ms: still the same track
    tracker.update([], 0.9)
    (later,) = tracker.update([face(100, 100)], 1.0)
    assert later.id == 2 and tracker.live_tracks == 1  # unseen 550 ms: a new track, ids never reused


@pytest.mark.parametrize("pause_s", [5.0, 15.0])
def test_a_pause_does_not_age_a_track(pause_s: float) -> None:
    """A stalled server or client processes no frame: the face in the same place keeps its id."""
    tracker = Tracker()
    for i in range(30):
        (before,) = tracker.update([face(100, 100, neutral=0.8)], i / 30)
    (after,) = tracker.update([face(103, 98, happy=0.8)], 1.0 + pause_s)
    assert after.id == before.id == 1 and tracker.live_tracks == 1
    # Smoothing stays time-based: after seconds away the new frame's scores count almost fully.
    assert after.scores[HAPPY] == pytest.approx(0.8, abs=1e-3) and after.emotion == "happy"


def test_a_pause_ages_a_missed_track_by_one_step_at_most() -> None:
    tracker = Tracker(max_unseen_ms=1000)
    tracker.update([face(100, 100)], 0.0)
    tracker.update([], 0.1)
    tracker.update([], 20.0)  # after a stall: aged 0.1 s + MAX_FRAME_STEP_MS (0.5 s), not 20 s
    (same,) = tracker.update([face(100, 100)], 20.1)
    assert same.id == 1
    # Missed at a steady rate, a track dies after max_unseen_ms as before.
    t = 20.1
    while t < 21.15:
        t += 0.05
        tracker.update([], t)
    (new,) = tracker.update([face(100, 100)], t + 0.05)
    assert new.id == 2 and tracker.live_tracks == 1


def test_time_based_smoothing_is_rate_independent() -> None:
    """After the same wall time, a 5 fps and a 30 fps client have moved the same way towards a new class."""

    def after_switch(fps: float) -> float:
        tracker = Tracker(smoothing_ms=300, switch_margin=0)
        t = 0.0
        for _ in range(int(fps)):  # one second of neutral
            tracker.update([face(100, 100, neutral=0.9)], t)
            t += 1 / fps
        start = t - 1 / fps
        happy = 0.0
        while t - start <= 0.6 + 1e-9:
            (tracked,) = tracker.update([face(100, 100, happy=0.9)], t)
            happy = tracked.scores[HAPPY]
            t += 1 / fps
        return happy

    slow, fast = after_switch(5), after_switch(30)
    expected = 0.9 - (0.9 - 0.1 / 6) * math.exp(-0.6 / 0.3)
    assert slow == pytest.approx(expected, abs=1e-6)
    assert fast == pytest.approx(expected, abs=1e-6)


def test_smoothing_off_gives_raw_scores() -> None:
    tracker = Tracker(smoothing_ms=0, switch_margin=0)
    for i, named in enumerate([{"happy": 0.8}, {"sad": 0.6}, {"neutral": 0.5}]):
        (tracked,) = tracker.update([Face((100, 100, 100, 100), scores(**named))], i * 0.1)
        assert tracked.scores == tracked.raw_scores
        assert tracked.emotion == next(iter(named))


def test_hysteresis_holds_the_label_until_another_clearly_leads() -> None:
    tracker = Tracker(smoothing_ms=0, switch_margin=0.15)
    (t0,) = tracker.update([face(100, 100, neutral=0.5, happy=0.3)], 0.0)
    assert t0.emotion == "neutral"
    (t1,) = tracker.update([face(100, 100, neutral=0.38, happy=0.42)], 0.1)
    assert t1.emotion == "neutral"  # happy leads by 0.04 only
    (t2,) = tracker.update([face(100, 100, neutral=0.3, happy=0.5)], 0.2)
    assert t2.emotion == "happy"  # leads by 0.2
    (t3,) = tracker.update([face(100, 100, neutral=0.45, happy=0.4)], 0.3)
    assert t3.emotion == "happy"


def test_smoothing_and_hysteresis_reduce_flicker() -> None:
    # Two nearly equal classes swapping the lead every frame: raw, the label flips each frame.
    frames = [
        [face(100, 100, neutral=0.45, sad=0.35)] if i % 2 else [face(100, 100, neutral=0.35, sad=0.45)]
        for i in range(60)
    ]

    def label_changes(tracker: Tracker) -> int:
        labels = [tracker.update(fs, i / 30)[0].emotion for i, fs in enumerate(frames)]
        return sum(a != b for a, b in itertools.pairwise(labels))

    assert label_changes(Tracker(smoothing_ms=0, switch_margin=0)) == 59
    assert label_changes(Tracker()) == 0


def test_time_going_back_resets_tracks() -> None:
    tracker = Tracker(smoothing_ms=1000)
    tracker.update([face(100, 100, happy=0.9)], 5.0)
    (again,) = tracker.update([face(100, 100, sad=0.9)], 0.0)  # a looping file starts over
    assert again.id == 2 and again.scores == again.raw_scores and again.emotion == "sad"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"smoothing_ms": -1},
        {"smoothing_ms": math.nan},
        {"switch_margin": 1.0},
        {"max_unseen_ms": -5},
        {"min_iou": 0},
        {"max_centre_shift": -0.1},
        {"max_jump": -1.0},
        {"max_jump": math.nan},
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Tracker(**kwargs)


def test_bad_time_is_refused() -> None:
    with pytest.raises(ValueError):
        Tracker().update([], math.inf)
