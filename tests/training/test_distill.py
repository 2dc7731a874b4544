"""training.distill on a tiny stand-in data set: teachers, the store, a student, the export the
server loads, the ensemble, the deadline schedule and the whole chain in child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from testsupport import SERVED_PRECISION, write_tiny_votes

from fer_async.model import FacialExpressionModel
from training import distill
from training.data import load_split
from training.distill.ema import ema_weights
from training.distill.fitting import DeadlineSchedule
from training.distill.options import Recipe
from training.distill.runs import load_run
from training.ferplus import load_votes, majority_labels
from training.views import render_views

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--batch-size", "32", "--max-epochs", "2", "--minutes", "10"]


@pytest.fixture
def teacher(tiny_npz: Path, tmp_path: Path) -> Path:
    out = tmp_path / "teacher.npz"
    distill.main(["teacher", "--data", str(tiny_npz), "--seed", "3", "--out", str(out), *QUICK])
    return out


def test_a_teacher_keeps_its_best_epoch_with_a_record(teacher: Path) -> None:
    weights, record, arrays = load_run(teacher)
    assert len(weights) == 47 and all(w.dtype == np.float32 for w in weights)
    assert record["network"] == "fernet" and record["role"] == "teacher" and record["seed"] == 3
    assert record["epochs_run"] == 2 and 1 <= record["best_epoch"] <= 2
    assert [row["epoch"] for row in record["history"]] == [1, 2]
    assert "training.distill teacher" in record["command"]
    assert arrays["val_probs"].shape == (21, 7)
    np.testing.assert_allclose(arrays["val_probs"].sum(axis=1), 1.0, atol=1e-4)


def test_a_teacher_trains_on_fixed_views_and_saves_half_precision(tiny_npz: Path, tmp_path: Path) -> None:
    views = tmp_path / "views.npy"
    np.save(views, render_views(load_split(tiny_npz, "train").x, 3, seed=1, processes=1))
    out = tmp_path / "wide.npz"
    step = ["teacher", "--data", str(tiny_npz), "--network", "fernet_wide", "--views", str(views)]
    distill.main([*step, "--out", str(out), "--save-dtype", "float16", *QUICK])
    with np.load(out) as data:
        assert data["w000"].dtype == np.float16
    weights, record, _ = load_run(out)
    assert record["network"] == "fernet_wide" and weights[0].dtype == np.float32


def test_store_student_and_export_give_what_the_server_loads(
    tiny_npz: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store.npz"
    distill.main(["store", "--data", str(tiny_npz), "--teachers", str(teacher), "--count", "3", "--out", str(store)])
    with np.load(store) as data:
        probs, record = data["probs"], json.loads(str(data["record"]))
    assert probs.shape == (3, 70, 7) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=2), 1.0, atol=5e-3)
    assert record["views"] == 3 and record["teachers"][0]["seed"] == 3
    assert 0 <= record["ensemble_val_accuracy_tta"] <= 1

    student = tmp_path / "student.npz"
    distill.main(
        ["student", "--data", str(tiny_npz), "--store", str(store), "--alpha", "0.8", "--out", str(student), *QUICK]
    )
    _, student_record, _ = load_run(student)
    assert student_record["role"] == "student" and student_record["alpha"] == 0.8
    assert student_record["store"]["views"] == 3

    export_dir = tmp_path / "export"
    distill.main(["export", str(student), "--data", str(tiny_npz), "--export-dir", str(export_dir), "--name", "fernet"])
    card = (export_dir / "fernet.md").read_text()
    assert "role: student, alpha 0.8" in card and "training.distill student" in card
    assert "## Teachers (3 fixed views per face" in card and "| happy |" in card
    served = FacialExpressionModel(export_dir, "fernet", flip_tta=False, precision="fp32")
    assert served.runtime == "onnx"
    assert FacialExpressionModel(export_dir, "fernet", flip_tta=False).precision == SERVED_PRECISION
    faces = load_split(tiny_npz, "val").x[:4]
    keras_copy = FacialExpressionModel(export_dir, "fernet", flip_tta=False, runtime="keras")
    np.testing.assert_allclose(served.predict(faces), keras_copy.predict(faces), atol=1e-4)

    capsys.readouterr()
    distill.main(["ensemble", "--data", str(tiny_npz), str(teacher), str(student)])
    out = capsys.readouterr().out
    assert "teacher.npz: PublicTest" in out and "ensemble of 2" in out


def test_the_ensemble_takes_exports_and_scores_the_ferplus_majority(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    votes = write_tiny_votes(tmp_path / "votes.npz", n_train=70, n_val=21)
    distill.main(["ensemble", "--data", str(tiny_npz), "--votes", str(votes), str(untrained_export)])
    lines = capsys.readouterr().out.splitlines()
    model = FacialExpressionModel(untrained_export, "fernet", flip_tta=True, runtime="keras")
    val = load_split(tiny_npz, "val")
    majority = majority_labels(load_votes(votes, "val"))
    counted = majority >= 0
    agreed = counted & (majority == val.y)
    predicted = model.predict(val.x).argmax(axis=1)
    crowd = np.mean(predicted[counted] == majority[counted])
    expected = f"FER+ majority {crowd:.4f}, agreed faces {np.mean(predicted[agreed] == val.y[agreed]):.4f}"
    assert lines[0].startswith(f"{untrained_export}: PublicTest") and lines[0].endswith(expected)
    assert lines[1].startswith("ensemble of 1") and lines[1].endswith(expected)

    wrong = write_tiny_votes(tmp_path / "wrong.npz", n_train=70, n_val=20)
    with pytest.raises(ValueError, match="20 PublicTest vote rows for 21 faces"):
        distill.main(["ensemble", "--data", str(tiny_npz), "--votes", str(wrong), str(untrained_export)])


def test_a_deadline_already_passed_ends_training_after_one_epoch(tiny_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "late.npz"
    past = f"{time.time() - 1:.0f}"
    distill.main(["teacher", "--data", str(tiny_npz), "--out", str(out), "--batch-size", "32", "--deadline", past])
    assert load_run(out)[1]["epochs_run"] == 1


def test_schedule_warms_up_then_anneals_to_the_planned_end() -> None:
    schedule = DeadlineSchedule(Recipe(max_epochs=20, lr=1e-3, warmup_epochs=3), time.time() + 60, print)
    rates = [schedule.learning_rate(epoch) for epoch in range(20)]
    assert rates[0] == pytest.approx(1e-4) and rates[:4] == sorted(rates[:4])
    assert max(rates) <= 1e-3 and rates[3:] == sorted(rates[3:], reverse=True) and rates[-1] < 0.01 * 1e-3
    schedule.planned = 10  # fewer epochs fit: the cosine ends sooner
    assert schedule.learning_rate(9) < 0.02 * 1e-3 < schedule.learning_rate(8)


def test_the_pipeline_runs_teachers_store_and_students_as_children(tiny_npz: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, "-m", "training.distill", "pipeline", "--data", str(tiny_npz), "--out", str(out)]
    command += ["--work", str(work), "--teachers", "fernet:1", "--students", "0.5:2", "--views", "2"]
    command += ["--min-ensemble", "0", "--minutes", "10", "--max-epochs", "1", "--batch-size", "32"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "tensorflow"}
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [t["file"] for t in summary["teachers"]] == ["teacher_fernet_1.npz"]
    assert summary["store"]["views"] == 2 and summary["failed"] == []
    assert [s["file"] for s in summary["students"]] == ["student_0.5_2.npz"]
    assert (work / "views.npy").is_file() and "students start" in finished.stdout


def test_ema_weights_are_the_optimizers_moving_average_and_leave_the_trained_weights_alone() -> None:
    """The moving average by hand (Keras starts it at the first step's weights), against
    `ema_weights` read at an epoch's end, as `SelectOnValidation` does."""

    def network() -> keras.Model:
        layers = [keras.layers.Dense(5), keras.layers.BatchNormalization(), keras.layers.Dense(3)]
        return keras.Sequential([keras.Input((4,)), *layers])

    keras.utils.set_random_seed(0)
    model, evaluator = network(), network()
    momentum = 0.6
    model.compile(optimizer=keras.optimizers.AdamW(0.05, use_ema=True, ema_momentum=momentum), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=(40, 3)).astype(np.float32)
    steps: list[list[np.ndarray]] = []
    seen: dict[str, list[np.ndarray]] = {}

    class Read(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            steps.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            seen["before"] = self.model.get_weights()
            seen["ema"] = ema_weights(self.model, evaluator)
            seen["after"] = self.model.get_weights()

    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Read()])
    assert len(steps) == 5
    average = steps[0]
    for step in steps[1:]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, step, strict=True)]

    trainable = [id(v) for v in model.trainable_variables]
    for i, variable in enumerate(model.weights):
        if id(variable) in trainable:
            expected = average[trainable.index(id(variable))]
            np.testing.assert_allclose(seen["ema"][i], expected, rtol=1e-5, atol=1e-6)
            assert not np.allclose(expected, seen["before"][i])  # the average is not the live weight
        else:  # batch-norm statistics: the live values
            np.testing.assert_array_equal(seen["ema"][i], seen["before"][i])
        np.testing.assert_array_equal(seen["after"][i], seen["before"][i])
    for got, held in zip(seen["ema"], evaluator.get_weights(), strict=True):
        np.testing.assert_array_equal(got, held)

    with pytest.raises(ValueError, match="does not have the trainable variables"):
        ema_weights(model, keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
