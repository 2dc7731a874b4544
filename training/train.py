"""Train a network on FER2013 and export it for the server.

    python -m training.train --model fernet --epochs 50 --seed 1337

Each run lives in `--run-dir` (default runs/<model>): `best.weights.h5` (ModelCheckpoint on the
best validation accuracy), `log.csv` (one row per epoch), `curves.png` (loss/accuracy, redrawn
after every epoch so you can watch it) and `backup/` (an interrupted run resumes from its last
finished epoch when started again with the same command). At the end the best checkpoint is
evaluated on the validation split and exported as `<export-dir>/<model>.json` (`to_json()`),
`<export-dir>/<model>.weights.h5` and a card `<export-dir>/<model>.md`.

Select only on validation (FER2013 PublicTest); the test split is held out. `--extra-train val`
(final runs only) also trains on PublicTest: the run then exports its last epoch and the card says
that its validation figures are not held out.

Fast path (issue 14): batch normalisation runs TensorFlow's fused kernel while training
(`--batch-norm fused`, the default; `training.fused_bn`), and `--precision bf16` computes in
bfloat16 with float32 weights and a float32 softmax. The export is the plain float32 network
either way. `--measure-steps N` times N training steps of the configured run and exits.

Regularisers: `--ema` (an exponential moving average of the weights, swapped in for validation
and checkpoints), `--mixup ALPHA` / `--cutmix ALPHA` (mixed pairs of faces and labels in the
input pipeline; with both, each batch uses one of the two at random).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from fer_async.config import DEFAULT_WEIGHTS_DIR
from fer_async.labels import EMOTIONS
from training import models
from training.augmentation import describe_augmentation
from training.data import DEFAULT_DATA, Split, class_counts, class_weights, load_split
from training.export_onnx import export_int8, export_onnx
from training.ferplus import DEFAULT_VOTES, UNVOTED_CHOICES, load_votes, majority_labels, training_targets
from training.metrics import Report, report
from training.plots import plot_history
from training.webcam_augment import WebcamAugment, webcam_batch

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    for option in ("mixup", "cutmix", "ema_momentum"):
        if getattr(args, option) < 0:
            p.error(f"--{option.replace('_', '-')} must be >= 0")
    if args.ema and not 0 < args.ema_momentum < 1:
        p.error("--ema-momentum must be between 0 and 1")
    args.run_dir = args.run_dir or REPO / "runs" / args.model
    args.name = args.name or args.model
    return args


@dataclass(frozen=True)
class RunResult:
    """What a finished run hands to `export` (and so to the card)."""

    command: str
    train_size: int
    best_epoch: int  # 1-based; with --extra-train val the exported epoch is the last one instead
    epochs_run: int
    seconds: float
    val: Report
    ferplus: Report | None = None  # the FER+ majority of PublicTest, when trained on the votes
    agreed: Report | None = None  # PublicTest faces whose FER2013 label is the FER+ majority


class LivePlot(keras.callbacks.Callback):
    """Redraws loss/accuracy curves as a PNG after every epoch, from the CSV log."""

    def __init__(self, csv_path: Path, png_path: Path) -> None:
        super().__init__()
        self.csv_path, self.png_path = csv_path, png_path

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.csv_path.exists():
            plot_history(self.csv_path, self.png_path)


class EpochTimer(keras.callbacks.Callback):
    """Adds the wall time of each epoch to the logs (and so to log.csv)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.monotonic() - self._start


def make_optimizer(args: argparse.Namespace, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    warmup = args.warmup_epochs * steps_per_epoch
    total = max(args.epochs * steps_per_epoch - warmup, 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.lr / 10, decay_steps=total, warmup_target=args.lr, warmup_steps=warmup
    )
    ema = {"use_ema": args.ema, "ema_momentum": args.ema_momentum}
    if args.optimizer == "adam":
        return keras.optimizers.Adam(schedule, **ema)
    return keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay, **ema)


def build_training_model(args: argparse.Namespace) -> keras.Model:
    # bf16 is Keras' mixed_bfloat16 policy. oneDNN's graph rewrite
    # (`auto_mixed_precision_onednn_bfloat16`) measured the same CPU time per step (issue 14,
    # weights/fernet.md) but decides itself what to downcast and applies to every graph of the
    # process, the final evaluation included; the policy keeps the softmax float32 explicitly.
    return models.build(args.model, fused_bn=args.batch_norm == "fused", precision=args.precision)


def sample_weights(targets: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Per-face loss weights: each face's target distribution times the class weights, which
    come from the summed targets (1 without class weights). One-hot targets give each face the
    weight of its class."""
    if args.class_weight_power <= 0:
        return np.ones(len(targets), np.float32)
    counts = targets.sum(axis=0).astype(np.float64)
    raw = (counts.max() / np.maximum(counts, 1e-9)) ** args.class_weight_power
    raw /= float((raw * counts).sum() / counts.sum())
    return (targets @ raw).astype(np.float32)


@dataclass(frozen=True)
class TrainingSet:
    x: np.ndarray  # uint8 [N, 48, 48]
    targets: np.ndarray  # float32 [N, 7]: one-hot FER2013 labels, or FER+ vote distributions mixed in
    y: np.ndarray  # the FER2013 labels (counts, logs)

    def __len__(self) -> int:
        return len(self.y)


def one_hot(y: np.ndarray) -> np.ndarray:
    return keras.utils.to_categorical(y, len(EMOTIONS)).astype(np.float32)


def _beta(alpha: float) -> tf.Tensor:
    first, second = tf.random.gamma([], alpha), tf.random.gamma([], alpha)
    return first / (first + second)


def _mixup(x: tf.Tensor, partner: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    share = _beta(alpha)
    return share * x + (1.0 - share) * partner, share


def _cutmix(x: tf.Tensor, partner: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Paste a box of the partner faces (area 1 - share, centre uniform, clipped at the edges)."""
    share = _beta(alpha)
    size = tf.shape(x)[1]
    side = tf.cast(tf.round(tf.sqrt(1.0 - share) * tf.cast(size, tf.float32)), tf.int32)
    centre_y = tf.random.uniform([], 0, size, tf.int32)
    centre_x = tf.random.uniform([], 0, size, tf.int32)
    top, bottom = tf.maximum(centre_y - side // 2, 0), tf.minimum(centre_y + (side + 1) // 2, size)
    left, right = tf.maximum(centre_x - side // 2, 0), tf.minimum(centre_x + (side + 1) // 2, size)
    rows, cols = tf.range(size), tf.range(size)
    inside_rows = tf.logical_and(rows >= top, rows < bottom)
    inside_cols = tf.logical_and(cols >= left, cols < right)
    box = tf.cast(tf.logical_and(inside_rows[:, None], inside_cols[None, :]), x.dtype)[None, :, :, None]
    kept = 1.0 - tf.reduce_mean(box)  # the clipped box's true area sets the label share
    return x * (1.0 - box) + partner * box, kept


def mix_batch(
    x: tf.Tensor, y: tf.Tensor, w: tf.Tensor, mixup: float, cutmix: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mix each face with another of the batch: the labels and loss weights mix in the same share."""
    x = tf.cast(x, tf.float32)
    order = tf.random.shuffle(tf.range(tf.shape(x)[0]))
    partner = tf.gather(x, order)
    if mixup > 0 and cutmix > 0:
        mixed, share = tf.cond(
            tf.random.uniform([]) < 0.5, lambda: _cutmix(x, partner, cutmix), lambda: _mixup(x, partner, mixup)
        )
    elif cutmix > 0:
        mixed, share = _cutmix(x, partner, cutmix)
    else:
        mixed, share = _mixup(x, partner, mixup)
    y = share * y + (1.0 - share) * tf.gather(y, order)
    w = share * w + (1.0 - share) * tf.gather(w, order)
    return mixed, y, w


def uses_dataset(args: argparse.Namespace) -> bool:
    """Whether the batches are transformed in a tf.data pipeline (mixing, webcam conditions)."""
    return bool(args.mixup or args.cutmix or args.webcam_augment)


def batch_dataset(train: TrainingSet, args: argparse.Namespace) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices(
        (train.x[..., None], train.targets, sample_weights(train.targets, args))
    )
    dataset = dataset.shuffle(len(train), seed=args.seed, reshuffle_each_iteration=True).batch(args.batch_size)
    # Sequential maps: stateful random ops drawn in a fixed order, so a seed repeats a run.
    if args.webcam_augment:
        spec = WebcamAugment()
        dataset = dataset.map(lambda x, y, w: (webcam_batch(x, spec), y, w))
    if args.mixup or args.cutmix:
        dataset = dataset.map(lambda x, y, w: mix_batch(x, y, w, args.mixup, args.cutmix))
    return dataset.prefetch(tf.data.AUTOTUNE)


class CrowdValidation(keras.callbacks.Callback):
    """Scores PublicTest after every epoch on the FER+ majority (as `val_accuracy`, the selection
    figure), on FER2013's labels (`val_fer2013`) and on the faces where both agree (`val_agreed`)."""

    def __init__(self, val: Split, majority: np.ndarray, batch_size: int = 512) -> None:
        super().__init__()
        self.val, self.majority, self.batch_size = val, majority, batch_size
        self.counted = majority >= 0
        self.agreed = self.counted & (majority == val.y)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is None:
            return
        predicted = self.model.predict(self.val.x[..., None], batch_size=self.batch_size, verbose=0).argmax(axis=1)
        logs["val_accuracy"] = float((predicted[self.counted] == self.majority[self.counted]).mean())
        logs["val_fer2013"] = float((predicted == self.val.y).mean())
        logs["val_agreed"] = float((predicted[self.agreed] == self.val.y[self.agreed]).mean())


def describe_training(args: argparse.Namespace) -> str:
    """One line for the card: the computation path and the regularisers beyond the base recipe."""
    parts = [f"batch norm {args.batch_norm}", f"precision {args.precision}"]
    if args.votes:
        parts.append(
            f"targets: {args.vote_share:g} x FER+ vote distribution + {1 - args.vote_share:g} x FER2013 label "
            f"(contempt/unknown/not-a-face votes left out, faces with such a majority dropped, faces without votes "
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


def measure_steps(model: keras.Model, train: TrainingSet, args: argparse.Namespace) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per training step, after two warm-up steps that trace the function.

    CPU time is the whole process's (all threads): on a shared machine wall time also counts
    the other processes' turns, CPU time much less so.
    """
    count = args.measure_steps * args.batch_size
    faces = np.resize(train.x, (count, *train.x.shape[1:]))
    labels = np.resize(train.y, count)
    targets = np.resize(train.targets, (count, len(EMOTIONS)))
    weights = sample_weights(targets, args)

    def run(n: int) -> None:
        if uses_dataset(args):
            part = TrainingSet(faces[:n], targets[:n], labels[:n])
            model.fit(batch_dataset(part, args), epochs=1, shuffle=False, verbose=0)
        else:
            model.fit(
                faces[:n, ..., None], targets[:n], sample_weight=weights[:n], batch_size=args.batch_size, verbose=0
            )

    run(2 * args.batch_size)
    cpu, wall = time.process_time(), time.perf_counter()
    run(count)
    return (time.process_time() - cpu) / args.measure_steps, (time.perf_counter() - wall) / args.measure_steps


def load_exactly(model: keras.Model, weights_path: Path) -> None:
    """Load every weight or fail: Keras only warns when part of a file does not match and
    leaves those layers freshly initialised, which would quietly train from a half-random start."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.load_weights(weights_path)
    except (ValueError, UserWarning) as exc:
        raise ValueError(f"{weights_path} does not fit network {model.name!r}: {exc}") from exc


def make_training_set(train: Split, args: argparse.Namespace, keep: np.ndarray | None) -> TrainingSet:
    """The faces that train and their targets: FER2013's one-hot labels, or with `--votes` the
    FER+ vote distributions mixed with them (`training.ferplus.training_targets`)."""
    if not args.votes:
        return TrainingSet(train.x, one_hot(train.y), train.y)
    votes = load_votes(args.votes, "train")
    if keep is not None:
        votes = votes[keep]
    if args.extra_train == "val":
        votes = np.concatenate([votes, load_votes(args.votes, "val")])
    chosen = training_targets(train.y, votes, args.vote_share, args.unvoted)
    print(
        f"FER+ targets: {chosen.keep.sum():,} of {len(train):,} faces train; dropped {chosen.dropped_off_class:,} "
        f"(contempt/unknown/not-a-face majority) and {chosen.dropped_unvoted:,} without votes; "
        f"{chosen.unvoted_kept:,} without votes kept on their FER2013 label"
    )
    return TrainingSet(train.x[chosen.keep], chosen.targets, train.y[chosen.keep])


def inference_copy(model: keras.Model, network: str) -> keras.Model:
    """The same weights in the served form of `network`, without the training state.

    A compiled model's `to_json()` carries its optimizer config, and `save_weights` then
    stores the optimizer's moment estimates too: three times the weights' size, useless for
    serving. The training model may also run the fast path (fused batch norm from
    `training.fused_bn`, a bfloat16 policy), which the server must not need: the copy is the
    plain float32 network built afresh, given the trained weights (same variables, same order).
    """
    clean = models.build(network)
    clean.set_weights(model.get_weights())
    return clean


def write_model(model: keras.Model, network: str, json_path: Path, weights_path: Path) -> None:
    clean = inference_copy(model, network)
    json_path.write_text(clean.to_json(indent=1) + "\n")
    clean.save_weights(weights_path)


def export(model: keras.Model, args: argparse.Namespace, result: RunResult) -> None:
    args.export_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.export_dir / f"{args.name}.json"
    weights_path = args.export_dir / f"{args.name}.weights.h5"
    write_model(model, args.model, json_path, weights_path)
    # The server runs the ONNX copies (onnxruntime, int8 by default); exporting them here keeps
    # them from drifting: a stale int8 file would be served as fp32, with a warning.
    onnx_path = export_onnx(json_path)
    int8_path = export_int8(args.export_dir, args.name, data=args.data, n_faces=None)
    card = args.export_dir / f"{args.name}.md"
    val = result.val
    if args.extra_train == "val":
        data = (
            f"FER2013 Training + PublicTest ({result.train_size:,} faces) from `{args.data.name}`; "
            f"**PublicTest was trained on: the figures below are not held out**; last epoch exported"
        )
        heading = "PublicTest (x_val), trained on: not a held-out measure"
        selection = f"exported epoch: {result.epochs_run} (the last)"
    else:
        data = (
            f"FER2013 Training ({result.train_size:,} faces) from `{args.data.name}`; "
            f"selected on PublicTest (`x_val`, {val.n:,} faces)"
        )
        heading = "PublicTest (x_val)"
        selection = f"best epoch: {result.best_epoch}"
    card.write_text(
        f"# {args.name}\n\n"
        f"- network: `{args.model}` ({model.count_params():,} parameters, "
        f"{models.count_macs(model) / 1e9:.3f} GMAC per face)\n"
        f"- data: {data}\n"
        f"- command: `{result.command}`\n"
        f"- initial weights: {args.init_weights or 'random (seeded)'}\n"
        f"- augmentation: {describe_augmentation()}\n"
        f"- training: {describe_training(args)}\n"
        f"- seed: {args.seed}; epochs run: {result.epochs_run}; {selection}; "
        f"wall time: {result.seconds / 60:.1f} min on this machine\n"
        f"- optimizer: {args.optimizer} (peak lr {args.lr}, cosine, warm-up {args.warmup_epochs} epochs, "
        f"weight decay {args.weight_decay}), batch {args.batch_size}, label smoothing {args.label_smoothing}, "
        f"class-weight power {args.class_weight_power}\n\n"
        + crowd_sections(result)
        + f"## {heading}{' (FER2013 labels)' if result.ferplus else ''}\n\n{val.markdown()}\n"
    )
    print(f"exported {json_path}, {weights_path}, {onnx_path}, {int8_path}, {card}")


def crowd_sections(result: RunResult) -> str:
    if result.ferplus is None or result.agreed is None:
        return ""
    return (
        f"## PublicTest, FER+ majority (the selection figure)\n\n{result.ferplus.markdown()}\n\n"
        f"Faces where FER2013's label is the FER+ majority: **{result.agreed.accuracy:.2%}** "
        f"(n = {result.agreed.n})\n\n"
    )


def summarise_log(csv_path: Path) -> tuple[int, int, float]:
    """(1-based epoch with the best val_accuracy, epochs logged, seconds of epochs) from the CSV log.

    Read from the log rather than this process's clock, so a resumed run counts every epoch.
    """
    if not csv_path.exists():
        return 0, 0, 0.0
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return 0, 0, 0.0
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    seconds = sum(float(r.get("epoch_seconds") or 0) for r in rows)
    return int(best["epoch"]) + 1, len(rows), seconds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The card records the command; main([...]) called from Python has no sys.argv of its own.
    command = "python -m training.train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    keras.utils.set_random_seed(args.seed)
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    keep = np.arange(len(train))
    if args.limit:
        # FER2013 files are often sorted by class: take a seeded random subset, not the head.
        keep = np.random.default_rng(args.seed).permutation(len(train))[: args.limit]
        train = Split(train.x[keep], train.y[keep])
    if args.extra_train == "val":
        train = Split(np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y]))
    val_majority = majority_labels(load_votes(args.votes, "val")) if args.votes else None
    training_set = make_training_set(train, args, keep=keep if args.limit else None)
    print("train counts:", dict(zip(EMOTIONS, class_counts(training_set.y).tolist(), strict=True)))

    model = build_training_model(args)
    if args.init_weights:
        load_exactly(model, args.init_weights)
        print(f"initial weights: {args.init_weights}")
    steps_per_epoch = -(-len(training_set) // args.batch_size)
    model.compile(
        optimizer=make_optimizer(args, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy"],
    )
    if args.measure_steps:
        cpu, wall = measure_steps(model, training_set, args)
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        print(
            f"measure: {args.model} batch-norm {args.batch_norm}, precision {args.precision}, batch {args.batch_size}: "
            f"{cpu:.3f} CPU s/step, {wall:.3f} wall s/step over {args.measure_steps} steps (load average {load})"
        )
        return

    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    best_path, csv_path = run_dir / "best.weights.h5", run_dir / "log.csv"
    started = time.monotonic()
    if not args.export_only:
        # With the votes, CrowdValidation scores PublicTest itself (after the EMA swap).
        validation = None if val_majority is not None else (val.x[..., None], one_hot(val.y))
        callbacks: list[keras.callbacks.Callback] = [
            EpochTimer(),
            # Before the EMA swap: the backup holds the raw weights (the EMA is optimizer state).
            keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        ]
        if args.ema:
            # Swaps the averaged weights in for validation and for the callbacks after it.
            callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if val_majority is not None:
            callbacks.append(CrowdValidation(val, val_majority))
        callbacks += [
            keras.callbacks.ModelCheckpoint(
                str(best_path),
                monitor="val_accuracy",
                mode="max",
                # A run that trains on PublicTest cannot select on it: keep the last epoch.
                save_best_only=args.extra_train is None,
                save_weights_only=True,
            ),
            keras.callbacks.CSVLogger(str(csv_path), append=True),
            *(
                [
                    keras.callbacks.ModelCheckpoint(
                        str(run_dir / "epochs" / "{epoch:03d}.weights.h5"), save_weights_only=True
                    )
                ]
                if args.keep_epochs
                else []
            ),
            LivePlot(csv_path, run_dir / "curves.png"),
        ]
        if uses_dataset(args):
            print("batches:", describe_training(args))
            model.fit(
                batch_dataset(training_set, args),
                validation_data=validation,
                epochs=args.epochs,
                shuffle=False,  # the dataset shuffles itself
                verbose=args.verbose,
                callbacks=callbacks,
            )
        else:
            weights = sample_weights(training_set.targets, args)
            print("class weights:", class_weights(training_set.y, args.class_weight_power))
            model.fit(
                training_set.x[..., None],
                training_set.targets,
                validation_data=validation,
                batch_size=args.batch_size,
                epochs=args.epochs,
                sample_weight=weights,
                verbose=args.verbose,
                callbacks=callbacks,
            )
    model.load_weights(best_path)
    best_epoch, epochs_run, logged_seconds = summarise_log(csv_path)
    probs = model.predict(val.x[..., None], batch_size=256, verbose=0)
    val_report = report(val.y, probs)
    print("PublicTest, FER2013 labels:\n" + val_report.text())
    ferplus_report = agreed_report = None
    if val_majority is not None:
        counted = val_majority >= 0
        agreed = counted & (val_majority == val.y)
        ferplus_report = report(val_majority[counted], probs[counted])
        agreed_report = report(val.y[agreed], probs[agreed])
        print("PublicTest, FER+ majority:\n" + ferplus_report.text())
        print(f"PublicTest, faces where both agree: {agreed_report.accuracy:.4f} (n={agreed_report.n})")
    result = RunResult(
        command=command,
        train_size=len(training_set),
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        seconds=logged_seconds or time.monotonic() - started,
        val=val_report,
        ferplus=ferplus_report,
        agreed=agreed_report,
    )
    export(model, args, result)


if __name__ == "__main__":
    main()
