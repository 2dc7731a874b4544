"""Frames in, faces with emotion scores out: decode, detect, crop, then ONE model call.

`Analyzer.analyze` is synchronous and meant to run in one dedicated executor thread (the
model is not re-entrant and a single call for many faces is what makes batching pay). Inside,
the per-frame work (decode, detection, cropping) runs on a small thread pool: OpenCV releases
the GIL, so on two cores two frames really are decoded and searched at the same time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import TracebackType

import numpy as np

from fer_async.detector import DetectedFace, FaceDetector, ReducedDetector, RegionDetector, size_order
from fer_async.detector_model import AUTO_DETECT_WIDTH, DEFAULT_ALIGN, detection_width
from fer_async.image_limits import MAX_PIXELS
from fer_async.imaging import ImageError, crop_faces, decode_scaled
from fer_async.labels import EMOTIONS, Box, Face, FrameResult
from fer_async.predictor import Predictor
from fer_async.schedule import PHOTO, FramePlan, Search, View

logger = logging.getLogger(__name__)

# One crafted frame (a poster of a crowd, a tiled image) could otherwise put hundreds of faces
# into a batch that is shared with every other client. The largest faces are kept: they are
# the people nearest the camera and the ones the model classifies best.
MAX_FACES_PER_FRAME = 32

Frame = bytes | np.ndarray


def _to_source(box: Box, scale: tuple[float, float], width: int, height: int) -> Box:
    """A box found in a reduced decode, in the source image's pixels (clamped to it)."""
    sx, sy = scale
    x, y, w, h = box
    x0, y0 = min(width - 1, round(x * sx)), min(height - 1, round(y * sy))
    x1, y1 = min(width, max(x0 + 1, round((x + w) * sx))), min(height, max(y0 + 1, round((y + h) * sy)))
    return (x0, y0, x1 - x0, y1 - y0)


def _to_image(box: Box, scale: tuple[float, float]) -> Box:
    """A box in the source image's pixels, in a reduced decode's."""
    sx, sy = scale
    x, y, w, h = box
    return (round(x / sx), round(y / sy), max(1, round(w / sx)), max(1, round(h / sy)))


def _covered(box: Box, faces: Sequence[DetectedFace]) -> bool:
    """Whether one of `faces` is the face `box` held (its centre inside the box, or the other way round)."""
    return any(_centre_inside(face.box, box) or _centre_inside(box, face.box) for face in faces)


def _centre_inside(inner: Box, outer: Box) -> bool:
    x, y, w, h = outer
    cx, cy = inner[0] + inner[2] / 2, inner[1] + inner[3] / 2
    return x <= cx <= x + w and y <= cy <= y + h


def _with_others(faces: list[DetectedFace], others: Sequence[DetectedFace | None]) -> list[DetectedFace]:
    """The whole frame's faces and those the region searches found that none of them already is."""
    kept = list(faces)
    for face in others:
        if face is not None and not _covered(face.box, kept):
            kept.append(face)
    return sorted(kept, key=lambda face: size_order(face.box))[:MAX_FACES_PER_FRAME]


@dataclass(frozen=True)
class Prepared:
    """One frame decoded, searched and cropped: its size and faces' boxes (source pixels), the 48x48 crops."""

    width: int
    height: int
    boxes: list[Box]
    faces: np.ndarray  # uint8 [len(boxes), 48, 48]
    decode_ms: float
    detect_ms: float
    crop_ms: float
    search: Search = Search.FULL
    view: View = View.BOTH  # which view of the faces the network classifies (flip TTA)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


class Analyzer:
    """Runs face detection and expression recognition over a batch of frames."""

    def __init__(
        self,
        model: Predictor,
        detector: FaceDetector,
        detect_threads: int = 2,
        max_pixels: int = MAX_PIXELS,
        decode_width: int | None = None,
        align: bool = DEFAULT_ALIGN,
    ) -> None:
        if detect_threads < 1:
            raise ValueError(f"detect_threads must be at least 1, got {detect_threads}")
        self.model = model
        self.detector = detector
        self._reduced_detector = detector if isinstance(detector, ReducedDetector) else None
        self.max_pixels = max_pixels
        # JPEGs are decoded at the smallest scale (1/2..1/8) still `decode_width` wide (by default
        # the detection width of the full image: 320 px for a webcam frame), the detector searches
        # that decode at the full image's detection width, and the faces are cropped from it.
        # Measured with `python -m training.decode_scale`: on real clips and photos, crops from the
        # reduced decode got the label of full-size crops for 60 of 60 faces, at less than half
        # the decode.
        detect_width = getattr(detector, "detect_width", AUTO_DETECT_WIDTH)
        self.decode_width: int | Callable[[int], int] = (
            decode_width if decode_width is not None else partial(detection_width, detect_width=detect_width)
        )
        # Faces with landmarks (YuNet) are cropped upright by them (fer_async.alignment).
        self.align = align
        self._pool = ThreadPoolExecutor(max_workers=detect_threads, thread_name_prefix="fer-detect")

    @property
    def prepare_executor(self) -> ThreadPoolExecutor:
        """The detection threads: the server runs `prepare` there for each frame as it arrives."""
        return self._pool

    def prepare(self, frame: Frame, plan: FramePlan = PHOTO) -> Prepared | ImageError:
        """Decode, detect and crop one frame (thread-safe; the per-frame half of `analyze`).

        Without `plan.hints` (a photo) the detector searches the whole frame. With them (from a
        stream's `schedule.DetectionSchedule`), it searches only around the hinted boxes, when the
        detector can (YuNet; Haar always searches the whole frame), the frame has the hints' size
        and that is cheaper; a hinted face not found there sends the whole frame to the detector
        too. `plan.view` travels with the faces to `classify`.
        """
        started = time.perf_counter()
        scale = (1.0, 1.0)
        if isinstance(frame, np.ndarray):
            # Already decoded (the video path); our own code made it, so a bad one is a bug.
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"expected a BGR uint8 [H, W, 3] frame, got {frame.dtype} {list(frame.shape)}")
            image = frame
            height, width = image.shape[:2]
        elif isinstance(frame, bytes | bytearray | memoryview):
            try:
                decoded = decode_scaled(bytes(frame), self.max_pixels, self.decode_width)
            except ImageError as exc:
                return exc
            image, width, height, scale = decoded.image, decoded.width, decoded.height, decoded.scale
        else:
            raise TypeError(f"a frame must be bytes or a numpy array, not {type(frame).__name__}")
        decoded_at = time.perf_counter()
        found, search = self._detect(image, plan, width, height, scale)
        detected = time.perf_counter()
        boxes = [face.box for face in found]
        faces = crop_faces(image, boxes, [face.landmarks for face in found] if self.align else None)
        if scale != (1.0, 1.0):
            boxes = [_to_source(box, scale, width, height) for box in boxes]
        done = time.perf_counter()
        return Prepared(
            width,
            height,
            boxes,
            faces,
            _ms(decoded_at - started),
            _ms(detected - decoded_at),
            _ms(done - detected),
            search,
            plan.view,
        )

    def _detect(
        self, image: np.ndarray, plan: FramePlan, width: int, height: int, scale: tuple[float, float]
    ) -> tuple[list[DetectedFace], Search]:
        """The frame's faces (largest first, at most MAX_FACES_PER_FRAME) and which search found them."""
        detector = self.detector
        hints = plan.hints
        if (
            hints is None
            or not hints.fit(width, height)
            or not isinstance(detector, RegionDetector)
            or not detector.regions_cheaper(len(hints.boxes), image.shape)
        ):
            faces = self._detect_full(image, width)
            recheck = plan.recheck
            if recheck is not None and recheck.fit(width, height) and isinstance(detector, RegionDetector):
                missed = [box for box in (_to_image(b, scale) for b in recheck.boxes) if not _covered(box, faces)]
                # Past a full detection's worth of regions (a crowd), every frame is searched whole anyway.
                if missed and detector.regions_cheaper(len(missed), image.shape):
                    faces = _with_others(faces, detector.detect_regions(image, missed))
            return faces, Search.FULL
        found = detector.detect_regions(image, [_to_image(box, scale) for box in hints.boxes])
        faces = [face for face in found if face is not None]
        if len(faces) < len(found):
            return _with_others(self._detect_full(image, width), faces), Search.REGIONS_LOST
        return sorted(faces, key=lambda face: size_order(face.box))[:MAX_FACES_PER_FRAME], Search.REGIONS

    def _detect_full(self, image: np.ndarray, width: int) -> list[DetectedFace]:
        """The whole frame's faces, the largest first; `width` is the frame's own (`image` may be a reduced decode)."""
        if self._reduced_detector is not None and image.shape[1] != width:
            return self._reduced_detector.detect_reduced(image, width)[:MAX_FACES_PER_FRAME]
        return self.detector.detect_faces(image)[:MAX_FACES_PER_FRAME]

    def analyze(
        self,
        frames: Sequence[Frame],
        plans: Sequence[FramePlan] | None = None,
    ) -> list[FrameResult | ImageError]:
        """One result per frame, in order: a FrameResult, or the ImageError of that frame alone.

        `prepare` for every frame (on the detection threads; `plans`: one per frame, or a photo's
        for all), then `classify`. Timings (ms): decode, detect, crop, model (the shared call, 0
        when the frame had no faces) and total (the whole analyze call, which is what each frame
        waited). An exception from the detector or the model propagates: it fails the whole batch.
        """
        started = time.perf_counter()
        if not frames:
            return []
        if plans is not None and len(plans) != len(frames):
            raise ValueError(f"{len(plans)} plans for {len(frames)} frames")
        each = list(plans) if plans is not None else [PHOTO] * len(frames)
        # A lone frame is prepared right here: a thread hand-off would only add latency.
        prepared = (
            [self.prepare(frames[0], each[0])] if len(frames) == 1 else list(self._pool.map(self.prepare, frames, each))
        )
        results = self.classify(prepared)
        total_ms = _ms(time.perf_counter() - started)
        for result in results:
            if isinstance(result, FrameResult):
                result.timings["total"] = total_ms
        return results

    def classify(self, prepared: Sequence[Prepared | ImageError]) -> list[FrameResult | ImageError]:
        """The faces of every prepared frame through ONE `model.predict` call, split back per frame.

        Frames without faces (and ImageErrors, passed through in their slot) skip the model. A
        frame's `total` timing is its own work: decode + detect + crop + the shared model call.
        """
        with_faces = [p for p in prepared if isinstance(p, Prepared) and len(p.boxes)]
        probs = np.empty((0, len(EMOTIONS)), np.float32)
        model_ms = 0.0
        if with_faces:
            batch = np.concatenate([p.faces for p in with_faces])
            model_started = time.perf_counter()
            probs = np.asarray(self._predict(batch, [p.view for p in with_faces for _ in p.boxes]))
            model_ms = _ms(time.perf_counter() - model_started)
            if probs.shape != (len(batch), len(EMOTIONS)):
                raise ValueError(f"model returned shape {list(probs.shape)} for {len(batch)} faces")

        results: list[FrameResult | ImageError] = []
        offset = 0
        for p in prepared:
            if isinstance(p, ImageError):
                results.append(p)
                continue
            n = len(p.boxes)
            rows = probs[offset : offset + n]
            offset += n
            faces = tuple(
                Face(box=(int(x), int(y), int(w), int(h)), scores=tuple(float(s) for s in row))
                for (x, y, w, h), row in zip(p.boxes, rows, strict=True)
            )
            frame_model_ms = model_ms if n else 0.0
            timings = {
                "decode": p.decode_ms,
                "detect": p.detect_ms,
                "crop": p.crop_ms,
                "model": frame_model_ms,
                "total": p.decode_ms + p.detect_ms + p.crop_ms + frame_model_ms,
            }
            results.append(FrameResult(width=p.width, height=p.height, faces=faces, timings=timings, search=p.search))
        return results

    def _predict(self, faces: np.ndarray, views: list[View]) -> np.ndarray:
        """The model's probabilities, each face in its own view when some frame asked for one."""
        predict_views = getattr(self.model, "predict_views", None)
        if predict_views is None or all(view is View.BOTH for view in views):
            return self.model.predict(faces)
        return predict_views(faces, views)

    def close(self) -> None:
        """Stop the detection threads (waits for running work; later calls to analyze fail)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
