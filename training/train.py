"""Train a network on FER2013 and export it for the server.

    python -m training.train --model fernet --epochs 50 --seed 1337

Each run lives in `--run-dir` (default runs/<model>): `best.weights.h5` (ModelCheckpoint on the
best validation accuracy), `log.csv` (one row per epoch), `curves.png` (loss/accuracy, redrawn
after every epoch so you can watch it) and `backup/` (an interrupted run resumes from its last
finished epoch when started again with the same command). At the end the best checkpoint is
evaluated on the validation split and exported as `<export-dir>/<model>.json` (`to_json()`),
`<export-dir>/<model>.weights.h5` and a card `<export-dir>/<model>.md`.

Select only on validation (FER2013 PublicTest); the test split is held out.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from fer_async.config import DEFAULT_WEIGHTS_DIR
from fer_async.labels import EMOTIONS
from training import models
from training.data import DEFAULT_DATA, class_counts, class_weights, load_split
from training.metrics import Report, report
from training.plots import plot_history

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
        "--init-weights",
        type=Path,
        default=None,
        help="start from these weights (e.g. an earlier export of the same network) instead of random ones",
    )
    p.add_argument("--limit", type=int, default=0, help="use only the first N training faces (smoke tests)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/<model>")
    p.add_argument("--export-dir", type=Path, default=DEFAULT_EXPORT_DIR)
    p.add_argument("--name", default=None, help="exported file stem (default: the model name)")
    p.add_argument("--export-only", action="store_true", help="skip training; export the run's best checkpoint")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="1 = progress bar, 2 = one line/epoch")
    args = p.parse_args(argv)
    # The card records the command; main([...]) called from Python has no sys.argv of its own.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.run_dir = args.run_dir or REPO / "runs" / args.model
    args.name = args.name or args.model
    return args


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
    if args.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    return keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)


def load_exactly(model: keras.Model, weights_path: Path) -> None:
    """Load every weight or fail: Keras only warns when part of a file does not match and
    leaves those layers freshly initialised, which would quietly train from a half-random start."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.load_weights(weights_path)
    except (ValueError, UserWarning) as exc:
        raise ValueError(f"{weights_path} does not fit network {model.name!r}: {exc}") from exc


def evaluate_model(model: keras.Model, x: np.ndarray, y: np.ndarray) -> Report:
    probs = model.predict(x[..., None], batch_size=256, verbose=0)
    return report(y, probs)


def inference_copy(model: keras.Model) -> keras.Model:
    """The same network and weights without the training state.

    A compiled model's `to_json()` carries its optimizer config, and `save_weights` then
    stores the optimizer's moment estimates too: three times the weights' size, useless for
    serving. A fresh model from the architecture config has neither.
    """
    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    return clean


def write_model(model: keras.Model, json_path: Path, weights_path: Path) -> None:
    clean = inference_copy(model)
    json_path.write_text(clean.to_json(indent=1) + "\n")
    clean.save_weights(weights_path)


def export(model: keras.Model, args: argparse.Namespace, val: Report, seconds: float, epochs_run: int) -> None:
    args.export_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.export_dir / f"{args.name}.json"
    weights_path = args.export_dir / f"{args.name}.weights.h5"
    write_model(model, json_path, weights_path)
    card = args.export_dir / f"{args.name}.md"
    command = "python -m training.train " + " ".join(shlex.quote(str(a)) for a in args.argv)
    card.write_text(
        f"# {args.name}\n\n"
        f"- network: `{args.model}` ({model.count_params():,} parameters, "
        f"{models.count_macs(model) / 1e9:.3f} GMAC per face)\n"
        f"- data: FER2013 Training ({args.train_size:,} faces) from `{args.data.name}`; "
        f"selected on PublicTest (`x_val`, {val.n:,} faces)\n"
        f"- command: `{command}`\n"
        f"- initial weights: {args.init_weights or 'random (seeded)'}\n"
        f"- augmentation: {models.describe_augmentation()}\n"
        f"- seed: {args.seed}; epochs run: {epochs_run}; best epoch: {args.best_epoch}; "
        f"wall time: {seconds / 60:.1f} min on this machine\n"
        f"- optimizer: {args.optimizer} (peak lr {args.lr}, cosine, warm-up {args.warmup_epochs} epochs, "
        f"weight decay {args.weight_decay}), batch {args.batch_size}, label smoothing {args.label_smoothing}, "
        f"class-weight power {args.class_weight_power}\n\n"
        f"## PublicTest (x_val)\n\n{val.markdown()}\n"
    )
    print(f"exported {json_path}, {weights_path}, {card}")


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
    keras.utils.set_random_seed(args.seed)
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    if args.limit:
        # FER2013 files are often sorted by class: take a seeded random subset, not the head.
        keep = np.random.default_rng(args.seed).permutation(len(train))[: args.limit]
        train = type(train)(train.x[keep], train.y[keep])
    args.train_size = len(train)
    print("train counts:", dict(zip(EMOTIONS, class_counts(train.y).tolist(), strict=True)))

    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    best_path, csv_path = run_dir / "best.weights.h5", run_dir / "log.csv"
    model = models.build(args.model)
    if args.init_weights:
        load_exactly(model, args.init_weights)
        print(f"initial weights: {args.init_weights}")
    steps_per_epoch = -(-len(train) // args.batch_size)
    model.compile(
        optimizer=make_optimizer(args, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy"],
    )
    started = time.monotonic()
    if not args.export_only:
        weights = class_weights(train.y, args.class_weight_power) if args.class_weight_power > 0 else None
        print("class weights:", weights)
        model.fit(
            train.x[..., None],
            keras.utils.to_categorical(train.y, len(EMOTIONS)),
            validation_data=(val.x[..., None], keras.utils.to_categorical(val.y, len(EMOTIONS))),
            batch_size=args.batch_size,
            epochs=args.epochs,
            class_weight=weights,
            verbose=args.verbose,
            callbacks=[
                EpochTimer(),
                keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
                keras.callbacks.ModelCheckpoint(
                    str(best_path), monitor="val_accuracy", mode="max", save_best_only=True, save_weights_only=True
                ),
                keras.callbacks.CSVLogger(str(csv_path), append=True),
                LivePlot(csv_path, run_dir / "curves.png"),
            ],
        )
    model.load_weights(best_path)
    args.best_epoch, epochs_run, logged_seconds = summarise_log(csv_path)
    seconds = logged_seconds or time.monotonic() - started
    val_report = evaluate_model(model, val.x, val.y)
    print(val_report.text())
    export(model, args, val_report, seconds, epochs_run)


if __name__ == "__main__":
    main()
