"""The files of a distillation: a run (a network's weights, its PublicTest probabilities and a JSON
record) and the store (the teachers' probabilities on every view of every training face)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def save_run(
    path: Path, weights: list[np.ndarray], record: dict[str, Any], dtype: str = "float32", **arrays: Any
) -> None:
    """Weights as w000..wNNN (the model's `get_weights()` order), extra arrays, and the record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    named: dict[str, Any] = {f"w{i:03d}": w.astype(dtype) for i, w in enumerate(weights)}
    named.update(arrays, record=np.array(json.dumps(record)))
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **named)
    partial.replace(path)


def load_run(path: Path) -> tuple[list[np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """(weights as float32, record, the other arrays) of a `save_run` file."""
    with np.load(path) as data:
        names = sorted(k for k in data.files if k.startswith("w") and k[1:].isdigit())
        weights = [data[k].astype(np.float32) for k in names]
        record = json.loads(str(data["record"]))
        arrays = {k: data[k] for k in data.files if k not in names and k != "record"}
    return weights, record, arrays


def save_store(path: Path, probs: np.ndarray, record: dict[str, Any]) -> None:
    """The teachers' probabilities [views, faces, 7] as float16, with the store's record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, probs=probs.astype(np.float16), record=np.array(json.dumps(record)))


def load_store(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(probabilities, record) of a `save_store` file."""
    with np.load(path) as data:
        return data["probs"], json.loads(str(data["record"]))


def store_record(path: Path) -> dict[str, Any]:
    """The record of a `save_store` file, without reading its probabilities."""
    with np.load(path) as data:
        record: dict[str, Any] = json.loads(str(data["record"]))
    return record


def network_of(
    weights: list[np.ndarray], record: dict[str, Any], *, augment: bool = False, precision: str = "fp32"
) -> Any:
    """The run's network (`record["network"]`) holding its weights."""
    from training import models  # Keras: not in the pipeline's process

    model = models.build(record["network"], precision=precision, augment=augment)
    model.set_weights(weights)
    return model


def load_network(path: Path, *, augment: bool = False, precision: str = "fp32") -> Any:
    return network_of(*load_run(path)[:2], augment=augment, precision=precision)
