"""Export the served Keras network to ONNX for the lean runtime (onnxruntime, no TensorFlow).

    python -m training.export_onnx                # weights/fernet.json + .weights.h5 -> weights/fernet.onnx
    python -m training.export_onnx --weights DIR --name NAME [--out FILE]
    python -m training.export_onnx --int8         # ... -> weights/fernet.int8.onnx (and fernet.onnx if stale)

The model is traced as `model(x, training=False)` from the same `<name>.json` + weights the
Keras runtime loads, so every layer (a custom one included) is exported as it runs at inference
and the augmentation block is inert. `model.export(format="onnx")` is NOT used: Keras 3.15
traces it with augmentation active, and onnxruntime refuses the random ops that leaves in.

The ONNX takes uint8 faces `[N, 48, 48, 1]` (the cast to float is inside, as in the Keras
runtime) and returns probabilities `[N, 7]`. Its metadata records the sha256 of the `.json`
and `.weights.h5` it came from, so a stale export is detected (tests, and the server's
`--runtime auto`, which then falls back to Keras).

`--int8` (after the weights change, this one command remakes both files) writes
`<name>.int8.onnx`: the fp32 export (exported first when it is missing or stale) statically
quantized by onnxruntime (`quantize_static`, QDQ format; uint8 activations, int8 weights per
output channel, full 8-bit range: the U8S8 integer kernels of x86, exact on VNNI CPUs).
Only the convolutions and the dense layers compute in int8 (ReLU and max-pooling pass int8
through, so no dequantize/quantize sits between two convolutions); the per-face contrast stretch
(`FaceContrast`), the rescaling, and the logits and softmax stay float32. The activation ranges
are the min/max seen on a fixed calibration sample: `--calibration-faces` (1500) FER2013
*training* faces drawn per class in proportion to the split (`--calibration-seed`, 2026), each
also mirrored as flip TTA feeds them. The data defaults to ../shared/data/fer2013/fer2013.npz
(`--calibration-data`); the command fails before any work when it is absent. The int8 file keeps
the fp32 export's sha256 of the `.json` and `.weights.h5`, so a re-trained network cannot serve
an old int8 file (the server falls back to fp32, the tests fail), and records how it was made.
The same inputs give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fer_async.labels import FACE_SIZE
from fer_async.model import (
    INT8_EXPORT_COMMAND,
    JSON_SHA256,
    WEIGHTS_SHA256,
    int8_path_for,
    load_keras_model,
    onnx_staleness,
    resolve_weights,
    sha256_of,
)
from fer_async.model_choices import DEFAULT_MODEL_NAME, DEFAULT_WEIGHTS_DIR
from training.data import DEFAULT_DATA, load_split

INPUT_NAME = "faces"
OPSET = 17

# --int8. The calibration sample: small enough to run in seconds, large enough that every class
# (disgust is 1.5 % of the training faces: 23 of them) is in it. Seeds 1, 2, 3 and 2026 and 500 or
# 2000 faces all gave PublicTest within 0.3 points of each other (docs/training.md, "int8: the choices compared").
CALIBRATION_FACES = 1500
CALIBRATION_SEED = 2026
CALIBRATION_BATCH = 64
# The ops that compute in int8, and the ones that only carry int8 from one to the next.
INT8_OPS = ("Conv", "MatMul", "Gemm")
INT8_PASS_THROUGH_OPS = ("Relu", "MaxPool")


def export_onnx(
    weights: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR, name: str = DEFAULT_MODEL_NAME, out: Path | None = None
) -> Path:
    """Write the ONNX export of `<weights>/<name>.json` + `.weights.h5`; returns its path."""
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
    return _write_with_metadata(proto, metadata, out)


def _write_with_metadata(proto: Any, metadata: dict[str, str], out: Path) -> Path:
    """`proto` with `metadata` added to its metadata, checked, then written to `out` by rename:
    never a half-written model where the server looks."""
    import onnx

    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(out)
    return out


def calibration_faces(
    data: str | os.PathLike[str] = DEFAULT_DATA, n: int | None = CALIBRATION_FACES, seed: int = CALIBRATION_SEED
) -> np.ndarray:
    """`n` FER2013 training faces, uint8 [n, 48, 48], drawn per class in proportion to the split
    (`None`: CALIBRATION_FACES, or the whole split where it is smaller, as in a training run's
    small data set).

    The same data, `n` and `seed` always give the same faces, in training-set order.
    """
    train = load_split(data, "train")
    if n is None:
        n = min(CALIBRATION_FACES, len(train))
    if n < len(np.unique(train.y)) or n > len(train):
        raise ValueError(f"--calibration-faces must be between the number of classes and {len(train)}, got {n}")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(train.y):
        members = np.flatnonzero(train.y == label)
        share = max(1, round(n * len(members) / len(train.y)))
        chosen.append(rng.choice(members, min(share, len(members)), replace=False))
    return train.x[np.sort(np.concatenate(chosen))]


def _calibration_reader(faces: np.ndarray) -> Any:
    """The faces and their mirrors (what flip TTA feeds the network), in batches, for quantize_static."""
    from onnxruntime.quantization import CalibrationDataReader

    both = np.concatenate([faces, faces[:, :, ::-1]])[..., None]
    batches = [np.ascontiguousarray(both[i : i + CALIBRATION_BATCH]) for i in range(0, len(both), CALIBRATION_BATCH)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._next, None)
            return None if batch is None else {INPUT_NAME: batch}

        def rewind(self) -> None:
            self._next = iter(batches)

    return Reader()


def _current_fp32(json_path: Path, weights_path: Path) -> Path:
    """`<name>.onnx`, exported again first when it is missing or stale (that needs TensorFlow)."""
    import onnx

    fp32 = json_path.with_suffix(".onnx")
    if fp32.is_file():
        metadata = {entry.key: entry.value for entry in onnx.load(str(fp32), load_external_data=False).metadata_props}
        stale = onnx_staleness(metadata, json_path, weights_path)
        if stale is None:
            return fp32
        print(f"{fp32.name} is stale ({stale}): exporting it again first")
    else:
        print(f"{fp32.name} is missing: exporting it first")
    return export_onnx(json_path, json_path.name.removesuffix(".json"))


def export_int8(
    weights: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    name: str = DEFAULT_MODEL_NAME,
    out: Path | None = None,
    *,
    data: str | os.PathLike[str] = DEFAULT_DATA,
    n_faces: int | None = CALIBRATION_FACES,
    seed: int = CALIBRATION_SEED,
) -> Path:
    """Write `<name>.int8.onnx` (or `out`): the current fp32 export, statically quantized; returns its path."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    json_path, weights_path = resolve_weights(weights, name)
    if not Path(data).exists():
        raise FileNotFoundError(
            f"calibration data not found: {data} (FER2013 as npz, csv or folders; pass --calibration-data PATH)"
        )
    faces = calibration_faces(data, n_faces, seed)
    fp32 = _current_fp32(json_path, weights_path)
    out = int8_path_for(json_path) if out is None else out
    settings = {
        "format": "QDQ",
        "activations": "uint8",
        "weights": "int8, per output channel",
        "reduce_range": False,
        "calibration_method": "MinMax",
        "int8_ops": list(INT8_OPS),
        "int8_pass_through_ops": list(INT8_PASS_THROUGH_OPS),
        "float_outputs": ["Gemm"],
    }
    with tempfile.TemporaryDirectory(prefix="fer-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "quantized.onnx"
        # Shape inference and onnxruntime's basic graph optimisations (constant folding, MatMul +
        # Add -> Gemm), as onnxruntime recommends before quantizing; symbolic shape inference is
        # not needed (the only free dimension is the batch) and would need sympy.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            _calibration_reader(faces),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=[*INT8_OPS, *INT8_PASS_THROUGH_OPS],
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # The logits stay float: the softmax reads them unrounded.
            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
        )
        proto = onnx.load(str(quantized))
    kept = {entry.key: entry.value for entry in proto.metadata_props}
    metadata = {
        JSON_SHA256: kept[JSON_SHA256],  # the fp32 export's, checked current above
        WEIGHTS_SHA256: kept[WEIGHTS_SHA256],
        "source": kept.get("source", f"{json_path.name} + {weights_path.name}"),
        "exported_by": INT8_EXPORT_COMMAND,
        "precision": "int8",
        "quantized_from": fp32.name,
        "quantized_from_sha256": sha256_of(fp32),
        "quantization": json.dumps(settings, sort_keys=True),
        "calibration": json.dumps(
            {
                "data": Path(data).name,
                "split": "train",
                "faces": len(faces),
                "mirrored": True,
                "seed": seed,
                "faces_sha256": hashlib.sha256(faces.tobytes()).hexdigest(),
            },
            sort_keys=True,
        ),
        "onnxruntime_version": onnxruntime.__version__,
    }
    del proto.metadata_props[:]  # the fp32 file's own entries: the int8 file has its own
    return _write_with_metadata(proto, metadata, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="directory (or .json) of the model")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model file stem inside --weights")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: <name>.onnx, or <name>.int8.onnx, beside the .json)",
    )
    int8 = parser.add_argument_group("int8 (statically quantized) network")
    int8.add_argument(
        "--int8",
        action="store_true",
        help="write <name>.int8.onnx from the fp32 export (exporting that first when it is missing or stale)",
    )
    int8.add_argument(
        "--calibration-data", type=Path, default=DEFAULT_DATA, help="FER2013 npz/csv/folder (default: %(default)s)"
    )
    int8.add_argument(
        "--calibration-faces",
        type=int,
        default=CALIBRATION_FACES,
        help="training faces to calibrate on, stratified by class (default: %(default)s)",
    )
    int8.add_argument(
        "--calibration-seed", type=int, default=CALIBRATION_SEED, help="their sampling seed (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if not args.int8:
        out = export_onnx(args.weights, args.name, args.out)
    else:
        try:
            out = export_int8(
                args.weights,
                args.name,
                args.out,
                data=args.calibration_data,
                n_faces=args.calibration_faces,
                seed=args.calibration_seed,
            )
        except (FileNotFoundError, ValueError) as exc:
            print(f"export_onnx: error: {exc}", file=sys.stderr)
            return 2
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
