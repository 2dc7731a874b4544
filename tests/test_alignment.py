"""Faces turned upright by their landmarks: the similarity, the roll's sign, the crop, and the wiring."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_async.alignment import TEMPLATE, aligned_face, alignment_matrix, roll_degrees
from fer_async.detector import HaarDetector, YuNetDetector
from fer_async.imaging import crop_faces
from fer_async.labels import Box
from fer_async.recognition import Analyzer


def decoded(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def turned(points: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """`points` turned clockwise as seen (image y down) by `degrees` about the origin, scaled, shifted."""
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T * scale + np.array(shift)


def test_the_template_aligns_to_itself_and_a_moved_template_back_onto_it() -> None:
    np.testing.assert_allclose(alignment_matrix(TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    moved = turned(TEMPLATE, 20.0, 3.0, (200.0, 90.0))
    matrix = alignment_matrix(moved)
    back = np.c_[moved, np.ones(len(moved))] @ matrix.T
    np.testing.assert_allclose(back, TEMPLATE, atol=1e-9)
    assert roll_degrees(moved) == pytest.approx(20.0)
    assert roll_degrees(turned(TEMPLATE, -12.0, 0.5, (0.0, 0.0))) == pytest.approx(-12.0)
    # The plain-float angle is the similarity's, for any five points.
    rng = np.random.default_rng(3)
    for _ in range(20):
        points = TEMPLATE * rng.uniform(0.5, 4) + rng.normal(0, 3, (5, 2)) + rng.uniform(0, 300, 2)
        matrix = alignment_matrix(points)
        assert roll_degrees(points) == pytest.approx(-np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])), abs=1e-9)


def test_coinciding_landmarks_are_refused() -> None:
    with pytest.raises(ValueError, match="coincide"):
        alignment_matrix(np.full((5, 2), 7.0))
    with pytest.raises(ValueError, match="coincide"):
        roll_degrees(np.full((5, 2), 7.0))


def test_a_tilted_face_is_turned_back_upright() -> None:
    # An asymmetric scene: a bar across the "eyes" and a dot at the "mouth", tilted clockwise by 25°.
    upright = np.full((200, 200), 40, np.uint8)
    cv2.rectangle(upright, (60, 80), (140, 90), 230, cv2.FILLED)
    cv2.circle(upright, (100, 140), 10, 160, cv2.FILLED)
    turn = cv2.getRotationMatrix2D((100, 100), -25.0, 1.0)  # OpenCV: negative = clockwise as seen
    tilted = cv2.warpAffine(upright, turn, (200, 200), borderMode=cv2.BORDER_REPLICATE)
    box: Box = (40, 40, 120, 120)
    landmarks = turned(TEMPLATE - 24.0, 25.0, 120 / 48, (100.0, 100.0))  # where a detector would put them
    straightened = aligned_face(tilted, box, landmarks)
    reference = crop_faces(upright, [box])[0]
    still_tilted = crop_faces(tilted, [box])[0]

    def difference(face: np.ndarray) -> float:
        return float(np.abs(face.astype(np.int16) - reference.astype(np.int16))[8:40, 8:40].mean())

    assert difference(straightened) < 0.25 * difference(still_tilted)
    # BGR in, the same grey face out.
    np.testing.assert_array_equal(aligned_face(cv2.cvtColor(tilted, cv2.COLOR_GRAY2BGR), box, landmarks), straightened)


def test_faces_without_landmarks_keep_the_box_crop(face_jpeg: bytes) -> None:
    image = decoded(face_jpeg)
    boxes = HaarDetector().detect(image)
    assert boxes
    np.testing.assert_array_equal(crop_faces(image, boxes, [None] * len(boxes)), crop_faces(image, boxes))
    with pytest.raises(ValueError, match="landmark sets"):
        crop_faces(image, boxes, [])


def test_yunet_landmarks_turn_a_real_tilted_face_towards_upright(face_jpeg: bytes, yunet_model: Path) -> None:
    image = decoded(face_jpeg)
    detector = YuNetDetector(yunet_model)
    upright = detector.detect_faces(image)[0]
    assert upright.landmarks is not None and abs(roll_degrees(upright.landmarks)) < 5
    reference = crop_faces(image, [upright.box])[0].astype(np.int16)
    centre = (upright.box[0] + upright.box[2] / 2, upright.box[1] + upright.box[3] / 2)
    for degrees in (15.0, -15.0):
        tilted = cv2.warpAffine(
            image, cv2.getRotationMatrix2D(centre, -degrees, 1.0), image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE
        )
        face = detector.detect_faces(tilted)[0]
        assert face.landmarks is not None
        # YuNet's landmarks lean towards upright (alignment's docstring), but the sign is right.
        assert np.sign(roll_degrees(face.landmarks)) == np.sign(degrees)
        aligned = crop_faces(tilted, [face.box], [face.landmarks])[0].astype(np.int16)
        box_crop = crop_faces(tilted, [face.box])[0].astype(np.int16)
        assert np.abs(aligned - reference).mean() < np.abs(box_crop - reference).mean()


def test_the_analyzer_aligns_only_when_asked(face_jpeg: bytes, yunet_model: Path) -> None:
    class Unused:
        def predict(self, faces: np.ndarray) -> np.ndarray:
            raise AssertionError("prepare never calls the model")

    image = decoded(face_jpeg)
    tilted = cv2.warpAffine(image, cv2.getRotationMatrix2D((280, 140), 20.0, 1.0), (640, 480))
    frame = cv2.imencode(".jpg", tilted)[1].tobytes()
    with (
        Analyzer(Unused(), YuNetDetector(yunet_model), align=True) as aligning,
        Analyzer(Unused(), YuNetDetector(yunet_model), align=False) as boxing,
    ):
        aligned, boxed = aligning.prepare(frame), boxing.prepare(frame)
    assert not isinstance(aligned, Exception) and not isinstance(boxed, Exception)
    assert aligned.boxes == boxed.boxes  # the same face, the same box
    assert not np.array_equal(aligned.faces, boxed.faces)  # cut differently
