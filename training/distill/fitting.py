"""Training one network of the distillation: AdamW with an EMA of the weights, a cosine schedule
fitted to a deadline, and the epoch kept whose EMA weights score best on PublicTest with flip TTA."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import keras
import numpy as np

from fer_async.labels import EMOTIONS
from training import models
from training.data import Split
from training.distill.ema import ema_weights
from training.distill.options import Log, Recipe


def predict_flip_tta(model: Any, faces: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities averaged with the mirror image, probabilities of the face alone)."""
    x = faces[..., None] if faces.ndim == 3 else faces
    plain = model.predict(x, batch_size=batch_size, verbose=0)
    mirrored = model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)
    return (plain + mirrored) / 2.0, plain


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == labels))


class SelectOnValidation(keras.callbacks.Callback):
    """After every epoch: EMA weights → a separate float32 copy without augmentation → PublicTest
    with and without flip TTA; keeps the best epoch's weights and probabilities."""

    def __init__(self, evaluator: keras.Model, val: Split, log: Log) -> None:
        super().__init__()
        self.evaluator, self.val, self.log = evaluator, val, log
        self.best_accuracy, self.best_epoch = -1.0, -1
        self.best_weights: list[np.ndarray] = []
        self.best_probs = np.zeros((0, len(EMOTIONS)), np.float32)
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        weights = ema_weights(self.model, self.evaluator)
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

    def __init__(self, recipe: Recipe, deadline: float, log: Log) -> None:
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


def check_accelerator(required: bool, log: Log) -> str:
    """The backend and the devices it computes on; with `required`, exit 3 where that is no GPU
    (JAX, for one, falls back to the CPU with only a warning when its CUDA plugin fails)."""
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
    data: keras.utils.PyDataset,
    val: Split,
    recipe: Recipe,
    *,
    deadline: float,
    seed: int,
    augment: bool,
    label_smoothing: float,
    require_gpu: bool,
    log: Log,
) -> dict[str, Any]:
    """Train `network` on `data` until the schedule ends; the best epoch's record."""
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
    select = SelectOnValidation(evaluator, val, log)
    schedule = DeadlineSchedule(recipe, deadline, log)
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
        "label_smoothing": label_smoothing,
        "epochs_run": len(select.history),
        "best_epoch": select.best_epoch,
        "seconds": round(seconds, 1),
        "val_accuracy": accuracy(plain, val.y),
        "val_accuracy_tta": accuracy(tta, val.y),
        "history": select.history,
        "weights": select.best_weights,
        "val_probs": tta.astype(np.float32),
    }
