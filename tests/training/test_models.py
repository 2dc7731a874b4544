"""training.models: the compute budget, and augmentation that is live in training only."""

from __future__ import annotations

import numpy as np
import pytest
from testsupport import SERVED_PRECISION

from training import models

# Issue 5: a network the server can run in real time on two CPU cores.
GMAC_BUDGET_PER_FACE = 0.15


def test_fernet_fits_the_compute_budget() -> None:
    assert models.count_macs(models.build("fernet")) / 1e9 <= GMAC_BUDGET_PER_FACE


def test_classic_costs_what_its_docstring_says() -> None:
    # 0.29 GMAC is the figure quoted in the card and docs/training.md for the baseline.
    assert models.count_macs(models.build("classic")) / 1e9 == pytest.approx(0.29, abs=0.01)


def test_augmentation_changes_faces_in_training_and_is_inert_at_inference() -> None:
    faces = np.random.default_rng(0).uniform(0.0, 1.0, size=(16, 48, 48, 1)).astype("float32")
    augment = models.augmentation()
    assert np.array_equal(np.asarray(augment(faces, training=False)), faces)
    augmented = np.asarray(augment(faces, training=True))
    assert augmented.shape == faces.shape and not np.allclose(augmented, faces)
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0  # contrast and erasing stay in range


def test_model_output_is_deterministic_at_inference() -> None:
    model = models.build("fernet")
    faces = np.random.default_rng(1).integers(0, 256, size=(4, 48, 48, 1)).astype("float32")
    first, second = np.asarray(model(faces, training=False)), np.asarray(model(faces, training=False))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)


def test_unknown_network_names_the_choices() -> None:
    with pytest.raises(ValueError, match="fernet"):
        models.build("resnet9000")


def test_speed_report_times_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    models.main(["fernet", "--speed", "--seconds", "0.2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fernet") and "GMAC/face=0.118" in lines[0]
    speed = [line for line in lines if line.startswith("shipped model")]
    # fp32 and int8, each with and without flip TTA, at batch 1 and 64; faces per wall and per CPU second
    assert len(speed) == 8 and all("faces/s" in line and "faces per CPU s" in line for line in speed)
    # The int8 network where it serves; on x86 without VNNI the fp32 one stands in for it.
    int8_lines = 4 if SERVED_PRECISION == "int8" else 0
    assert sum("fernet.int8.onnx" in line for line in speed) == int8_lines
    assert sum(line.startswith("shipped model fernet.onnx ") for line in speed) == 8 - int8_lines
    assert sum(line.startswith("load average") for line in lines) == 2
