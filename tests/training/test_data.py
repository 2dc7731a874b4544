"""training.data: the three FER2013 forms, label mapping by name, and missing splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fer_async.labels import EMOTIONS
from training.data import (
    DEFAULT_DATA,
    MissingSplitError,
    class_counts,
    class_weights,
    label_of,
    load_split,
    load_splits,
)

RNG = np.random.default_rng(0)


def faces(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


# --- npz ------------------------------------------------------------------------------------------


def write_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_loads_each_split(tmp_path: Path) -> None:
    x_train, x_val = faces(14), faces(7)
    y_train, y_val = np.arange(14) % 7, np.arange(7)[::-1].copy()
    path = write_npz(tmp_path / "d.npz", x_train=x_train, y_train=y_train.astype(np.uint8), x_val=x_val, y_val=y_val)

    train, val = load_split(path, "train"), load_split(path, "val")
    assert train.x.dtype == np.uint8 and train.x.shape == (14, 48, 48)
    assert train.y.dtype == np.int64 and np.array_equal(train.y, y_train)
    assert np.array_equal(val.x, x_val) and np.array_equal(val.y, y_val)
    assert list(load_splits(path)) == ["train", "val"]


def test_npz_missing_split_names_what_it_has(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", x_train=faces(2), y_train=np.zeros(2, int), x_val=faces(1), y_val=[0])
    with pytest.raises(MissingSplitError, match=r"no 'test' split \(it has: train, val\)"):
        load_split(path, "test")


def test_npz_classes_in_another_order_are_remapped_by_name(tmp_path: Path) -> None:
    alphabetical = sorted(EMOTIONS)  # angry disgust fear happy neutral sad surprise
    y = np.arange(7)  # indices into `alphabetical`
    path = write_npz(tmp_path / "d.npz", x_train=faces(7), y_train=y, x_val=faces(7), y_val=y, classes=alphabetical)
    got = load_split(path, "train").y
    assert [EMOTIONS[i] for i in got] == alphabetical


def test_npz_channel_axis_is_dropped_and_bad_shapes_rejected(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", x_train=faces(3)[..., None], y_train=np.zeros(3, int))
    assert load_split(path, "train").x.shape == (3, 48, 48)
    bad = write_npz(tmp_path / "bad.npz", x_train=np.zeros((3, 32, 32), np.uint8), y_train=np.zeros(3, int))
    with pytest.raises(ValueError, match="48, 48"):
        load_split(bad, "train")
    labels = write_npz(tmp_path / "labels.npz", x_train=faces(2), y_train=np.array([0, 7]))
    with pytest.raises(ValueError, match=r"labels must be 0\.\.6"):
        load_split(labels, "train")


# --- Kaggle csv -----------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[tuple[int, np.ndarray, str]], header: str = "emotion,pixels,Usage") -> Path:
    lines = [header] + [f"{y},{' '.join(map(str, x.ravel().tolist()))},{usage}" for y, x, usage in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_usage_maps_to_splits(tmp_path: Path) -> None:
    x = faces(6)
    rows = [
        (3, x[0], "Training"),
        (0, x[1], "PublicTest"),
        (6, x[2], "Training"),
        (1, x[3], "PrivateTest"),
        (5, x[4], "PublicTest"),
        (4, x[5], "PrivateTest"),
    ]
    path = write_csv(tmp_path / "fer2013.csv", rows)

    train, val, test = (load_split(path, s) for s in ("train", "val", "test"))
    assert np.array_equal(train.x, x[[0, 2]]) and train.y.tolist() == [3, 6]
    assert np.array_equal(val.x, x[[1, 4]]) and val.y.tolist() == [0, 5]
    assert np.array_equal(test.x, x[[3, 5]]) and test.y.tolist() == [1, 4]
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64
    assert list(load_splits(path)) == ["train", "val", "test"]


def test_csv_spaced_header_of_the_icml_reupload(tmp_path: Path) -> None:
    x = faces(1)
    path = tmp_path / "icml_face_data.csv"
    path.write_text(f"emotion, Usage, pixels\n2,Training,{' '.join(map(str, x.ravel().tolist()))}\n")
    split = load_split(path, "train")
    assert np.array_equal(split.x, x) and split.y.tolist() == [2]


def test_csv_missing_split(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fer2013.csv", [(3, faces(1)[0], "Training"), (3, faces(1)[0], "PublicTest")])
    with pytest.raises(MissingSplitError, match=r"no 'test' split \(it has: train, val\)"):
        load_split(path, "test")


def test_csv_bad_rows_name_the_line(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(ValueError, match=r"short.csv:2: pixels must be 2304"):
        load_split(short, "train")
    usage = write_csv(tmp_path / "usage.csv", [(3, faces(1)[0], "Validation")])
    with pytest.raises(ValueError, match=r"usage.csv:2: Usage"):
        load_split(usage, "train")
    columns = tmp_path / "columns.csv"
    columns.write_text("label,image\n")
    with pytest.raises(ValueError, match="emotion, pixels, Usage"):
        load_split(columns, "train")


# --- Kaggle image folders -------------------------------------------------------------------------


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_folders_map_class_names_not_alphabetical_order(tmp_path: Path) -> None:
    x = faces(4)
    # Alphabetically these would be happy=3, neutral=4, sad=5: FER2013 says sad=4, neutral=6.
    write_image(tmp_path / "train" / "happy" / "a.png", x[0])
    write_image(tmp_path / "train" / "Neutral" / "b.png", x[1])
    write_image(tmp_path / "train" / "SAD" / "c.png", x[2])
    write_image(tmp_path / "test" / "surprise" / "d.png", x[3])
    (tmp_path / "train" / "happy" / "notes.txt").write_text("not an image")

    train = load_split(tmp_path, "train")
    assert train.y.tolist() == [3, 4, 6]  # happy, sad, neutral: sorted by label
    assert np.array_equal(train.x, x[[0, 2, 1]])  # PNG is lossless: exact pixels
    test = load_split(tmp_path, "test")
    assert test.y.tolist() == [5] and np.array_equal(test.x, x[3:4])


def test_folders_image_in_happy_gets_label_3(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "happy" / "only.jpg", faces(1)[0])
    assert load_split(tmp_path, "train").y.tolist() == [EMOTIONS.index("happy")] == [3]


def test_folders_read_grey_and_resize(tmp_path: Path) -> None:
    colour = RNG.integers(0, 256, size=(96, 80, 3), dtype=np.uint8)
    write_image(tmp_path / "train" / "fear" / "big.jpg", colour)
    write_image(tmp_path / "train" / "fear" / "small.png", faces(1)[0, :24, :24])
    split = load_split(tmp_path, "train")
    assert split.x.shape == (2, 48, 48) and split.x.dtype == np.uint8
    assert split.y.tolist() == [2, 2]


def test_folders_val_names_and_missing_split(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "angry" / "a.png", faces(1)[0])
    write_image(tmp_path / "test" / "angry" / "b.png", faces(1)[0])
    with pytest.raises(MissingSplitError, match=r"no 'val' split \(it has: train, test\)"):
        load_split(tmp_path, "val")
    write_image(tmp_path / "Validation" / "disgust" / "c.png", faces(1)[0])
    assert load_split(tmp_path, "val").y.tolist() == [1]
    write_image(tmp_path / "val" / "disgust" / "d.png", faces(1)[0])
    with pytest.raises(ValueError, match="both"):
        load_split(tmp_path, "val")


def test_folders_unknown_class_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "contempt" / "a.png", faces(1)[0])
    with pytest.raises(ValueError, match=r"contempt.*unknown class 'contempt'; expected one of angry, disgust"):
        load_split(tmp_path, "train")


def test_folders_class_folder_passed_directly_gets_a_hint(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "happy" / "a.png", faces(1)[0])
    with pytest.raises(ValueError, match="pass the folder above it"):
        load_split(tmp_path / "train", "train")


def test_folders_unreadable_image(tmp_path: Path) -> None:
    (tmp_path / "train" / "happy").mkdir(parents=True)
    (tmp_path / "train" / "happy" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg: not a readable image"):
        load_split(tmp_path, "train")


# --- dispatch, labels, imbalance ------------------------------------------------------------------


def test_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "absent.npz", "train")
    (tmp_path / "data.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected an \.npz"):
        load_split(tmp_path / "data.h5", "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_split(tmp_path, "validation")


def test_label_of() -> None:
    assert [label_of(name.upper()) for name in EMOTIONS] == list(range(7))
    with pytest.raises(ValueError, match="unknown class"):
        label_of("contempt")


def test_class_counts_and_weights() -> None:
    y = np.array([3] * 80 + [1] * 5 + [0] * 15)
    assert class_counts(y).tolist() == [15, 5, 0, 80, 0, 0, 0]
    weights = class_weights(y, power=1.0)
    # Mean weight over the samples is 1, and fully balanced classes weigh n_c * w_c equally.
    assert np.mean([weights[int(label)] for label in y]) == pytest.approx(1.0)
    assert 5 * weights[1] == pytest.approx(80 * weights[3]) == pytest.approx(15 * weights[0])
    assert class_weights(y, power=0.0)[1] == pytest.approx(1.0)


@pytest.mark.skipif(not DEFAULT_DATA.is_file(), reason=f"FER2013 npz not present at {DEFAULT_DATA}")
def test_real_fer2013_npz() -> None:
    val = load_split(DEFAULT_DATA, "val")
    assert val.x.shape == (3589, 48, 48)
    assert class_counts(val.y).tolist() == [467, 56, 496, 895, 653, 415, 607]
    with pytest.raises(MissingSplitError):
        load_split(DEFAULT_DATA, "test")
