"""Network definitions.

Run `python -m training.models` to print the parameter count and the multiply-accumulate
operations (MACs) per face of every network defined here; `--speed` also times the shipped
weights through the server's `FacialExpressionModel` at batch 1 and 64, with and without TTA,
the fp32 and the int8 network one right after the other (`--model-precision`), with the load
average before and after and the faces per second of CPU time (less sensitive to a busy machine).

Every network takes uint8-range grey faces `[N, 48, 48, 1]`, stretches each face to 0..255
(`FaceContrast`, as the FER2013 npz faces are stretched; camera crops are not) and rescales it
itself, so training and serving cannot disagree about normalisation. The augmentation layers sit inside
the model too: Keras switches them off at inference (`training=False`), so the exported
`to_json()` model is the one the server runs, augmentation included but inert.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
from keras import layers

from fer_async.keras_layers import FaceContrast
from fer_async.labels import EMOTIONS, FACE_SIZE
from fer_async.model import ONNX_THREADS
from fer_async.model_choices import MODEL_PRECISIONS, RUNTIMES
from training.augmentation import CONTRAST, ERASING_AREA, ROTATION_DEGREES, SHIFT, ZOOM

NUM_CLASSES = len(EMOTIONS)

# Training precisions (`training.train --precision`). "bf16" is Keras' `mixed_bfloat16` policy:
# bfloat16 compute, float32 variables; the classifier head and softmax stay float32 (`_head`).
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}

BatchNormFactory = Callable[[], layers.Layer]


def augmentation() -> keras.Sequential:
    """Real-time augmentation; only active while training."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal"),
            layers.RandomRotation(ROTATION_DEGREES / 360.0, fill_mode="nearest"),
            layers.RandomZoom(ZOOM, fill_mode="nearest"),
            layers.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest"),
            layers.RandomContrast(CONTRAST, value_range=(0.0, 1.0)),
            layers.RandomErasing(factor=1.0, scale=ERASING_AREA, value_range=(0.0, 1.0)),
        ],
        name="augmentation",
    )


def _inputs(augment: bool = True) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input((FACE_SIZE, FACE_SIZE, 1), name="face")
    # Per-face min-max stretch first: the training faces are stretched to 0..255 already (the
    # identity on them), a camera's dim or washed-out crop is not.
    x = FaceContrast(name="face_contrast")(inputs)
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    if augment:
        x = augmentation()(x)
    return inputs, x


def _head(x: keras.KerasTensor) -> keras.KerasTensor:
    # float32 whatever the policy: a bfloat16 softmax (8 bits of mantissa) would round the
    # probabilities the loss and the metrics are computed from.
    return layers.Dense(NUM_CLASSES, activation="softmax", name="emotion", dtype="float32")(x)


def classic(batch_norm: BatchNormFactory = layers.BatchNormalization, augment: bool = True) -> keras.Model:
    """The original project's network, kept as the named baseline (~4.5 M parameters).

    4 conv blocks (64, 128, 512, 512; kernels 3, 5, 3, 3) each with batch norm, ReLU, 2x2
    max-pool and dropout 0.25, then 2 dense blocks (256, 512) with dropout, softmax over 7.
    """
    inputs, x = _inputs(augment)
    for filters, kernel in ((64, 3), (128, 5), (512, 3), (512, 3)):
        x = layers.Conv2D(filters, kernel, padding="same")(x)
        x = batch_norm()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    for units in (256, 512):
        x = layers.Dense(units)(x)
        x = batch_norm()(x)
        x = layers.Activation("relu")(x)
        x = layers.Dropout(0.25)(x)
    return keras.Model(inputs, _head(x), name="classic")


def _conv_bn_relu(x: keras.KerasTensor, filters: int, batch_norm: BatchNormFactory) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = batch_norm()(x)
    return layers.ReLU()(x)


def fernet(
    widths: tuple[int, ...] = (32, 64, 128, 256),
    dense: int = 256,
    batch_norm: BatchNormFactory = layers.BatchNormalization,
    augment: bool = True,
) -> keras.Model:
    """A compact VGG-style network: ~0.12 GMAC per face, ~4x cheaper than `classic`.

    Four stages of two 3x3 conv + BN + ReLU each, halving resolution after every stage
    (48 -> 3), then a flattened 3x3 map into one dense layer. Flattening instead of global
    pooling keeps *where* a feature fired (mouth vs. brow), which matters on aligned faces.
    """
    inputs, x = _inputs(augment)
    for stage, filters in enumerate(widths):
        x = _conv_bn_relu(x, filters, batch_norm)
        x = _conv_bn_relu(x, filters, batch_norm)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.1 * stage)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, use_bias=False)(x)
    x = batch_norm()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, _head(x), name="fernet")


def fernet_wide(batch_norm: BatchNormFactory = layers.BatchNormalization, augment: bool = True) -> keras.Model:
    """`fernet` at twice the width (~4x the compute): a distillation teacher, not bound by the
    served budget (issue 14)."""
    return fernet((64, 128, 256, 512), 512, batch_norm, augment)


NETWORKS: dict[str, Callable[..., keras.Model]] = {"classic": classic, "fernet": fernet, "fernet_wide": fernet_wide}


@contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Layers built inside take the precision's dtype policy (Keras reads the global one at
    construction); the previous global policy is restored afterwards."""
    try:
        policy = PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}") from None
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build(name: str, *, fused_bn: bool = False, precision: str = "fp32", augment: bool = True) -> keras.Model:
    """Network `name`; the defaults give the served form (Keras' BatchNormalization, float32).

    `fused_bn` and `precision` are the training fast path: the same variables in the same order
    (`build(name).set_weights(fast.get_weights())` moves them), computed faster. `augment=False`
    leaves the augmentation layers out (they hold no variables), for inputs that come augmented
    already (`training.distill`'s fixed views).
    """
    try:
        network = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose from {sorted(NETWORKS)}") from None
    if fused_bn:
        from training.fused_bn import BatchNormalization as FusedBatchNormalization  # imports TensorFlow

        batch_norm: BatchNormFactory = FusedBatchNormalization
    else:
        batch_norm = layers.BatchNormalization
    with dtype_policy(precision):
        return network(batch_norm=batch_norm, augment=augment)


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates for one face through Conv2D / Dense layers (the cost that matters)."""
    macs = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            _, oh, ow, oc = layer.output.shape
            macs += kh * kw * layer.input.shape[-1] * oh * ow * oc
        elif isinstance(layer, layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)


def _leaf_layers(model: keras.Model) -> list[layers.Layer]:
    found: list[layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_leaf_layers(layer))
        else:
            found.append(layer)
    return found


class Speed(NamedTuple):
    """One timing of `measure_speed`."""

    model_file: str  # the file that served (fernet.int8.onnx, fernet.onnx, fernet.json)
    flip_tta: bool
    batch: int
    ms_per_call: float
    faces_per_s: float  # wall clock
    faces_per_cpu_s: float  # per second of this process's CPU time: what a busy machine does not change much


def measure_speed(
    batch_sizes: tuple[int, ...] = (1, 64),
    seconds: float = 3.0,
    runtime: str = "auto",
    onnx_threads: int = 1,
    precisions: tuple[str, ...] = ("fp32",),
) -> list[Speed]:
    """Timings of the shipped model through the server's class, each precision right after the other."""
    from fer_async.model import FacialExpressionModel  # the server's class, loaded only for --speed

    rows = []
    for flip_tta in (False, True):
        served = [
            FacialExpressionModel(flip_tta=flip_tta, runtime=runtime, onnx_threads=onnx_threads, precision=precision)
            for precision in precisions
        ]
        for batch in batch_sizes:
            faces = np.random.default_rng(batch).integers(0, 256, (batch, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
            for model in served:
                for _ in range(5):  # warm caches and the compiled function for this shape
                    model.predict(faces)
                calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
                while (elapsed := time.perf_counter() - started) < seconds:
                    model.predict(faces)
                    calls += 1
                cpu = time.process_time() - cpu_started
                rows.append(
                    Speed(
                        model.model_file,
                        flip_tta,
                        batch,
                        elapsed / calls * 1000,
                        batch * calls / elapsed,
                        batch * calls / cpu,
                    )
                )
    return rows


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(NETWORKS), help="networks to describe")
    parser.add_argument(
        "--speed",
        action="store_true",
        help="also time the shipped weights (weights/) through FacialExpressionModel at batch 1 and 64",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per (TTA, batch) pair for --speed")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="the runtime --speed times")
    parser.add_argument(
        "--model-precision",
        choices=(*MODEL_PRECISIONS, "both"),
        default="both",
        help="the network file(s) --speed times, one right after the other (default: %(default)s; "
        "--runtime keras: fp32 only)",
    )
    parser.add_argument("--onnx-threads", type=int, default=ONNX_THREADS, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    for name in args.names:
        model = build(name)
        print(f"{name:10s} params={model.count_params():>10,d}  GMAC/face={count_macs(model) / 1e9:.3f}")
    if args.speed:
        precisions = MODEL_PRECISIONS if args.model_precision == "both" else (args.model_precision,)
        if args.runtime == "keras":
            precisions = ("fp32",)
        print(f"load average (1, 5, 15 min) before: {_load_average()}")
        rows = measure_speed(
            seconds=args.seconds, runtime=args.runtime, onnx_threads=args.onnx_threads, precisions=precisions
        )
        threads = f", {args.onnx_threads} onnx threads" if args.runtime != "keras" else ""
        for row in rows:
            tta = "flip TTA" if row.flip_tta else "no TTA  "
            print(
                f"shipped model {row.model_file:16s} ({args.runtime}{threads}), {tta} batch {row.batch:3d}: "
                f"{row.ms_per_call:7.2f} ms per call, {row.faces_per_s:7,.0f} faces/s, "
                f"{row.faces_per_cpu_s:7,.0f} faces per CPU s"
            )
        print(f"load average (1, 5, 15 min) after: {_load_average()}")


if __name__ == "__main__":
    main()
