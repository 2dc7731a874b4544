"""FacialExpressionModel on the shipped weights, and a tiny train -> export -> load -> evaluate run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from testsupport import CountingModel

from fer_async.labels import EMOTIONS
from fer_async.model import FacialExpressionModel
from fer_async.model_choices import DEFAULT_WEIGHTS_DIR
from fer_async.predictor import FlipTTA, Network
from fer_async.schedule import View

RNG = np.random.default_rng(0)


# The shipped weights are part of the product: their absence is a failure, not a skip.
@pytest.fixture(scope="module")
def model() -> Iterator[FacialExpressionModel]:
    yield FacialExpressionModel(DEFAULT_WEIGHTS_DIR, flip_tta=False)


@pytest.fixture(scope="module")
def tta_model() -> Iterator[FacialExpressionModel]:
    yield FacialExpressionModel(DEFAULT_WEIGHTS_DIR, flip_tta=True)


def faces(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


def test_predict_shape_and_probabilities(model: FacialExpressionModel) -> None:
    probs = model.predict(faces(5))
    assert probs.shape == (5, len(EMOTIONS)) and probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_channel_axis_is_optional(model: FacialExpressionModel) -> None:
    x = faces(3)
    np.testing.assert_allclose(model.predict(x), model.predict(x[..., None]), atol=1e-6)


def test_batch_does_not_change_per_face_results(model: FacialExpressionModel) -> None:
    x = faces(4)
    np.testing.assert_allclose(model.predict(x)[2:3], model.predict(x[2:3]), atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 48, 48), np.float32), "uint8"),
        (np.zeros((2, 48, 48), np.int64), "uint8"),
        (np.zeros((2, 64, 64), np.uint8), "shape"),
        (np.zeros((48, 48), np.uint8), "shape"),
        (np.zeros((2, 48, 48, 3), np.uint8), "shape"),
        (np.zeros((0, 48, 48), np.uint8), "empty"),
        ([[0] * 48] * 48, "numpy array"),
    ],
)
def test_predict_rejects_bad_input(model: FacialExpressionModel, bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.predict(bad)  # type: ignore[arg-type]


def test_predict_emotion(model: FacialExpressionModel) -> None:
    face = faces(1)[0]
    assert model.predict_emotion(face) in EMOTIONS
    assert model.predict_emotion(face[..., None]) == model.predict_emotion(face)
    with pytest.raises(ValueError):
        model.predict_emotion(faces(2))


def test_flip_tta_averages_face_and_mirror(model: FacialExpressionModel, tta_model: FacialExpressionModel) -> None:
    x = faces(3)
    expected = (model.predict(x) + model.predict(np.ascontiguousarray(x[:, :, ::-1]))) / 2
    np.testing.assert_allclose(tta_model.predict(x), expected, atol=1e-5)


def test_flip_tta_wraps_any_predictor_in_one_call(
    model: FacialExpressionModel, tta_model: FacialExpressionModel
) -> None:
    counting = CountingModel(model)
    x = faces(5)
    wrapped = FlipTTA(counting).predict(x[..., None])  # the channel axis is optional here too
    assert counting.calls == [10]  # faces and mirrors in ONE call: the batch stays whole
    np.testing.assert_array_equal(wrapped, tta_model.predict(x))  # what the model serves with flip TTA
    with pytest.raises(ValueError, match="empty"):
        FlipTTA(counting).predict(faces(0))
    assert counting.calls == [10]  # refused before the wrapped predictor is called


def test_views_classify_each_face_as_seen_mirrored_or_both_in_one_call(
    model: FacialExpressionModel, tta_model: FacialExpressionModel
) -> None:
    """--alternate-flip: a stream's face is classified in one view a frame; photos in both; one call for all."""
    counting = CountingModel(model)
    x = faces(4)
    views = [View.AS_SEEN, View.MIRRORED, View.BOTH, View.MIRRORED]
    probs = FlipTTA(counting).predict_views(x, views)
    assert counting.calls == [5]  # four faces, one of them twice
    mirrors = np.ascontiguousarray(x[:, :, ::-1])
    np.testing.assert_allclose(probs[0], model.predict(x[:1])[0], atol=1e-5)
    np.testing.assert_allclose(probs[[1, 3]], model.predict(mirrors[[1, 3]]), atol=1e-5)
    np.testing.assert_allclose(probs[2], tta_model.predict(x[2:3])[0], atol=1e-5)
    # All BOTH is exactly `predict`; the served model and a network without TTA take views too.
    np.testing.assert_array_equal(tta_model.predict_views(x, [View.BOTH] * 4), tta_model.predict(x))
    np.testing.assert_allclose(tta_model.predict_views(x, views), probs, atol=1e-5)
    np.testing.assert_array_equal(Network(model.predict).predict_views(x, views), model.predict(x))
    with pytest.raises(ValueError, match="3 views for 4 faces"):
        FlipTTA(counting).predict_views(x, views[:3])


def test_missing_weights_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"fernet\.json"):
        FacialExpressionModel(tmp_path / "nowhere")


def test_tiny_training_run_exports_a_loadable_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training import evaluate, train

    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(1)
    np.savez(
        data,
        x_train=rng.integers(0, 256, size=(300, 48, 48), dtype=np.uint8),
        y_train=np.arange(300) % 7,
        x_val=rng.integers(0, 256, size=(35, 48, 48), dtype=np.uint8),
        y_val=np.arange(35) % 7,
    )
    export = tmp_path / "export"
    train.main(
        [
            "--data",
            str(data),
            "--limit",
            "256",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--verbose",
            "0",
            "--run-dir",
            str(tmp_path / "run"),
            "--export-dir",
            str(export),
        ]
    )
    assert {p.name for p in export.iterdir()} >= {"fernet.json", "fernet.weights.h5", "fernet.md"}
    card = (export / "fernet.md").read_text()
    assert "--limit 256" in card and "256 faces" in card

    loaded = FacialExpressionModel(export)
    assert loaded.predict(faces(2)).shape == (2, 7)

    capsys.readouterr()
    assert (
        evaluate.main(
            ["--data", str(data), "--split", "val", "--weights", str(export), "--out", str(tmp_path / "eval")]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 35 and 0.0 <= summary["accuracy"] <= 1.0
