"""A trained network in the form the server loads: `<name>.json` (`to_json()`), `.weights.h5`,
and their ONNX copies `<name>.onnx` (fp32) and `<name>.int8.onnx`, written together so that
none of them is stale (a stale int8 file would be served as fp32, with a warning)."""

from __future__ import annotations

from pathlib import Path

import keras

from training import models
from training.export_onnx import export_int8, export_onnx


def inference_copy(model: keras.Model, network: str) -> keras.Model:
    """The same weights in the served form of `network`, without the training state.

    A compiled model's `to_json()` carries its optimizer config, and `save_weights` then
    stores the optimizer's moment estimates too: three times the weights' size, useless for
    serving. The training model may also run the fast path (fused batch norm from
    `training.fused_bn`, a bfloat16 policy), which the server must not need: the copy is the
    plain float32 network built afresh, given the trained weights (same variables, same order).
    """
    clean = models.build(network)
    clean.set_weights(model.get_weights())
    return clean


def write_model(model: keras.Model, network: str, json_path: Path, weights_path: Path) -> None:
    clean = inference_copy(model, network)
    json_path.write_text(clean.to_json(indent=1) + "\n")
    clean.save_weights(weights_path)


def write_served_form(model: keras.Model, network: str, export_dir: Path, name: str, data: Path) -> list[Path]:
    """The four files in `export_dir`; the int8 copy is calibrated on faces of `data`."""
    export_dir.mkdir(parents=True, exist_ok=True)
    json_path, weights_path = export_dir / f"{name}.json", export_dir / f"{name}.weights.h5"
    write_model(model, network, json_path, weights_path)
    onnx_path = export_onnx(json_path)
    int8_path = export_int8(export_dir, name, data=data, n_faces=None)
    return [json_path, weights_path, onnx_path, int8_path]
