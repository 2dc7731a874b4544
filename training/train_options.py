"""The options of `training.train`, each declared once with its default (the shipped run's
hyper-parameters), and the card's line that describes a run's training path."""

from __future__ import annotations

import argparse
from pathlib import Path

from fer_async.labels import EMOTIONS
from fer_async.model_choices import DEFAULT_WEIGHTS_DIR
from training import models
from training.data import DEFAULT_DATA
from training.ferplus import DEFAULT_VOTES, UNVOTED_CHOICES
from training.webcam_augment import WebcamAugment

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXPORT_DIR = DEFAULT_WEIGHTS_DIR

# Hyper-parameters of the shipped run; every one can be overridden on the command line.
EPOCHS = 50
BATCH_SIZE = 128
PEAK_LR = 2e-3
WARMUP_EPOCHS = 3
WEIGHT_DECAY = 0.05  # AdamW, decoupled (multiplied by the learning rate)
LABEL_SMOOTHING = 0.1
CLASS_WEIGHT_POWER = 0.5  # 0 = off, 1 = fully balanced; see training.data.class_weights
SEED = 1337
EMA_MOMENTUM = 0.999  # ~1000 steps of memory: about 4.5 epochs of FER2013 at batch 128


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz/csv/folder (default: %(default)s)")
    p.add_argument("--model", choices=sorted(models.NETWORKS), default="fernet")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw")
    p.add_argument("--lr", type=float, default=PEAK_LR, help="peak learning rate (cosine schedule)")
    p.add_argument("--warmup-epochs", type=int, default=WARMUP_EPOCHS)
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--label-smoothing", type=float, default=LABEL_SMOOTHING)
    p.add_argument("--class-weight-power", type=float, default=CLASS_WEIGHT_POWER)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument(
        "--batch-norm",
        choices=("fused", "plain"),
        default="fused",
        help="fused: TensorFlow's fused kernel while training (fast path); plain: Keras' own layer",
    )
    p.add_argument(
        "--precision",
        choices=sorted(models.PRECISIONS),
        default="fp32",
        help="training compute precision; the export is float32 either way (default: %(default)s)",
    )
    p.add_argument("--ema", action="store_true", help="exponential moving average of the weights (AdamW/Adam use_ema)")
    p.add_argument("--ema-momentum", type=float, default=EMA_MOMENTUM)
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup with Beta(ALPHA, ALPHA); 0 = off")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix with Beta(ALPHA, ALPHA); 0 = off")
    crowd = p.add_argument_group("FER+ crowd votes (training.ferplus)")
    crowd.add_argument(
        "--votes",
        type=Path,
        nargs="?",
        const=DEFAULT_VOTES,
        default=None,
        help=f"train on the FER+ votes in this npz (alone: {DEFAULT_VOTES}) and select on the FER+ majority of "
        "PublicTest; without it, FER2013's labels",
    )
    crowd.add_argument(
        "--vote-share",
        type=float,
        default=1.0,
        help="target = share x vote distribution + (1 - share) x FER2013 one-hot (default: %(default)s)",
    )
    crowd.add_argument(
        "--class-vote-share",
        type=class_vote_share,
        action="append",
        default=[],
        metavar="CLASS=SHARE",
        help="another vote share for the faces FER2013 labels CLASS (e.g. angry=0.2); repeatable",
    )
    crowd.add_argument(
        "--unvoted",
        choices=UNVOTED_CHOICES,
        default="keep",
        help="faces without votes: keep them on their FER2013 label, or drop them (default: %(default)s)",
    )
    p.add_argument(
        "--webcam-augment",
        action="store_true",
        help="also augment the batch with webcam conditions: a hand-like box, motion blur, dim light, a turned head",
    )
    p.add_argument(
        "--extra-train",
        choices=("val",),
        default=None,
        help="final runs only: also train on PublicTest (validation is then not held out; the last epoch is exported)",
    )
    p.add_argument(
        "--measure-steps",
        type=int,
        default=0,
        metavar="N",
        help="time N training steps of this configuration (CPU and wall time per step), then exit",
    )
    p.add_argument(
        "--init-weights",
        type=Path,
        default=None,
        help="start from these weights (e.g. an earlier export of the same network) instead of random ones",
    )
    p.add_argument(
        "--keep-epochs",
        action="store_true",
        help="also keep every epoch's weights in <run-dir>/epochs/ (to compare epochs on other faces afterwards)",
    )
    p.add_argument("--limit", type=int, default=0, help="use only the first N training faces (smoke tests)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/<model>")
    p.add_argument("--export-dir", type=Path, default=DEFAULT_EXPORT_DIR)
    p.add_argument("--name", default=None, help="exported file stem (default: the model name)")
    p.add_argument("--export-only", action="store_true", help="skip training; export the run's best checkpoint")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="1 = progress bar, 2 = one line/epoch")
    args = p.parse_args(argv)
    if not 0 <= args.vote_share <= 1:
        p.error("--vote-share must be between 0 and 1")
    args.class_vote_share = dict(args.class_vote_share)
    if args.class_vote_share and not args.votes:
        p.error("--class-vote-share needs --votes")
    for option in ("mixup", "cutmix", "ema_momentum"):
        if getattr(args, option) < 0:
            p.error(f"--{option.replace('_', '-')} must be >= 0")
    if args.ema and not 0 < args.ema_momentum < 1:
        p.error("--ema-momentum must be between 0 and 1")
    args.run_dir = args.run_dir or REPO / "runs" / args.model
    args.name = args.name or args.model
    return args


def class_vote_share(text: str) -> tuple[int, float]:
    """`angry=0.2` -> (0, 0.2): a class named as in `fer_async.labels.EMOTIONS` and its vote share."""
    name, _, share = text.partition("=")
    if name not in EMOTIONS:
        raise argparse.ArgumentTypeError(f"{name!r} is not a class ({', '.join(EMOTIONS)})")
    try:
        value = float(share)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CLASS=SHARE, e.g. angry=0.2") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the share must be between 0 and 1")
    return EMOTIONS.index(name), value


def describe_training(args: argparse.Namespace) -> str:
    """One line for the card: the computation path and the regularisers beyond the base recipe."""
    parts = [f"batch norm {args.batch_norm}", f"precision {args.precision}"]
    if args.votes:
        parts.append(
            f"targets: {args.vote_share:g} x FER+ vote distribution + {1 - args.vote_share:g} x FER2013 label "
            + "".join(
                f"({share:g} x votes for the faces FER2013 labels {EMOTIONS[label]}) "
                for label, share in sorted(args.class_vote_share.items())
            )
            + f"(contempt/unknown/not-a-face votes left out, faces with such a majority dropped, faces without votes "
            f"{'kept on their FER2013 label' if args.unvoted == 'keep' else 'dropped'})"
        )
    if args.webcam_augment:
        parts.append(WebcamAugment().describe())
    if args.ema:
        parts.append(f"EMA of weights (momentum {args.ema_momentum}, used for validation and checkpoints)")
    if args.mixup:
        parts.append(f"mixup alpha {args.mixup:g}")
    if args.cutmix:
        parts.append(f"cutmix alpha {args.cutmix:g}")
    if args.mixup and args.cutmix:
        parts.append("one of the two per batch at random")
    return ", ".join(parts)
