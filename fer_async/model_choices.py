"""Which network serves and the ways it can run (fer_async.model runs them).

Standard library only: the settings (`--weights`, `--model-name`, `--runtime`,
`--model-precision`) and the training tools read these without importing numpy or onnxruntime.
"""

from __future__ import annotations

from fer_async.paths import WEIGHTS_DIR

# The shipped model: weights/fernet.json + fernet.weights.h5 (+ its .onnx exports and card).
DEFAULT_WEIGHTS_DIR = WEIGHTS_DIR
DEFAULT_MODEL_NAME = "fernet"
# "auto" = onnx when weights/<name>.onnx is current, else keras.
RUNTIMES = ("auto", "onnx", "keras")
# Which file of the network onnxruntime serves: "fp32" = weights/<name>.onnx, "int8" =
# weights/<name>.int8.onnx (statically quantized by `python -m training.export_onnx --int8`),
# which falls back to fp32 (one log line) when it is missing or stale, and on x86 CPUs without
# VNNI (onnx_session.int8_exact). int8 is the default by measurement (weights/fernet.md, "int8"):
# same PublicTest accuracy within noise, about 3x the faces per CPU second on a VNNI CPU.
MODEL_PRECISIONS = ("fp32", "int8")
DEFAULT_MODEL_PRECISION = "int8"
