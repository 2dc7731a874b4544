"""Matplotlib figures written as PNG files (headless: the Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from fer_async.labels import EMOTIONS

# matplotlib is imported when a figure is drawn, not with this module: training.evaluate imports
# it and refuses to start with one line when matplotlib is missing (a plain install has none).
MATPLOTLIB_NEEDED = "matplotlib is not installed: pip install 'fer_async[analyze]' (or the [train] extra)"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(csv_path: Path, png_path: Path) -> None:
    """Loss and accuracy per epoch, training vs validation, from a Keras CSVLogger file."""
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    # Runs on the FER+ votes score PublicTest in a callback: no val_loss, and val_accuracy is
    # the FER+ majority, with FER2013's labels beside it as val_fer2013.
    val_curves = {"loss": ["val_loss"], "accuracy": ["val_accuracy", "val_fer2013", "val_agreed"]}
    val_names = {"val_accuracy": "val FER+ majority" if "val_fer2013" in rows[0] else "val accuracy"}
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, [float(r[key]) for r in rows], label=f"train {key}")
        for column in (c for c in val_curves[key] if c in rows[0]):
            name = val_names.get(column, column.replace("_", " "))
            ax.plot(epochs, [float(r[column]) for r in rows], label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    ax_acc.set_title(f"accuracy (best val {float(best['val_accuracy']):.2%} at epoch {int(best['epoch']) + 1})")
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(png_path)  # a watcher never sees a half-written image


def plot_confusion(cm: np.ndarray, png_path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall on the diagonal) with raw counts in each cell."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(EMOTIONS)):
        for j in range(len(EMOTIONS)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{cm[i, j]}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
