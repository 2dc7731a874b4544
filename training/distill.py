"""Teachers, a store of their probabilities on fixed views of every training face, and a student
of the served size distilled from it (issue 14).

Runs on any Keras 3 backend and needs no TensorFlow, except `export`: the shipped runs used
`KERAS_BACKEND=jax` on a lent GPU machine. One command runs the whole chain inside a time budget:

    KERAS_BACKEND=jax python -m training.distill pipeline --data fer2013.npz --out runs/distill --minutes 8.5

The steps, each also a subcommand:

* ``teacher``: trains one network (in-model augmentation, AdamW with an EMA of the weights,
  a per-epoch cosine schedule fitted to the deadline) and keeps the epoch whose EMA weights have
  the best PublicTest accuracy with flip TTA: ``<out>.npz`` (weights, PublicTest probabilities,
  and a JSON record of the run).
* ``store``: renders K fixed views of every training face (`training.views`) and averages the
  teachers' probabilities on each: ``store.npz`` [K, N, 7].
* ``student``: trains a network on those views, target = alpha * teachers + (1 - alpha) * label,
  one random view of each face per epoch, with the same schedule, EMA and selection.
* ``ensemble``: PublicTest accuracy of the teachers' averaged flip-TTA probabilities.
* ``export`` (TensorFlow, the [train] extra): a run's ``.npz`` to ``<export-dir>/<name>.json``,
  ``.weights.h5``, ``.onnx``, ``.int8.onnx`` and a card, the form the server loads.

Stop rule (the issue's): no student when the ensemble is below ``--min-ensemble`` (70.5 %).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_async.labels import EMOTIONS
from training.data import DEFAULT_DATA, Split, class_weights, load_split

NUM_CLASSES = len(EMOTIONS)
MIN_ENSEMBLE = 0.705
DEFAULT_TEACHERS = ("fernet:11", "fernet:12", "fernet:13", "fernet_wide:14")
DEFAULT_STUDENTS = ("0.7:21", "0.9:22")  # alpha:seed
VIEWS = 24
VIEW_SEED = 2026
# Share of the pipeline's budget spent on teachers (the rest: store, then students).
TEACHER_SHARE = 0.55
STORE_SECONDS = 60.0


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


# --- weights files -------------------------------------------------------------------------------


def save_run(
    path: Path, weights: list[np.ndarray], record: dict[str, Any], dtype: str = "float32", **arrays: Any
) -> None:
    """Weights as w000..wNNN (the model's `get_weights()` order), extra arrays, and the record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    named: dict[str, Any] = {f"w{i:03d}": w.astype(dtype) for i, w in enumerate(weights)}
    named.update(arrays, record=np.array(json.dumps(record)))
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **named)
    partial.replace(path)


def load_run(path: Path) -> tuple[list[np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """(weights as float32, record, the other arrays) of a `save_run` file."""
    with np.load(path) as data:
        names = sorted(k for k in data.files if k.startswith("w") and k[1:].isdigit())
        weights = [data[k].astype(np.float32) for k in names]
        record = json.loads(str(data["record"]))
        arrays = {k: data[k] for k in data.files if k not in names and k != "record"}
    return weights, record, arrays


def load_network(path: Path, *, augment: bool = False, precision: str = "fp32") -> Any:
    return network_of(*load_run(path)[:2], augment=augment, precision=precision)


def network_of(
    weights: list[np.ndarray], record: dict[str, Any], *, augment: bool = False, precision: str = "fp32"
) -> Any:
    """The run's network (`record["network"]`) holding its weights."""
    from training import models

    model = models.build(record["network"], precision=precision, augment=augment)
    model.set_weights(weights)
    return model


# --- training ------------------------------------------------------------------------------------


def predict_flip_tta(model: Any, faces: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities averaged with the mirror image, probabilities of the face alone)."""
    x = faces[..., None] if faces.ndim == 3 else faces
    plain = model.predict(x, batch_size=batch_size, verbose=0)
    mirrored = model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)
    return (plain + mirrored) / 2.0, plain


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def ema_weights(model: Any) -> list[np.ndarray]:
    """The model's weights with each trainable variable replaced by its moving average.

    Read from the optimizer (`use_ema=True`) rather than swapped in, so that the weights being
    trained are never touched; non-trainable ones (batch-norm statistics) are the live values.
    """
    import keras

    optimizer = model.optimizer
    averages = {
        id(v): a for v, a in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True)
    }
    return [keras.ops.convert_to_numpy(averages.get(id(v), v).value) for v in model.weights]


def _keras_callbacks() -> Any:
    import keras

    class SelectOnValidation(keras.callbacks.Callback):
        """After every epoch: EMA weights → a separate float32 copy without augmentation →
        PublicTest with and without flip TTA; keeps the best epoch's weights and probabilities."""

        def __init__(self, evaluator: Any, val: Split, log: Any) -> None:
            super().__init__()
            self.evaluator, self.val, self.log = evaluator, val, log
            self.best_accuracy, self.best_epoch = -1.0, -1
            self.best_weights: list[np.ndarray] = []
            self.best_probs = np.zeros((0, NUM_CLASSES), np.float32)
            self.history: list[dict[str, float]] = []

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            weights = ema_weights(self.model)
            self.evaluator.set_weights(weights)
            tta, plain = predict_flip_tta(self.evaluator, self.val.x)
            row = {
                "epoch": epoch + 1,
                "loss": float((logs or {}).get("loss", float("nan"))),
                "train_accuracy": float((logs or {}).get("accuracy", float("nan"))),
                "val_accuracy": accuracy(plain, self.val.y),
                "val_accuracy_tta": accuracy(tta, self.val.y),
                "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            }
            self.history.append(row)
            if row["val_accuracy_tta"] > self.best_accuracy:
                self.best_accuracy, self.best_epoch = row["val_accuracy_tta"], epoch + 1
                self.best_weights, self.best_probs = weights, tta.astype(np.float32)
            self.log(
                f"epoch {epoch + 1}: loss {row['loss']:.4f} train {row['train_accuracy']:.4f} "
                f"val {row['val_accuracy']:.4f} val+tta {row['val_accuracy_tta']:.4f} lr {row['lr']:.2e}"
            )

    class DeadlineSchedule(keras.callbacks.Callback):
        """Linear warm-up, then a cosine that ends with the last epoch that fits before the deadline.

        The number of epochs is re-estimated after every epoch from the mean of the finished ones
        (the first excluded: it compiles) and can only shrink, so the schedule anneals on time
        on a machine of any speed; `max_epochs` bounds it on a fast one.
        """

        def __init__(self, recipe: Recipe, deadline: float, log: Any) -> None:
            super().__init__()
            self.recipe, self.deadline, self.log = recipe, deadline, log
            self.planned = recipe.max_epochs
            self.durations: list[float] = []

        def learning_rate(self, epoch: int) -> float:
            r = self.recipe
            if epoch < r.warmup_epochs:
                return r.lr * (0.1 + 0.9 * epoch / r.warmup_epochs)
            span = max(self.planned - r.warmup_epochs, 1)
            return r.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - r.warmup_epochs + 0.5) / span))

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.started = time.time()
            self.model.optimizer.learning_rate = self.learning_rate(epoch)

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.durations.append(time.time() - self.started)
            if epoch < 3:
                self.log(f"epoch {epoch + 1} took {self.durations[-1]:.1f} s")
            if len(self.durations) < 2:  # the first epoch compiles: no estimate from it
                planned = self.planned if time.time() < self.deadline else epoch + 1
            else:
                timed = self.durations[1:]
                fits = int((self.deadline - time.time()) / (sum(timed) / len(timed)))
                planned = min(self.planned, epoch + 1 + fits)
            if planned != self.planned:
                self.log(f"schedule: {planned} epochs fit before the deadline (epoch {epoch + 1})")
                self.planned = planned
            if epoch + 1 >= self.planned:
                self.model.stop_training = True

    return SelectOnValidation, DeadlineSchedule


def check_accelerator(required: bool, log: Any) -> str:
    """The backend and the devices it computes on; with `required`, exit 3 where that is no GPU
    (JAX, for one, falls back to the CPU with only a warning when its CUDA plugin fails)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        platforms = sorted({d.platform for d in jax.devices()})
    elif backend == "torch":
        import torch

        platforms = ["gpu"] if torch.cuda.is_available() else ["cpu"]
    else:
        import tensorflow as tf

        platforms = ["gpu"] if tf.config.list_physical_devices("GPU") else ["cpu"]
    log(f"Keras {keras.__version__} on {backend}, devices: {', '.join(platforms)}")
    if required and "gpu" not in platforms and "cuda" not in platforms:
        log(f"no GPU for the {backend} backend")
        raise SystemExit(3)
    return backend


def fit(
    network: str,
    data: Any,
    val: Split,
    recipe: Recipe,
    *,
    deadline: float,
    seed: int,
    augment: bool,
    label_smoothing: float,
    require_gpu: bool,
    log: Any,
) -> dict[str, Any]:
    """Train `network` on `data` (a PyDataset) until the schedule ends; the best epoch's record."""
    import keras

    from training import models

    keras.utils.set_random_seed(seed)
    check_accelerator(require_gpu, log)
    model = models.build(network, precision=recipe.precision, augment=augment)
    evaluator = models.build(network, augment=False)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            recipe.lr, weight_decay=recipe.weight_decay, use_ema=True, ema_momentum=recipe.ema_momentum
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    select_cls, schedule_cls = _keras_callbacks()
    select = select_cls(evaluator, val, log)
    schedule = schedule_cls(recipe, deadline, log)
    started = time.time()
    model.fit(data, epochs=recipe.max_epochs, verbose=0, callbacks=[select, schedule])
    seconds = time.time() - started
    if not select.best_weights:
        raise RuntimeError("no epoch finished before the deadline")
    evaluator.set_weights(select.best_weights)
    tta, plain = predict_flip_tta(evaluator, val.x)
    return {
        "network": network,
        "seed": seed,
        "backend": keras.backend.backend(),
        "recipe": asdict(recipe),
        "epochs_run": len(select.history),
        "best_epoch": select.best_epoch,
        "seconds": round(seconds, 1),
        "val_accuracy": accuracy(plain, val.y),
        "val_accuracy_tta": accuracy(tta, val.y),
        "history": select.history,
        "weights": select.best_weights,
        "val_probs": tta.astype(np.float32),
    }


def _pydataset() -> Any:
    import keras

    class FaceBatches(keras.utils.PyDataset):
        """Shuffled batches of (face, target, sample weight). With views, each face is shown as
        one of its K views per epoch, with its label, or with `teacher`, a target mixing that
        view's teacher probabilities and the label; without, the face itself and its label (the
        model augments it)."""

        def __init__(
            self,
            faces: np.ndarray,
            labels: np.ndarray,
            weights: np.ndarray,
            batch_size: int,
            seed: int,
            views: np.ndarray | None = None,
            teacher: np.ndarray | None = None,
            alpha: float = 0.0,
        ) -> None:
            super().__init__()
            self.faces, self.labels, self.weights = faces, labels, weights
            self.views, self.teacher, self.alpha = views, teacher, alpha
            self.batch_size = batch_size
            self.onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(self.labels))
            count = 1 if self.views is None else len(self.views)
            self.view_of = self.rng.integers(0, count, len(self.labels))

        def __len__(self) -> int:
            return -(-len(self.labels) // self.batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            ids = self.order[index * self.batch_size : (index + 1) * self.batch_size]
            if self.views is None:
                return self.faces[ids][..., None], self.onehot[ids], self.weights[ids]
            views = self.view_of[ids]
            faces = self.views[views, ids][..., None]
            if self.teacher is None:
                return faces, self.onehot[ids], self.weights[ids]
            soft = self.teacher[views, ids].astype(np.float32)
            soft /= soft.sum(axis=1, keepdims=True)
            target = self.alpha * soft + (1.0 - self.alpha) * self.onehot[ids]
            return faces, target, self.weights[ids]

    return FaceBatches


def sample_weights(labels: np.ndarray, power: float) -> np.ndarray:
    if power <= 0:
        return np.ones(len(labels), np.float32)
    weights = class_weights(labels, power)
    return np.array([weights[int(label)] for label in labels], np.float32)


def _logger(prefix: str) -> Any:
    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} {prefix}] {message}", flush=True)

    return log


def _deadline(args: argparse.Namespace) -> float:
    return args.deadline if args.deadline else time.time() + args.minutes * 60.0


def _recipe(args: argparse.Namespace) -> Recipe:
    return Recipe(max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, precision=args.precision)


def _splits(args: argparse.Namespace) -> tuple[Split, Split]:
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    if args.limit:
        keep = np.random.default_rng(0).permutation(len(train))[: args.limit]
        train = Split(train.x[keep], train.y[keep])
    return train, val


def _views(path: Path | None, train: Split, count: int, seed: int) -> np.ndarray:
    """The views.npy at `path` (memory-mapped), else `count` views of the training faces rendered here."""
    if path:
        return np.load(path, mmap_mode="r")
    from training.views import render_views

    return render_views(train.x, count, seed)


def _finish(out: Path, result: dict[str, Any], command: str, dtype: str, log: Any, **record: Any) -> None:
    weights, val_probs = result.pop("weights"), result.pop("val_probs")
    result.update(record, command=command, weights_dtype=dtype)
    save_run(out, weights, result, dtype=dtype, val_probs=val_probs)
    log(
        f"saved {out}: best epoch {result['best_epoch']}/{result['epochs_run']}, PublicTest "
        f"{result['val_accuracy']:.4f}, with flip TTA {result['val_accuracy_tta']:.4f}, {result['seconds']:.0f} s"
    )


def cmd_teacher(args: argparse.Namespace) -> None:
    log = _logger(f"teacher {args.network}:{args.seed}")
    train, val = _splits(args)
    recipe = _recipe(args)
    # Fixed views rendered on the CPU instead of the in-model augmentation layers: on a GPU
    # through JAX those layers took most of a training step (issue 14's first GPU run).
    views = np.load(args.views, mmap_mode="r") if args.views else None
    batches = _pydataset()(
        train.x, train.y, sample_weights(train.y, recipe.class_weight_power), recipe.batch_size, args.seed, views=views
    )
    result = fit(
        args.network,
        batches,
        val,
        recipe,
        deadline=_deadline(args),
        seed=args.seed,
        augment=views is None,
        label_smoothing=recipe.label_smoothing,
        require_gpu=args.require_gpu,
        log=log,
    )
    _finish(args.out, result, _command(args), args.save_dtype, log, role="teacher", train_size=len(train))


def cmd_store(args: argparse.Namespace) -> None:
    log = _logger("store")
    train, val = _splits(args)
    views = _views(args.views, train, args.count, args.view_seed)
    if views.shape[1:] != train.x.shape:
        raise ValueError(f"views {views.shape} do not match the training faces {train.x.shape}")
    check_accelerator(args.require_gpu, log)
    summed = np.zeros((len(views), len(train), NUM_CLASSES), np.float32)
    val_summed = np.zeros((len(val), NUM_CLASSES), np.float32)
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
    record = {
        "teachers": teachers,
        "views": len(views),
        "view_seed": args.view_seed,
        "ensemble_val_accuracy_tta": ensemble_val,
        "train_view0_accuracy": accuracy(probs[0], train.y),
        "command": _command(args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, probs=probs.astype(np.float16), record=np.array(json.dumps(record)))
    log(
        f"ensemble of {len(teachers)}: PublicTest with flip TTA {ensemble_val:.4f}; "
        f"teachers agree with the labels on {record['train_view0_accuracy']:.4f} of the training faces"
    )


def cmd_student(args: argparse.Namespace) -> None:
    log = _logger(f"student {args.alpha}:{args.seed}")
    train, val = _splits(args)
    with np.load(args.store) as store:
        teacher = store["probs"]
        store_record = json.loads(str(store["record"]))
    views = _views(args.views, train, store_record["views"], store_record["view_seed"])
    recipe = _recipe(args)
    batches = _pydataset()(
        train.x,
        train.y,
        sample_weights(train.y, recipe.class_weight_power),
        recipe.batch_size,
        args.seed,
        views=views,
        teacher=teacher,
        alpha=args.alpha,
    )
    result = fit(
        args.network,
        batches,
        val,
        recipe,
        deadline=_deadline(args),
        seed=args.seed,
        augment=False,
        label_smoothing=0.0,
        require_gpu=args.require_gpu,
        log=log,
    )
    _finish(
        args.out,
        result,
        _command(args),
        "float32",
        log,
        role="student",
        alpha=args.alpha,
        store=store_record,
        train_size=len(train),
    )


def cmd_ensemble(args: argparse.Namespace) -> None:
    val = load_split(args.data, "val")
    total = np.zeros((len(val), NUM_CLASSES), np.float32)
    for path in args.runs:
        tta, plain = predict_flip_tta(load_network(path), val.x)
        total += tta
        print(f"{path.name}: PublicTest {accuracy(plain, val.y):.4f}, with flip TTA {accuracy(tta, val.y):.4f}")
    print(f"ensemble of {len(args.runs)} (averaged flip-TTA probabilities): PublicTest {accuracy(total, val.y):.4f}")


# --- the chain -----------------------------------------------------------------------------------


class Steps:
    """Runs steps of this module as child processes, side by side, each with the pipeline's
    common options. A step that fails early on the chosen Keras backend is retried once on the
    torch backend, which every later step then uses too (a GPU image may hold a JAX that the
    installed Keras does not support)."""

    def __init__(self, args: argparse.Namespace, log_file: Any, log: Any) -> None:
        self.args, self.log_file, self.log = args, log_file, log
        self.env = dict(os.environ)

    def _spawn(self, step: list[str], deadline: float) -> subprocess.Popen[bytes]:
        a = self.args
        command = [
            sys.executable,
            "-m",
            "training.distill",
            *step,
            "--data",
            str(a.data),
            "--deadline",
            f"{deadline:.0f}",
        ]
        command += ["--precision", a.precision, "--batch-size", str(a.batch_size), "--max-epochs", str(a.max_epochs)]
        command += ["--lr", str(a.lr)] + (["--limit", str(a.limit)] if a.limit else [])
        command += ["--require-gpu"] if a.require_gpu else []
        return subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT, env=self.env)

    def run(self, jobs: dict[str, list[str]], deadline: float) -> list[str]:
        """Runs every job to its end; the names of those that failed."""
        running = {name: self._spawn(step, deadline) for name, step in jobs.items()}
        retried: set[str] = set()
        failed: list[str] = []
        while running:
            time.sleep(0.5)
            for name, process in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode == 0:
                    continue
                backend = self.env.get("KERAS_BACKEND", "tensorflow")
                if name not in retried and backend != "torch" and time.time() < deadline - 60:
                    self.log(f"{name} failed on the {backend} backend (exit {process.returncode}): again on torch")
                    self.env["KERAS_BACKEND"] = "torch"
                    retried.add(name)
                    running[name] = self._spawn(jobs[name], deadline)
                else:
                    self.log(f"{name} failed (exit {process.returncode})")
                    failed.append(name)
        return failed


def cmd_pipeline(args: argparse.Namespace) -> None:
    """Teachers side by side, then the store, then students side by side, each with a deadline
    inside the budget; the orchestrating process never imports Keras (it forks view renderers)."""
    log = _logger("pipeline")
    started = time.time()
    end = started + args.minutes * 60.0
    teacher_end = started + args.minutes * 60.0 * args.teacher_share
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary: dict[str, Any] = {"command": _command(args), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def note(**entries: Any) -> None:
        summary.update(entries)
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")

    steps = Steps(args, (args.out / "pipeline.log").open("ab", buffering=0), log)
    teachers: dict[str, list[str]] = {}
    for spec in args.teachers:
        network, seed = spec.split(":")
        out = args.out / f"teacher_{network}_{seed}.npz"
        dtype = "float16" if network != "fernet" else "float32"  # the wide one must fit a 16 MB file
        step = ["teacher", "--network", network, "--seed", seed, "--out", str(out), "--save-dtype", dtype]
        teachers[str(out)] = [*step, "--views", str(args.work / "views.npy")]

    from training.views import render_views

    # Rendered (forked workers) before any child has started: they then share the page cache.
    train = _splits(args)[0]
    views_path = args.work / "views.npy"
    np.save(views_path, render_views(train.x, args.views, VIEW_SEED))
    log(f"{args.views} views of {len(train)} faces rendered in {time.time() - started:.0f} s")
    log(f"{len(teachers)} teachers start, deadline in {teacher_end - time.time():.0f} s")
    failed = steps.run(teachers, teacher_end)
    done = [Path(p) for p in teachers if p not in failed and Path(p).is_file()]
    note(
        teachers=[load_run(p)[1] | {"file": p.name} for p in done],
        failed=failed,
        backend=steps.env.get("KERAS_BACKEND"),
    )
    if not done:
        log("no teacher finished: stopping")
        return

    store_path = args.work / "store.npz"
    step = ["store", "--teachers", *map(str, done), "--views", str(views_path), "--view-seed", str(VIEW_SEED)]
    if steps.run({"store": [*step, "--out", str(store_path)]}, end):
        return
    with np.load(store_path) as data:
        store_record = json.loads(str(data["record"]))
    note(store=store_record)
    if store_record["ensemble_val_accuracy_tta"] < args.min_ensemble:
        log(f"ensemble below {args.min_ensemble:.3f} on PublicTest: no distillation (the issue's stop rule)")
        return

    students: dict[str, list[str]] = {}
    for spec in args.students:
        alpha, seed = spec.split(":")
        out = args.out / f"student_{alpha}_{seed}.npz"
        step = ["student", "--store", str(store_path), "--views", str(views_path), "--alpha", alpha, "--seed", seed]
        students[str(out)] = [*step, "--out", str(out)]
    log(f"{len(students)} students start, deadline in {end - time.time():.0f} s")
    failed = steps.run(students, end)
    finished = [Path(p) for p in students if p not in failed and Path(p).is_file()]
    note(students=[{k: v for k, v in load_run(p)[1].items() if k != "store"} | {"file": p.name} for p in finished])
    log(f"done in {time.time() - started:.0f} s")


# --- export (TensorFlow) -------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> None:
    """A run's weights in the served form, beside a card that records the run."""
    from training import models
    from training.export_onnx import export_int8, export_onnx
    from training.metrics import report
    from training.train import write_model

    weights, record, _ = load_run(args.run)
    model = network_of(weights, record, augment=True)
    val = load_split(args.data, "val")
    tta, plain = predict_flip_tta(model, val.x)
    args.export_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.export_dir / f"{args.name}.json"
    weights_path = args.export_dir / f"{args.name}.weights.h5"
    write_model(model, record["network"], json_path, weights_path)
    onnx_path = export_onnx(json_path)
    int8_path = export_int8(args.export_dir, args.name, data=args.data, n_faces=None)
    history = "\n".join(
        f"| {h['epoch']} | {h['loss']:.4f} | {h['val_accuracy']:.4f} | {h['val_accuracy_tta']:.4f} |"
        for h in record["history"]
    )
    store = record.get("store", {})
    teachers = "\n".join(
        f"| {t['network']} | {t['seed']} | {t['epochs_run']} | {t['val_accuracy']:.2%} | {t['val_accuracy_tta']:.2%} |"
        for t in store.get("teachers", [])
    )
    card = args.export_dir / f"{args.name}.md"
    card.write_text(
        f"# {args.name}\n\n"
        f"- network: `{record['network']}` ({model.count_params():,} parameters, "
        f"{models.count_macs(model) / 1e9:.3f} GMAC per face)\n"
        f"- made by: `{record['command']}` (Keras backend {record['backend']}), exported with "
        f"`python -m training.distill export {args.run} --name {args.name}`\n"
        f"- role: {record['role']}"
        + (f", alpha {record['alpha']} (target = alpha x teachers + (1 - alpha) x label)" if "alpha" in record else "")
        + f"\n- seed: {record['seed']}; epochs run: {record['epochs_run']}; best epoch: {record['best_epoch']} "
        f"(EMA weights, selected on PublicTest with flip TTA); {record['seconds']:.0f} s of training\n"
        f"- recipe: {record['recipe']}\n\n"
        + (
            f"## Teachers ({store['views']} fixed views per face, view seed {store['view_seed']})\n\n"
            "| network | seed | epochs | PublicTest | + flip TTA |\n|---|---:|---:|---:|---:|\n"
            f"{teachers}\n\nensemble (averaged flip-TTA probabilities): "
            f"**{store['ensemble_val_accuracy_tta']:.2%}**\n\n"
            if store
            else ""
        )
        + f"## PublicTest (x_val), flip TTA, measured here by the export\n\n{report(val.y, tta).markdown()}\n\n"
        f"without TTA: {accuracy(plain, val.y):.2%}\n\n"
        f"## Epochs\n\n| epoch | loss | PublicTest | + flip TTA |\n|---:|---:|---:|---:|\n{history}\n"
    )
    print(f"exported {json_path}, {weights_path}, {onnx_path}, {int8_path}, {card}")
    print(f"PublicTest with flip TTA {accuracy(tta, val.y):.4f}")


# --- command line --------------------------------------------------------------------------------


def _command(args: argparse.Namespace) -> str:
    return "python -m training.distill " + " ".join(shlex.quote(a) for a in args.argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("runs", type=Path, nargs="+")

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
    p.add_argument("--export-dir", type=Path, default=Path(__file__).resolve().parent.parent / "weights")

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    steps = {
        "teacher": cmd_teacher,
        "store": cmd_store,
        "student": cmd_student,
        "ensemble": cmd_ensemble,
        "pipeline": cmd_pipeline,
        "export": cmd_export,
    }
    steps[args.step](args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
