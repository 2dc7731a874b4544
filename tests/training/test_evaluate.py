"""training.evaluate: report + confusion PNG + a JSON last line; clean exit 2 on missing inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fer_async.labels import EMOTIONS
from training import evaluate

REPO = Path(__file__).resolve().parents[2]


def test_prints_report_and_json_last_line(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = evaluate.main(["--data", str(tiny_npz), "--split", "val", "--weights", str(untrained_export),
                        "--out", str(out), "--batch-size", "8"])
    assert rc == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["n"] == 21 and summary["split"] == "val" and summary["flip_tta"] is False
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["macro_f1"] <= 1.0
    assert list(summary["recall"]) == list(EMOTIONS)
    assert summary["weights"].endswith("fernet.weights.h5")
    assert Path(summary["confusion_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro-F1" in stdout and "neutral" in stdout


def test_flip_tta_and_json_path_weights(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = evaluate.main(["--data", str(tiny_npz), "--split", "train", "--weights", str(untrained_export / "fernet.json"),
                        "--flip-tta", "--out", str(tmp_path)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["flip_tta"] is True and summary["n"] == 70
    assert (tmp_path / "confusion_fernet_train_tta.png").is_file()


def test_missing_split_exits_2_without_traceback(tiny_npz: Path, tmp_path: Path) -> None:
    # A subprocess: the exit status and the exact stderr are what a user sees.
    done = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--data", str(tiny_npz), "--split", "test", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "has no 'test' split (it has: train, val)" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_missing_weights_exits_2(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = evaluate.main(["--data", str(tiny_npz), "--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "model file not found" in err and "nowhere" in err


def test_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--data", str(tmp_path / "absent.npz")]) == 2
    assert "FER2013 data not found" in capsys.readouterr().err
