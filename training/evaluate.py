"""Evaluate exported weights on one FER2013 split, through the server's own model class.

    python -m training.evaluate --data ../shared/data/fer2013/fer2013.npz --split val
    python -m training.evaluate --split val --weights weights/ --flip-tta

The faces go through `fer_async.model.FacialExpressionModel`, the class the server runs (same
JSON + weights loading, same uint8 input path, same optional flip test-time augmentation),
so the number printed here is the number the server achieves on aligned 48x48 faces.

Prints accuracy, macro-F1 and per-class recall/precision, writes a confusion-matrix PNG to
`--out`, and ends with ONE line of JSON on stdout (accuracy, n, macro_f1, recall, precision,
split, weights, ...) for scripts: `python -m training.evaluate ... | tail -n 1`.
Exit status 2, with a one-line message on stderr, when the split or the weights are missing.

Select models on "val" (FER2013 PublicTest); look at "test" (PrivateTest) once, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from training.data import DEFAULT_DATA, SPLITS, load_split
from training.metrics import report
from training.plots import plot_confusion

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO / "weights"  # == fer_async.model.DEFAULT_WEIGHTS_DIR, without importing TensorFlow
DEFAULT_OUT = REPO / "runs" / "evaluate"
# Big enough to amortise the per-call overhead, small enough that the CPU cache and the
# flip-TTA double batch stay cheap; the result does not depend on it.
BATCH_SIZE = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}" if __spec__ else None,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz/csv/folder (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default="val", help="default: %(default)s")
    p.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="directory or <name>.json path (default: %(default)s)"
    )
    p.add_argument("--name", default="fernet", help="model file stem inside a --weights directory")
    p.add_argument("--flip-tta", action="store_true", help="average each face with its mirror image, as the server can")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="confusion-matrix folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def fail(message: str) -> int:
    print(f"evaluate: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Reading the data first makes a wrong path or split fail in a second, before TensorFlow loads.
    try:
        split = load_split(args.data, args.split)
    except (OSError, KeyError, ValueError) as e:
        return fail(str(e))
    if len(split) == 0:
        return fail(f"{args.data}: the {args.split!r} split is empty")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_async.model import FacialExpressionModel  # imports TensorFlow: seconds

    try:
        model = FacialExpressionModel(args.weights, args.name, flip_tta=args.flip_tta)
    except FileNotFoundError as e:
        return fail(f"{e} (train and export with `python -m training.train`, or pass --weights)")

    started = time.perf_counter()
    probs = np.concatenate(
        [model.predict(split.x[i : i + args.batch_size]) for i in range(0, len(split), args.batch_size)]
    )
    seconds = time.perf_counter() - started
    result = report(split.y, probs)

    tta = " + flip TTA" if args.flip_tta else ""
    print(f"{model.json_path.name} on {args.data.name} [{args.split}]{tta}, {model.device}: "
          f"{len(split)} faces in {seconds:.1f} s ({len(split) / seconds:,.0f} faces/s)")
    print(result.text())
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"confusion_{model.json_path.stem}_{args.split}{'_tta' if args.flip_tta else ''}.png"
    title = f"{model.json_path.stem} on {args.split}{tta}: accuracy {result.accuracy:.2%} (n={result.n})"
    plot_confusion(result.confusion, png, title)
    print(f"wrote {png}")
    summary = {
        **result.as_dict(),
        "split": args.split,
        "data": str(args.data),
        "weights": str(model.weights_path),
        "flip_tta": args.flip_tta,
        "confusion_png": str(png),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
