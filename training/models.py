"""Network definitions.

Run `python -m training.models` to print the parameter count and the multiply-accumulate
operations (MACs) per face of every network defined here; `--speed` also times the shipped
weights through the server's `FacialExpressionModel` at batch 1 and 64, with and without TTA.

Every network takes uint8-range grey faces `[N, 48, 48, 1]` and rescales them itself, so
training and serving cannot disagree about normalisation. The augmentation layers sit inside
the model too: Keras switches them off at inference (`training=False`), so the exported
`to_json()` model is the one the server runs, augmentation included but inert.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import keras
import numpy as np
from keras import layers

from fer_async.labels import EMOTIONS, FACE_SIZE

NUM_CLASSES = len(EMOTIONS)

# Augmentation strengths: FER2013 faces are roughly aligned already, so small geometric jitter
# helps while large rotations or crops would teach the net poses the detector never produces.
ROTATION_DEGREES = 10.0
ZOOM = 0.10
SHIFT = 0.10
CONTRAST = 0.20
# Random erasing (Zhong et al. 2017): blanks a noise patch of 2-20 % of the face in about half
# the images, so the net cannot lean on one region (a smile alone) and must read the whole face.
ERASING_AREA = (0.02, 0.20)


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


def describe_augmentation() -> str:
    """One line for model cards: what `augmentation()` does while training."""
    low, high = ERASING_AREA
    return (
        f"horizontal flip, rotation ±{ROTATION_DEGREES:g}°, zoom ±{ZOOM:.0%}, shift ±{SHIFT:.0%}, "
        f"contrast ±{CONTRAST:.0%}, random erasing of {low:.0%} to {high:.0%} of the face (about half the images)"
    )


def _inputs() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input((FACE_SIZE, FACE_SIZE, 1), name="face")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = augmentation()(x)
    return inputs, x


def classic() -> keras.Model:
    """The original project's network, kept as the named baseline (~4.5 M parameters).

    4 conv blocks (64, 128, 512, 512; kernels 3, 5, 3, 3) each with batch norm, ReLU, 2x2
    max-pool and dropout 0.25, then 2 dense blocks (256, 512) with dropout, softmax over 7.
    """
    inputs, x = _inputs()
    for filters, kernel in ((64, 3), (128, 5), (512, 3), (512, 3)):
        x = layers.Conv2D(filters, kernel, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    for units in (256, 512):
        x = layers.Dense(units)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Dropout(0.25)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="emotion")(x)
    return keras.Model(inputs, outputs, name="classic")


def _conv_bn_relu(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def fernet(widths: tuple[int, ...] = (32, 64, 128, 256), dense: int = 256) -> keras.Model:
    """A compact VGG-style network: ~0.12 GMAC per face, ~4x cheaper than `classic`.

    Four stages of two 3x3 conv + BN + ReLU each, halving resolution after every stage
    (48 -> 3), then a flattened 3x3 map into one dense layer. Flattening instead of global
    pooling keeps *where* a feature fired (mouth vs. brow), which matters on aligned faces.
    """
    inputs, x = _inputs()
    for stage, filters in enumerate(widths):
        x = _conv_bn_relu(x, filters)
        x = _conv_bn_relu(x, filters)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.1 * stage)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="emotion")(x)
    return keras.Model(inputs, outputs, name="fernet")


NETWORKS: dict[str, Callable[[], keras.Model]] = {"classic": classic, "fernet": fernet}


def build(name: str) -> keras.Model:
    try:
        return NETWORKS[name]()
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose from {sorted(NETWORKS)}") from None


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


def measure_speed(batch_sizes: tuple[int, ...] = (1, 64), seconds: float = 3.0) -> list[tuple[bool, int, float, float]]:
    """(flip_tta, batch, ms per call, faces/s) of the shipped model through the server's class."""
    from fer_async.model import FacialExpressionModel  # the server's class, loaded only for --speed

    rows = []
    for flip_tta in (False, True):
        served = FacialExpressionModel(flip_tta=flip_tta)
        for batch in batch_sizes:
            faces = np.random.default_rng(batch).integers(0, 256, (batch, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
            for _ in range(5):  # warm caches and the compiled function for this shape
                served.predict(faces)
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds:
                served.predict(faces)
                calls += 1
            per_call = elapsed / calls
            rows.append((flip_tta, batch, per_call * 1000, batch / per_call))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(NETWORKS), help="networks to describe")
    parser.add_argument(
        "--speed",
        action="store_true",
        help="also time the shipped weights (weights/) through FacialExpressionModel at batch 1 and 64",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per (TTA, batch) pair for --speed")
    args = parser.parse_args(argv)
    for name in args.names:
        model = build(name)
        print(f"{name:10s} params={model.count_params():>10,d}  GMAC/face={count_macs(model) / 1e9:.3f}")
    if args.speed:
        for flip_tta, batch, ms, faces_per_s in measure_speed(seconds=args.seconds):
            tta = "flip TTA" if flip_tta else "no TTA  "
            print(f"shipped model, {tta} batch {batch:3d}: {ms:7.2f} ms per call, {faces_per_s:7,.0f} faces/s")


if __name__ == "__main__":
    main()
