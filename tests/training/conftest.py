"""Tiny FER2013 stand-ins, so the training scripts are tested without the real data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_tiny_npz(path: Path, n_train: int = 70, n_val: int = 21, seed: int = 0) -> Path:
    """Random faces with every class present in both splits (labels cycle through 0..6)."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(n_train, 48, 48), dtype=np.uint8),
        y_train=(np.arange(n_train) % 7).astype(np.uint8),
        x_val=rng.integers(0, 256, size=(n_val, 48, 48), dtype=np.uint8),
        y_val=(np.arange(n_val) % 7).astype(np.uint8),
    )
    return path


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz")


@pytest.fixture(scope="session")
def untrained_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised fernet exported like training.train does: <dir>/fernet.json + weights."""
    from training import models

    out = tmp_path_factory.mktemp("export")
    model = models.build("fernet")
    (out / "fernet.json").write_text(model.to_json())
    model.save_weights(out / "fernet.weights.h5")
    return out
