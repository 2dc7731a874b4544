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
