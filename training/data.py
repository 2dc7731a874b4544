"""Loading FER2013 and handling its class imbalance.

FER2013 comes in three forms and `load_split(path, split)` reads all of them, choosing by the
path (`load_splits(path)` reads every split the source has in one pass):

* an ``.npz`` with ``x_train, y_train, x_val, y_val`` (and optionally ``x_test, y_test``, and a
  ``classes`` array naming the label order when it is not FER2013's),
* the original Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``): ``Training`` is the "train"
  split, ``PublicTest`` "val" and ``PrivateTest`` "test",
* the Kaggle image folders (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), read grey and
  resized to 48x48 where needed. A folder ``val``, ``validation`` or ``publictest`` is the "val"
  split and ``test`` or ``privatetest`` the "test" split. Beware: Kaggle's folder ``test`` is
  PublicTest and PrivateTest mixed, so its numbers are not comparable to a PrivateTest score,
  and that layout has no "val" split at all.

Labels always come back in FER2013 order (`fer_async.labels.EMOTIONS`), mapped from the class
*names*, whatever order the folders sort in: the original project's alphabetical
``flow_from_directory`` indices swapped classes (alphabetically 'neutral' is 4 and 'sad' 5;
in FER2013 'sad' is 4 and 'neutral' 6).
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_async.labels import EMOTIONS, FACE_SIZE

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fer2013" / "fer2013.npz"
SPLITS = ("train", "val", "test")

# The Kaggle CSV's `Usage` column and the Kaggle folder names, lower-cased, to our split names.
CSV_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
FOLDER_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validation": "val",
    "publictest": "val",
    "test": "test",
    "privatetest": "test",
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp", ".tif", ".tiff"})


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


def load_split(path: str | os.PathLike[str], split: str) -> Split:
    """Load one split ("train", "val" or "test") from an npz, a Kaggle csv or a folder tree."""
    _check_split(split)
    splits = _load(Path(path), {split})
    if split not in splits:
        raise MissingSplitError(splits.missing_message(split))
    return splits[split]


def load_splits(path: str | os.PathLike[str]) -> dict[str, Split]:
    """Every split the source has, in SPLITS order (the csv is read only once)."""
    splits = _load(Path(path), set(SPLITS))
    return {name: splits[name] for name in SPLITS if name in splits}


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


def label_of(name: str) -> int:
    """FER2013 label of a class name, case-insensitive ('Happy' -> 3)."""
    try:
        return EMOTIONS.index(name.strip().lower())
    except ValueError:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(EMOTIONS)}") from None


class _Loaded(dict[str, Split]):
    """The wanted splits a source had, plus the names of all it has (for error messages)."""

    def __init__(self, source: Path, available: set[str]) -> None:
        super().__init__()
        self.source, self.available = source, available

    def missing_message(self, split: str) -> str:
        have = ", ".join(s for s in SPLITS if s in self.available) or "none"
        return f"{self.source} has no {split!r} split (it has: {have})"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")


def _load(path: Path, wanted: set[str]) -> _Loaded:
    if path.is_dir():
        return _load_folders(path, wanted)
    if not path.is_file():
        raise FileNotFoundError(f"FER2013 data not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, wanted)
    if suffix == ".csv":
        return _load_csv(path, wanted)
    raise ValueError(f"{path}: expected an .npz, a Kaggle fer2013 .csv or a folder of train/ and test/ images")


def _make_split(source: Path, split: str, x: np.ndarray, y: np.ndarray) -> Split:
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"{source}: {split} faces must be [N, {FACE_SIZE}, {FACE_SIZE}], got {list(x.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{source}: {split} has {len(x)} faces but {len(y)} labels")
    y = np.asarray(y, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() >= len(EMOTIONS)):
        raise ValueError(f"{source}: {split} labels must be 0..{len(EMOTIONS) - 1}, got {y.min()}..{y.max()}")
    return Split(x=np.asarray(x, dtype=np.uint8), y=y)


# --- npz -----------------------------------------------------------------------------------------


def _load_npz(path: Path, wanted: set[str]) -> _Loaded:
    with np.load(path) as data:
        available = {s for s in SPLITS if f"x_{s}" in data.files and f"y_{s}" in data.files}
        out = _Loaded(path, available)
        # An npz that names its classes may use another order: remap by name like the folders.
        remap = None
        if "classes" in data.files:
            names = [str(c) for c in data["classes"]]
            remap = np.array([label_of(n) for n in names], dtype=np.int64)
            if np.array_equal(remap, np.arange(len(EMOTIONS))):
                remap = None
        for split in wanted & available:
            y = np.asarray(data[f"y_{split}"], dtype=np.int64)
            if remap is not None:
                if len(y) and (y.min() < 0 or y.max() >= len(remap)):
                    raise ValueError(f"{path}: {split} labels exceed the {len(remap)} names in 'classes'")
                y = remap[y]
            out[split] = _make_split(path, split, np.asarray(data[f"x_{split}"]), y)
    return out


# --- Kaggle csv ----------------------------------------------------------------------------------


def _load_csv(path: Path, wanted: set[str]) -> _Loaded:
    # One row is a 2304-number string (~9 kB); the default field limit (128 kB) is fine, but
    # some re-exports join several columns, so allow the largest field the platform can take.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    labels: dict[str, list[int]] = {s: [] for s in wanted}
    pixels: dict[str, list[np.ndarray]] = {s: [] for s in wanted}
    available: set[str] = set()
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        # icml_face_data.csv, a Kaggle re-upload of the same data, spells its header ", Usage, pixels".
        try:
            i_emotion, i_pixels, i_usage = (header.index(c) for c in ("emotion", "pixels", "usage"))
        except ValueError:
            raise ValueError(f"{path}: expected the columns emotion, pixels, Usage; got {header}") from None
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                usage = row[i_usage].strip().lower()
                split = CSV_USAGE[usage]
            except (IndexError, KeyError):
                raise ValueError(f"{path}:{line}: Usage must be one of Training, PublicTest, PrivateTest") from None
            available.add(split)
            if split not in wanted:
                continue
            try:
                labels[split].append(int(row[i_emotion]))
                text = row[i_pixels]
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{line}: expected an integer emotion and a pixels field") from None
            pixels[split].append(_parse_pixels(text, path, line))
    out = _Loaded(path, available)
    for split in wanted & available:
        x = np.stack(pixels[split]).reshape(-1, FACE_SIZE, FACE_SIZE)
        out[split] = _make_split(path, split, x, np.array(labels[split], dtype=np.int64))
    return out


def _parse_pixels(text: str, path: Path, line: int) -> np.ndarray:
    # np.fromstring's text mode parses the whole row in C (~20x faster than split() + int());
    # on a bad token it stops early with a warning, which the length check turns into an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(text, dtype=np.int32, sep=" ")
    if values.size != FACE_SIZE * FACE_SIZE or values.min() < 0 or values.max() > 255:
        raise ValueError(f"{path}:{line}: pixels must be {FACE_SIZE * FACE_SIZE} space-separated values 0..255")
    return values.astype(np.uint8)


# --- Kaggle image folders ------------------------------------------------------------------------


def _load_folders(root: Path, wanted: set[str]) -> _Loaded:
    split_dirs: dict[str, Path] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        split = FOLDER_SPLITS.get(child.name.lower())
        if split is None:
            continue
        if split in split_dirs:
            raise ValueError(f"{root}: both {split_dirs[split].name}/ and {child.name}/ would be the {split!r} split")
        split_dirs[split] = child
    if not split_dirs:
        hint = ""
        if any(p.is_dir() and p.name.lower() in EMOTIONS for p in root.iterdir()):
            hint = f" ({root} holds class folders: pass the folder above it)"
        raise ValueError(f"{root}: no train/, val/ or test/ folder found{hint}")
    out = _Loaded(root, set(split_dirs))
    for split in wanted & set(split_dirs):
        out[split] = _read_split_dir(root, split, split_dirs[split])
    return out


def _read_split_dir(root: Path, split: str, split_dir: Path) -> Split:
    class_dirs: list[tuple[int, Path]] = []
    for class_dir in split_dir.iterdir():
        if class_dir.is_dir() and not class_dir.name.startswith("."):
            try:
                class_dirs.append((label_of(class_dir.name), class_dir))
            except ValueError as e:
                raise ValueError(f"{class_dir}: {e}") from None
    faces: list[np.ndarray] = []
    labels: list[int] = []
    for label, class_dir in sorted(class_dirs):
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and not image.name.startswith("."):
                faces.append(_read_face(image))
                labels.append(label)
    x = np.stack(faces) if faces else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    return _make_split(root, split, x, np.array(labels, dtype=np.int64))


def _read_face(path: Path) -> np.ndarray:
    # imdecode on the bytes, not imread on the name: imread fails on non-ASCII paths on Windows.
    face = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if face is None:
        raise ValueError(f"{path}: not a readable image")
    if face.shape != (FACE_SIZE, FACE_SIZE):
        # INTER_AREA averages when shrinking (no aliasing); it degrades to nearest when enlarging.
        shrinking = face.shape[0] > FACE_SIZE or face.shape[1] > FACE_SIZE
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        face = cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=interpolation)
    return np.asarray(face, dtype=np.uint8)
