"""Evaluate exported weights on one FER2013 split, through the server's own model class.

    python -m training.evaluate --data ../shared/data/fer2013/fer2013.npz --split val
    python -m training.evaluate --split val --weights weights/ --no-flip-tta
    python -m training.evaluate --split val --model-precision fp32   # NAME.onnx instead of NAME.int8.onnx

The faces go through `fer_async.model.FacialExpressionModel`, the class the server runs (same
JSON + weights loading, same uint8 input path, same optional flip test-time augmentation),
so the number printed here is the number the server achieves on aligned 48x48 faces. The
network file is chosen as the server chooses it (`--runtime`, `--model-precision`: by default the
int8 file when it is current); the JSON line names it ("model_file", "model_precision").

Prints accuracy, macro-F1 and per-class recall/precision, writes a confusion-matrix PNG to
`--out`, and ends with ONE line of JSON on stdout (accuracy, n, macro_f1, recall, precision,
split, weights, ...) for scripts: `python -m training.evaluate ... | tail -n 1`.
Exit status 2, with a one-line message on stderr, when the split or the weights are missing.

`--via-detector` also measures the model on what the SERVER feeds it instead of FER2013's own
crops: each face is upscaled to 160x160 (INTER_CUBIC), pasted in the middle of a neutral grey
320x240 BGR frame (80 px of background left and right, 40 px above and below, so the detector
sees a whole face with context), JPEG-encoded at quality 80 as the browser client does, and
sent through `fer_async.analyzer.Analyzer` (decode, `--detector` yunet|haar, by default the
server's, crop, one model call per 16 frames). It reports the detection rate, the accuracy on
the detected faces (the largest face of each frame), the accuracy counting misses as wrong, and
the plain 48x48 accuracy on the same detected faces, in a "via_detector" object of the JSON line:

    python -m training.evaluate --via-detector --limit 600
    python -m training.evaluate --via-detector --detector yunet \
        --detector-model ../shared/models/face_detection_yunet.onnx

Each face is also sent at every camera condition of `training.cameras` (lower contrast, darker,
a dim room with sensor noise, washed out: the whole frame rendered before the JPEG encoder, as
real cameras deliver faces that FER2013's stretched ones are not); "via_detector.cameras" in the
JSON line holds, per condition, the detection rate, the accuracy on found faces and counting
misses, and the share of faces that keep the label of the original exposure. `--cameras
contrast25,dim15noise` picks conditions ("original" always runs).

`--limit N` evaluates only the first N faces of a seeded random permutation of the split (the
plain figures too), for a quick check; the JSON line then also has "limit" and "seed".

Select models on "val" (FER2013 PublicTest); look at "test" (PrivateTest) once, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fer_async.analyzer import Analyzer  # OpenCV only; fer_async.model (TensorFlow) loads later
from fer_async.config import MODEL_PRECISIONS, add_model_options, model_option_defaults
from fer_async.imaging import ImageError, encode_jpeg
from fer_async.labels import EMOTIONS
from training.cameras import CAMERAS, Camera
from training.data import DEFAULT_DATA, SPLITS, Split, load_split
from training.metrics import report
from training.plots import plot_confusion

if TYPE_CHECKING:  # TensorFlow: imported at run time only once the inputs are known to be there
    from fer_async.detector import FaceDetector
    from fer_async.model import FacialExpressionModel

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "runs" / "evaluate"
# Big enough to amortise the per-call overhead, small enough that the CPU cache and the
# flip-TTA double batch stay cheap; the result does not depend on it.
BATCH_SIZE = 512
LIMIT_SEED = 0

# --via-detector: the frame each FER2013 face is shown in, as the server would receive it.
VIA_FACE_SIDE = 160  # the 48x48 face upscaled with INTER_CUBIC: a webcam face of typical size
VIA_FRAME_WIDTH, VIA_FRAME_HEIGHT = 320, 240
VIA_FACE_X = (VIA_FRAME_WIDTH - VIA_FACE_SIDE) // 2  # 80: centred, grey margin on every side
VIA_FACE_Y = (VIA_FRAME_HEIGHT - VIA_FACE_SIDE) // 2  # 40
VIA_BACKGROUND = 128  # neutral grey, in all three BGR channels
VIA_JPEG_QUALITY = 80  # what the browser client sends (canvas.toBlob("image/jpeg", 0.8))
VIA_FRAMES_PER_CALL = 16  # frames per Analyzer.analyze call: one model call for all their faces


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}" if __spec__ else None,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz/csv/folder (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default="val", help="default: %(default)s")
    add_model_options(p, ["weights", "model_name", "runtime", "model_precision", "flip_tta"])
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="confusion-matrix folder (default: %(default)s)")
    p.add_argument(
        "--limit", type=int, help="evaluate only the first N faces of a seeded random permutation (quick checks)"
    )
    p.add_argument("--seed", type=int, default=LIMIT_SEED, help="the --limit permutation's seed (default: %(default)s)")
    p.add_argument(
        "--compare-precision",
        choices=MODEL_PRECISIONS,
        help="also run the network at this precision on the same faces (same runtime and TTA) and report top-1 "
        "agreement, max and mean |probability difference| and its accuracy, in a 'comparison' object",
    )
    via = p.add_argument_group("server path (--via-detector)")
    via.add_argument(
        "--via-detector",
        action="store_true",
        help="also evaluate each face as the server sees it: upscaled on a grey 320x240 frame, JPEG q80, "
        "through the Analyzer's decode + detector + crop + model",
    )
    add_model_options(via, ["detector", "detector_model"], defaults=False)  # None: only with --via-detector
    via.add_argument(
        "--cameras",
        type=_camera_names,
        default=list(CAMERAS),
        metavar="NAME,...",
        help="camera conditions to show each face at, comma-separated; 'original' is always included "
        f"(default: all of {', '.join(repr(name) for name in CAMERAS)})",
    )
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    if not args.via_detector and (args.detector is not None or args.detector_model is not None):
        p.error("--detector and --detector-model only apply with --via-detector")
    model_option_defaults(args)  # the server's detector (YuNet, Haar when its file cannot be had)
    if args.detector_model is not None and args.detector != "yunet":
        p.error("--detector-model is only used by --detector yunet")
    return args


def _camera_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CAMERAS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown camera condition(s) {unknown}; choose from {list(CAMERAS)}")
    return ["original", *(name for name in names if name != "original")]


def fail(message: str) -> int:
    print(f"evaluate: error: {message}", file=sys.stderr)
    return 2


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


def condition_summary(path: ServerPath, original: ServerPath, y: np.ndarray) -> dict[str, object]:
    """One camera condition's figures, and how often it keeps the label the original exposure got."""
    detected = path.detected
    both = detected & original.detected
    return {
        "detected": int(detected.sum()),
        "detection_rate": round(float(detected.mean()), 4),
        "accuracy_detected": _ratio(float((path.predicted[detected] == y[detected]).sum()), float(detected.sum())),
        "accuracy_with_misses": _ratio(float((path.predicted[detected] == y[detected]).sum()), float(len(y))),
        "same_label_as_original": _ratio(
            float((path.predicted[both] == original.predicted[both]).sum()), float(both.sum())
        ),
    }


def prepare_split(args: argparse.Namespace) -> Split:
    """The split to evaluate (the --limit subset when given); raises OSError/KeyError/ValueError."""
    split = load_split(args.data, args.split)
    if len(split) == 0:
        raise ValueError(f"{args.data}: the {args.split!r} split is empty")
    if args.limit is not None:
        keep = np.random.default_rng(args.seed).permutation(len(split))[: args.limit]
        split = Split(x=split.x[keep], y=split.y[keep])
    return split


def evaluate_plain(
    args: argparse.Namespace, split: Split, model: FacialExpressionModel
) -> tuple[dict[str, object], np.ndarray]:
    """Mode 1, always: the dataset's own 48x48 crops through the model. (summary, probabilities)."""
    started = time.perf_counter()
    probs = np.concatenate(
        [model.predict(split.x[i : i + args.batch_size]) for i in range(0, len(split), args.batch_size)]
    )
    seconds = time.perf_counter() - started
    result = report(split.y, probs)
    tta = " + flip TTA" if args.flip_tta else ""
    print(
        f"{model.model_file} on {args.data.name} [{args.split}]{tta}, {model.device}: "
        f"{len(split)} faces in {seconds:.1f} s ({len(split) / seconds:,.0f} faces/s)"
    )
    print(result.text())
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"confusion_{_stem(args, model)}.png"
    title = f"{model.model_file} on {args.split}{tta}: accuracy {result.accuracy:.2%} (n={result.n})"
    plot_confusion(result.confusion, png, title)
    print(f"wrote {png}")
    summary: dict[str, object] = {
        **result.as_dict(),
        "split": args.split,
        "data": str(args.data),
        "weights": str(model.weights_path),
        "model_file": model.model_file,
        "model_precision": model.precision,
        "flip_tta": args.flip_tta,
        "confusion_png": str(png),
    }
    if args.limit is not None:
        summary.update(limit=args.limit, seed=args.seed)
    return summary, probs


def compare_precision(
    args: argparse.Namespace, split: Split, model: FacialExpressionModel, probs: np.ndarray
) -> dict[str, object]:
    """--compare-precision: the same faces through the other network file; how far the two agree."""
    from fer_async.model import FacialExpressionModel

    other = FacialExpressionModel(
        args.weights, args.model_name, flip_tta=args.flip_tta, runtime=args.runtime, precision=args.compare_precision
    )
    other_probs = np.concatenate(
        [other.predict(split.x[i : i + args.batch_size]) for i in range(0, len(split), args.batch_size)]
    )
    delta = np.abs(probs - other_probs)
    comparison: dict[str, object] = {
        "model_file": other.model_file,
        "model_precision": other.precision,
        "accuracy": round(float((other_probs.argmax(1) == split.y).mean()), 4),
        "top1_agreement": round(float((other_probs.argmax(1) == probs.argmax(1)).mean()), 4),
        "max_abs_dp": round(float(delta.max()), 4),
        "mean_abs_dp": round(float(delta.mean()), 5),
    }
    print(
        f"{model.model_file} vs {other.model_file}: same top-1 on {comparison['top1_agreement']:.2%} of the faces, "
        f"|dp| max {comparison['max_abs_dp']} mean {comparison['mean_abs_dp']}; "
        f"{other.model_file} accuracy {comparison['accuracy']:.2%}"
    )
    return comparison


def evaluate_via_detector(
    args: argparse.Namespace,
    split: Split,
    model: FacialExpressionModel,
    detector: FaceDetector,
    plain_probs: np.ndarray,
) -> dict[str, object]:
    """Mode 2, --via-detector: every face as a server frame, at each camera condition. The "via_detector" object."""
    paths: dict[str, ServerPath] = {}
    started = time.perf_counter()
    with Analyzer(model, detector) as analyzer:
        for name in args.cameras:
            paths[name] = run_server_path(analyzer, split.x, camera=CAMERAS[name], seed=args.seed)
    original = paths["original"]
    via: dict[str, object] = {"detector": args.detector}
    if args.detector_model is not None:
        via["detector_model"] = str(args.detector_model)
    via.update(via_detector_summary(original, split.y, plain_probs, time.perf_counter() - started))
    tta = " + flip TTA" if args.flip_tta else ""
    if original.detected.any():
        via_png = args.out / f"confusion_{_stem(args, model)}_via_{args.detector}.png"
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
    conditions = {name: condition_summary(path, original, split.y) for name, path in paths.items()}
    via["cameras"] = conditions
    print(f"{'camera':26s} {'found':>7s} {'acc. found':>10s} {'acc. all':>9s} {'same label':>10s}")
    for name, figures in conditions.items():
        print(
            f"{name:26s} {figures['detection_rate']!s:>7s} {figures['accuracy_detected']!s:>10s} "
            f"{figures['accuracy_with_misses']!s:>9s} {figures['same_label_as_original']!s:>10s}"
        )
    return via


def _stem(args: argparse.Namespace, model: FacialExpressionModel) -> str:
    precision = "_int8" if model.precision == "int8" else ""
    stem = f"{model.json_path.stem}{precision}_{args.split}{'_tta' if args.flip_tta else ''}"
    return stem if args.limit is None else f"{stem}_limit{args.limit}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Reading the data first makes a wrong path or split fail in a second, before TensorFlow loads.
    try:
        split = prepare_split(args)
    except (OSError, KeyError, ValueError) as e:
        return fail(str(e))
    detector = None
    if args.via_detector:
        from fer_async.detector import create_detector_for  # OpenCV only: a bad model path fails before TensorFlow

        try:
            # YuNet's file from the cache or one download; Haar (and one log line) without it.
            detector, args.detector = create_detector_for(args.detector, args.detector_model)
        except (ValueError, RuntimeError) as e:
            return fail(str(e))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_async.model import FacialExpressionModel  # imports TensorFlow: seconds

    try:
        model = FacialExpressionModel(
            args.weights, args.model_name, flip_tta=args.flip_tta, runtime=args.runtime, precision=args.model_precision
        )
    except FileNotFoundError as e:
        return fail(f"{e} (train and export with `python -m training.train`, or pass --weights)")

    summary, probs = evaluate_plain(args, split, model)
    if args.compare_precision is not None:
        summary["comparison"] = compare_precision(args, split, model, probs)
    if detector is not None:
        summary["via_detector"] = evaluate_via_detector(args, split, model, detector, probs)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
