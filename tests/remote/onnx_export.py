"""An ONNX copy of the shipped Keras network, for the inference servers in these tests.

Input `faces`: uint8 [N, 48, 48, 1] grey levels 0..255 (the network rescales them itself);
output `probabilities`: float32 [N, 7] in EMOTIONS order; no flip TTA inside (the client mirrors).
This is the signature deploy/triton/fernet/config.pbtxt and deploy/mlserver/fernet declare.
Traced through `model(x, training=False)`: Keras' own `model.export` keeps the augmentation
layers active (see NOTES-serving), so it is not used.
"""

from __future__ import annotations

from pathlib import Path


def export_onnx(weights_dir: Path, model_name: str, destination: Path) -> Path:
    import tensorflow as tf
    import tf2onnx

    from fer_async.model import FacialExpressionModel

    keras_model = FacialExpressionModel(weights_dir, model_name, flip_tta=False).model

    def probabilities(faces: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": keras_model(tf.cast(faces, tf.float32), training=False)}

    serve = tf.function(probabilities, input_signature=[tf.TensorSpec([None, 48, 48, 1], tf.uint8, name="faces")])

    destination.parent.mkdir(parents=True, exist_ok=True)
    tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17, output_path=str(destination))
    return destination
