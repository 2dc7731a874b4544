"""Analyzer with the real model and real detectors: one model call per batch, per-frame errors, caps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
from server.helpers import iou
from testsupport import CountingModel

from fer_async.detector import DetectedFace, HaarDetector, YuNetDetector
from fer_async.imaging import ImageError, ImageTooLarge, decode_image, encode_jpeg
from fer_async.labels import EMOTIONS, Box, FrameResult
from fer_async.recognition import MAX_FACES_PER_FRAME, Analyzer
from fer_async.schedule import PHOTO, FramePlan, View
from fer_async.synthetic import astronaut_bgr, background

if TYPE_CHECKING:
    from fer_async.model import FacialExpressionModel


class ThreadRecordingDetector:
    """The real Haar detector, noting which threads ran it."""

    def __init__(self) -> None:
        self.detector = HaarDetector()
        self.threads: set[str] = set()

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        self.threads.add(threading.current_thread().name)
        return self.detector.detect(image_bgr)

    def detect_faces(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        return [DetectedFace(box, None) for box in self.detect(image_bgr)]


@pytest.fixture
def counting(real_model: FacialExpressionModel) -> CountingModel:
    return CountingModel(real_model)


@pytest.fixture
def analyzer(counting: CountingModel) -> Iterator[Analyzer]:
    with Analyzer(counting, HaarDetector(), detect_threads=2) as analyzer:
        yield analyzer


def test_one_model_call_for_all_faces_of_all_frames(
    analyzer: Analyzer, counting: CountingModel, face_jpeg: bytes, two_faces_jpeg: bytes, no_face_jpeg: bytes
) -> None:
    results = analyzer.analyze([face_jpeg, two_faces_jpeg, no_face_jpeg, face_jpeg])
    assert counting.calls == [4]
    assert all(isinstance(r, FrameResult) for r in results)
    frames = [r for r in results if isinstance(r, FrameResult)]
    assert [len(r.faces) for r in frames] == [1, 2, 0, 1]
    for r in frames:
        assert (r.width, r.height) == (640, 480)
        assert set(r.timings) == {"decode", "detect", "crop", "model", "total"}
        for face in r.faces:
            assert len(face.scores) == len(EMOTIONS) and abs(sum(face.scores) - 1) < 1e-4
            assert face.emotion in EMOTIONS
    assert frames[2].timings["model"] == 0.0 and frames[0].timings["model"] > 0
    assert frames[0].faces == frames[3].faces  # same picture, same answer, in its own slot
    # Largest face first within a frame.
    assert frames[1].faces[0].box[2] > frames[1].faces[1].box[2]


def test_each_frame_is_classified_in_its_view_in_one_call(
    analyzer: Analyzer, counting: CountingModel, face_jpeg: bytes
) -> None:
    """--alternate-flip: a stream's frames alternate between the face as seen and mirrored; a photo gets both."""
    seen, mirrored, both = analyzer.analyze(
        [face_jpeg] * 3, [FramePlan(view=view) for view in (View.AS_SEEN, View.MIRRORED, View.BOTH)]
    )
    assert counting.calls == [3]
    assert isinstance(seen, FrameResult) and isinstance(mirrored, FrameResult) and isinstance(both, FrameResult)
    as_seen, as_mirrored, averaged = (np.array(r.faces[0].scores) for r in (seen, mirrored, both))
    assert np.abs(as_seen - as_mirrored).max() > 1e-3  # two views, two answers
    np.testing.assert_allclose((as_seen + as_mirrored) / 2, averaged, atol=1e-5)
    with pytest.raises(ValueError, match="1 plans for 3 frames"):
        analyzer.analyze([face_jpeg] * 3, [PHOTO])


def test_batched_scores_match_frame_by_frame(
    analyzer: Analyzer, face_jpeg: bytes, two_faces_jpeg: bytes, no_face_jpeg: bytes
) -> None:
    frames = [two_faces_jpeg, no_face_jpeg, face_jpeg]
    batched = analyzer.analyze(frames)
    for frame, result in zip(frames, batched, strict=True):
        (alone,) = analyzer.analyze([frame])
        assert isinstance(result, FrameResult) and isinstance(alone, FrameResult)
        assert [f.box for f in result.faces] == [f.box for f in alone.faces]
        for a, b in zip(result.faces, alone.faces, strict=True):
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_a_bad_frame_fails_only_its_own_slot(analyzer: Analyzer, counting: CountingModel, face_jpeg: bytes) -> None:
    results = analyzer.analyze([face_jpeg, b"not an image", face_jpeg[:1000], b"", face_jpeg])
    assert [type(r).__name__ for r in results] == [
        "FrameResult",
        "ImageError",
        "ImageError",
        "ImageError",
        "FrameResult",
    ]
    assert "not a JPEG or PNG" in str(results[1]) and "truncated" in str(results[2])
    assert counting.calls == [2]


def test_frames_without_faces_skip_the_model(analyzer: Analyzer, counting: CountingModel, no_face_jpeg: bytes) -> None:
    results = analyzer.analyze([no_face_jpeg, b"garbage", no_face_jpeg])
    assert counting.calls == []
    assert isinstance(results[0], FrameResult) and results[0].faces == ()
    assert analyzer.analyze([]) == []


def test_decoded_frames_from_the_video_path(analyzer: Analyzer, face_jpeg: bytes, face_box_region: Box) -> None:
    image = decode_image(face_jpeg)
    (result,) = analyzer.analyze([image])
    assert isinstance(result, FrameResult) and len(result.faces) == 1 and result.timings["decode"] < 1.0
    with pytest.raises(ValueError, match="BGR uint8"):
        analyzer.analyze([image[..., 0]])
    with pytest.raises(TypeError):
        analyzer.analyze(["a file name"])  # type: ignore[list-item]


def test_a_lone_bad_frame_gets_its_image_error(analyzer: Analyzer) -> None:
    (result,) = analyzer.analyze([b""])
    assert isinstance(result, ImageError) and "empty" in str(result)


def test_max_pixels_is_applied(counting: CountingModel, face_jpeg: bytes) -> None:
    with Analyzer(counting, HaarDetector(), max_pixels=640 * 480 // 32) as small:
        (result,) = small.analyze([face_jpeg])
    assert isinstance(result, ImageTooLarge) and "--max-pixels 9600" in str(result)


def _result(analyzer: Analyzer, frame: bytes) -> FrameResult:
    (result,) = analyzer.analyze([frame])
    assert isinstance(result, FrameResult), result
    return result


def test_boxes_are_in_the_source_pixels_of_a_reduced_decode(
    counting: CountingModel, face_jpeg: bytes, two_faces_jpeg: bytes, face_box_region: Box
) -> None:
    """Detection and crops on the reduced decode give the full decode's faces and labels."""
    big = encode_jpeg(cv2.resize(decode_image(face_jpeg), (4000, 3000), interpolation=cv2.INTER_CUBIC), 90)
    full_size = Analyzer(counting, HaarDetector(), max_pixels=4000 * 3000, decode_width=10_000)
    with full_size, Analyzer(counting, HaarDetector()) as reduced:
        for frame in (face_jpeg, two_faces_jpeg, big):
            expected, got = _result(full_size, frame), _result(reduced, frame)
            assert (got.width, got.height) == (expected.width, expected.height)
            assert len(got.faces) == len(expected.faces) >= 1
            for a, b in zip(got.faces, expected.faces, strict=True):
                assert iou(a.box, b.box) > 0.8 and a.emotion == b.emotion, (a, b)
        (face,) = _result(reduced, big).faces
    region = tuple(round(v * 4000 / 640) for v in face_box_region)
    assert iou(face.box, region) > 0.8, (face.box, region)


def test_detection_runs_on_the_pool(counting: CountingModel, face_jpeg: bytes) -> None:
    detector = ThreadRecordingDetector()
    with Analyzer(counting, detector, detect_threads=2) as analyzer:
        analyzer.analyze([face_jpeg] * 8)
    assert detector.threads and all(name.startswith("fer-detect") for name in detector.threads)


class CrowdDetector:
    """A detector reporting a crowd of 100 boxes, largest first as FaceDetector promises (a crafted frame)."""

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        return [(i % 10 * 60, i // 10 * 40, 10 + i, 10 + i) for i in reversed(range(100))]

    def detect_faces(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        return [DetectedFace(box, None) for box in self.detect(image_bgr)]


def test_faces_per_frame_are_capped_largest_first(counting: CountingModel, face_jpeg: bytes) -> None:
    with Analyzer(counting, CrowdDetector(), decode_width=640) as analyzer:  # its boxes are for 640 px
        results = analyzer.analyze([face_jpeg, face_jpeg])
    assert counting.calls == [2 * MAX_FACES_PER_FRAME]
    first = results[0]
    assert isinstance(first, FrameResult) and len(first.faces) == MAX_FACES_PER_FRAME
    sides = [face.box[2] for face in first.faces]
    assert sides == sorted(sides, reverse=True) and min(sides) >= 10 + 100 - MAX_FACES_PER_FRAME


class BrokenModel:
    def predict(self, faces: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of GPU memory")


class WrongShapeModel:
    def predict(self, faces: np.ndarray) -> np.ndarray:
        return np.zeros((len(faces) + 1, 7), np.float32)


@pytest.mark.parametrize(("model", "message"), [(BrokenModel(), "GPU memory"), (WrongShapeModel(), "shape")])
def test_model_errors_propagate(model: object, message: str, face_jpeg: bytes) -> None:
    with Analyzer(model, HaarDetector()) as analyzer, pytest.raises((RuntimeError, ValueError), match=message):  # type: ignore[arg-type]
        analyzer.analyze([face_jpeg, face_jpeg])


def test_close_stops_the_pool(counting: CountingModel, face_jpeg: bytes) -> None:
    analyzer = Analyzer(counting, HaarDetector())
    analyzer.close()
    with pytest.raises(RuntimeError):
        analyzer.analyze([face_jpeg, face_jpeg])


def test_the_astronaut_smiles(analyzer: Analyzer, face_jpeg: bytes) -> None:
    """End to end on trained weights: the crop framing must match what the model learned."""
    (result,) = analyzer.analyze([face_jpeg])
    assert isinstance(result, FrameResult)
    (face,) = result.faces
    assert face.emotion == "happy"


def test_a_small_face_in_a_phone_photo_is_found_at_the_automatic_detection_width(
    counting: CountingModel, yunet_model: Path
) -> None:
    """A 12 MP photo with a ~100 px face: at 320 px (a 1/8 decode) the face is 8 px and missed;
    'auto' decodes at 1/4 (1000 px wide), searches that at 960 px, the photo's own detection
    width, and finds it."""
    photo = background(4000, 3000, 5).copy()
    photo[1500:1980, 2500:2980] = cv2.resize(astronaut_bgr(), (480, 480))  # her face: ~100 px
    data = encode_jpeg(photo, 90)
    with Analyzer(counting, YuNetDetector(yunet_model)) as auto:
        (face,) = _result(auto, data).faces
    assert iou(face.box, (2656, 1557, 108, 108)) > 0.6, face.box  # YuNet's box on the full-size photo
    with Analyzer(counting, YuNetDetector(yunet_model, detect_width=320)) as fixed:
        assert _result(fixed, data).faces == ()
