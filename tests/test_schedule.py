"""DetectionSchedule and Hints: which frames get a full detection, and what the others search (pure)."""

from __future__ import annotations

import pytest

from fer_async.config import Settings, SettingsError
from fer_async.schedule import (
    DEFAULT_CADENCE,
    DETECT_EVERY,
    PHOTO,
    SCHEDULE_OPTIONS,
    Cadence,
    DetectionSchedule,
    FramePlan,
    Hints,
    Search,
    View,
    full_share,
)

A, B = (10, 20, 50, 50), (200, 40, 60, 60)


def decisions(schedule: DetectionSchedule, detections: list[list[tuple[int, int, int, int]]]) -> list[Hints | None]:
    """The hints each frame got, when frame i's detector returned `detections[i]` (640x480 frames)."""
    given = []
    for boxes in detections:
        given.append(schedule.hints())
        schedule.observe(640, 480, boxes)
    return given


def test_full_detection_on_every_nth_frame_and_the_last_faces_between() -> None:
    schedule = DetectionSchedule(every=3)
    given = decisions(schedule, [[A], [A, B], [B], [], [A], [A], [B]])
    assert given == [
        None,  # frame 0: nothing known
        Hints(640, 480, (A,)),
        Hints(640, 480, (A, B)),
        None,  # frame 3: the period
        Hints(640, 480, ()),  # nobody in frame 3: nothing to search until frame 6
        Hints(640, 480, (A,)),
        None,
    ]
    assert schedule.frames == 7


def test_every_1_is_a_full_detection_on_every_frame() -> None:
    assert decisions(DetectionSchedule(every=1), [[A], [A], [B], []]) == [None] * 4


def test_an_offset_shifts_the_period_but_the_first_frame_is_always_searched_whole() -> None:
    full_frames = {
        offset: [
            i for i, hints in enumerate(decisions(DetectionSchedule(4, offset=offset), [[A]] * 10)) if hints is None
        ]
        for offset in range(6)
    }
    assert full_frames == {0: [0, 4, 8], 1: [0, 3, 7], 2: [0, 2, 6], 3: [0, 1, 5, 9], 4: [0, 4, 8], 5: [0, 3, 7]}


def test_reset_forces_a_full_detection_and_restarts_the_period() -> None:
    schedule = DetectionSchedule(every=4)
    decisions(schedule, [[A], [A]])
    schedule.reset()
    assert schedule.frames == 0
    assert decisions(schedule, [[B]] * 5) == [None, *[Hints(640, 480, (B,))] * 3, None]


def test_a_run_reset_at_a_multiple_of_n_decides_as_the_uninterrupted_run() -> None:
    """The chunking contract: the decisions depend on the frame count modulo N and the last detections only."""
    detections = [[A], [A, B], [B], [], [A], [B], [A, B], [A], [], [B], [A], [A]]
    every = 4
    whole = decisions(DetectionSchedule(every), detections)
    for start in range(0, len(detections), every):
        chunk = DetectionSchedule(every)
        chunk.reset()
        assert decisions(chunk, detections[start:]) == whole[start:], start
    # Not so at another frame: the uninterrupted run searches regions there, the restarted one the whole frame.
    assert whole[1] is not None and decisions(DetectionSchedule(every), detections[1:])[0] is None


def test_hints_fit_only_frames_of_their_size() -> None:
    hints = Hints(640, 480, (A,))
    assert hints.fit(640, 480)
    assert not hints.fit(480, 640) and not hints.fit(1280, 960)


def test_full_share_counts_full_and_lost_region_searches() -> None:
    assert full_share({Search.FULL: 2, Search.REGIONS: 7, Search.REGIONS_LOST: 1}) == pytest.approx(0.3)
    assert full_share({"regions": 4}) == 0.0
    assert full_share({}) is None


def test_the_period_is_a_setting_checked_at_the_edge() -> None:
    assert DETECT_EVERY == Settings().detect_every >= 1
    assert Settings.from_args(["--detect-every", "3"]).detect_every == 3
    assert Settings.from_args([], env={"FER_DETECT_EVERY": "7"}).detect_every == 7
    with pytest.raises(SettingsError, match="--detect-every must be >= 1"):
        Settings(detect_every=0)
    with pytest.raises(ValueError, match="every must be at least 1"):
        DetectionSchedule(every=0)


def test_alternate_flip_gives_views_as_seen_then_mirrored_from_each_reset() -> None:
    schedule = DetectionSchedule(5, offset=3, alternate_flip=True)  # the offset shifts detections, not views
    views = []
    for _ in range(5):
        views.append(schedule.view())
        schedule.observe(640, 480, [A])
    assert views == [View.AS_SEEN, View.MIRRORED] * 2 + [View.AS_SEEN]
    schedule.observe(640, 480, [A])
    schedule.reset()
    assert schedule.view() is View.AS_SEEN
    # Without it (and for photos, which have no schedule) every frame gets both views.
    plain = DetectionSchedule(5)
    assert {plain.view() for _ in range(3)} == {View.BOTH}


def test_a_plan_is_the_next_frames_hints_and_view_together() -> None:
    schedule = DetectionSchedule(3, alternate_flip=True)
    assert schedule.plan() == FramePlan(None, View.AS_SEEN)  # frame 0: a full detection, as seen
    schedule.observe(640, 480, [A])
    assert schedule.plan() == FramePlan(Hints(640, 480, (A,)), View.MIRRORED)
    assert (PHOTO.hints, PHOTO.view) == (None, View.BOTH)  # what a photo gets: the whole frame, both views


def test_a_full_detection_rechecks_the_last_frames_faces_but_not_after_a_reset() -> None:
    schedule = DetectionSchedule(2)
    assert schedule.plan().recheck is None  # frame 0: nothing before it
    schedule.observe(640, 480, [A])
    schedule.observe(640, 480, [A])
    assert schedule.plan() == FramePlan(None, View.BOTH, Hints(640, 480, (A,)))  # frame 2: full, A rechecked
    schedule.observe(640, 480, [])
    schedule.observe(640, 480, [])
    assert schedule.plan().recheck is None  # nobody in the last frame: nothing to recheck
    schedule.observe(640, 480, [A])
    schedule.reset()
    assert schedule.plan() == FramePlan(None, View.BOTH)  # a fresh start depends on nothing before it
    assert PHOTO.recheck is None


def test_alternate_flip_is_a_setting_on_by_default() -> None:
    assert Settings().alternate_flip is True
    assert Settings.from_args(["--no-alternate-flip"], env={}).alternate_flip is False
    assert Settings.from_args([], env={"FER_ALTERNATE_FLIP": "0"}).alternate_flip is False


def test_every_stream_makes_its_schedule_from_the_settings_cadence() -> None:
    settings = Settings.from_args(["--detect-every", "3", "--no-alternate-flip"], env={})
    schedule = settings.cadence.schedule(offset=1)
    assert (schedule.every, schedule.offset, schedule.alternate_flip) == (3, 1, False)
    # The options that make a cadence are the settings the analysis CLI and the bench take over.
    assert SCHEDULE_OPTIONS == ("detect_every", "alternate_flip")
    assert Settings().cadence == DEFAULT_CADENCE == Cadence(DETECT_EVERY, Settings().alternate_flip)
