"""The command line of `training.distill`, the training recipe, and what every step reads from
them (the data, the deadline, a log line's prefix). No Keras here: the pipeline's process imports
this module and forks view renderers."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_async.model_choices import DEFAULT_WEIGHTS_DIR
from training.data import DEFAULT_DATA, Split, load_split
from training.ferplus import DEFAULT_VOTES

MIN_ENSEMBLE = 0.705
DEFAULT_TEACHERS = ("fernet:11", "fernet:12", "fernet:13", "fernet_wide:14")
DEFAULT_STUDENTS = ("0.7:21", "0.9:22")  # alpha:seed
VIEWS = 24
VIEW_SEED = 2026
# Share of the pipeline's budget spent on teachers (the rest: store, then students).
TEACHER_SHARE = 0.55

Log = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """The base recipe of `training.train` (weights/fernet.md), epochs as an upper bound."""

    max_epochs: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    warmup_epochs: int = 3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    ema_momentum: float = 0.999
    class_weight_power: float = 0.5
    precision: str = "fp32"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from training import distill

    parser = argparse.ArgumentParser(
        prog="python -m training.distill",
        description=distill.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="step", required=True)

    def common(p: argparse.ArgumentParser, training: bool = True) -> None:
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz/csv/folder")
        p.add_argument("--limit", type=int, default=0, help="only N training faces (smoke tests)")
        p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="compute precision")
        p.add_argument("--require-gpu", action="store_true", help="exit 3 where the backend finds no GPU")
        if training:
            p.add_argument("--batch-size", type=int, default=Recipe.batch_size)
            p.add_argument("--max-epochs", type=int, default=Recipe.max_epochs)
            p.add_argument("--lr", type=float, default=Recipe.lr)
            p.add_argument("--minutes", type=float, default=60.0, help="time budget (ignored with --deadline)")
            p.add_argument("--deadline", type=float, default=0.0, help="end by this Unix time")

    # Network names are checked by training.models.build: importing it here would load Keras in
    # the pipeline's process, which forks view renderers.
    p = steps.add_parser("teacher", help="train one network")
    common(p)
    p.add_argument("--network", default="fernet", help="a training.models network")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument(
        "--views", type=Path, default=None, help="train on these fixed views (views.npy), not in-model augmentation"
    )
    p.add_argument("--out", type=Path, required=True)

    p = steps.add_parser("store", help="teacher probabilities on fixed views of every training face")
    common(p)
    p.add_argument("--teachers", type=Path, nargs="+", required=True)
    p.add_argument("--views", type=Path, default=None, help="views.npy rendered already (else rendered here)")
    p.add_argument("--count", type=int, default=VIEWS, help="views per face when rendering here")
    p.add_argument("--view-seed", type=int, default=VIEW_SEED)
    p.add_argument("--out", type=Path, required=True)

    p = steps.add_parser("student", help="train a network on the store")
    common(p)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--views", type=Path, default=None, help="views.npy rendered already (else rendered here)")
    p.add_argument("--network", default="fernet", help="a training.models network")
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the teachers in the target")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--out", type=Path, required=True)

    p = steps.add_parser("ensemble", help="PublicTest of the runs' averaged flip-TTA probabilities")
    common(p, training=False)
    p.add_argument(
        "runs", type=Path, nargs="+", help="runs of this pipeline (.npz) or exports (a directory with NAME.json)"
    )
    p.add_argument("--name", default="fernet", help="the network's file name in an export directory")
    p.add_argument(
        "--votes",
        type=Path,
        nargs="?",
        const=DEFAULT_VOTES,
        default=None,
        help=f"also score the FER+ majority and the agreed faces with these votes (alone: {DEFAULT_VOTES})",
    )

    p = steps.add_parser("pipeline", help="teachers, store and students inside one time budget")
    common(p)
    p.add_argument("--teachers", nargs="+", default=list(DEFAULT_TEACHERS), help="network:seed ...")
    p.add_argument("--students", nargs="+", default=list(DEFAULT_STUDENTS), help="alpha:seed ...")
    p.add_argument("--views", type=int, default=VIEWS)
    p.add_argument("--min-ensemble", type=float, default=MIN_ENSEMBLE)
    p.add_argument("--teacher-share", type=float, default=TEACHER_SHARE, help="share of the budget for teachers")
    p.add_argument("--out", type=Path, required=True, help="the runs, summary.json and pipeline.log")
    p.add_argument("--work", type=Path, required=True, help="large intermediates (views.npy, store.npz)")

    p = steps.add_parser("export", help="(TensorFlow) a run's weights in the served form, with a card")
    common(p, training=False)
    p.add_argument("run", type=Path)
    p.add_argument("--name", default="fernet")
    p.add_argument("--export-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def command_of(args: argparse.Namespace) -> str:
    """The command line that made a file, for its record."""
    return "python -m training.distill " + " ".join(shlex.quote(a) for a in args.argv)


def logger(prefix: str) -> Log:
    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} {prefix}] {message}", flush=True)

    return log


def deadline_of(args: argparse.Namespace) -> float:
    return float(args.deadline) if args.deadline else time.time() + args.minutes * 60.0


def recipe_of(args: argparse.Namespace) -> Recipe:
    return Recipe(max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, precision=args.precision)


def splits(args: argparse.Namespace) -> tuple[Split, Split]:
    """(Training, PublicTest); with `--limit`, a seeded random subset of Training."""
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    if args.limit:
        keep = np.random.default_rng(0).permutation(len(train))[: args.limit]
        train = Split(train.x[keep], train.y[keep])
    return train, val
