"""training.train end to end on a tiny stand-in data set: checkpoint, log, curves, export, card."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from testsupport import SERVED_PRECISION, first_conv_kernel, run_train

from fer_async.model import FacialExpressionModel


def test_tiny_run_checkpoints_logs_and_exports_what_the_server_loads(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, export_dir = run_train(tiny_npz, tmp_path, "--epochs", "2", "--seed", "7")

    assert (run_dir / "best.weights.h5").is_file()
    with (run_dir / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(float(r["epoch_seconds"]) > 0 and 0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    card = (export_dir / "fernet.md").read_text()
    assert "python -m training.train --data" in card and "--seed 7" in card
    assert "initial weights: random" in card and "random erasing" in card
    assert "| happy |" in card  # the per-class table

    # The server's own loader reads the export; it carries no optimizer state.
    served = FacialExpressionModel(export_dir, "fernet", flip_tta=False, precision="fp32")
    faces = np.random.default_rng(3).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    probs = served.predict(faces)
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # ... and the ONNX copies the server runs were exported beside it, from these very files:
    # the int8 one (the default) is current, not a stale file served as fp32.
    assert served.runtime == "onnx"
    default = FacialExpressionModel(export_dir, "fernet", flip_tta=False)
    assert default.precision == SERVED_PRECISION and (export_dir / "fernet.int8.onnx").is_file()
    assert default.predict(faces).argmax(axis=1).shape == (3,)
    keras_copy = FacialExpressionModel(export_dir, "fernet", flip_tta=False, runtime="keras")
    np.testing.assert_allclose(probs, keras_copy.predict(faces), atol=1e-4)
    with h5py.File(export_dir / "fernet.weights.h5", "r") as f:
        assert "optimizer" not in f
    assert "accuracy" in capsys.readouterr().out


def test_init_weights_start_from_an_earlier_export(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = untrained_export / "fernet.weights.h5"
    # A learning rate of ~0 leaves the kernels where they started, so the export shows the origin.
    _, export_dir = run_train(
        tiny_npz,
        tmp_path,
        "--epochs",
        "1",
        "--lr",
        "1e-12",
        "--weight-decay",
        "0",
        "--seed",
        "99",
        "--init-weights",
        str(start),
    )
    initial, exported = first_conv_kernel(start), first_conv_kernel(export_dir / "fernet.weights.h5")
    np.testing.assert_allclose(exported, initial, atol=1e-6)
    assert f"initial weights: {start}" in (export_dir / "fernet.md").read_text()
    assert f"initial weights: {start}" in capsys.readouterr().out


def test_init_weights_of_another_network_fail_loudly(tiny_npz: Path, untrained_export: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not fit network 'classic'"):
        run_train(
            tiny_npz,
            tmp_path,
            "--model",
            "classic",
            "--epochs",
            "1",
            "--init-weights",
            str(untrained_export / "fernet.weights.h5"),
        )
