"""Put the per-face contrast layer in front of an exported network that lacks it (issue 15).

    python -m training.add_face_contrast weights/fernet.json

Networks exported before `fer_async.keras_layers.FaceContrast` existed take the raw crop
straight into their `Rescaling`. This inserts the layer between the input and that first
layer in the `to_json()` file, in place, exactly where `training.models` now builds it, and
checks that the weights file still loads into the result with every value unchanged. The layer
is the identity on the training faces (all stretched to 0..255), so no retraining is needed.
Running it on a network that already has the layer changes nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

LAYER_NAME = "face_contrast"


def insert_layer(config: dict[str, Any], layer: dict[str, Any]) -> bool:
    """Insert the serialised `layer` after the functional model's input; False if already there."""
    layers: list[dict[str, Any]] = config["config"]["layers"]
    if any(entry["name"] == LAYER_NAME for entry in layers):
        return False
    inputs = config["config"]["input_layers"]  # ["face", 0, 0], or a list of such for several inputs
    input_name = inputs[0][0] if isinstance(inputs[0], list) else inputs[0]
    consumers = [entry for entry in layers if _reads(entry, input_name)]
    if len(consumers) != 1:
        raise ValueError(f"expected one layer reading the input {input_name!r}, found {len(consumers)}")
    template = consumers[0]["inbound_nodes"]
    entry = {**layer, "name": LAYER_NAME, "inbound_nodes": copy.deepcopy(template)}
    for node in consumers[0]["inbound_nodes"]:
        for arg in node["args"]:
            arg["config"]["keras_history"][0] = LAYER_NAME
    position = next(i for i, e in enumerate(layers) if e["name"] == input_name) + 1
    layers.insert(position, entry)
    return True


def _reads(entry: dict[str, Any], name: str) -> bool:
    return any(
        arg.get("class_name") == "__keras_tensor__" and arg["config"]["keras_history"][0] == name
        for node in entry.get("inbound_nodes", [])
        for arg in node.get("args", [])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="<name>.json next to <name>.weights.h5; rewritten in place")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from fer_async.keras_layers import FaceContrast
    from fer_async.model import resolve_weights

    json_path, weights_path = resolve_weights(args.json)
    old_text = json_path.read_text()
    config = json.loads(old_text)
    layer = keras.saving.serialize_keras_object(FaceContrast(name=LAYER_NAME))
    layer["build_config"] = {"input_shape": config["config"]["layers"][0]["config"]["batch_shape"]}
    if not insert_layer(config, layer):
        print(f"{json_path}: already has {LAYER_NAME}; nothing to do")
        return 0

    old = keras.models.model_from_json(old_text)
    old.load_weights(weights_path)
    new = keras.models.model_from_json(json.dumps(config))
    new.load_weights(weights_path)
    old_values, new_values = old.get_weights(), new.get_weights()
    if len(old_values) != len(new_values) or not all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(old_values, new_values, strict=True)
    ):
        print(f"{json_path}: the weights do not load unchanged into the new network", file=sys.stderr)
        return 1
    json_path.write_text(new.to_json(indent=1) + "\n")
    print(f"{json_path}: {LAYER_NAME} inserted; {len(new_values)} weight arrays of {weights_path.name} load unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
