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


def _views(path: Path | None, train: Split, count: int, seed: int) -> np.ndarray:
    """The views.npy at `path` (memory-mapped), else `count` views of the training faces rendered here."""
    if path:
        return np.load(path, mmap_mode="r")
    from training.views import render_views

    return render_views(train.x, count, seed)


def _finish(out: Path, result: dict[str, Any], command: str, dtype: str, log: Log, **record: Any) -> None:
    weights, val_probs = result.pop("weights"), result.pop("val_probs")
    result.update(record, command=command, weights_dtype=dtype)
    save_run(out, weights, result, dtype=dtype, val_probs=val_probs)
    log(
        f"saved {out}: best epoch {result['best_epoch']}/{result['epochs_run']}, PublicTest "
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
    result = fit(
        args.network,
        batches,
        val,
        recipe,
        deadline=deadline_of(args),
        seed=args.seed,
        augment=views is None,
        label_smoothing=recipe.label_smoothing,
        require_gpu=args.require_gpu,
        log=log,
    )
    _finish(args.out, result, command_of(args), args.save_dtype, log, role="teacher", train_size=len(train))


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
    result = fit(
        args.network,
        batches,
        val,
        recipe,
        deadline=deadline_of(args),
        seed=args.seed,
        augment=False,
        label_smoothing=0.0,
        require_gpu=args.require_gpu,
        log=log,
    )
    record = {"role": "student", "alpha": args.alpha, "store": store, "train_size": len(train)}
    _finish(args.out, result, command_of(args), "float32", log, **record)


def cmd_ensemble(args: argparse.Namespace) -> None:
    val = load_split(args.data, "val")
    total = np.zeros((len(val), len(EMOTIONS)), np.float32)
    for path in args.runs:
        tta, plain = predict_flip_tta(load_network(path), val.x)
        total += tta
        print(f"{path.name}: PublicTest {accuracy(plain, val.y):.4f}, with flip TTA {accuracy(tta, val.y):.4f}")
    print(f"ensemble of {len(args.runs)} (averaged flip-TTA probabilities): PublicTest {accuracy(total, val.y):.4f}")
