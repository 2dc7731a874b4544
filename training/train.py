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

from fer_async.labels import EMOTIONS
from training import models, train_options
from training.augmentation import describe_augmentation
from training.card import Measured, RunCard, network_size
from training.data import Split, class_counts, class_weights, load_split
from training.ferplus import load_votes, majority_labels
from training.metrics import Report, report
from training.plots import plot_history
from training.served_form import write_served_form
from training.train_data import TrainingSet, batch_dataset, make_training_set, one_hot, sample_weights, uses_dataset
from training.train_options import describe_training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return train_options.parse_args(argv, description=__doc__)


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
    # docs/training.md, "Fast training path") but decides itself what to downcast and applies to every graph of the
    # process, the final evaluation included; the policy keeps the softmax float32 explicitly.
    return models.build(args.model, fused_bn=args.batch_norm == "fused", precision=args.precision)


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


def export(model: keras.Model, args: argparse.Namespace, result: RunResult) -> None:
    # The server runs the ONNX copies (onnxruntime, int8 by default): exporting them here keeps
    # them from drifting.
    paths = write_served_form(model, args.model, args.export_dir, args.name, args.data)
    card = args.export_dir / f"{args.name}.md"
    card.write_text(run_card(model, args, result).markdown())
    print(f"exported {', '.join(map(str, paths))}, {card}")


def run_card(model: keras.Model, args: argparse.Namespace, result: RunResult) -> RunCard:
    if args.extra_train == "val":
        data = (
            f"FER2013 Training + PublicTest ({result.train_size:,} faces) from `{args.data.name}`; "
            f"**PublicTest was trained on: the figures below are not held out**; last epoch exported"
        )
        where = "PublicTest (x_val), trained on: not a held-out measure"
        selection = f"exported epoch: {result.epochs_run} (the last)"
    else:
        data = (
            f"FER2013 Training ({result.train_size:,} faces) from `{args.data.name}`; "
            f"selected on PublicTest (`x_val`, {result.val.n:,} faces){' by its FER+ majority' if args.votes else ''}"
        )
        where, selection = "PublicTest (x_val)", f"best epoch: {result.best_epoch}"
    parameters, macs = network_size(model)
    return RunCard(
        name=args.name,
        network=args.model,
        parameters=parameters,
        macs=macs,
        data=data,
        command=result.command,
        seed=args.seed,
        epochs=f"epochs run: {result.epochs_run}; {selection}",
        wall_seconds=result.seconds,
        optimizer=f"{args.optimizer} (peak lr {args.lr}, cosine, warm-up {args.warmup_epochs} epochs, weight decay "
        f"{args.weight_decay}), batch {args.batch_size}, label smoothing {args.label_smoothing}, class-weight power "
        f"{args.class_weight_power}",
        measured=Measured(where, result.val, result.ferplus, result.agreed, ferplus_selected=args.extra_train is None),
        details=[
            ("initial weights", str(args.init_weights or "random (seeded)")),
            ("augmentation", describe_augmentation()),
            ("training", describe_training(args)),
        ],
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
