from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testsupport import SERVED_PRECISION

from fer_async.model import FacialExpressionModel, load_keras_model
from training import blend, models


def export(directory: Path, network: str, seed: int) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    model = models.build(network)
    directory.mkdir()
    (directory / "fernet.json").write_text(model.to_json())
    model.save_weights(directory / "fernet.weights.h5")
    return directory


def blend_argv(start: Path, end: Path, alpha: float, out: Path, data: Path) -> list[str]:
    return [
        "--from",
        str(start),
        "--to",
        str(end),
        "--alpha",
        str(alpha),
        "--export-dir",
        str(out),
        "--data",
        str(data),
    ]


def weights_of(directory: Path) -> list[np.ndarray]:
    return load_keras_model(directory / "fernet.json", directory / "fernet.weights.h5").get_weights()


def test_blend_mixes_every_weight_and_writes_what_the_server_loads(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start, end = export(tmp_path / "a", "fernet", 1), export(tmp_path / "b", "fernet", 2)
    out = tmp_path / "blend"
    argv = blend_argv(start, end, 0.25, out, tiny_npz)
    assert blend.main(argv) == 0
    assert '"alpha": 0.25' in capsys.readouterr().out

    mixed, a, b = weights_of(out), weights_of(start), weights_of(end)
    assert any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))  # two different networks
    for m, x, y in zip(mixed, a, b, strict=True):
        np.testing.assert_allclose(m, 0.75 * x + 0.25 * y, rtol=1e-6, atol=1e-7)
    # The served form, int8 copy included, as the server loads it.
    served = FacialExpressionModel(out, "fernet", flip_tta=False)
    assert served.runtime == "onnx" and served.precision == SERVED_PRECISION
    faces = np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    assert served.predict(faces).shape == (2, 7)


def test_blend_refuses_two_different_networks_and_a_bad_alpha(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start, other = export(tmp_path / "a", "fernet", 1), export(tmp_path / "b", "classic", 1)
    out = tmp_path / "blend"
    argv = blend_argv(start, other, 0.5, out, tiny_npz)
    assert blend.main(argv) == 2
    assert "not one network" in capsys.readouterr().err
    argv[3] = str(tmp_path / "missing")
    assert blend.main(argv) == 2
    assert "model file not found" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        blend.parse_args(["--from", "a", "--to", "b", "--alpha", "1.5", "--export-dir", "c"])
