"""Weight-space blend of two trained copies of one network (WiSE-FT, Wortsman et al. 2022,
arXiv:2109.01903): every weight is `(1 - alpha) * FROM + alpha * TO`.

    python -m training.blend --from weights/ --to runs/ft-v100-short/export --alpha 0.5 \\
        --export-dir runs/blend-0.5/export

`--to` is usually a fine-tune of `--from` (`training.train --init-weights`): the blend keeps part
of what the fine-tune learnt (the FER+ votes) and part of what the original did well (the real
faces), with no training. Both must be the same network (`<name>.json` of the same layers, in the
same order); batch-norm statistics are blended like the rest. Writes the served form (`.json`,
`.weights.h5`, `.onnx`, `.int8.onnx`, the int8 copy calibrated on `--data`), judged like any
run with `training.evaluate`, `training.photos` and `training.clip`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fer_async.model import load_keras_model, resolve_weights
from fer_async.model_choices import DEFAULT_MODEL_NAME
from training import models
from training.data import DEFAULT_DATA
from training.served_form import write_served_form


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.blend", description=__doc__)
    p.add_argument("--from", dest="start", type=Path, required=True, help="weights directory at alpha 0")
    p.add_argument("--to", dest="end", type=Path, required=True, help="weights directory at alpha 1")
    p.add_argument("--alpha", type=float, required=True, help="share of --to, in [0, 1]")
    p.add_argument("--export-dir", type=Path, required=True, help="where the blended network is written")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model file stem in each directory (default: fernet)")
    p.add_argument("--network", default="fernet", choices=sorted(models.NETWORKS))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz to calibrate the int8 copy on")
    args = p.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be within [0, 1], not {args.alpha}")
    return args


def blended_weights(start: list[np.ndarray], end: list[np.ndarray], alpha: float) -> list[np.ndarray]:
    """`(1 - alpha) * start + alpha * end`, weight by weight (computed in float64, kept in each dtype)."""
    if len(start) != len(end) or any(a.shape != b.shape for a, b in zip(start, end, strict=True)):
        raise ValueError("the two networks differ in their weights' number or shapes: not one network")
    return [
        ((1 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)).astype(a.dtype)
        for a, b in zip(start, end, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        start, end = (load_keras_model(*resolve_weights(d, args.name)).get_weights() for d in (args.start, args.end))
        weights = blended_weights(start, end, args.alpha)
    except (FileNotFoundError, ValueError) as error:
        print(f"python -m training.blend: {error}", file=sys.stderr)
        return 2
    model = models.build(args.network)
    model.set_weights(weights)
    written = write_served_form(model, args.network, args.export_dir, args.name, args.data)
    print(
        json.dumps(
            {"from": str(args.start), "to": str(args.end), "alpha": args.alpha, "written": [str(p) for p in written]}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
