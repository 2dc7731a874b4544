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

Two label sets, two figures (both printed, each with its per-class table and confusion matrix):

* **FER2013 labels** ("accuracy" in the JSON line): the dataset's own single label per face. On
  PublicTest it disagrees with the crowd on a third of the faces.
* **FER+ majority** ("ferplus" in the JSON line), when `--votes` (default: the FER+ votes in
  ../shared) has the split: the class most of ten crowd taggers chose, over the faces whose top vote
  is one of the seven classes and untied (`training.ferplus`; 3,281 of PublicTest's 3,589 faces).
  This is the figure the literature reports on FER+ and the one models are selected on.
  "agreed" is the accuracy on the faces where both label sets agree (2,135 on PublicTest).
Exit status 2, with a one-line message on stderr, when the split, the weights or matplotlib are missing.

`--via-detector` also measures the model on what the SERVER feeds it instead of FER2013's own
crops: each face is upscaled to 160x160 (INTER_CUBIC), pasted in the middle of a neutral grey
320x240 BGR frame (80 px of background left and right, 40 px above and below, so the detector
sees a whole face with context), JPEG-encoded at quality 80 as the browser client does, and
sent through `fer_async.recognition.Analyzer` (decode, `--detector` yunet|haar, by default the
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
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fer_async.config import add_model_options, resolve_options
from fer_async.model_choices import MODEL_PRECISIONS
from training.cameras import CAMERAS
from training.data import DEFAULT_DATA, SPLITS, Split, load_split
from training.ferplus import DEFAULT_VOTES, load_votes, majority_labels
from training.metrics import Report, report
from training.plots import MATPLOTLIB_NEEDED, plot_confusion
from training.server_path import evaluate_via_detector

if TYPE_CHECKING:  # TensorFlow: imported at run time only once the inputs are known to be there
    from fer_async.model import FacialExpressionModel

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "runs" / "evaluate"
# Big enough to amortise the per-call overhead, small enough that the CPU cache and the
# flip-TTA double batch stay cheap; the result does not depend on it.
BATCH_SIZE = 512
LIMIT_SEED = 0
# The server's options this tool takes: the network's, and with --via-detector the detector's.
NETWORK_OPTIONS = ("weights", "model_name", "runtime", "model_precision", "flip_tta")
DETECTOR_OPTIONS = ("detector", "detector_model", "detect_width", "align")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}" if __spec__ else None,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz/csv/folder (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default="val", help="default: %(default)s")
    p.add_argument(
        "--votes",
        type=Path,
        default=None,
        help="FER+ votes npz (training.ferplus), face by face in the order of --data: also score against the FER+ "
        f"majority when it has the split (default: {DEFAULT_VOTES} with the default --data, else none)",
    )
    add_model_options(p, NETWORK_OPTIONS)
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
    add_model_options(via, DETECTOR_OPTIONS)
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
    if not args.via_detector and (args.detector, args.detector_model, args.align) != (None, None, None):
        p.error("--detector, --detector-model and --align only apply with --via-detector")
    if args.votes is None and args.data.resolve() == DEFAULT_DATA.resolve() and DEFAULT_VOTES.is_file():
        args.votes = DEFAULT_VOTES
    model_given = args.detector_model is not None
    resolve_options(p, args, NETWORK_OPTIONS + DETECTOR_OPTIONS)  # command line > FER_* > the server's default
    if model_given and args.detector != "yunet":
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


@dataclass(frozen=True)
class Evaluated:
    """The faces to evaluate and, where the votes cover the split, their FER+ majority (-1: not counted)."""

    split: Split
    majority: np.ndarray | None


def prepare_split(args: argparse.Namespace) -> Evaluated:
    """The split to evaluate (the --limit subset when given); raises OSError/KeyError/ValueError."""
    split = load_split(args.data, args.split)
    if len(split) == 0:
        raise ValueError(f"{args.data}: the {args.split!r} split is empty")
    majority = None
    if args.votes is not None:
        try:
            votes = load_votes(args.votes, args.split)
        except KeyError:
            votes = None  # the votes do not cover this split (FER+'s test votes are held out)
        if votes is not None:
            if len(votes) != len(split):
                raise ValueError(f"{args.votes}: {len(votes)} vote rows for the {len(split)} faces of {args.split!r}")
            majority = majority_labels(votes)
    if args.limit is not None:
        keep = np.random.default_rng(args.seed).permutation(len(split))[: args.limit]
        split = Split(x=split.x[keep], y=split.y[keep])
        majority = None if majority is None else majority[keep]
    return Evaluated(split, majority)


def crowd_summary(
    args: argparse.Namespace, model: FacialExpressionModel, majority: np.ndarray, y: np.ndarray, probs: np.ndarray
) -> dict[str, object]:
    """The FER+ majority report (printed, its confusion matrix drawn) and the agreed-faces accuracy."""
    counted = majority >= 0
    crowd = report(majority[counted], probs[counted])
    agreed = counted & (majority == y)
    agreed_report: Report = report(y[agreed], probs[agreed])
    print(f"FER+ majority ({crowd.n} faces whose top vote is one of the seven classes, untied):")
    print(crowd.text())
    print(f"faces where FER2013's label is the FER+ majority: accuracy {agreed_report.accuracy:.4f} (n={agreed.sum()})")
    png = args.out / f"confusion_{_stem(args, model)}_ferplus.png"
    tta = " + flip TTA" if args.flip_tta else ""
    plot_confusion(
        crowd.confusion, png, f"{model.model_file} on {args.split}{tta}, FER+ majority: {crowd.accuracy:.2%}"
    )
    print(f"wrote {png}")
    return {
        "ferplus": {**crowd.as_dict(), "confusion_png": str(png), "votes": str(args.votes)},
        "agreed": {"n": agreed_report.n, "accuracy": round(agreed_report.accuracy, 4)},
    }


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
    print("FER2013 labels:")
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


def _stem(args: argparse.Namespace, model: FacialExpressionModel) -> str:
    precision = "_int8" if model.precision == "int8" else ""
    stem = f"{model.json_path.stem}{precision}_{args.split}{'_tta' if args.flip_tta else ''}"
    return stem if args.limit is None else f"{stem}_limit{args.limit}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:  # the confusion matrices: before any work
        return fail(MATPLOTLIB_NEEDED)
    # Reading the data first makes a wrong path or split fail in a second, before TensorFlow loads.
    try:
        evaluated = prepare_split(args)
    except (OSError, KeyError, ValueError) as e:
        return fail(str(e))
    split = evaluated.split
    detector = None
    if args.via_detector:
        from fer_async.detector import create_detector_for  # OpenCV only: a bad model path fails before TensorFlow

        try:
            # YuNet's file from the cache or one download; Haar (and one log line) without it.
            detector, args.detector = create_detector_for(
                args.detector, args.detector_model, detect_width=args.detect_width
            )
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
    if evaluated.majority is not None:
        summary.update(crowd_summary(args, model, evaluated.majority, split.y, probs))
    if args.compare_precision is not None:
        summary["comparison"] = compare_precision(args, split, model, probs)
    if detector is not None:
        summary["via_detector"] = evaluate_via_detector(
            args, split, model, detector, probs, _stem(args, model), evaluated.majority
        )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
