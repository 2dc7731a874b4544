"""training.explore: the count table and the three kinds of figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import explore
from training.data import Split

PNG = b"\x89PNG\r\n\x1a\n"


def test_count_table_share_and_imbalance() -> None:
    y = np.array([3] * 8 + [0] * 2 + [6] * 4)  # no disgust, fear, sad or surprise
    table = explore.count_table({"train": Split(np.zeros((14, 48, 48), np.uint8), y)})
    lines = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert lines["happy"] == ["happy", "8", "57.1%", "1.00"]
    assert lines["angry"] == ["angry", "2", "14.3%", "4.00"]
    assert lines["neutral"][-1] == "2.00"
    assert lines["disgust"] == ["disgust", "0", "0.0%", "-"]


def test_pick_per_class_takes_at_most_k_of_each() -> None:
    split = Split(np.zeros((10, 48, 48), np.uint8), np.array([0, 0, 0, 0, 0, 3, 3, 6, 6, 6]))
    picks = explore.pick_per_class(split, 3, np.random.default_rng(0))
    assert [len(p) for p in picks] == [3, 0, 0, 2, 0, 0, 3]
    assert all(set(split.y[p].tolist()) <= {label} for label, p in enumerate(picks))


def test_main_writes_the_figures(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "explore"
    assert explore.main(["--data", str(tiny_npz), "--out", str(out), "--samples", "3", "--augmented", "2"]) == 0
    stdout = capsys.readouterr().out
    names = ["samples.png", "counts_train.png", "counts_val.png", "augmentation.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG
        assert f"wrote {out / name}" in stdout
    assert "train: 70 faces" in stdout and "val: 21 faces" in stdout


def test_main_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert explore.main(["--data", str(tmp_path / "absent.npz"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
