"""FacialExpressionModel: the trained network behind the server, on onnxruntime or on Keras.

Two runtimes serve the same weights (`weights/<name>.json` + `.weights.h5`):

* "onnx": `weights/<name>.onnx` (written by `python -m training.export_onnx`) through
  onnxruntime. Small and quick to start (no TensorFlow in the process).
* "keras": the Keras model itself on TensorFlow. This module is the only one of the package
  that imports TensorFlow, and only when this runtime is chosen.

"auto" (the default) takes onnx when the `.onnx` file is there, onnxruntime imports, and the
file was exported from exactly these `.json` + `.weights.h5` (sha256 in its metadata);
otherwise keras.

Precision (onnxruntime only): "int8" (the default) serves `weights/<name>.int8.onnx`, the
statically quantized network written by `python -m training.export_onnx --int8`, when it is there
and was made from these `.json` + `.weights.h5` (the same sha256 metadata); otherwise, with one
log line, the fp32 network as above. "fp32" always serves the float network.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fer_async.labels import EMOTIONS, FACE_SIZE
from fer_async.model_choices import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_PRECISION,
    DEFAULT_WEIGHTS_DIR,
    MODEL_PRECISIONS,
    RUNTIMES,
)
from fer_async.native_stderr import without_stderr_lines
from fer_async.onnx_session import (
    CPU,
    CUDA,
    DEVICES,
    create_session,
    int8_exact,
    onnxruntime_available,
    providers_for,
)
from fer_async.predictor import served
from fer_async.schedule import View

logger = logging.getLogger(__name__)

# ONNX metadata keys written by training.export_onnx.
JSON_SHA256 = "source_json_sha256"
WEIGHTS_SHA256 = "source_weights_sha256"
EXPORT_COMMAND = "python -m training.export_onnx"
INT8_EXPORT_COMMAND = "python -m training.export_onnx --int8"
INT8_SUFFIX = ".int8.onnx"
# onnxruntime's intra-op threads. The server decodes and detects faces on two other threads
# while the model runs, on a two-core machine: one thread for the model does not fight them
# (and a batch of 16-64 faces gains little from a second one; see the README's figures).
ONNX_THREADS = 1

Forward = Callable[[np.ndarray], np.ndarray]  # uint8 [N, 48, 48, 1] -> float32 [N, 7]


class Loaded(NamedTuple):
    """A network ready to run: its forward function and where it runs."""

    forward: Forward
    device: str  # "CPU" or "GPU"
    description: str
    providers: list[str] | None  # onnxruntime's execution providers in use; None on Keras


class OnnxOptions(NamedTuple):
    threads: int
    providers: list[str]  # to ask onnxruntime for (onnx_session.providers_for)


class StaleExportError(ValueError):
    """The .onnx file was not exported from the .json + .weights.h5 beside it."""


def int8_path_for(json_path: Path) -> Path:
    """Where the int8 network of `<name>.json` lives: `<name>.int8.onnx` beside it."""
    return json_path.with_name(json_path.name.removesuffix(".json") + INT8_SUFFIX)


def resolve_weights(weights: str | os.PathLike[str], name: str = DEFAULT_MODEL_NAME) -> tuple[Path, Path]:
    """Find (model json, weights h5) from a directory (+ model name) or a path to the .json."""
    path = Path(weights)
    json_path = path if path.suffix == ".json" else path / f"{name}.json"
    weights_path = json_path.with_name(json_path.name.removesuffix(".json") + ".weights.h5")
    for required in (json_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"model file not found: {required}")
    return json_path, weights_path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def onnx_staleness(onnx_metadata: dict[str, str], json_path: Path, weights_path: Path) -> str | None:
    """Why the ONNX export does not match the Keras files (None when it does)."""
    for key, source in ((JSON_SHA256, json_path), (WEIGHTS_SHA256, weights_path)):
        recorded = onnx_metadata.get(key)
        if recorded is None:
            return f"it records no {key}"
        if recorded != sha256_of(source):
            return f"{source.name} changed since the export"
    return None


# --- TensorFlow, imported only by the keras runtime --------------------------------------------

# Lines TensorFlow writes straight to stderr (not through Python logging) while it is imported
# and probes for CUDA. On a machine without an NVIDIA driver they only say "no GPU here": the
# cuInit one is even tagged E(rror). Dropped only when no driver is present; anything else
# written meanwhile is passed on.
_NO_GPU_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
)


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _tensorflow() -> Any:
    """`import tensorflow` plus its device probe, without the CUDA noise of a CPU-only machine."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO/WARNING chatter
    quiet = contextlib.nullcontext() if _nvidia_driver_present() else without_stderr_lines(_NO_GPU_NOISE)
    with quiet:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe (cuInit) happens here, once
    return tf


def load_keras_model(json_path: Path, weights_path: Path) -> Any:
    """The Keras model of `<name>.json` (`to_json()`) with its weights (imports TensorFlow)."""
    _tensorflow()
    import keras

    import fer_async.keras_layers  # noqa: F401  registers FaceContrast, which model_from_json needs

    model = keras.models.model_from_json(json_path.read_text())
    model.load_weights(weights_path)
    return model


def _keras_forward(json_path: Path, weights_path: Path, device: str) -> Loaded:
    tf = _tensorflow()
    if device == "cpu":
        try:
            tf.config.set_visible_devices([], "GPU")  # before the model is built: nothing lands on a GPU
        except RuntimeError:  # a model of this process already initialised the GPU
            logger.warning("--device cpu: TensorFlow already uses a GPU in this process; the network may run there")
    elif device == "cuda" and not tf.config.list_physical_devices("GPU"):
        logger.warning("--device cuda: TensorFlow sees no GPU; the network runs on the CPU")
    model = load_keras_model(json_path, weights_path)
    where = "GPU" if tf.config.get_visible_devices("GPU") else "CPU"

    def call(faces: Any) -> Any:
        return model(tf.cast(faces, tf.float32), training=False)  # the model rescales 0..255 itself

    signature = [tf.TensorSpec([None, FACE_SIZE, FACE_SIZE, 1], tf.uint8)]
    forward = tf.function(call, input_signature=signature, reduce_retracing=True)

    def run(faces: np.ndarray) -> np.ndarray:
        return np.asarray(forward(tf.convert_to_tensor(faces)), dtype=np.float32)

    return Loaded(run, where, f"{json_path.name} on Keras ({model.count_params():,} parameters)", None)


# --- onnxruntime ---------------------------------------------------------------------------------


def _onnx_forward(
    onnx_path: Path, json_path: Path, weights_path: Path, onnx: OnnxOptions, command: str = EXPORT_COMMAND
) -> Loaded:
    session = create_session(onnx_path, onnx.threads, onnx.providers)
    stale = onnx_staleness(session.get_modelmeta().custom_metadata_map, json_path, weights_path)
    if stale is not None:
        raise StaleExportError(f"{onnx_path} is stale ({stale}); re-export it with `{command}`")
    (model_input,) = session.get_inputs()
    input_name = model_input.name

    def run(faces: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: faces})[0], dtype=np.float32)

    in_use = list(session.get_providers())
    threads = onnx.threads
    where = "GPU" if CUDA in in_use else "CPU"
    return Loaded(
        run, where, f"{onnx_path.name} on onnxruntime ({threads} intra-op thread{'s' * (threads != 1)})", in_use
    )


class FacialExpressionModel:
    """Classifies 48x48 grey faces with the network of `<name>.json` + `<name>.weights.h5`.

    `predict` runs the whole batch in one call of the runtime. With `flip_tta` (the default,
    `fer_async.predictor.FlipTTA`) each face is also classified mirrored, in the same call, and
    the two probability vectors are averaged: it doubles the model's share of the work, which is
    small next to face detection, and gains about 1.5 points of accuracy on PublicTest (see
    docs/training.md, "Baselines and progress").
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
        name: str = DEFAULT_MODEL_NAME,
        *,
        flip_tta: bool = True,
        runtime: str = "auto",
        onnx_threads: int = ONNX_THREADS,
        precision: str = DEFAULT_MODEL_PRECISION,
        device: str = "auto",
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if precision not in MODEL_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(MODEL_PRECISIONS)}, got {precision!r}")
        if onnx_threads < 1:
            raise ValueError(f"onnx_threads must be at least 1, got {onnx_threads}")
        self.json_path, self.weights_path = resolve_weights(weights, name)
        self.onnx_path = self.json_path.with_suffix(".onnx")
        self.int8_path = int8_path_for(self.json_path)
        self._flip_tta = flip_tta
        started = time.perf_counter()
        self.precision = "fp32"
        self._device = device
        self._onnx = OnnxOptions(onnx_threads, self._onnx_providers(runtime, device))
        loaded = self._load_int8(runtime) if precision == "int8" else None
        if loaded is None:
            self.runtime, loaded = self._load(runtime)
        else:
            self.runtime, self.precision = "onnx", "int8"
        forward, self.device, self.description, self.providers = loaded
        self._predictor = served(lambda faces: forward(np.ascontiguousarray(faces)[..., None]), flip_tta=flip_tta)
        # The file that serves (named by /healthz): NAME.int8.onnx, NAME.onnx, or NAME.json on Keras.
        files = {"keras": self.json_path, "onnx": self.int8_path if self.precision == "int8" else self.onnx_path}
        self.model_file: str = files[self.runtime].name
        self.predict(np.zeros((1, FACE_SIZE, FACE_SIZE), np.uint8))  # trace + allocate before traffic
        logger.info(
            "loaded %s on %s%s in %.0f ms",
            self.description,
            self.device,
            ", flip TTA" if flip_tta else "",
            (time.perf_counter() - started) * 1000,
        )

    @classmethod
    def from_options(cls, options: Any) -> FacialExpressionModel:
        """The network `options` name: the server's Settings, or a tool's namespace with config.MODEL_OPTIONS."""
        return cls(
            options.weights,
            options.model_name,
            flip_tta=options.flip_tta,
            runtime=options.runtime,
            precision=options.model_precision,
            device=options.device,
        )

    def _onnx_providers(self, runtime: str, device: str) -> list[str]:
        """onnxruntime's providers for `device`, probed on a file of this network (CPU when none is there)."""
        probe = next((f for f in (self.onnx_path, self.int8_path) if f.is_file()), None)
        if runtime == "keras" or probe is None or not onnxruntime_available():
            return [CPU]
        return providers_for(device, probe)

    def _load_int8(self, runtime: str) -> Loaded | None:
        """The int8 network, or None (and one log line saying why) to serve the fp32 one."""
        if runtime == "keras":
            logger.info("--runtime keras serves the fp32 network (%s is for onnxruntime)", self.int8_path.name)
            return None
        if CUDA in self._onnx.providers and self.onnx_path.is_file():
            # Through CUDA's provider the int8 file is the fp32 convolutions plus (de)quantizing
            # around them: int8 kernels on a GPU need TensorRT. The int8 file is a CPU speed-up.
            logger.info("%s is for the CPU: serving the fp32 network on CUDA", self.int8_path.name)
            return None
        if not int8_exact():
            logger.info(
                "this CPU has no VNNI instructions (AVX512-VNNI or AVX-VNNI), with which onnxruntime's int8 "
                "kernels saturate: serving the fp32 network (%s)",
                self.onnx_path.name,
            )
            return None
        if not self.int8_path.is_file():
            problem = f"{self.int8_path} is missing (make it with `{INT8_EXPORT_COMMAND}`)"
        elif not onnxruntime_available():
            problem = f"{self.int8_path.name} needs the onnxruntime package"
        else:
            try:
                return _onnx_forward(self.int8_path, self.json_path, self.weights_path, self._onnx, INT8_EXPORT_COMMAND)
            except StaleExportError as exc:
                problem = str(exc)
        logger.warning("%s: serving the fp32 network instead", problem)
        return None

    def _load(self, runtime: str) -> tuple[str, Loaded]:
        if runtime == "keras":
            try:
                return "keras", _keras_forward(self.json_path, self.weights_path, self._device)
            except ImportError as exc:
                raise ValueError(f"--runtime keras needs TensorFlow: pip install 'fer_async[train]' ({exc})") from exc
        if runtime == "onnx":
            if not self.onnx_path.is_file():
                raise FileNotFoundError(f"model file not found: {self.onnx_path} (export it with `{EXPORT_COMMAND}`)")
            if not onnxruntime_available():
                raise ValueError("--runtime onnx needs the onnxruntime package (pip install onnxruntime)")
            return "onnx", _onnx_forward(self.onnx_path, self.json_path, self.weights_path, self._onnx)
        if self.onnx_path.is_file() and onnxruntime_available():
            try:
                return "onnx", _onnx_forward(self.onnx_path, self.json_path, self.weights_path, self._onnx)
            except StaleExportError as exc:
                logger.warning("%s: using the Keras runtime instead", exc)
        try:
            return "keras", _keras_forward(self.json_path, self.weights_path, self._device)
        except ImportError as exc:
            raise ValueError(
                f"no runtime for {self.json_path.name}: {self.onnx_path.name} is missing or stale and TensorFlow is "
                f"not installed ({exc}); run `{EXPORT_COMMAND}` or install the [train] extra"
            ) from exc

    @property
    def flip_tta(self) -> bool:
        """Whether each face is also classified mirrored (fixed at construction)."""
        return self._flip_tta

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities `[N, 7]` (float32, FER2013 order) for uint8 faces `[N, 48, 48(, 1)]`."""
        return self._predictor.predict(faces)

    def predict_views(self, faces: np.ndarray, views: Sequence[View]) -> np.ndarray:
        """As `predict`, each face in its own view (fer_async.schedule.View) where flip TTA is on."""
        return self._predictor.predict_views(faces, views)

    def predict_emotion(self, face: np.ndarray) -> str:
        """The most likely emotion of one uint8 face `[48, 48]` or `[48, 48, 1]`."""
        if not isinstance(face, np.ndarray) or face.ndim not in (2, 3):
            raise ValueError("face must be one uint8 array of shape [48, 48] or [48, 48, 1]")
        return EMOTIONS[int(self.predict(face[None])[0].argmax())]
