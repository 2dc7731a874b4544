"""Custom Keras layers that are part of the shipped network (imported by model loading and training).

Registered as Keras serializables, so a `to_json()` export names them and
`keras.models.model_from_json` rebuilds them, provided this module was imported first
(`fer_async.model` does that). Only the model-loading code and `training/` import it: the rest
of the server stays free of TensorFlow.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Per-face gain cap: a face whose grey levels span fewer than 255 / MAX_GAIN levels holds no
# expression to read, only noise; it is stretched by MAX_GAIN, around its middle grey level, so
# that one-level sensor or JPEG noise is not blown up into a full-contrast texture. Measured on
# darkened PublicTest faces (docs/training.md, "Per-face contrast"): a cap that already binds at
# 32 levels (8) or more cost 9-12 points there, so the cap only guards faces under 8 levels.
MAX_GAIN = 32.0
# The training faces (FER2013 as distributed in fer2013.npz) span exactly 0..255.
FULL_RANGE = 255.0


@keras.saving.register_keras_serializable(package="fer_async")
class FaceContrast(keras.layers.Layer):
    """Stretch each face's grey levels to 0..255 (min-max), as the training faces are stretched.

    Input and output: float grey levels 0..255, `[N, H, W, C]`. Per face, `lo` and `hi` are
    its darkest and brightest level and the face is mapped linearly so that they become 0 and
    255: `(x - lo) * 255 / (hi - lo)`. A face that already spans 0..255 (every FER2013
    training face) is passed through unchanged, so weights trained without this layer stay
    valid. The gain is capped at `max_gain`; a capped face keeps its middle level
    `(lo + hi) / 2` at 127.5 and spans `(hi - lo) * max_gain` levels. A flat face (`hi == lo`)
    is returned as it is (nothing to stretch, and no division by zero).

    Only reductions, arithmetic and `where`: it exports to ONNX and TFLite as plain ops.
    Weightless; inert to `training`.
    """

    def __init__(self, max_gain: float = MAX_GAIN, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not max_gain >= 1.0:
            raise ValueError(f"max_gain must be at least 1 (1 = never stretch), got {max_gain}")
        self.max_gain = float(max_gain)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        axes = tuple(range(1, len(x.shape)))
        lo = ops.min(x, axis=axes, keepdims=True)
        hi = ops.max(x, axis=axes, keepdims=True)
        spread = hi - lo
        # max(spread, 255 / max_gain) caps the gain and keeps the divisor positive for flat faces.
        gain = FULL_RANGE / ops.maximum(spread, FULL_RANGE / self.max_gain)
        # Written around the middle level: for an uncapped face this is exactly (x - lo) * gain.
        stretched = (x - (lo + hi) / 2.0) * gain + FULL_RANGE / 2.0
        return ops.where(spread > 0.0, stretched, x)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_gain": self.max_gain}
