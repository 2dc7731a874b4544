"""The two runtimes of FacialExpressionModel: the shipped ONNX export is current and agrees with Keras.

Parity is checked on real faces: the tests/data photos cropped by the server's own detectors,
and FER2013 (PublicTest) faces when ../shared is there. These are the fp32 network's files; the
int8 one (served by default) is checked against fp32 in tests/test_int8.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testsupport import detected_photo_faces

from fer_async.model import (
    EXPORT_COMMAND,
    JSON_SHA256,
    WEIGHTS_SHA256,
    FacialExpressionModel,
    StaleExportError,
    onnx_staleness,
    resolve_weights,
)
from fer_async.model_choices import DEFAULT_WEIGHTS_DIR

ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SHARED = REPO.parent / "shared"
FER2013 = SHARED / "data" / "fer2013" / "fer2013.npz"
YUNET_MODEL = SHARED / "models" / "face_detection_yunet.onnx"
PROBABILITY_TOLERANCE = 1e-3


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "flip_tta"])
def runtimes(request: pytest.FixtureRequest) -> Iterator[tuple[FacialExpressionModel, FacialExpressionModel]]:
    flip = bool(request.param)
    yield (
        FacialExpressionModel(DEFAULT_WEIGHTS_DIR, flip_tta=flip, runtime="onnx", precision="fp32"),
        FacialExpressionModel(DEFAULT_WEIGHTS_DIR, flip_tta=flip, runtime="keras"),
    )


@pytest.fixture(scope="module")
def photo_faces() -> np.ndarray:
    """Every face the server's detectors find in the tests/data photos, cropped as it serves them."""
    return detected_photo_faces(DATA, YUNET_MODEL)


def test_shipped_onnx_is_current() -> None:
    """Fails when weights/*.json or *.weights.h5 changed and the ONNX was not exported again."""
    json_path, weights_path = resolve_weights(DEFAULT_WEIGHTS_DIR)
    onnx_path = json_path.with_suffix(".onnx")
    assert onnx_path.is_file(), f"{onnx_path} is missing: run `{EXPORT_COMMAND}`"
    metadata = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_modelmeta()
    stale = onnx_staleness(metadata.custom_metadata_map, json_path, weights_path)
    assert stale is None, f"{onnx_path.name} is stale ({stale}): run `{EXPORT_COMMAND}` and commit the result"


def test_auto_serves_the_current_onnx(real_model: FacialExpressionModel) -> None:
    assert real_model.runtime == "onnx" and real_model.device == "CPU"
    fp32 = FacialExpressionModel(DEFAULT_WEIGHTS_DIR, flip_tta=False, precision="fp32")
    assert fp32.runtime == "onnx" and fp32.model_file == "fernet.onnx"


def test_probabilities_match_keras_on_detected_photo_faces(
    runtimes: tuple[FacialExpressionModel, FacialExpressionModel], photo_faces: np.ndarray
) -> None:
    onnx, keras = runtimes
    np.testing.assert_allclose(onnx.predict(photo_faces), keras.predict(photo_faces), atol=PROBABILITY_TOLERANCE)


def test_probabilities_and_accuracy_match_keras_on_public_test(
    runtimes: tuple[FacialExpressionModel, FacialExpressionModel],
) -> None:
    if not FER2013.is_file():
        pytest.skip(f"FER2013 not found at {FER2013}")
    with np.load(FER2013) as data:
        x, y = data["x_val"], data["y_val"]  # the val split is PublicTest
    onnx, keras = runtimes
    p_onnx, p_keras = onnx.predict(x), keras.predict(x)
    assert np.abs(p_onnx - p_keras).max() <= PROBABILITY_TOLERANCE
    accuracy = [float((p.argmax(1) == y).mean()) * 100 for p in (p_onnx, p_keras)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.1, accuracy


def test_flip_tta_is_read_only(real_model: FacialExpressionModel) -> None:
    with pytest.raises(AttributeError):
        real_model.flip_tta = not real_model.flip_tta  # type: ignore[misc]


@pytest.fixture
def weights_copy(tmp_path: Path) -> Path:
    for path in DEFAULT_WEIGHTS_DIR.glob("fernet.*"):
        if path.suffix in (".json", ".h5", ".onnx"):
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_a_stale_export_is_refused_by_onnx_and_skipped_by_auto(
    weights_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    json_path = weights_copy / "fernet.json"
    json_path.write_text(json_path.read_text() + "\n")  # same network, other bytes: the export is stale
    with pytest.raises(StaleExportError, match=r"fernet.json changed.*training.export_onnx"):
        FacialExpressionModel(weights_copy, runtime="onnx")
    auto = FacialExpressionModel(weights_copy, flip_tta=False)
    assert auto.runtime == "keras" and "stale" in caplog.text


def test_auto_without_an_export_is_keras_and_onnx_names_the_command(weights_copy: Path) -> None:
    (weights_copy / "fernet.onnx").unlink()
    assert FacialExpressionModel(weights_copy, flip_tta=False, precision="fp32").runtime == "keras"
    with pytest.raises(FileNotFoundError, match=r"training\.export_onnx"):
        FacialExpressionModel(weights_copy, runtime="onnx", precision="fp32")
    with pytest.raises(ValueError, match="runtime must be one of"):
        FacialExpressionModel(weights_copy, runtime="tflite")


def _tiny_network_with_a_custom_layer() -> Any:
    import keras

    @keras.saving.register_keras_serializable(package="fer_async_tests")
    class CentreEachFace(keras.layers.Layer):
        """Subtracts each face's own mean grey level: an op of ours, not a built-in layer."""

        def call(self, x: Any) -> Any:
            return x - keras.ops.mean(x, axis=(1, 2, 3), keepdims=True)

    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = CentreEachFace()(x)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(7, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_export_traces_a_custom_layer(tmp_path: Path) -> None:
    """The export is generic: a network with its own layer class exports and matches Keras."""
    from training.export_onnx import export_onnx

    model = _tiny_network_with_a_custom_layer()
    (tmp_path / "custom.json").write_text(model.to_json())
    model.save_weights(tmp_path / "custom.weights.h5")
    out = export_onnx(tmp_path, "custom")
    metadata = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert {JSON_SHA256, WEIGHTS_SHA256} <= set(metadata)
    faces = np.random.default_rng(3).integers(0, 256, (8, 48, 48), dtype=np.uint8)
    onnx = FacialExpressionModel(tmp_path, "custom", runtime="onnx", flip_tta=False)
    keras = FacialExpressionModel(tmp_path, "custom", runtime="keras", flip_tta=False)
    np.testing.assert_allclose(onnx.predict(faces), keras.predict(faces), atol=1e-5)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )


def test_the_onnx_runtime_does_not_import_tensorflow() -> None:
    done = _run(
        "import sys; from fer_async.model import FacialExpressionModel as M; m = M(runtime='onnx'); "
        "print(m.runtime, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    assert done.stdout.split() == ["onnx", "False", "False"]


def test_keras_runtime_start_up_prints_no_cuda_probe_error() -> None:
    if Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists():
        pytest.skip("an NVIDIA driver is present: TensorFlow's CUDA messages are real there")
    done = _run(
        "import sys; from fer_async.model import FacialExpressionModel as M; m = M(runtime='keras'); "
        "print('written to stderr after the load', file=sys.stderr)"
    )
    assert "cuInit" not in done.stderr and "cuda drivers" not in done.stderr, done.stderr
    assert "written to stderr after the load" in done.stderr  # stderr still works afterwards
