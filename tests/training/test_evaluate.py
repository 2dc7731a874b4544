"""training.evaluate: report + confusion PNG + a JSON last line; clean exit 2 on missing inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from testsupport import write_tiny_votes

from fer_async.labels import EMOTIONS
from training import evaluate, server_path
from training.cameras import CAMERAS
from training.ferplus import load_votes, majority_labels

REPO = Path(__file__).resolve().parents[2]


def test_prints_report_and_json_last_line(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = evaluate.main(
        [
            "--data",
            str(tiny_npz),
            "--split",
            "val",
            "--weights",
            str(untrained_export),
            "--out",
            str(out),
            "--batch-size",
            "8",
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["n"] == 21 and summary["split"] == "val" and summary["flip_tta"] is True  # the serving default
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["macro_f1"] <= 1.0
    assert list(summary["recall"]) == list(EMOTIONS)
    assert summary["weights"].endswith("fernet.weights.h5")
    assert Path(summary["confusion_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro-F1" in stdout and "neutral" in stdout


def test_no_flip_tta_and_json_path_weights(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = evaluate.main(
        [
            "--data",
            str(tiny_npz),
            "--split",
            "train",
            "--weights",
            str(untrained_export / "fernet.json"),
            "--no-flip-tta",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["flip_tta"] is False and summary["n"] == 70
    assert (tmp_path / "confusion_fernet_train.png").is_file()


def test_missing_split_exits_2_without_traceback(tiny_npz: Path, tmp_path: Path) -> None:
    # A subprocess: the exit status and the exact stderr are what a user sees.
    done = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--data", str(tiny_npz), "--split", "test", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "has no 'test' split (it has: train, val)" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_missing_matplotlib_exits_2_with_one_line(tiny_npz: Path, tmp_path: Path) -> None:
    # As on a plain install: importing matplotlib fails.
    block = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        "runpy.run_module('training.evaluate', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", block, "--data", str(tiny_npz), "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr
        == "evaluate: error: matplotlib is not installed: pip install 'fer_async[analyze]' (or the [train] extra)\n"
    )
    assert done.stdout == ""


def test_missing_weights_exits_2(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = evaluate.main(["--data", str(tiny_npz), "--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "model file not found" in err and "nowhere" in err


def test_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--data", str(tmp_path / "absent.npz")]) == 2
    assert "FER2013 data not found" in capsys.readouterr().err


# The astronaut's face in skimage.data.astronaut() (512x512): the Haar box, so the 48x48 crop
# is framed like a FER2013 face. Both detectors find it again once it is upscaled and padded.
ASTRONAUT_FACE = (174, 64, 98, 98)


@pytest.fixture
def astronaut_npz(tmp_path: Path, astronaut_bgr: np.ndarray) -> Path:
    """A real face (the random tiny_npz faces hold none a detector could find), 7 times, plus 2 noise faces."""
    x, y, w, h = ASTRONAUT_FACE
    face = cv2.resize(
        cv2.cvtColor(astronaut_bgr[y : y + h, x : x + w], cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA
    )
    noise = np.random.default_rng(0).integers(0, 256, size=(2, 48, 48), dtype=np.uint8)
    faces = np.concatenate([np.repeat(face[None], 7, axis=0), noise])
    labels = (np.arange(len(faces)) % 7).astype(np.uint8)
    path = tmp_path / "astronaut.npz"
    np.savez(path, x_train=faces, y_train=labels, x_val=faces, y_val=labels)
    return path


@pytest.mark.parametrize("detector", ["haar", "yunet"])
def test_via_detector_reports_server_path(
    detector: str,
    astronaut_npz: Path,
    untrained_export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    extra = ["--detector", detector]
    if detector == "yunet":
        extra += ["--detector-model", str(request.getfixturevalue("yunet_model"))]
    rc = evaluate.main(
        [
            "--data",
            str(astronaut_npz),
            "--weights",
            str(untrained_export),
            "--out",
            str(tmp_path),
            "--via-detector",
            "--limit",
            "8",
            *extra,
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 8 and summary["limit"] == 8 and summary["seed"] == 0  # the plain keys stay
    assert 0.0 <= summary["accuracy"] <= 1.0 and list(summary["recall"]) == list(EMOTIONS)
    via = summary["via_detector"]
    assert via["detector"] == detector and via["n"] == 8
    assert 0.0 <= via["detection_rate"] <= 1.0
    assert via["detected"] >= 1  # the astronaut's face is found at least once
    for key in ("accuracy_detected", "accuracy_with_misses", "plain_accuracy_detected", "agreement_with_plain"):
        assert 0.0 <= via[key] <= 1.0, key
    assert via["accuracy_with_misses"] <= via["accuracy_detected"]
    assert list(via["detection_rate_by_class"]) == list(EMOTIONS)
    assert Path(via["confusion_png"]).is_file()
    # Every face is also shown at each camera condition (issue 15); "original" is the run above.
    cameras = via["cameras"]
    assert list(cameras) == list(CAMERAS)
    assert cameras["original"]["detected"] == via["detected"]
    assert cameras["original"]["same_label_as_original"] == 1.0
    for name, figures in cameras.items():
        assert 0 <= figures["detected"] <= 8 and 0.0 <= figures["detection_rate"] <= 1.0, name
        for key in ("accuracy_detected", "same_label_as_original"):
            assert figures[key] is None or 0.0 <= figures[key] <= 1.0, (name, key)


def test_cameras_option_keeps_original_first(tiny_npz: Path) -> None:
    args = evaluate.parse_args(["--data", str(tiny_npz), "--via-detector", "--cameras", "dark35,contrast50"])
    assert args.cameras == ["original", "dark35", "contrast50"]
    with pytest.raises(SystemExit) as exc:
        evaluate.parse_args(["--data", str(tiny_npz), "--via-detector", "--cameras", "sepia"])
    assert exc.value.code == 2


def test_a_camera_condition_changes_the_frame_as_described() -> None:
    face = np.random.default_rng(3).integers(0, 256, (48, 48), dtype=np.uint8)
    rng = np.random.default_rng(0)

    def grey(frame: bytes) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert image is not None
        return image

    original = grey(server_path.server_frame(face))
    dark = grey(server_path.server_frame(face, CAMERAS["dark35"], rng))
    washed = grey(server_path.server_frame(face, CAMERAS["washed"], rng))
    assert original.shape == dark.shape == washed.shape == (server_path.VIA_FRAME_HEIGHT, server_path.VIA_FRAME_WIDTH)
    assert dark.max() <= 0.35 * 255 + 8  # JPEG ringing adds a few levels
    assert washed.min() >= 150 - 8 and np.ptp(washed) <= 0.4 * 255 + 16


def test_default_run_has_no_via_detector(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate.main(["--data", str(tiny_npz), "--weights", str(untrained_export), "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "via_detector" not in summary and "limit" not in summary


def test_via_detector_defaults_to_the_servers_detector(tiny_npz: Path) -> None:
    assert evaluate.parse_args(["--data", str(tiny_npz), "--via-detector"]).detector == "yunet"


def test_detector_options_need_via_detector(tiny_npz: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate.parse_args(["--data", str(tiny_npz), "--detector", "yunet"])
    assert exc.value.code == 2


def test_yunet_without_model_falls_back_to_haar_when_it_cannot_be_had(
    tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty cache, and downloads refused (tests/conftest.py points them at a closed port).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    args = ["--data", str(tiny_npz), "--via-detector", "--detector", "yunet", "--limit", "2", "--out", str(tmp_path)]
    assert evaluate.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["via_detector"]["detector"] == "haar"


def test_yunet_with_a_missing_model_file_exits_2(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--data",
        str(tiny_npz),
        "--via-detector",
        "--detector-model",
        str(tmp_path / "nope.onnx"),
        "--detector",
        "yunet",
    ]
    assert evaluate.main(args) == 2
    assert "not found" in capsys.readouterr().err


def test_scores_the_ferplus_majority_and_the_agreed_faces_when_votes_are_given(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    votes = write_tiny_votes(tmp_path / "votes.npz", n_train=70, n_val=21)
    args = ["--data", str(tiny_npz), "--weights", str(untrained_export), "--out", str(tmp_path / "out")]
    assert evaluate.main([*args, "--votes", str(votes)]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    majority = majority_labels(load_votes(votes, "val"))
    assert summary["ferplus"]["n"] == (majority >= 0).sum() and list(summary["ferplus"]["recall"]) == list(EMOTIONS)
    assert summary["agreed"]["n"] == ((majority >= 0) & (majority == np.arange(21) % 7)).sum()
    assert Path(summary["ferplus"]["confusion_png"]).is_file()
    assert "FER2013 labels:" in stdout and "FER+ majority (" in stdout

    # Without votes (tiny data is not the default data set): the FER2013 figures alone.
    assert evaluate.main(args) == 0
    assert "ferplus" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # Votes that do not follow the faces' order are refused, not silently misread.
    wrong = write_tiny_votes(tmp_path / "wrong.npz", n_train=70, n_val=20)
    assert evaluate.main([*args, "--votes", str(wrong)]) == 2
    assert "20 vote rows for the 21 faces" in capsys.readouterr().err


def test_face_template_finds_the_landmarks_of_real_faces(tmp_path: Path, yunet_model: Path) -> None:
    from testsupport import detected_photo_faces

    from training import face_template

    faces = detected_photo_faces(REPO / "tests" / "data", yunet_model)
    np.savez(tmp_path / "faces.npz", x_train=faces, y_train=np.zeros(len(faces), np.uint8))
    out = tmp_path / "template.json"
    rc = face_template.main(
        ["--data", str(tmp_path / "faces.npz"), "--detector-model", str(yunet_model), "--json", str(out)]
    )
    assert rc == 0
    figures = json.loads(out.read_text())
    assert figures["faces"] >= 3
    left, right = figures["median"]["eye (image left)"], figures["median"]["eye (image right)"]
    mouth = figures["median"]["mouth (image left)"]
    assert 0 < left[0] < 24 < right[0] < 48 and left[1] < mouth[1]  # eyes either side, above the mouth
