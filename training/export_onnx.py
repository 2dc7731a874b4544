"""Export the served Keras network to ONNX for the lean runtime (onnxruntime, no TensorFlow).

    python -m training.export_onnx                # weights/fernet.json + .weights.h5 -> weights/fernet.onnx
    python -m training.export_onnx --weights DIR --name NAME [--out FILE]

The model is traced as `model(x, training=False)` from the same `<name>.json` + weights the
Keras runtime loads, so every layer (a custom one included) is exported as it runs at inference
and the augmentation block is inert. `model.export(format="onnx")` is NOT used: Keras 3.15
traces it with augmentation active, and onnxruntime refuses the random ops that leaves in.

The ONNX takes uint8 faces `[N, 48, 48, 1]` (the cast to float is inside, as in the Keras
runtime) and returns probabilities `[N, 7]`. Its metadata records the sha256 of the `.json`
and `.weights.h5` it came from, so a stale export is detected (tests, and the server's
`--runtime auto`, which then falls back to Keras).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fer_async.config import DEFAULT_MODEL_NAME, DEFAULT_WEIGHTS_DIR
from fer_async.labels import FACE_SIZE
from fer_async.model import JSON_SHA256, WEIGHTS_SHA256, load_keras_model, resolve_weights, sha256_of

INPUT_NAME = "faces"
OPSET = 17


def export_onnx(
    weights: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR, name: str = DEFAULT_MODEL_NAME, out: Path | None = None
) -> Path:
    """Write the ONNX export of `<weights>/<name>.json` + `.weights.h5`; returns its path."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    json_path, weights_path = resolve_weights(weights, name)
    out = json_path.with_suffix(".onnx") if out is None else out
    model = load_keras_model(json_path, weights_path)
    signature = [tf.TensorSpec([None, FACE_SIZE, FACE_SIZE, 1], tf.uint8, name=INPUT_NAME)]

    def serve(faces: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model(tf.cast(faces, tf.float32), training=False)}

    traced = tf.function(serve, input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(traced, input_signature=signature, opset=OPSET)
    metadata = {
        JSON_SHA256: sha256_of(json_path),
        WEIGHTS_SHA256: sha256_of(weights_path),
        "source": f"{json_path.name} + {weights_path.name}",
        "exported_by": "python -m training.export_onnx",
        "keras_version": __import__("keras").__version__,
        "tf2onnx_version": tf2onnx.__version__,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(out)  # never a half-written model where the server looks
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="directory (or .json) of the model")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model file stem inside --weights")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: <name>.onnx beside the .json)")
    args = parser.parse_args(argv)
    out = export_onnx(args.weights, args.name, args.out)
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
