"""training.clip on a short clip of a real photo, with the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fer_async.demo import write_clip
from fer_async.labels import EMOTIONS
from training import clip


def test_demo_clip_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "clip.mp4"
    assert write_clip(video, seconds=1.0, fps=6) == 6
    # Haar pinned: this is about the summary, and the two-face count below is Haar's on this clip.
    assert clip.main([str(video), "--expect", "happy", "--detector", "haar"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 6 and summary["detector"] == "haar"
    # Two faces per frame: the scene and the picture-in-picture close-up.
    assert summary["frames_with_faces"] == 6 and summary["faces"] == 12
    shares = summary["label_share"]
    assert list(shares) == list(EMOTIONS) and sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["consecutive_pairs"] == 5 and 0 <= summary["largest_face_label_changes"] <= 5
    # The astronaut smiles; the shipped model says so on most of the clip's faces.
    assert summary["expect"] == "happy" and summary["expected_share"] >= 0.5


def test_missing_video_and_bad_detector_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert clip.main([str(tmp_path / "nope.mp4")]) == 2
    assert "no such video" in capsys.readouterr().err
    not_a_video = tmp_path / "text.mp4"
    not_a_video.write_text("hello")
    assert clip.main([str(not_a_video)]) == 2
    assert "cannot open video" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        clip.main([str(not_a_video), "--detector", "haar", "--detector-model", "x.onnx"])
    # YuNet (the default) with a model file that is not there: refused before TensorFlow loads.
    assert clip.main([str(not_a_video), "--detector-model", str(tmp_path / "x.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_camera_window_and_changes_per_second(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "clip.mp4"
    assert write_clip(video, seconds=1.0, fps=6) == 6
    assert clip.main([str(video), "--camera", "contrast50", "--window", "2:4"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["camera"] == "contrast50" and summary["frames"] == 6
    window = summary["window"]
    assert window["frames"] == [2, 4] and window["faces"] == 3  # the largest face of frames 2, 3 and 4
    assert sum(share for share in window["label_share"].values() if share) == pytest.approx(1.0, abs=1e-3)
    pairs, changes = summary["consecutive_pairs"], summary["largest_face_label_changes"]
    assert summary["label_changes_per_second"] == pytest.approx(changes * 6 / pairs, abs=1e-3)
    with pytest.raises(SystemExit):
        clip.parse_args([str(video), "--window", "5:2"])


def test_compare_labels_lists_each_stretch_where_two_networks_differ() -> None:
    ours = ["happy", "happy", "sad", "sad", None, "sad", "neutral"]
    theirs: list[str | None] = ["happy", "neutral", "neutral", "neutral", "sad", "happy", "neutral"]
    comparison = clip.compare_labels(ours, theirs)
    assert comparison["frames_compared"] == 6 and comparison["same_label"] == round(2 / 6, 4)
    assert comparison["differences"] == [
        {"first": 1, "last": 1, "labels": "happy", "against": "neutral"},
        {"first": 2, "last": 3, "labels": "sad", "against": "neutral"},
        {"first": 5, "last": 5, "labels": "sad", "against": "happy"},
    ]


def test_against_runs_the_same_frames_through_a_second_network(
    tmp_path: Path, untrained_export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "demo.mp4"
    write_clip(video, seconds=1.0, fps=6)
    assert clip.main([str(video), "--detector", "haar", "--against", str(untrained_export)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    against = summary["against"]
    assert against["weights"] == str(untrained_export) and against["frames_compared"] == summary["frames_with_faces"]
    # An untrained network and the shipped one cannot agree on every frame of a smiling face.
    assert against["same_label"] < 1.0 and against["differences"]
