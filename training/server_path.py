"""`training.evaluate --via-detector`: FER2013 faces sent through the server's own frame path.

Each 48x48 face is upscaled to 160x160 (INTER_CUBIC), pasted in the middle of a neutral grey
320x240 frame, rendered through a camera condition of `training.cameras`, JPEG-encoded at quality
80 as the browser client does, and sent through `fer_async.recognition.Analyzer` (decode, detect,
crop, one model call per 16 frames): the figures are what the server makes of the face.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fer_async.imaging import ImageError, encode_jpeg
from fer_async.labels import EMOTIONS
from fer_async.recognition import Analyzer
from training.cameras import CAMERAS, Camera
from training.data import Split
from training.metrics import report
from training.plots import plot_confusion

if TYPE_CHECKING:
    from fer_async.detector import FaceDetector
    from fer_async.model import FacialExpressionModel

# --via-detector: the frame each FER2013 face is shown in, as the server would receive it.
VIA_FACE_SIDE = 160  # the 48x48 face upscaled with INTER_CUBIC: a webcam face of typical size
VIA_FRAME_WIDTH, VIA_FRAME_HEIGHT = 320, 240
VIA_FACE_X = (VIA_FRAME_WIDTH - VIA_FACE_SIDE) // 2  # 80: centred, grey margin on every side
VIA_FACE_Y = (VIA_FRAME_HEIGHT - VIA_FACE_SIDE) // 2  # 40
VIA_BACKGROUND = 128  # neutral grey, in all three BGR channels
VIA_JPEG_QUALITY = 80  # what the browser client sends (canvas.toBlob("image/jpeg", 0.8))
VIA_FRAMES_PER_CALL = 16  # frames per Analyzer.analyze call: one model call for all their faces


def server_frame(
    face: np.ndarray, camera: Camera = CAMERAS["original"], rng: np.random.Generator | None = None
) -> bytes:
    """One uint8 48x48 face as the JPEG frame the server would receive (see VIA_*) through `camera`."""
    big = cv2.resize(face, (VIA_FACE_SIDE, VIA_FACE_SIDE), interpolation=cv2.INTER_CUBIC)
    frame = np.full((VIA_FRAME_HEIGHT, VIA_FRAME_WIDTH), VIA_BACKGROUND, np.uint8)
    frame[VIA_FACE_Y : VIA_FACE_Y + VIA_FACE_SIDE, VIA_FACE_X : VIA_FACE_X + VIA_FACE_SIDE] = big
    frame = camera.render(frame, rng if rng is not None else np.random.default_rng(0))
    return encode_jpeg(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), VIA_JPEG_QUALITY)


@dataclass(frozen=True)
class ServerPath:
    """What the Analyzer made of each face's frame."""

    detected: np.ndarray  # bool [N]: at least one face found
    predicted: np.ndarray  # int [N]: the largest face's emotion, -1 where none was found
    faces_found: np.ndarray  # int [N]: how many faces the detector returned
    box_side: np.ndarray  # float [N]: the largest box's mean side in frame pixels, NaN where none


def run_server_path(
    analyzer: Analyzer,
    faces: np.ndarray,
    frames_per_call: int = VIA_FRAMES_PER_CALL,
    camera: Camera = CAMERAS["original"],
    seed: int = 0,
) -> ServerPath:
    """Send every face through `analyzer` as a server frame seen by `camera`, `frames_per_call` per call."""
    n = len(faces)
    predicted = np.full(n, -1, np.int64)
    found = np.zeros(n, np.int64)
    side = np.full(n, np.nan)
    rng = np.random.default_rng(seed)  # the sensor noise, drawn in face order: reproducible
    for start in range(0, n, frames_per_call):
        frames = [server_frame(face, camera, rng) for face in faces[start : start + frames_per_call]]
        for i, result in enumerate(analyzer.analyze(frames), start):
            if isinstance(result, ImageError):
                raise RuntimeError(f"face {i}: the server refused its frame: {result}")
            found[i] = len(result.faces)
            if result.faces:
                largest = result.faces[0]  # the Analyzer orders faces largest first
                predicted[i] = int(np.argmax(largest.scores))
                side[i] = (largest.box[2] + largest.box[3]) / 2
    return ServerPath(detected=found > 0, predicted=predicted, faces_found=found, box_side=side)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def via_detector_summary(path: ServerPath, y: np.ndarray, plain_probs: np.ndarray, seconds: float) -> dict[str, object]:
    """The --via-detector figures for labels `y` (plain_probs: the 48x48 run); ratios over no faces are None."""
    n, detected = len(y), path.detected
    n_detected = int(detected.sum())
    correct = int((path.predicted[detected] == y[detected]).sum())
    plain_pred = plain_probs.argmax(axis=1)
    plain_correct = int((plain_pred[detected] == y[detected]).sum())
    agree = int((plain_pred[detected] == path.predicted[detected]).sum())
    per_class = {name: _ratio(float(detected[y == k].sum()), float((y == k).sum())) for k, name in enumerate(EMOTIONS)}
    return {
        "n": n,
        "detected": n_detected,
        "detection_rate": round(n_detected / n, 4),
        "accuracy_detected": _ratio(correct, n_detected),
        "accuracy_with_misses": _ratio(correct, n),
        "plain_accuracy_detected": _ratio(plain_correct, n_detected),
        "agreement_with_plain": _ratio(agree, n_detected),
        "multi_face_frames": int((path.faces_found > 1).sum()),
        # The largest box's side over the pasted face's 160 px: ~1.0 is FER2013's own framing.
        "median_box_side_ratio": (round(float(np.nanmedian(path.box_side)) / VIA_FACE_SIDE, 4) if n_detected else None),
        "detection_rate_by_class": per_class,
        "seconds": round(seconds, 2),
    }


def condition_summary(
    path: ServerPath, original: ServerPath, y: np.ndarray, majority: np.ndarray | None = None
) -> dict[str, object]:
    """One camera condition's figures, and how often it keeps the label the original exposure got;
    with `majority` (FER+, -1 where not counted) also the FER+ majority accuracy on found faces."""
    detected = path.detected
    both = detected & original.detected
    crowd: dict[str, object] = {}
    if majority is not None:
        counted = detected & (majority >= 0)
        crowd["ferplus_accuracy_detected"] = _ratio(
            float((path.predicted[counted] == majority[counted]).sum()), float(counted.sum())
        )
    return {
        **crowd,
        "detected": int(detected.sum()),
        "detection_rate": round(float(detected.mean()), 4),
        "accuracy_detected": _ratio(float((path.predicted[detected] == y[detected]).sum()), float(detected.sum())),
        "accuracy_with_misses": _ratio(float((path.predicted[detected] == y[detected]).sum()), float(len(y))),
        "same_label_as_original": _ratio(
            float((path.predicted[both] == original.predicted[both]).sum()), float(both.sum())
        ),
    }


def evaluate_via_detector(
    args: argparse.Namespace,
    split: Split,
    model: FacialExpressionModel,
    detector: FaceDetector,
    plain_probs: np.ndarray,
    stem: str,
    majority: np.ndarray | None = None,
) -> dict[str, object]:
    """Mode 2, --via-detector: every face as a server frame, at each camera condition. The "via_detector" object."""
    paths: dict[str, ServerPath] = {}
    started = time.perf_counter()
    with Analyzer(model, detector, align=args.align) as analyzer:
        for name in args.cameras:
            paths[name] = run_server_path(analyzer, split.x, camera=CAMERAS[name], seed=args.seed)
    original = paths["original"]
    via: dict[str, object] = {"detector": args.detector}
    if args.detector_model is not None:
        via["detector_model"] = str(args.detector_model)
    via.update(via_detector_summary(original, split.y, plain_probs, time.perf_counter() - started))
    tta = " + flip TTA" if args.flip_tta else ""
    if original.detected.any():
        via_png = args.out / f"confusion_{stem}_via_{args.detector}.png"
        detected = original.detected
        via_report = report(split.y[detected], np.eye(len(EMOTIONS))[original.predicted[detected]])
        plot_confusion(
            via_report.confusion,
            via_png,
            f"{model.json_path.stem} on {args.split}{tta} via {args.detector}: accuracy "
            f"{via_report.accuracy:.2%} on {via_report.n} detected of {len(split)}",
        )
        via["confusion_png"] = str(via_png)
    print(
        f"via {args.detector} (server path): detected {via['detected']}/{len(split)} "
        f"({via['detection_rate']}), accuracy {via['accuracy_detected']} on detected, "
        f"{via['accuracy_with_misses']} counting misses, plain 48x48 on the same faces "
        f"{via['plain_accuracy_detected']}, {via['seconds']} s"
    )
    conditions = {name: condition_summary(path, original, split.y, majority) for name, path in paths.items()}
    via["cameras"] = conditions
    print(f"{'camera':26s} {'found':>7s} {'acc. found':>10s} {'acc. all':>9s} {'same label':>10s} {'FER+ found':>10s}")
    for name, figures in conditions.items():
        print(
            f"{name:26s} {figures['detection_rate']!s:>7s} {figures['accuracy_detected']!s:>10s} "
            f"{figures['accuracy_with_misses']!s:>9s} {figures['same_label_as_original']!s:>10s} "
            f"{figures.get('ferplus_accuracy_detected', '-')!s:>10s}"
        )
    return via
