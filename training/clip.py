"""How the model behaves on a video, through the server's own decode-free MJPEG path.

    python -m training.clip static/videos/demo.mp4 --expect happy
    python -m training.clip static/videos/demo.mp4 --detector yunet \
        --detector-model ../shared/models/face_detection_yunet.onnx

Every frame of the file (scaled to at most 640 px wide, as the MJPEG stream does) goes through
`fer_async.recognition.Analyzer` (detector, crop, one model call per 16 frames) with the weights
the server would load. Prints how often faces were found, the share of each label over all
faces, the mean top probability, and how often the largest face's label changes from one frame
to the next (flicker: the clip's faces do not change expression, so every change is noise).
`--expect LABEL` adds the share of faces given that label, for clips whose expression is known;
`--window A:B` the label shares of the largest face in frames A..B (a stretch with a known
expression, e.g. the smile of ../shared/data/videos/single_face.mp4 around frames 30-55).
`--camera NAME` first renders every frame as another exposure would (a `training.cameras`
condition: lower contrast, darker, washed out) and JPEG-encodes it at quality 80 as the webcam
page does, to show what the model makes of the same scene from a worse camera.
`--against DIR` runs the same frames through a second network (DIR/NAME, same runtime,
precision and TTA; e.g. the shipped `weights/` against a new run's export) and compares the
largest face's label frame by frame: how often the two agree, and each stretch where they differ.
Ends with ONE line of JSON for scripts. Exit status 2 with a message when an input is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

from fer_async.config import add_model_options, resolve_options
from fer_async.imaging import ImageError, decode_image, encode_jpeg
from fer_async.labels import EMOTIONS, FrameResult
from fer_async.recognition import Analyzer  # OpenCV only; fer_async.model (TensorFlow) loads later
from fer_async.video import VIDEO_MAX_WIDTH, shrink_to_width
from training.cameras import CAMERAS, Camera

FRAMES_PER_CALL = 16
CAMERA_JPEG_QUALITY = 80  # what the webcam page sends (canvas.toBlob("image/jpeg", 0.8))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}" if __spec__ else None,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", type=Path, help="a video file OpenCV can read (mp4, avi, ...)")
    p.add_argument("--expect", choices=EMOTIONS, help="the expression the clip's faces show, if known")
    p.add_argument("--window", type=_window, metavar="A:B", help="also report label shares in frames A..B (inclusive)")
    p.add_argument(
        "--camera",
        choices=CAMERAS,
        default="original",
        help="render the frames at this exposure first (training.cameras; default: %(default)s)",
    )
    add_model_options(p)  # --weights, --model-name, --runtime, --model-precision, --flip-tta, --detector(-model)
    p.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="also run the frames through the network in DIR and compare the labels frame by frame",
    )
    args = p.parse_args(argv)
    model_given = args.detector_model is not None
    resolve_options(p, args)  # command line > FER_* > the server's default
    if model_given and args.detector != "yunet":
        p.error("--detector-model is only used by --detector yunet")
    return args


def _window(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST frame numbers, got {text!r}") from None
    if not 0 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 0 <= FIRST <= LAST, got {text!r}")
    return first, last


def video_fps(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


def through_camera(frames: Iterator[np.ndarray], camera: Camera, seed: int = 0) -> Iterator[np.ndarray]:
    """`frames` as `camera` would deliver them: exposure applied, then JPEG quality 80 and decoded."""
    rng = np.random.default_rng(seed)
    for frame in frames:
        yield decode_image(encode_jpeg(camera.render(frame, rng), CAMERA_JPEG_QUALITY))


def read_frames(path: Path, max_width: int = VIDEO_MAX_WIDTH) -> Iterator[np.ndarray]:
    """Every frame of `path` as BGR, shrunk like the MJPEG stream shrinks it."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"cannot open video {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield shrink_to_width(frame, max_width)
    finally:
        capture.release()


def analyse_clip(analyzer: Analyzer, frames: Iterator[np.ndarray]) -> list[FrameResult]:
    results: list[FrameResult] = []
    chunk: list[np.ndarray] = []

    def flush() -> None:
        for result in analyzer.analyze(chunk):
            if isinstance(result, ImageError):
                raise RuntimeError(f"frame {len(results)}: {result}")
            results.append(result)
        chunk.clear()

    for frame in frames:
        chunk.append(frame)
        if len(chunk) == FRAMES_PER_CALL:
            flush()
    if chunk:
        flush()
    return results


def count_labels(results: list[FrameResult]) -> Counter[str]:
    return Counter(face.emotion for result in results for face in result.faces)


def summarise(
    results: list[FrameResult],
    labels: Counter[str],
    expect: str | None,
    fps: float = 0.0,
    window: tuple[int, int] | None = None,
) -> dict[str, object]:
    """The figures of `results`; `labels` is `count_labels(results)`, `fps` the clip's frame rate."""
    faces = [face for result in results for face in result.faces]
    largest = largest_labels(results)  # compare the largest face of consecutive frames
    pairs = [(a, b) for a, b in pairwise(largest) if a is not None and b is not None]
    changes = sum(1 for a, b in pairs if a != b)
    summary: dict[str, object] = {
        "frames": len(results),
        "frames_with_faces": sum(1 for result in results if result.faces),
        "faces": len(faces),
        "label_share": {name: round(labels[name] / len(faces), 4) if faces else None for name in EMOTIONS},
        "mean_top_probability": round(float(np.mean([max(face.scores) for face in faces])), 4) if faces else None,
        "largest_face_label_changes": changes,
        "consecutive_pairs": len(pairs),
    }
    # Changes per second of the pairs' own duration, so frames without a face do not dilute it.
    summary["label_changes_per_second"] = round(changes * fps / len(pairs), 3) if pairs and fps > 0 else None
    if window is not None:
        first, last = window
        inside = [label for label in largest[first : last + 1] if label is not None]
        summary["window"] = {
            "frames": [first, last],
            "faces": len(inside),
            "label_share": {name: round(inside.count(name) / len(inside), 4) if inside else None for name in EMOTIONS},
        }
    if expect is not None:
        summary["expect"] = expect
        summary["expected_share"] = round(labels[expect] / len(faces), 4) if faces else None
    return summary


def largest_labels(results: list[FrameResult]) -> list[str | None]:
    """The largest face's label in each frame (the Analyzer orders faces largest first), None without faces."""
    return [result.faces[0].emotion if result.faces else None for result in results]


def compare_labels(ours: list[str | None], theirs: list[str | None]) -> dict[str, object]:
    """Frame-by-frame agreement of two runs over the same frames, and the stretches where they differ."""
    both = [(a, b) for a, b in zip(ours, theirs, strict=True) if a is not None and b is not None]
    stretches: list[dict[str, object]] = []
    for frame, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a is None or b is None or a == b:
            continue
        last = stretches[-1] if stretches else None
        if last is not None and last["last"] == frame - 1 and (last["labels"], last["against"]) == (a, b):
            last["last"] = frame
        else:
            stretches.append({"first": frame, "last": frame, "labels": a, "against": b})
    return {
        "frames_compared": len(both),
        "same_label": round(sum(a == b for a, b in both) / len(both), 4) if both else None,
        "differences": stretches,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.video.is_file():
        print(f"clip: error: no such video: {args.video}", file=sys.stderr)
        return 2
    from fer_async.detector import create_detector_for  # OpenCV only: a bad model path fails before TensorFlow

    try:
        # YuNet's file from the cache or one download; Haar (and one log line) without it.
        detector, args.detector = create_detector_for(
            args.detector, args.detector_model, detect_width=args.detect_width
        )
    except (ValueError, RuntimeError) as e:
        print(f"clip: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_async.model import FacialExpressionModel  # imports TensorFlow: seconds

    try:
        model = FacialExpressionModel(
            args.weights, args.model_name, flip_tta=args.flip_tta, runtime=args.runtime, precision=args.model_precision
        )
    except FileNotFoundError as e:
        print(f"clip: error: {e}", file=sys.stderr)
        return 2
    try:
        other = None
        if args.against is not None:
            other = FacialExpressionModel(
                args.against,
                args.model_name,
                flip_tta=args.flip_tta,
                runtime=args.runtime,
                precision=args.model_precision,
            )
        frames = list(read_frames(args.video))
        if args.camera != "original":
            frames = list(through_camera(iter(frames), CAMERAS[args.camera]))
        with Analyzer(model, detector, align=args.align) as analyzer:
            results = analyse_clip(analyzer, iter(frames))
        against_results = None
        if other is not None:
            with Analyzer(other, detector, align=args.align) as analyzer:
                against_results = analyse_clip(analyzer, iter(frames))
    except (ValueError, FileNotFoundError) as e:
        print(f"clip: error: {e}", file=sys.stderr)
        return 2
    labels = count_labels(results)
    figures = summarise(results, labels, args.expect, video_fps(args.video), args.window)
    summary = {
        "video": str(args.video),
        "camera": args.camera,
        "detector": args.detector,
        "weights": str(model.weights_path),
        **figures,
    }
    total = sum(labels.values())
    print(
        f"{args.video.name}: {summary['frames']} frames, faces in {summary['frames_with_faces']}, "
        f"{summary['faces']} faces ({args.detector})"
    )
    print("labels: " + ", ".join(f"{name} {labels[name] / total:.1%}" for name in EMOTIONS if labels[name]))
    print(
        f"mean top probability {summary['mean_top_probability']}; largest face changed label "
        f"{summary['largest_face_label_changes']} times in {summary['consecutive_pairs']} frame pairs "
        f"({summary['label_changes_per_second']} per second)"
    )
    if args.window is not None:
        first, last = args.window
        inside = [r.faces[0].emotion for r in results[first : last + 1] if r.faces]
        shares = ", ".join(f"{name} {inside.count(name) / len(inside):.1%}" for name in EMOTIONS if name in inside)
        print(f"largest face in frames {first}..{last}: {len(inside)} faces; {shares or 'none'}")
    if args.expect is not None:
        print(f"expected {args.expect!r}: {summary['expected_share']}")
    if against_results is not None:
        comparison = compare_labels(largest_labels(results), largest_labels(against_results))
        summary["against"] = {"weights": str(args.against), **comparison}
        print(
            f"against {args.against}: same label on {comparison['same_label']} "
            f"of {comparison['frames_compared']} frames"
        )
        for stretch in comparison["differences"]:  # type: ignore[attr-defined]
            print(
                f"  frames {stretch['first']}..{stretch['last']}: {stretch['labels']} here, {stretch['against']} there"
            )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
