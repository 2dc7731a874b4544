"""FacialExpressionModel: the trained Keras network behind the server.

This is the only module of the package that imports TensorFlow / Keras, so the rest of the
server stays importable (and testable) without paying TensorFlow's import cost.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from fer_async.config import DEFAULT_MODEL_NAME, DEFAULT_WEIGHTS_DIR
from fer_async.labels import EMOTIONS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of logs

import keras
import tensorflow as tf

import fer_async.keras_layers  # noqa: F401  registers FaceContrast, which model_from_json needs

logger = logging.getLogger(__name__)

FACE_SIZE = 48


def resolve_weights(weights: str | os.PathLike[str], name: str = DEFAULT_MODEL_NAME) -> tuple[Path, Path]:
    """Find (model json, weights h5) from a directory (+ model name) or a path to the .json."""
    path = Path(weights)
    json_path = path if path.suffix == ".json" else path / f"{name}.json"
    weights_path = json_path.with_name(json_path.name.removesuffix(".json") + ".weights.h5")
    for required in (json_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"model file not found: {required}")
    return json_path, weights_path


class FacialExpressionModel:
    """Loads `<name>.json` (Keras `to_json()`) + `<name>.weights.h5` and classifies 48x48 faces.

    `predict` runs the whole batch in one call of a compiled function (no `Model.predict`
    loop), on the GPU when TensorFlow sees one. With `flip_tta` (the default) each face is also
    classified mirrored, in the same call, and the two probability vectors are averaged: it
    doubles the model's share of the work, which is small next to face detection, and gains
    about 1.5 points of accuracy on PublicTest (see weights/fernet.md).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
        name: str = DEFAULT_MODEL_NAME,
        *,
        flip_tta: bool = True,
    ) -> None:
        self.json_path, self.weights_path = resolve_weights(weights, name)
        self.model = keras.models.model_from_json(self.json_path.read_text())
        self.model.load_weights(self.weights_path)
        self.flip_tta = flip_tta
        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        self._forward = tf.function(
            self._forward_impl,
            input_signature=[tf.TensorSpec([None, FACE_SIZE, FACE_SIZE, 1], tf.uint8)],
            reduce_retracing=True,
        )
        started = time.perf_counter()
        self.predict(np.zeros((1, FACE_SIZE, FACE_SIZE), np.uint8))  # trace + allocate before traffic
        logger.info(
            "loaded %s (%s parameters) on %s, warm-up %.0f ms",
            self.json_path.name,
            f"{self.model.count_params():,}",
            self.device,
            (time.perf_counter() - started) * 1000,
        )

    def _forward_impl(self, faces: tf.Tensor) -> tf.Tensor:
        x = tf.cast(faces, tf.float32)  # the model rescales 0..255 itself
        if not self.flip_tta:
            return self.model(x, training=False)
        n = tf.shape(x)[0]
        probs = self.model(tf.concat([x, tf.reverse(x, axis=[2])], axis=0), training=False)
        return (probs[:n] + probs[n:]) / 2.0

    @staticmethod
    def _validate(faces: np.ndarray) -> np.ndarray:
        if not isinstance(faces, np.ndarray):
            raise ValueError(f"faces must be a numpy array, got {type(faces).__name__}")
        if faces.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 grey levels 0..255, got dtype {faces.dtype}")
        if faces.ndim == 4 and faces.shape[-1] == 1:
            faces = faces[..., 0]
        if faces.ndim != 3 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
            raise ValueError(f"faces must have shape [N, 48, 48] or [N, 48, 48, 1], got {list(faces.shape)}")
        if faces.shape[0] == 0:
            raise ValueError("faces is an empty batch")
        return faces

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities `[N, 7]` (float32, FER2013 order) for uint8 faces `[N, 48, 48(, 1)]`."""
        faces = self._validate(faces)
        probs = self._forward(tf.convert_to_tensor(faces[..., None]))
        return np.asarray(probs, dtype=np.float32)

    def predict_emotion(self, face: np.ndarray) -> str:
        """The most likely emotion of one uint8 face `[48, 48]` or `[48, 48, 1]`."""
        if not isinstance(face, np.ndarray) or face.ndim not in (2, 3):
            raise ValueError("face must be one uint8 array of shape [48, 48] or [48, 48, 1]")
        return EMOTIONS[int(self.predict(face[None])[0].argmax())]
