"""Batch normalisation on TensorFlow's fused kernel, for training.

Keras 3's `BatchNormalization` on the TensorFlow backend is unfused: `ops.moments` followed by
`tf.nn.batch_normalization`, a dozen small ops per layer forward and more backward. TensorFlow's
`FusedBatchNormV3` (oneDNN on this CPU) does statistics, normalisation and, backward, the whole
gradient in one kernel each; it is several times faster and was ~40 % of a fernet fp32 step.

`BatchNormalization` here is a drop-in subclass: same variables, same config, same moving-average
update as Keras' layer (population variance, `moving = moving * momentum + batch * (1 -
momentum)`); only the training-mode computation goes through the fused kernel. Inference keeps
Keras' own path (it is elementwise with the moving statistics: nothing to fuse).

It is named `BatchNormalization` on purpose: Keras keys weight files (`.weights.h5`) and
automatic layer names by the class name, so checkpoints, `--init-weights` files and optimizer
state are interchangeable between this layer and Keras' own. Its *module* is not Keras', so an
exported architecture must be rebuilt with Keras' layer (`training.served_form.inference_copy` does),
which keeps the served JSON and the server unchanged.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

# FusedBatchNormV3 rejects smaller epsilons (cuDNN's limit, enforced on every device).
MIN_FUSED_EPSILON = 1.001e-5
FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)


class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs `FusedBatchNormV3`."""

    def _can_fuse(self, inputs: Any, training: bool | None, mask: Any) -> bool:
        rank = len(inputs.shape)
        axis = self.axis % rank if isinstance(self.axis, int) else None
        return bool(
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and keras.backend.backend() == "tensorflow"
            and rank in (2, 4)
            and axis == rank - 1
            and self.epsilon >= MIN_FUSED_EPSILON
            and inputs.shape[-1] is not None
        )

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not self._can_fuse(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in FUSED_DTYPES:
            x = tf.cast(x, tf.float32)
        flat = len(inputs.shape) == 2
        if flat:  # a dense layer's [N, C]: the kernel wants NHWC, so [N, 1, 1, C]
            x = tf.reshape(x, [-1, 1, 1, channels])
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, is_training=True, data_format="NHWC"
        )
        # The kernel returns the Bessel-corrected (n - 1) variance; Keras' layer keeps the
        # population variance in its moving average, so undo the correction to match it.
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        if flat:
            y = tf.reshape(y, [-1, channels])
        return tf.cast(y, self.compute_dtype)
