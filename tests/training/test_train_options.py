"""training.train's fast path and regularisers (issue 14) on a tiny stand-in data set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from testsupport import first_conv_kernel, run_train

from fer_async.model import FacialExpressionModel
from training import mixing, train


def _served_probabilities(export_dir: Path) -> np.ndarray:
    served = FacialExpressionModel(export_dir, "fernet", flip_tta=False)
    probs = served.predict(np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8))
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    return probs


def test_bf16_fused_run_with_mixup_and_cutmix_exports_the_plain_float32_network(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, export_dir = run_train(
        tiny_npz, tmp_path, "--epochs", "2", "--precision", "bf16", "--mixup", "0.4", "--cutmix", "1.0"
    )
    with (run_dir / "log.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    text = (export_dir / "fernet.json").read_text()
    assert "bfloat16" not in text and '"module": "training' not in text
    layers = json.loads(text)["config"]["layers"]
    assert ("keras.layers", "BatchNormalization") in {(layer["module"], layer["class_name"]) for layer in layers}
    _served_probabilities(export_dir)
    card = (export_dir / "fernet.md").read_text()
    assert "batch norm fused, precision bf16, mixup alpha 0.4, cutmix alpha 1" in card
    assert "--precision bf16 --mixup 0.4 --cutmix 1.0" in card and "best epoch" in card
    assert "batches: batch norm fused, precision bf16, mixup" in capsys.readouterr().out


def test_extra_train_val_trains_on_publictest_and_the_card_says_it_is_not_held_out(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, export_dir = run_train(
        tiny_npz, tmp_path, "--epochs", "2", "--batch-norm", "plain", "--extra-train", "val"
    )
    out = capsys.readouterr().out
    assert "train counts: {'angry': 13," in out  # 70 training + 21 PublicTest faces, 13 of each class
    card = (export_dir / "fernet.md").read_text()
    assert "Training + PublicTest (91 faces)" in card and "not held out" in card
    assert "exported epoch: 2 (the last)" in card and "best epoch" not in card
    # The checkpoint is the last epoch, whatever its validation accuracy.
    with (run_dir / "log.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    _served_probabilities(export_dir)


def test_ema_exports_the_averaged_weights(tiny_npz: Path, untrained_export: Path, tmp_path: Path) -> None:
    """With a momentum near 1 the average stays at the first step's weights (Keras starts the
    average at step 1): the EMA export sits much nearer the start than the raw weights do."""
    start = untrained_export / "fernet.weights.h5"
    initial = first_conv_kernel(start)
    common = ("--epochs", "2", "--lr", "0.01", "--seed", "5", "--init-weights", str(start))
    _, raw_export = run_train(tiny_npz, tmp_path / "raw", *common)
    _, ema_export = run_train(tiny_npz, tmp_path / "ema", *common, "--ema", "--ema-momentum", "0.999999")
    moved_raw = np.abs(first_conv_kernel(raw_export / "fernet.weights.h5") - initial).mean()
    moved_ema = np.abs(first_conv_kernel(ema_export / "fernet.weights.h5") - initial).mean()
    assert moved_ema < 0.5 * moved_raw, (moved_ema, moved_raw)
    assert "EMA of weights (momentum 0.999999" in (ema_export / "fernet.md").read_text()


def test_measure_steps_prints_cpu_and_wall_time_per_step_and_trains_nothing(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, export_dir = run_train(tiny_npz, tmp_path, "--measure-steps", "2", "--precision", "bf16")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("measure:"))
    assert "batch-norm fused, precision bf16, batch 32" in line and "CPU s/step" in line and "load average" in line
    assert not run_dir.exists() and not export_dir.exists()


def _constant_faces(n: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Face i is all pixel value 10 * (i + 1) and has label i, weight i + 1: a mix can be read back."""
    x = tf.constant(np.stack([np.full((48, 48, 1), 10 * (i + 1), np.uint8) for i in range(n)]))
    y = tf.constant(np.eye(n, dtype=np.float32))
    w = tf.constant(np.arange(1, n + 1, dtype=np.float32))
    return x, y, w


def test_cutmix_label_shares_are_the_pasted_areas() -> None:
    keras.utils.set_random_seed(3)
    x, y, w = _constant_faces(7)
    for _ in range(5):
        mixed, labels, weights = (np.asarray(t) for t in mixing.mix_batch(x, y, w, mixup=0.0, cutmix=1.0))
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
        for i in range(7):
            own = np.mean(mixed[i] == 10 * (i + 1))
            assert labels[i, i] == pytest.approx(own, abs=1e-6) or labels[i, i] == pytest.approx(1.0)
            partner = int(np.argmax(np.where(np.arange(7) == i, -1, labels[i])))
            expected_weight = labels[i, i] * (i + 1) + (1 - labels[i, i]) * (partner + 1)
            if labels[i, i] < 1:
                assert weights[i] == pytest.approx(expected_weight, rel=1e-5)


def test_mixup_blends_faces_and_labels_in_the_same_share() -> None:
    keras.utils.set_random_seed(4)
    x, y, w = _constant_faces(7)
    mixed, labels, _ = (np.asarray(t) for t in mixing.mix_batch(x, y, w, mixup=0.4, cutmix=0.0))
    for i in range(7):
        assert np.ptp(mixed[i]) < 1e-3  # a blend of two flat faces is flat
        share = labels[i, i]
        others = np.where(np.arange(7) == i, 0.0, labels[i])
        partner_value = 10 * (np.argmax(others) + 1) if others.max() > 0 else 10 * (i + 1)
        assert mixed[i, 0, 0, 0] == pytest.approx(share * 10 * (i + 1) + (1 - share) * partner_value, rel=1e-4)


@pytest.mark.parametrize("bad", [["--mixup", "-1"], ["--ema", "--ema-momentum", "1.5"]])
def test_bad_regulariser_values_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        train.parse_args(bad)
