"""Detect less, track more: YuNet on the regions around the last faces, with the real detector, model and frames.

The frames are real photos composed into moving webcam-like frames (fer_async.synthetic: the
astronaut drifts, a second face slides in), and the real clips of ../shared where present.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fer_async.alignment import roll_degrees
from fer_async.analyze import FileAnalysis, analyzer_stages, open_source
from fer_async.config import Settings
from fer_async.detector import REGION_SAME_FACE_IOU, HaarDetector, YuNetDetector
from fer_async.imaging import ImageError
from fer_async.recognition import Analyzer, Prepared
from fer_async.schedule import DETECT_EVERY, DetectionSchedule, FramePlan, Hints, Search
from fer_async.synthetic import astronaut_bgr, compose_frame, drifting_face_frames, jpeg, paste, write_video
from fer_async.tracker import iou, tracker_for

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
FRAMES = 12
EVERY = 5
WIDTH, HEIGHT = 640, 480


class NoModel:
    def predict(self, faces: np.ndarray) -> np.ndarray:
        raise AssertionError("prepare never calls the model")


@pytest.fixture(scope="module")
def yunet(yunet_model: Path) -> YuNetDetector:
    return YuNetDetector(yunet_model)


@pytest.fixture(scope="module")
def analyzer(yunet: YuNetDetector) -> Iterator[Analyzer]:
    with Analyzer(NoModel(), yunet, align=True) as a:
        yield a


@pytest.fixture(scope="module")
def analysing(real_model: Any, yunet: YuNetDetector) -> Iterator[Analyzer]:
    with Analyzer(real_model, yunet, align=True) as a:
        yield a


def drifting(count: int = FRAMES, step: int = 9) -> list[bytes]:
    """JPEGs of the astronaut moving `step` px right and down per frame, as a webcam sends them."""
    photo = astronaut_bgr()
    return [jpeg(compose_frame(photo, 60 + step * i, 20 + step * i // 3, side=360, seed=i)) for i in range(count)]


def stream(analyzer: Analyzer, frames: Sequence[Any], every: int) -> list[Prepared]:
    """Each frame prepared with the hints of a stream's schedule, as a connection does."""
    schedule = DetectionSchedule(every)
    out = []
    for frame in frames:
        prepared = analyzer.prepare(frame, schedule.plan())
        assert not isinstance(prepared, ImageError)
        schedule.observe(prepared.width, prepared.height, prepared.boxes)
        out.append(prepared)
    return out


def test_between_full_detections_the_regions_find_the_face_the_full_detection_finds(analysing: Analyzer) -> None:
    frames = drifting()
    scheduled, full = stream(analysing, frames, EVERY), stream(analysing, frames, 1)
    assert [p.search for p in scheduled] == [Search.FULL if i % EVERY == 0 else Search.REGIONS for i in range(FRAMES)]
    assert {p.search for p in full} == {Search.FULL}
    for i, (got, reference) in enumerate(zip(scheduled, full, strict=True)):
        assert len(got.boxes) == len(reference.boxes) == 1, i
        assert iou(got.boxes[0], reference.boxes[0]) > 0.8, (i, got.boxes, reference.boxes)  # source pixels both
    # The aligned crops (landmarks mapped back to the frame) read as the full detection's faces.
    classify = analyzer_stages(analysing).classify
    regions, whole = (np.array([r.faces[0].scores for r in classify(s)]) for s in (scheduled, full))
    assert (regions.argmax(axis=1) == whole.argmax(axis=1)).all()
    assert np.abs(regions - whole).max() < 0.15, np.abs(regions - whole).max(axis=1)


def test_region_landmarks_are_in_the_frame_s_pixels(yunet: YuNetDetector, astronaut_bgr: np.ndarray) -> None:
    image = compose_frame(astronaut_bgr, 150, 40, side=360)
    tilted = cv2.warpAffine(image, cv2.getRotationMatrix2D((300, 160), 20.0, 1.0), (WIDTH, HEIGHT))
    (full,) = yunet.detect_faces(tilted)
    x, y, w, h = full.box
    (found,) = yunet.detect_regions(tilted, [(x + 12, y - 8, w, h)])  # the box of a frame before: moved
    assert found is not None and full.landmarks is not None and found.landmarks is not None
    assert iou(found.box, full.box) > 0.7
    assert np.abs(found.landmarks - full.landmarks).max() < 0.1 * w
    # Turned upright by them, the face is turned as its full detection's landmarks turn it, give or take.
    assert roll_degrees(found.landmarks) == pytest.approx(roll_degrees(full.landmarks), abs=10)


def test_a_face_not_in_its_region_sends_the_whole_frame_to_the_detector(analyzer: Analyzer) -> None:
    frame = drifting(1)[0]
    (face,) = stream(analyzer, [frame], 1)[0].boxes
    elsewhere = Hints(WIDTH, HEIGHT, ((500, 380, 80, 80),))  # where nobody is
    lost = analyzer.prepare(frame, FramePlan(elsewhere))
    assert not isinstance(lost, ImageError)
    assert lost.search is Search.REGIONS_LOST and lost.boxes == [face]


def dimmed(frame: np.ndarray, gain: float) -> np.ndarray:
    return (frame.astype(np.float32) * gain).astype(np.uint8)


def test_a_face_the_whole_frame_search_misses_is_kept_by_its_region(analyzer: Analyzer) -> None:
    # A 160 px frame of the astronaut with the light down to a tenth: YuNet at the detection width
    # misses her face there, in the region around her last box it finds it. The full detections
    # of a schedule (frames 5 and 10) dropped her for 5 frames each.
    bright = compose_frame(astronaut_bgr(), 60, 20, side=160, seed=0)
    frames = [bright] + [dimmed(bright, 0.1)] * 11
    assert analyzer.detector.detect_faces(frames[1]) == []
    for every in (EVERY, 1):
        prepared = stream(analyzer, frames, every)
        assert [len(p.boxes) for p in prepared] == [1] * len(frames), every
        assert all(p.search in (Search.FULL, Search.REGIONS) for p in prepared)
    assert [len(p.boxes) for p in stream(analyzer, frames[1:], EVERY)] == [0] * (len(frames) - 1)  # none invented
    # A hinted face lost in its region sends the whole frame to the detector, and one the whole
    # frame misses but its own region finds is kept.
    (face,) = stream(analyzer, [bright], 1)[0].boxes
    elsewhere = (500, 380, 80, 80)
    lost = analyzer.prepare(frames[1], FramePlan(Hints(WIDTH, HEIGHT, (face, elsewhere))))
    assert not isinstance(lost, ImageError)
    assert lost.search is Search.REGIONS_LOST and len(lost.boxes) == 1 and iou(lost.boxes[0], face) > 0.7


def test_no_recheck_past_a_full_detections_worth_of_regions(yunet_model: Path) -> None:
    class CountingYuNet(YuNetDetector):
        regions = 0

        def detect_regions(self, image_bgr: np.ndarray, around: Sequence[Any]) -> list[Any]:
            self.regions += len(around)
            return super().detect_regions(image_bgr, around)

    detector = CountingYuNet(yunet_model)
    dark = dimmed(compose_frame(astronaut_bgr(), 60, 20, side=160, seed=0), 0.1)
    crowd = tuple((20 + 60 * (i % 10), 20 + 60 * (i // 10), 50, 50) for i in range(40))
    with Analyzer(NoModel(), detector) as analyzer:
        for recheck, regions in ((crowd[:2], 2), (crowd, 0)):
            detector.regions = 0
            prepared = analyzer.prepare(dark, FramePlan(None, recheck=Hints(WIDTH, HEIGHT, recheck)))
            assert not isinstance(prepared, ImageError)
            assert (prepared.search, detector.regions) == (Search.FULL, regions)


def test_the_whole_frame_when_hints_do_not_apply(analyzer: Analyzer, yunet_model: Path) -> None:
    frame = drifting(1)[0]
    (face,) = stream(analyzer, [frame], 1)[0].boxes
    cases = {
        "another frame size": Hints(1280, 960, (face,)),
        "more regions than a full detection costs": Hints(WIDTH, HEIGHT, (face,) * 40),
    }
    for what, hints in cases.items():
        prepared = analyzer.prepare(frame, FramePlan(hints))
        assert not isinstance(prepared, ImageError)
        assert prepared.search is Search.FULL and prepared.boxes == [face], what
    # Haar searches whole frames only: hints change nothing.
    with Analyzer(NoModel(), HaarDetector()) as haar:
        (haar_face,) = stream(haar, [frame], 1)[0].boxes
        prepared = haar.prepare(frame, FramePlan(Hints(WIDTH, HEIGHT, (haar_face,))))
    assert not isinstance(prepared, ImageError)
    assert prepared.search is Search.FULL and prepared.boxes == [haar_face]


def test_one_face_per_region_and_none_twice(yunet: YuNetDetector, astronaut_bgr: np.ndarray) -> None:
    image = compose_frame(astronaut_bgr, 150, 40, side=360)
    (face,) = yunet.detect_faces(image)
    x, y, w, h = face.box
    found = yunet.detect_regions(image, [face.box, (x + 6, y + 4, w, h), (-400, -400, 50, 50), (560, 400, 70, 70)])
    assert found[0] is not None and iou(found[0].box, face.box) > 0.9
    assert found[1] is None  # the same face again (IoU >= REGION_SAME_FACE_IOU): two tracks on one face
    assert found[2] is None and found[3] is None  # off the image; nobody there
    assert REGION_SAME_FACE_IOU <= 0.5
    assert yunet.detect_regions(image, []) == []


def entering(count: int, enter_at: int) -> list[np.ndarray]:
    """The astronaut drifting on the left, a mirrored close-up of her face sliding in from the right at `enter_at`."""
    photo = astronaut_bgr()
    close_up = cv2.flip(photo[20:210, 130:320], 1)
    frames = []
    for i in range(count):
        frame = compose_frame(photo, 20 + 2 * i, 60, side=340, seed=i)
        x = max(WIDTH - 150, WIDTH - 8 * max(0, i - enter_at))
        frames.append(paste(frame, close_up, x, 200, 140))
    return frames


@pytest.mark.parametrize("enter_at", [3, 6])
def test_a_second_face_entering_is_found_within_n_frames(analyzer: Analyzer, enter_at: int) -> None:
    frames = entering(28, enter_at)
    full = [len(p.boxes) for p in stream(analyzer, frames, 1)]
    scheduled = [len(p.boxes) for p in stream(analyzer, frames, EVERY)]
    assert full[0] == 1 and full[-1] == 2, full
    appears, found = full.index(2), scheduled.index(2)
    assert appears <= found < appears + EVERY, (full, scheduled)
    assert found % EVERY == 0  # at a full detection
    assert all(n == 2 for n in scheduled[found:])  # and kept by its region from then on


def test_a_restart_at_a_multiple_of_n_detects_as_the_uninterrupted_run(analyzer: Analyzer) -> None:
    """The contract a chunked analysis relies on: the same raw detections from the restart on."""
    frames = entering(20, 4)
    whole = stream(analyzer, frames, EVERY)
    for start in (EVERY, 3 * EVERY):
        restarted = stream(analyzer, frames[start:], EVERY)
        assert [p.boxes for p in restarted] == [p.boxes for p in whole[start:]], start
        assert [p.search for p in restarted] == [p.search for p in whole[start:]], start


def shared_clip(name: str) -> Path:
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"real clip not found at {path}")
    return path


def test_real_clips_scheduled_no_box_without_faces_one_steady_id_with_one(analysing: Analyzer) -> None:
    for name, faces, ids in (("no_face.mp4", 0, 0), ("single_face.mp4", 1, 1)):
        analysis = FileAnalysis(open_source(shared_clip(name)), analyzer_stages(analysing), tracker_for(Settings()))
        frames = list(analysis)
        assert frames and all(len(frame.faces) == faces for frame in frames), name
        assert len({face.id for frame in frames for face in frame.faces}) == ids, name
        assert analysis.searches[Search.FULL] == -(-len(frames) // DETECT_EVERY), (name, analysis.searches)
        assert analysis.searches[Search.REGIONS_LOST] == 0, (name, analysis.searches)


def test_a_face_crossing_a_video_fast_and_back_keeps_one_id(analysing: Analyzer, tmp_path: Path) -> None:
    """70 px a frame (0.8 of its box: each region search loses it, the whole frame finds it), there and back."""
    frames = drifting_face_frames(14, width=1280, height=720, side=400, start=(0, 150), step=(70, 0))
    clip = write_video(tmp_path / "fast.mp4", frames + frames[::-1], 30)
    analysis = FileAnalysis(open_source(clip), analyzer_stages(analysing), tracker_for(Settings()))
    seen = [frame.faces for frame in analysis]
    assert len(seen) == 28 and all(len(faces) == 1 for faces in seen)
    assert {faces[0].id for faces in seen} == {1}
