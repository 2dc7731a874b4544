"""The fused BatchNormalization computes what Keras' layer computes, and exports as Keras' layer."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_async.model import FacialExpressionModel
from training import models, served_form
from training.fused_bn import BatchNormalization as FusedBatchNormalization

TOLERANCE = 1e-3


def _pair(shape: tuple[int, ...], **config: object) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    plain = keras.layers.BatchNormalization(**config)
    fused = FusedBatchNormalization(**config)
    plain.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(3)
    channels = shape[-1]
    # Not the initial values: a test against gamma=1, beta=0, mean=0, var=1 would miss mix-ups.
    weights = [
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0, 0.5, channels),
        rng.normal(0, 0.3, channels),
        rng.uniform(0.5, 2.0, channels),
    ]
    plain.set_weights(weights)
    fused.set_weights(weights)
    return plain, fused


def _step(layer: keras.layers.Layer, x: tf.Tensor, training: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    upstream = tf.constant(np.random.default_rng(5).normal(size=x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return np.asarray(y, dtype=np.float32), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("shape", [(16, 6, 6, 8), (32, 24)], ids=["conv-NHWC", "dense-NC"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_fused_and_plain_batch_norm_agree(shape: tuple[int, ...], training: bool) -> None:
    plain, fused = _pair(shape, momentum=0.9)
    x = tf.constant(np.random.default_rng(1).normal(1.5, 3.0, shape).astype(np.float32))
    y_plain, g_plain = _step(plain, x, training)
    y_fused, g_fused = _step(fused, x, training)

    np.testing.assert_allclose(y_fused, y_plain, atol=TOLERANCE, rtol=TOLERANCE)
    for name, a, b in zip(("d/dx", "d/dgamma", "d/dbeta"), g_fused, g_plain, strict=True):
        np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=TOLERANCE, err_msg=name)
    # The moving statistics moved (in training) by the same update, population variance included.
    for a, b in zip(fused.get_weights()[2:], plain.get_weights()[2:], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    moved = not np.allclose(fused.get_weights()[2], _pair(shape)[1].get_weights()[2])
    assert moved == training


def test_fused_batch_norm_runs_in_bfloat16_and_keeps_float32_statistics() -> None:
    shape = (16, 6, 6, 8)
    plain, fused = _pair(shape)
    x = np.random.default_rng(2).normal(0.0, 2.0, shape).astype(np.float32)
    y_plain = plain(tf.constant(x), training=True)
    y_fused = fused(tf.cast(tf.constant(x), tf.bfloat16), training=True)
    assert fused.moving_mean.dtype == "float32"
    # bfloat16 keeps 8 bits of mantissa: agreement to its resolution, not to 1e-3.
    np.testing.assert_allclose(np.asarray(tf.cast(y_fused, tf.float32)), np.asarray(y_plain), atol=0.05, rtol=0.02)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-2)


def test_a_training_step_of_fernet_is_the_same_with_fused_batch_norm() -> None:
    """Whole network, one optimiser step from the same weights: same loss, same weights after."""
    faces = np.random.default_rng(4).integers(0, 256, (32, 48, 48, 1)).astype(np.float32)
    labels = keras.utils.to_categorical(np.arange(32) % 7, 7)
    results = []
    for fused_bn in (False, True):
        keras.utils.set_random_seed(11)  # same initial weights and the same augmentation draws
        model = models.build("fernet", fused_bn=fused_bn)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
        loss = model.train_on_batch(faces, labels)
        results.append((loss, model.get_weights()))
    (loss_plain, w_plain), (loss_fused, w_fused) = results
    assert loss_fused == pytest.approx(loss_plain, rel=TOLERANCE)
    for a, b in zip(w_fused, w_plain, strict=True):
        np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=TOLERANCE)


def test_a_fast_path_model_exports_as_the_plain_network(tmp_path: Path) -> None:
    fast = models.build("fernet", fused_bn=True, precision="bf16")
    assert any(isinstance(layer, FusedBatchNormalization) for layer in fast.layers)
    json_path, weights_path = tmp_path / "fernet.json", tmp_path / "fernet.weights.h5"
    served_form.write_model(fast, "fernet", json_path, weights_path)

    exported = json.loads(json_path.read_text())
    classes = {(layer["module"], layer["class_name"]) for layer in exported["config"]["layers"]}
    assert ("keras.layers", "BatchNormalization") in classes
    assert not any(module.startswith("training") for module, _ in classes)
    assert "bfloat16" not in json_path.read_text()
    plain = json.loads(models.build("fernet").to_json())
    assert [(layer["module"], layer["class_name"]) for layer in exported["config"]["layers"]] == [
        (layer["module"], layer["class_name"]) for layer in plain["config"]["layers"]
    ]

    served = FacialExpressionModel(tmp_path, "fernet", flip_tta=False)
    faces = np.random.default_rng(6).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    expected = fast(faces[..., None].astype(np.float32), training=False)
    np.testing.assert_allclose(served.predict(faces), np.asarray(expected, dtype=np.float32), atol=0.02)
