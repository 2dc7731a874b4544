"""The steps that train or predict: a teacher, the store of the teachers' probabilities, a
student distilled from it, and the ensemble's PublicTest figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from fer_async.labels import EMOTIONS
from training.data import Split, load_split
from training.distill.batches import FaceBatches, sample_weights
from training.distill.fitting import accuracy, check_accelerator, fit, predict_flip_tta
from training.distill.options import Log, command_of, deadline_of, logger, recipe_of, splits
from training.distill.runs import load_network, load_run, load_store, network_of, save_run, save_store
from training.ferplus import load_votes, majority_labels


def _views(path: Path | None, train: Split, count: int, seed: int) -> np.ndarray:
    """The views.npy at `path` (memory-mapped), else `count` views of the training faces rendered here."""
    if path:
        return np.load(path, mmap_mode="r")
    from training.views import render_views

    return render_views(train.x, count, seed)


def _fit_and_save(
    args: argparse.Namespace,
    batches: FaceBatches,
    val: Split,
    *,
    augment: bool,
    label_smoothing: float,
    dtype: str,
    log: Log,
    **record: Any,
) -> None:
    """Trains `args.network` on `batches` and saves the best epoch to `args.out` with its record."""
    result = fit(
        args.network,
        batches,
        val,
        recipe_of(args),
        deadline=deadline_of(args),
        seed=args.seed,
        augment=augment,
        label_smoothing=label_smoothing,
        require_gpu=args.require_gpu,
        log=log,
    )
    weights, val_probs = result.pop("weights"), result.pop("val_probs")
    result.update(record, train_size=len(batches.labels), command=command_of(args), weights_dtype=dtype)
    save_run(args.out, weights, result, dtype=dtype, val_probs=val_probs)
    log(
        f"saved {args.out}: best epoch {result['best_epoch']}/{result['epochs_run']}, PublicTest "
        f"{result['val_accuracy']:.4f}, with flip TTA {result['val_accuracy_tta']:.4f}, {result['seconds']:.0f} s"
    )


def cmd_teacher(args: argparse.Namespace) -> None:
    log = logger(f"teacher {args.network}:{args.seed}")
    train, val = splits(args)
    recipe = recipe_of(args)
    # Fixed views rendered on the CPU instead of the in-model augmentation layers: on a GPU
    # through JAX those layers took most of a training step (issue 14's first GPU run).
    views = np.load(args.views, mmap_mode="r") if args.views else None
    weights = sample_weights(train.y, recipe.class_weight_power)
    batches = FaceBatches(train.x, train.y, weights, recipe.batch_size, args.seed, views=views)
    smoothing, dtype = recipe.label_smoothing, args.save_dtype
    _fit_and_save(
        args, batches, val, augment=views is None, label_smoothing=smoothing, dtype=dtype, log=log, role="teacher"
    )


def cmd_store(args: argparse.Namespace) -> None:
    log = logger("store")
    train, val = splits(args)
    views = _views(args.views, train, args.count, args.view_seed)
    if views.shape[1:] != train.x.shape:
        raise ValueError(f"views {views.shape} do not match the training faces {train.x.shape}")
    check_accelerator(args.require_gpu, log)
    summed = np.zeros((len(views), len(train), len(EMOTIONS)), np.float32)
    val_summed = np.zeros((len(val), len(EMOTIONS)), np.float32)
    teachers = []
    for path in args.teachers:
        weights, record, arrays = load_run(path)
        model = network_of(weights, record, precision=args.precision)
        for k in range(len(views)):
            summed[k] += model.predict(np.asarray(views[k])[..., None], batch_size=2048, verbose=0)
        val_summed += arrays["val_probs"]
        teachers.append({k: record[k] for k in ("network", "seed", "val_accuracy", "val_accuracy_tta", "epochs_run")})
        log(f"{path.name}: {len(views)} views of {len(train)} faces done")
    probs = summed / len(args.teachers)
    ensemble_val = accuracy(val_summed, val.y)
    store = {
        "teachers": teachers,
        "views": len(views),
        "view_seed": args.view_seed,
        "ensemble_val_accuracy_tta": ensemble_val,
        "train_view0_accuracy": accuracy(probs[0], train.y),
        "command": command_of(args),
    }
    save_store(args.out, probs, store)
    log(
        f"ensemble of {len(teachers)}: PublicTest with flip TTA {ensemble_val:.4f}; "
        f"teachers agree with the labels on {store['train_view0_accuracy']:.4f} of the training faces"
    )


def cmd_student(args: argparse.Namespace) -> None:
    log = logger(f"student {args.alpha}:{args.seed}")
    train, val = splits(args)
    teacher, store = load_store(args.store)
    views = _views(args.views, train, store["views"], store["view_seed"])
    recipe = recipe_of(args)
    weights = sample_weights(train.y, recipe.class_weight_power)
    batches = FaceBatches(
        train.x, train.y, weights, recipe.batch_size, args.seed, views=views, teacher=teacher, alpha=args.alpha
    )
    _fit_and_save(
        args,
        batches,
        val,
        augment=False,
        label_smoothing=0.0,
        dtype="float32",
        log=log,
        role="student",
        alpha=args.alpha,
        store=store,
    )


def _ensemble_member(path: Path, name: str) -> Any:
    """A pipeline run (.npz), or an export of `training.train` or `training.blend` (a directory)."""
    if path.is_dir():
        from fer_async.model import load_keras_model

        return load_keras_model(path / f"{name}.json", path / f"{name}.weights.h5")
    return load_network(path)


def cmd_ensemble(args: argparse.Namespace) -> None:
    val = load_split(args.data, "val")
    majority = majority_labels(load_votes(args.votes, "val")) if args.votes else None
    if majority is not None and len(majority) != len(val):
        raise ValueError(f"{args.votes}: {len(majority)} PublicTest vote rows for {len(val)} faces")

    def scores(tta: np.ndarray) -> str:
        if majority is None:
            return ""
        counted = majority >= 0
        agreed = counted & (majority == val.y)
        return (
            f"; FER+ majority {accuracy(tta[counted], majority[counted]):.4f}"
            f", agreed faces {accuracy(tta[agreed], val.y[agreed]):.4f}"
        )

    total = np.zeros((len(val), len(EMOTIONS)), np.float32)
    for path in args.runs:
        tta, plain = predict_flip_tta(_ensemble_member(path, args.name), val.x)
        total += tta
        figures = f"PublicTest {accuracy(plain, val.y):.4f}, with flip TTA {accuracy(tta, val.y):.4f}"
        print(f"{path.name if path.is_file() else path}: {figures}{scores(tta)}")
    print(
        f"ensemble of {len(args.runs)} (averaged flip-TTA probabilities): "
        f"PublicTest {accuracy(total, val.y):.4f}{scores(total)}"
    )
