"""Look at FER2013 before training on it.

    python -m training.explore [--data FILE_OR_DIR] [--out runs/explore]

Prints, per split, how many faces each expression has, its share and its imbalance ratio
(largest class / this class: the factor `training.data.class_weights` works against), and writes:

* `samples.png`       random faces of every expression, one labelled row per class,
* `counts_<split>.png` a bar chart of the class counts of each split,
* `augmentation.png`  one face per class, then the same face through the model's own training
                      augmentation (`training.models.augmentation()` with training=True), so
                      you can see whether the jitter is strong enough and never destroys the face.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from fer_async.labels import EMOTIONS
from training.data import DEFAULT_DATA, Split, class_counts, load_splits

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "runs" / "explore"
SAMPLES_PER_CLASS = 8
AUGMENTED_PER_FACE = 7
SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}" if __spec__ else None,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz/csv/folder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs (default: %(default)s)")
    p.add_argument("--samples", type=int, default=SAMPLES_PER_CLASS, help="faces per class in samples.png")
    p.add_argument("--augmented", type=int, default=AUGMENTED_PER_FACE, help="augmented copies per face")
    p.add_argument("--seed", type=int, default=SEED, help="picks the faces and the augmentation draws")
    args = p.parse_args(argv)
    if args.samples < 1 or args.augmented < 1:
        p.error("--samples and --augmented must be at least 1")
    return args


def count_table(splits: dict[str, Split]) -> str:
    """Counts, percentage and imbalance ratio (max count / count) per class, for every split."""
    lines: list[str] = []
    for name, split in splits.items():
        counts = class_counts(split.y)
        total = max(int(counts.sum()), 1)
        lines += [f"{name}: {len(split):,} faces", "  class       count   share  imbalance"]
        for emotion, count in zip(EMOTIONS, counts.tolist(), strict=True):
            ratio = f"{counts.max() / count:9.2f}" if count else f"{'-':>9s}"
            lines.append(f"  {emotion:9s} {count:7,d} {100 * count / total:6.1f}%  {ratio}")
        lines.append("")
    return "\n".join(lines).rstrip()


def pick_per_class(split: Split, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to k random face indices of each class, in EMOTIONS order."""
    return [
        rng.choice(idx, size=min(k, len(idx)), replace=False)
        for idx in (np.flatnonzero(split.y == label) for label in range(len(EMOTIONS)))
    ]


def _face_grid(rows: int, cols: int, cell: float = 1.0) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell + 1.2, rows * cell + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_samples(split: Split, split_name: str, picks: list[np.ndarray], path: Path) -> Path:
    counts = class_counts(split.y)
    cols = max((len(p) for p in picks), default=1) or 1
    fig, axes = _face_grid(len(EMOTIONS), cols)
    for label, (emotion, idx) in enumerate(zip(EMOTIONS, picks, strict=True)):
        axes[label, 0].set_ylabel(f"{label} {emotion}\n{counts[label]:,}", rotation=0, ha="right", va="center")
        for col, i in enumerate(idx):
            axes[label, col].imshow(split.x[i], cmap="gray", vmin=0, vmax=255)
    fig.suptitle(f"FER2013 {split_name}: random faces per expression (label, name, count)")
    return _save(fig, path)


def plot_counts(split: Split, split_name: str, path: Path) -> Path:
    counts = class_counts(split.y)
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(EMOTIONS, counts, color="tab:blue")
    total = max(int(counts.sum()), 1)
    ax.bar_label(bars, labels=[f"{c:,}\n{100 * c / total:.1f}%" for c in counts.tolist()], fontsize=8)
    ax.set_ylim(0, counts.max() * 1.2 + 1)
    ax.set_ylabel("faces")
    nonzero = counts[counts > 0]
    ratio = nonzero.max() / nonzero.min() if len(nonzero) else 0.0
    ax.set_title(f"FER2013 {split_name}: {len(split):,} faces, largest/smallest class {ratio:.1f}x")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def augment_preview(faces: np.ndarray, labels: list[int], path: Path, copies: int, seed: int) -> Path:
    """Each face, then `copies` draws of the model's training-time augmentation on it.

    The faces go in exactly as the model's augmentation block receives them while training
    (rescaled to 0..1, then `augmentation()(x, training=True)`), so what is drawn is what the
    network learns from. Values outside 0..1 (contrast can push them there) show clipped.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # TensorFlow takes seconds to import: only this figure needs it

    from training.models import augmentation

    keras.utils.set_random_seed(seed)
    batch = np.repeat(faces[:, None], copies, axis=1).reshape(-1, *faces.shape[1:], 1).astype("float32") / 255.0
    augmented = keras.ops.convert_to_numpy(augmentation()(batch, training=True))
    augmented = augmented.reshape(len(faces), copies, *faces.shape[1:])
    fig, axes = _face_grid(len(faces), copies + 1)
    for row, (face, label) in enumerate(zip(faces, labels, strict=True)):
        axes[row, 0].imshow(face, cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_ylabel(EMOTIONS[label], rotation=0, ha="right", va="center")
        for col in range(copies):
            axes[row, col + 1].imshow(augmented[row, col], cmap="gray", vmin=0.0, vmax=1.0)
    axes[0, 0].set_title("original", fontsize=9)
    for col in range(copies):
        axes[0, col + 1].set_title("augmented", fontsize=9)
    lo, hi = float(augmented.min()), float(augmented.max())
    fig.suptitle(f"training.models.augmentation() with training=True (output range {lo:.2f}..{hi:.2f} for 0..1 input)")
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        splits = load_splits(args.data)
    except (OSError, ValueError) as e:
        print(f"explore: error: {e}", file=sys.stderr)
        return 2
    if not splits:
        print(f"explore: error: {args.data} has no train, val or test split", file=sys.stderr)
        return 2
    print(f"{args.data}\n")
    print(count_table(splits))
    print()

    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    sample_split = "train" if "train" in splits else next(iter(splits))
    picks = pick_per_class(splits[sample_split], args.samples, rng)
    written = [plot_samples(splits[sample_split], sample_split, picks, args.out / "samples.png")]
    written += [plot_counts(split, name, args.out / f"counts_{name}.png") for name, split in splits.items()]
    # The first sampled face of every class that has one: the preview covers all expressions.
    chosen = [(label, int(idx[0])) for label, idx in enumerate(picks) if len(idx)]
    faces = splits[sample_split].x[[i for _, i in chosen]]
    written.append(
        augment_preview(faces, [label for label, _ in chosen], args.out / "augmentation.png", args.augmented, args.seed)
    )
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
