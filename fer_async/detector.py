"""Face detection: YuNet (default, its file resolved by detector_model, run by fer_async.yunet) or
OpenCV's Haar cascade.

Both detectors find faces on a copy of the frame shrunk to `detect_width` pixels, by default a
third of the frame's width within 320..960 (`detector_model.detection_width`): faces in a
webcam frame are large, so detection at 320 px finds the same faces several times faster than
at full size, while a wide shot's small faces need more. Boxes are scaled back and returned in
SOURCE pixels, clamped to the image.

YuNet can also search only small regions around given boxes (`detect_regions`: the faces of a
stream's previous frame, fer_async.schedule); Haar always searches the whole frame.

The cascade may not be shared between threads: `CascadeClassifier.detectMultiScale` is not
const (it keeps per-call scratch state in the classifier, opencv/opencv#4287), so the Haar
detector keeps one per thread (`threading.local`). YuNet's onnxruntime session is thread-safe
and shared. Either detector instance can safely be used by the analyzer's whole thread pool.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import cv2
import cv2.data  # the Haar cascade files; a submodule that `import cv2` alone leaves untyped
import numpy as np

from fer_async.detector_model import (
    AUTO_DETECT_WIDTH,
    DEFAULT_DETECT_WIDTH,
    DEFAULT_DETECTOR,
    DETECTOR_KINDS,
    MIN_DETECT_WIDTH,
    detection_width,
    resolve_yunet_model,
)
from fer_async.labels import Box
from fer_async.tracker import iou
from fer_async.yunet import YuNetNetwork

logger = logging.getLogger(__name__)

DETECT_WIDTH = MIN_DETECT_WIDTH  # a webcam frame's detection width
HAAR_CASCADE = "haarcascade_frontalface_default.xml"

# YuNet's boxes are narrower than the framing FER2013 faces (and Haar boxes) have: on 481
# FER2013 validation faces, upscaled and padded, YuNet's box was 0.78x the frame wide and
# 0.99x high (medians), centred. A square of side h around YuNet's centre therefore gives the
# crop the model was trained on, and imaging.crop_faces can treat both detectors alike.
YUNET_SQUARE_FROM_HEIGHT = 1.0

# Between full detections (fer_async.schedule) YuNet searches a square around each face's last
# box, REGION_MARGIN box sides wider on every side (a face may move that far between two
# frames), scaled to REGION_SIZE pixels. Measured (README, "Detect less, track more"): on the real
# clips and the astronaut, the faces found there got the full detection's labels on every frame;
# at 64 px small faces were lost, at 80 px the boxes matched the full detection's less well.
REGION_MARGIN = 0.5
REGION_SIZE = 96
# What one network call costs beyond its pixels, in pixels: YuNet at 96x96 takes a quarter of its
# time at 320x240 (not the 12 % its pixels are; `python -m fer_async.yunet MODEL --speed`). More regions than a
# full detection's worth (4 in a 320x240 frame, 3 in a 320x180 one) get a full detection instead.
REGION_CALL_PIXELS = 10_000
REGION_SAME_FACE_IOU = 0.5
# YuNet's box of a face in a region comes out smaller than its box of the same face found in the
# whole frame: the sides' median ratio was 0.93 on the real clips, 0.95 on the astronaut at four
# sizes. Scaled up by this, they were 0.98 and 1.00 (IoU with the full detection's box 0.93 and
# 0.91, from 0.86 and 0.88; the model's probabilities differed by 0.06 at the 95th percentile,
# from 0.11; the labels were the same on every frame either way).
REGION_SQUARE_FROM_HEIGHT = 1.06


class DetectedFace(NamedTuple):
    box: Box
    # YuNet's five landmarks [5, 2] in the image's pixels (eyes, nose tip, mouth corners; see
    # fer_async.alignment); None from a detector that has none (Haar).
    landmarks: np.ndarray | None


@runtime_checkable
class RegionDetector(Protocol):
    """A detector that can also search small regions of a frame (YuNet; Haar searches whole frames only)."""

    def detect_regions(self, image_bgr: np.ndarray, around: Sequence[Box]) -> list[DetectedFace | None]:
        """For each box (the image's pixels), the face found near it, or None where there is none."""
        ...

    def regions_cheaper(self, regions: int, image_shape: tuple[int, ...]) -> bool:
        """Whether searching `regions` regions costs less than one full detection of such an image."""
        ...


@runtime_checkable
class ReducedDetector(Protocol):
    """A detector whose detection width follows the frame's own width (`--detect-width auto`),
    told that width when it is given a reduced decode of the frame."""

    def detect_reduced(self, image_bgr: np.ndarray, frame_width: int) -> list[DetectedFace]:
        """`detect_faces` of a reduced decode of a frame `frame_width` wide, searched at that frame's
        detection width."""
        ...


class FaceDetector(Protocol):
    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        """Face boxes (x, y, w, h) in the image's own pixels, clamped to it, largest first."""
        ...

    def detect_faces(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        """The same faces in the same order, with their landmarks where the detector finds them."""
        ...


def _clamp_box(x: float, y: float, w: float, h: float, width: int, height: int) -> Box | None:
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def _largest_first(boxes: list[Box | None]) -> list[Box]:
    # The cascade's parallel search returns faces in a thread-timing-dependent order; a fixed
    # order keeps results reproducible and puts the nearest faces first.
    return sorted((b for b in boxes if b is not None), key=size_order)


def size_order(box: Box) -> tuple[int, int, int]:
    """The detectors' order of faces: the largest first, then left to right, top to bottom."""
    return (-box[2] * box[3], box[0], box[1])


def _shrink(image: np.ndarray, detect_width: int, frame_width: int | None = None) -> tuple[np.ndarray, float]:
    """The image shrunk to the detection width of its frame (`frame_width` wide, when the image
    is a reduced decode of it), and the factor from it back to the image's pixels."""
    height, width = image.shape[:2]
    target = detection_width(frame_width or width, detect_width)
    if width <= target:
        return image, 1.0
    scale = width / target
    size = (target, max(1, round(height / scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))
    ):
        raise ValueError("expected a uint8 BGR [H, W, 3] or grey [H, W] image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("the image is empty")


class HaarDetector:
    """OpenCV's frontal-face Haar cascade."""

    name = "haar"

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.1,
        detect_width: int = DEFAULT_DETECT_WIDTH,
    ) -> None:
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if not 0.0 <= min_face_fraction < 1.0:
            raise ValueError(f"min_face_fraction must be in [0, 1), got {min_face_fraction}")
        if detect_width != AUTO_DETECT_WIDTH and detect_width < 24:
            raise ValueError(f"detect_width must be at least 24 (the cascade's window), got {detect_width}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction
        # Its smallest face is a share of the frame (min_face_fraction), whatever the width: a wider
        # detection would find no smaller face, only more false ones, more slowly.
        self.detect_width = MIN_DETECT_WIDTH if detect_width == AUTO_DETECT_WIDTH else detect_width
        self.cascade_path = str(Path(cv2.data.haarcascades) / HAAR_CASCADE)
        self._local = threading.local()
        self._classifier()  # fail now, not on the first frame, if the cascade is missing

    def _classifier(self) -> cv2.CascadeClassifier:
        classifier: cv2.CascadeClassifier | None = getattr(self._local, "classifier", None)
        if classifier is None:
            classifier = cv2.CascadeClassifier(self.cascade_path)
            if classifier.empty():
                raise RuntimeError(f"could not load the Haar cascade {self.cascade_path}")
            self._local.classifier = classifier
        return classifier

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        _check_image(image_bgr)
        height, width = image_bgr.shape[:2]
        gray = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        small, scale = _shrink(gray, self.detect_width)
        min_side = max(1, round(self.min_face_fraction * min(small.shape[:2])))
        found = self._classifier().detectMultiScale(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        return _largest_first(
            [_clamp_box(x * scale, y * scale, w * scale, h * scale, width, height) for x, y, w, h in found]
        )

    def detect_faces(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        return [DetectedFace(box, None) for box in self.detect(image_bgr)]


class YuNetDetector:
    """The YuNet CNN detector from an ONNX file the user supplies (on onnxruntime: fer_async.yunet)."""

    name = "yunet"

    def __init__(
        self,
        model_path: str | Path,
        score_threshold: float = 0.7,
        detect_width: int = DEFAULT_DETECT_WIDTH,
        nms_threshold: float = 0.3,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ValueError(f"YuNet model file not found: {path}")
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if detect_width != AUTO_DETECT_WIDTH and detect_width < 32:
            raise ValueError(f"detect_width must be at least 32, got {detect_width}")
        self.model_path = path
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detect_width = detect_width
        self._network = YuNetNetwork(path, score_threshold, nms_threshold)  # a bad file fails here, at start-up

    def detect(self, image_bgr: np.ndarray) -> list[Box]:
        return [face.box for face in self.detect_faces(image_bgr)]

    def detect_faces(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        return self.detect_reduced(image_bgr, image_bgr.shape[1])

    def detect_reduced(self, image_bgr: np.ndarray, frame_width: int) -> list[DetectedFace]:
        _check_image(image_bgr)
        height, width = image_bgr.shape[:2]
        small, scale = _shrink(_bgr(image_bgr), self.detect_width, frame_width)
        faces = [_face(row, scale, (0.0, 0.0), width, height) for row in self._network.detect(small)]
        return sorted((face for face in faces if face is not None), key=lambda face: size_order(face.box))

    def detect_regions(self, image_bgr: np.ndarray, around: Sequence[Box]) -> list[DetectedFace | None]:
        """For each box, the face nearest its centre in a square REGION_MARGIN sides wider, or None.

        The square is cut (black beyond the image's edge) and scaled to REGION_SIZE pixels, so a
        search costs the same whatever the face's size. A face an earlier box already found
        (IoU >= REGION_SAME_FACE_IOU) counts as not found: two tracks have merged, or one face hides another.
        """
        _check_image(image_bgr)
        height, width = image_bgr.shape[:2]
        bgr = _bgr(image_bgr)
        found: list[DetectedFace | None] = []
        for x, y, w, h in around:
            side = max(1, round(max(w, h) * (1 + 2 * REGION_MARGIN)))
            left, top = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
            x0, y0, x1, y1 = max(0, left), max(0, top), min(width, left + side), min(height, top + side)
            if x1 <= x0 or y1 <= y0:
                found.append(None)
                continue
            crop = bgr[y0:y1, x0:x1]
            if crop.shape[:2] != (side, side):
                edges = (y0 - top, top + side - y1, x0 - left, left + side - x1)
                crop = cv2.copyMakeBorder(crop, *edges, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            shrinking = side > REGION_SIZE
            region = cv2.resize(
                crop, (REGION_SIZE, REGION_SIZE), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            )
            rows = self._network.detect(region)
            face = None if not len(rows) else _nearest_face(rows, side / REGION_SIZE, (left, top), width, height)
            if face is not None and any(f is not None and iou(f.box, face.box) >= REGION_SAME_FACE_IOU for f in found):
                face = None
            found.append(face)
        return found

    def regions_cheaper(self, regions: int, image_shape: tuple[int, ...]) -> bool:
        height, width = image_shape[:2]
        detect_width = detection_width(width, self.detect_width)
        full_pixels = detect_width * max(1, round(height * detect_width / width))
        return regions * (REGION_SIZE * REGION_SIZE + REGION_CALL_PIXELS) < full_pixels + REGION_CALL_PIXELS


def _bgr(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def _face(
    row: np.ndarray,
    scale: float,
    offset: tuple[float, float],
    width: int,
    height: int,
    square: float = YUNET_SQUARE_FROM_HEIGHT,
) -> DetectedFace | None:
    """One YuNet row (box x, y, w, h, five landmarks (x, y), score) as a face in the image's pixels:
    the row's pixels times `scale`, plus `offset`, its box a square `square` x h around the
    centre; None when that box lies outside the image."""
    x, y, w, h = row[:4]
    side = h * square
    cx, cy = x + w / 2, y + h / 2
    left, top = (cx - side / 2) * scale + offset[0], (cy - side / 2) * scale + offset[1]
    box = _clamp_box(left, top, side * scale, side * scale, width, height)
    if box is None:
        return None
    landmarks = np.asarray(row[4:14], np.float64).reshape(5, 2) * scale + np.asarray(offset, np.float64)
    return DetectedFace(box, landmarks)


def _nearest_face(
    rows: np.ndarray, scale: float, offset: tuple[float, float], width: int, height: int
) -> DetectedFace | None:
    """The face of `rows` (one region's) whose centre lies nearest the region's centre."""
    middle = REGION_SIZE / 2
    nearest = min(rows, key=lambda row: math.hypot(row[0] + row[2] / 2 - middle, row[1] + row[3] / 2 - middle))
    return _face(nearest, scale, offset, width, height, REGION_SQUARE_FROM_HEIGHT)


def create_detector(
    kind: str = "haar", model_path: str | Path | None = None, *, detect_width: int = DEFAULT_DETECT_WIDTH
) -> FaceDetector:
    """The detector named by `kind` (one of DETECTOR_KINDS); "yunet" needs its ONNX model file."""
    if kind == "haar":
        return HaarDetector(detect_width=detect_width)
    if kind == "yunet":
        if model_path is None:
            raise ValueError(
                "the yunet detector needs a model file: download face_detection_yunet.onnx from "
                "OpenCV's model zoo (opencv/opencv_zoo, models/face_detection_yunet) and pass its path"
            )
        return YuNetDetector(model_path, detect_width=detect_width)
    raise ValueError(f"unknown detector {kind!r}; choose from {', '.join(DETECTOR_KINDS)}")


def create_detector_for(
    kind: str = DEFAULT_DETECTOR,
    model_path: str | Path | None = None,
    *,
    detect_width: int = DEFAULT_DETECT_WIDTH,
    env: Mapping[str, str] | None = None,
    url: str | None = None,
) -> tuple[FaceDetector, str]:
    """The detector the server runs for `kind`, and its name ("yunet" or "haar").

    For "yunet" without `model_path` the file comes from the per-user cache or one pinned
    download (detector_model.resolve_yunet_model; `env`/`url` are for tests); when it cannot be
    had, one log line says how to get it and the Haar cascade runs instead. Blocking (file
    reads, maybe a download): call it off the event loop.
    """
    if kind == "yunet":
        path = resolve_yunet_model(Path(model_path) if model_path is not None else None, env=env, url=url)
        if path is None:
            return HaarDetector(detect_width=detect_width), "haar"
        return YuNetDetector(path, detect_width=detect_width), "yunet"
    return create_detector(kind, model_path, detect_width=detect_width), kind
