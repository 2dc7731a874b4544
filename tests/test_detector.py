"""Face detectors on real photos: Haar (always) and YuNet (when ../shared/models has it)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_async.detector import HaarDetector, YuNetDetector, create_detector, create_detector_for
from fer_async.detector_model import DETECTOR_KINDS, detection_width
from fer_async.imaging import decode_image
from fer_async.labels import Box


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


def assert_inside(boxes: list[Box], image: np.ndarray) -> None:
    height, width = image.shape[:2]
    for x, y, w, h in boxes:
        assert all(isinstance(v, int) for v in (x, y, w, h))
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return HaarDetector()


@pytest.mark.parametrize("detect_width", [320, 640])
def test_haar_finds_the_astronaut(face_jpeg: bytes, face_box_region: Box, detect_width: int) -> None:
    image = decode_image(face_jpeg)
    boxes = HaarDetector(detect_width=detect_width).detect(image)
    assert len(boxes) == 1
    assert iou(boxes[0], face_box_region) > 0.6
    assert_inside(boxes, image)


def test_haar_on_grey_and_on_small_images(haar: HaarDetector, astronaut_bgr: np.ndarray) -> None:
    # 512 px wide: shrunk to 320 for detection; boxes still come back in 512 px coordinates.
    colour = haar.detect(astronaut_bgr)
    grey = haar.detect(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY))
    assert colour == grey and len(colour) == 1
    assert iou(colour[0], (177, 66, 95, 95)) > 0.6  # the cascade's own box at full size
    # Narrower than detect_width: detected as is.
    small = cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA)
    (box,) = haar.detect(small)
    assert iou(box, (88, 33, 48, 48)) > 0.5


def test_two_faces(haar: HaarDetector, two_faces_jpeg: bytes) -> None:
    boxes = haar.detect(decode_image(two_faces_jpeg))
    assert len(boxes) == 2
    assert boxes[0][2] > boxes[1][2]  # largest first
    assert iou(boxes[1], (478, 298, 94, 94)) > 0.5  # the picture-in-picture close-up


def test_no_face_in_a_photo_of_coffee(haar: HaarDetector, no_face_jpeg: bytes) -> None:
    assert haar.detect(decode_image(no_face_jpeg)) == []


def test_boxes_are_clamped_at_the_edge(haar: HaarDetector, face_jpeg: bytes) -> None:
    image = decode_image(face_jpeg)
    # Shift the frame so the face hangs off the left edge by a few pixels.
    shifted = np.ascontiguousarray(image[:, 225:])
    boxes = haar.detect(shifted)
    assert boxes, "no face found in the shifted frame: nothing was checked"
    assert_inside(boxes, shifted)


def test_haar_is_safe_to_share_between_threads(haar: HaarDetector, face_jpeg: bytes, two_faces_jpeg: bytes) -> None:
    images = [decode_image(face_jpeg), decode_image(two_faces_jpeg)] * 8
    expected = [haar.detect(im) for im in images]
    classifiers: set[int] = set()
    lock = threading.Lock()

    def run(im: np.ndarray) -> list[Box]:
        with lock:
            classifiers.add(id(haar._classifier()))
        return haar.detect(im)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, images)) == expected
    assert len(classifiers) >= 2  # one cascade per thread, never shared


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        HaarDetector(scale_factor=1.0)
    with pytest.raises(ValueError):
        HaarDetector(detect_width=10)
    with pytest.raises(ValueError):
        HaarDetector().detect(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        HaarDetector().detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        HaarDetector().detect(np.zeros((10, 10, 1), np.uint8))


def test_yunet_finds_the_astronaut(yunet_model: Path, face_jpeg: bytes, face_box_region: Box) -> None:
    image = decode_image(face_jpeg)
    detector = YuNetDetector(yunet_model)
    (box,) = detector.detect(image)
    assert iou(box, face_box_region) > 0.6
    assert abs(box[2] - box[3]) <= 1  # squared to the FER2013 framing
    assert_inside([box], image)
    # Frames of another size reuse the same per-thread network with a new input size.
    grey_small = cv2.cvtColor(cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    (small_box,) = detector.detect(grey_small)
    assert iou(small_box, tuple(v // 2 for v in face_box_region)) > 0.5  # type: ignore[arg-type]


def test_yunet_two_faces_and_none(yunet_model: Path, two_faces_jpeg: bytes, no_face_jpeg: bytes) -> None:
    detector = create_detector("yunet", yunet_model)
    assert len(detector.detect(decode_image(two_faces_jpeg))) == 2
    assert detector.detect(decode_image(no_face_jpeg)) == []


def test_yunet_threads(yunet_model: Path, face_jpeg: bytes, two_faces_jpeg: bytes) -> None:
    detector = YuNetDetector(yunet_model)
    images = [decode_image(face_jpeg), cv2.resize(decode_image(two_faces_jpeg), (800, 600))] * 6
    expected = [detector.detect(im) for im in images]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(detector.detect, images)) == expected


def test_create_detector(tmp_path: Path) -> None:
    assert DETECTOR_KINDS == ("haar", "yunet")
    assert isinstance(create_detector(), HaarDetector)
    with pytest.raises(ValueError, match="needs a model file"):
        create_detector("yunet")
    with pytest.raises(ValueError, match="not found"):
        create_detector("yunet", tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match="could not load"):
        create_detector("yunet", garbage)
    with pytest.raises(ValueError, match="choose from haar, yunet"):
        create_detector("dlib")


def test_create_detector_for_names_what_runs(tmp_path: Path, yunet_model: Path) -> None:
    detector, name = create_detector_for("haar")
    assert name == "haar" and isinstance(detector, HaarDetector)
    detector, name = create_detector_for("yunet", yunet_model)
    assert name == "yunet" and isinstance(detector, YuNetDetector)
    # A model file the user named but that is not there is an error, never a silent fallback.
    with pytest.raises(ValueError, match="not found"):
        create_detector_for("yunet", tmp_path / "missing.onnx")
    # Not named, not cached, download refused: Haar (tests/test_detector_model.py checks the log line).
    empty = {"XDG_CACHE_HOME": str(tmp_path / "empty")}
    detector, name = create_detector_for(env=empty, url="http://127.0.0.1:9/yunet.onnx")
    assert name == "haar" and isinstance(detector, HaarDetector)


def test_automatic_detection_width() -> None:
    # A third of the frame's width within 320..960: webcam frames at 320 as ever, 1080p at 640.
    assert [detection_width(w) for w in (320, 640, 960, 1280, 1920, 3840)] == [320, 320, 320, 427, 640, 960]
    assert detection_width(200) == 200  # never enlarged
    assert [detection_width(w, 480) for w in (320, 1920)] == [320, 480]  # a fixed width


def test_haar_keeps_320_under_auto() -> None:
    # Its smallest face is a share of the frame: a wider detection finds no smaller face.
    assert HaarDetector().detect_width == 320 and HaarDetector(detect_width=640).detect_width == 640
