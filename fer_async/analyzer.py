"""Frames in, faces with emotion scores out: decode, detect, crop, then ONE model call.

`Analyzer.analyze` is synchronous and meant to run in one dedicated executor thread (the
model is not re-entrant and a single call for many faces is what makes batching pay). Inside,
the per-frame work (decode, detection, cropping) runs on a small thread pool: OpenCV releases
the GIL, so on two cores two frames really are decoded and searched at the same time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import numpy as np

from fer_async.config import MAX_PIXELS
from fer_async.detector import FaceDetector
from fer_async.imaging import ImageError, crop_faces, decode_image
from fer_async.labels import EMOTIONS, Box, Face, FrameResult

logger = logging.getLogger(__name__)

# One crafted frame (a poster of a crowd, a tiled image) could otherwise put hundreds of faces
# into a batch that is shared with every other client. The largest faces are kept: they are
# the people nearest the camera and the ones the model classifies best.
MAX_FACES_PER_FRAME = 32

Frame = bytes | np.ndarray


class Predictor(Protocol):
    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities [N, 7] in EMOTIONS order for uint8 faces [N, 48, 48]."""
        ...


@dataclass(frozen=True)
class _Prepared:
    width: int
    height: int
    boxes: list[Box]
    faces: np.ndarray  # uint8 [len(boxes), 48, 48]
    decode_ms: float
    detect_ms: float
    crop_ms: float


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
    ) -> None:
        if detect_threads < 1:
            raise ValueError(f"detect_threads must be at least 1, got {detect_threads}")
        self.model = model
        self.detector = detector
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=detect_threads, thread_name_prefix="fer-detect")

    def _prepare(self, frame: Frame) -> _Prepared | ImageError:
        started = time.perf_counter()
        if isinstance(frame, np.ndarray):
            # Already decoded (the video path); our own code made it, so a bad one is a bug.
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"expected a BGR uint8 [H, W, 3] frame, got {frame.dtype} {list(frame.shape)}")
            image = frame
        elif isinstance(frame, bytes | bytearray | memoryview):
            try:
                image = decode_image(bytes(frame), self.max_pixels)
            except ImageError as exc:
                return exc
        else:
            raise TypeError(f"a frame must be bytes or a numpy array, not {type(frame).__name__}")
        decoded = time.perf_counter()
        boxes = self.detector.detect(image)[:MAX_FACES_PER_FRAME]  # detectors return the largest first
        detected = time.perf_counter()
        faces = crop_faces(image, boxes)
        done = time.perf_counter()
        height, width = image.shape[:2]
        return _Prepared(
            width, height, boxes, faces, _ms(decoded - started), _ms(detected - decoded), _ms(done - detected)
        )

    def analyze(self, frames: Sequence[Frame]) -> list[FrameResult | ImageError]:
        """One result per frame, in order: a FrameResult, or the ImageError of that frame alone.

        Faces of all frames go through ONE `model.predict` call; frames without faces skip it.
        Timings (ms): decode, detect, crop, model (the shared call, 0 when the frame had no
        faces) and total (the whole analyze call, which is what each frame waited).
        An exception from the detector or the model propagates: it fails the whole batch.
        """
        started = time.perf_counter()
        if not frames:
            return []
        # A lone frame is prepared right here: a thread hand-off would only add latency.
        prepared = [self._prepare(frames[0])] if len(frames) == 1 else list(self._pool.map(self._prepare, frames))

        with_faces = [p for p in prepared if isinstance(p, _Prepared) and len(p.boxes)]
        probs = np.empty((0, len(EMOTIONS)), np.float32)
        model_ms = 0.0
        if with_faces:
            batch = np.concatenate([p.faces for p in with_faces])
            model_started = time.perf_counter()
            probs = np.asarray(self.model.predict(batch))
            model_ms = _ms(time.perf_counter() - model_started)
            if probs.shape != (len(batch), len(EMOTIONS)):
                raise ValueError(f"model returned shape {list(probs.shape)} for {len(batch)} faces")

        total_ms = _ms(time.perf_counter() - started)
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
            timings = {
                "decode": p.decode_ms,
                "detect": p.detect_ms,
                "crop": p.crop_ms,
                "model": model_ms if n else 0.0,
                "total": total_ms,
            }
            results.append(FrameResult(width=p.width, height=p.height, faces=faces, timings=timings))
        return results

    def close(self) -> None:
        """Stop the detection threads (waits for running work; later calls to analyze fail)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
