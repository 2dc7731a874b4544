"""YuNet's network on onnxruntime, with OpenCV's own decoding of its outputs.

`cv2.FaceDetectorYN` runs YuNet through OpenCV's DNN module. Measured on this project's 2-core
machine with one thread each (`python -m fer_async.yunet --speed`), onnxruntime runs the same
ONNX file several times faster: a 320x240 frame in about 1.8 ms of CPU instead of 8.4 ms, and a
96x96 region (fer_async.detector's region search) in about 0.3 ms instead of 1.6 ms. Detection
was the largest stage of a frame, so this is what lets two cores serve 400 frames a second.

`YuNetNetwork.detect` returns what `cv2.FaceDetectorYN.detect` returns, row for row: the image
padded to multiples of 32 (zeros right and below), fed as BGR float32 NCHW without scaling; for
each stride (8, 16, 32) a face per grid cell whose score sqrt(cls * obj), both clamped to
[0, 1], reaches the threshold, its box centre (cell + offset) * stride and size exp(.) * stride,
its five landmarks (cell + offset) * stride; then OpenCV's NMS on the boxes truncated to whole
pixels. tests/test_yunet.py checks the two agree on real photos and clips.

One session serves every thread (onnxruntime's `run` is thread-safe), each call on one thread:
the detection threads are the parallelism.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

STRIDES = (8, 16, 32)
DIVISOR = 32
TOP_K = 5000  # OpenCV's default
# Columns of a result row, as cv2.FaceDetectorYN: box x, y, w, h; five landmarks x, y; score.
ROW = 15


class YuNetNetwork:
    """YuNet on onnxruntime: `detect(image)` -> float32 rows [N, 15] as `cv2.FaceDetectorYN.detect` gives."""

    def __init__(self, model_path: str | Path, score_threshold: float = 0.7, nms_threshold: float = 0.3) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"could not load YuNet model {model_path}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(self._session.get_outputs()) != 4 * len(STRIDES):
            raise ValueError(f"{model_path} is not a YuNet face detector (inputs/outputs do not match)")
        self._input = inputs[0].name
        self._outputs = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES]
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        height, width = image_bgr.shape[:2]
        pad_h, pad_w = -(-height // DIVISOR) * DIVISOR, -(-width // DIVISOR) * DIVISOR
        blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
        blob[0, :, :height, :width] = image_bgr.transpose(2, 0, 1)
        outputs = self._session.run(self._outputs, {self._input: blob})
        rows = [self._decode(outputs, i, stride, pad_w // stride) for i, stride in enumerate(STRIDES)]
        faces = np.concatenate(rows) if rows else np.zeros((0, ROW), np.float32)
        if len(faces) <= 1:
            return faces
        boxes = faces[:, :4].astype(np.int32).tolist()  # truncated toward zero, as OpenCV's int() does
        keep = cv2.dnn.NMSBoxes(boxes, faces[:, 14].tolist(), self.score_threshold, self.nms_threshold, 1.0, TOP_K)
        return faces[np.asarray(keep, np.int64).reshape(-1)]

    def _decode(self, outputs: list[np.ndarray], i: int, stride: int, columns: int) -> np.ndarray:
        count = len(STRIDES)
        cls = np.clip(outputs[i].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[i + count].reshape(-1), 0.0, 1.0)
        score = np.sqrt(cls * obj)
        cells = np.flatnonzero(score >= self.score_threshold)
        if not len(cells):
            return np.zeros((0, ROW), np.float32)
        bbox = outputs[i + 2 * count].reshape(-1, 4)[cells]
        kps = outputs[i + 3 * count].reshape(-1, 10)[cells]
        column, row = (cells % columns).astype(np.float32), (cells // columns).astype(np.float32)
        w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
        x = (column + bbox[:, 0]) * stride - w / 2
        y = (row + bbox[:, 1]) * stride - h / 2
        points = np.empty((len(cells), 10), np.float32)
        points[:, 0::2] = (kps[:, 0::2] + column[:, None]) * stride
        points[:, 1::2] = (kps[:, 1::2] + row[:, None]) * stride
        return np.column_stack([x, y, w, h, points, score[cells]]).astype(np.float32)


def _speed(model_path: Path, repeats: int) -> None:
    """Milliseconds per call, one thread each, of both runtimes at a frame's and a region's size."""
    cv2.setNumThreads(1)
    network = YuNetNetwork(model_path)
    rng = np.random.default_rng(0)
    for width, height in ((320, 240), (96, 96)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        opencv = cv2.FaceDetectorYN.create(str(model_path), "", (width, height), 0.7, 0.3)
        for name, detect in (("onnxruntime", network.detect), ("cv2.dnn", opencv.detect)):
            detect(image)
            started = time.process_time()
            for _ in range(repeats):
                detect(image)
            milliseconds = (time.process_time() - started) / repeats * 1000
            print(f"{width}x{height} {name:12s} {milliseconds:.2f} ms of CPU a call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fer_async.yunet", description=__doc__)
    parser.add_argument("model", type=Path, help="face_detection_yunet.onnx")
    parser.add_argument("--speed", action="store_true", help="time both runtimes (one thread, CPU time)")
    parser.add_argument("--repeats", type=int, default=200)
    arguments = parser.parse_args()
    if arguments.speed:
        _speed(arguments.model, arguments.repeats)
