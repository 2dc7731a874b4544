"""Frame times and counts as the container holds them: a variable frame rate, and WebM, whose
header has no frame count and whose rate OpenCV guesses (24 fps for a browser's recording)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from analyze_clips import timed_clip

from fer_async.analyze import analyze_video, open_source
from fer_async.analyze.__main__ import main
from fer_async.detector import create_detector
from fer_async.recognition import Analyzer

# Frames 20 ms apart, then 60 ms, then a pause of 3 s: a phone's variable rate, a paused recording.
VARIABLE_MS = [0, 20, 40, 60, 120, 180, 240, 3240, 3260, 3280]
# A browser's MediaRecorder at 15 fps: millisecond timestamps, no duration, no count.
RECORDED_MS = [round(i * 1000 / 15) for i in range(20)]


@pytest.fixture(scope="module")
def analyzer(real_model: Any) -> Iterator[Analyzer]:
    with Analyzer(real_model, create_detector("haar", None)) as a:
        yield a


def opencv_guess(path: Path) -> tuple[float, float]:
    capture = cv2.VideoCapture(str(path))
    try:
        return capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        capture.release()


@pytest.mark.parametrize(
    ("name", "times_ms", "live"),
    [("variable.mp4", VARIABLE_MS, False), ("variable.mkv", VARIABLE_MS, False), ("recorded.webm", RECORDED_MS, True)],
)
def test_each_rows_time_is_its_frames_timestamp(
    analyzer: Analyzer, tmp_path: Path, name: str, times_ms: list[int], live: bool
) -> None:
    clip = timed_clip(tmp_path / name, times_ms, live=live)
    rows = list(analyze_video(clip, analyzer=analyzer))
    assert [row["frame"] for row in rows if row["face"] == 1] == list(range(len(times_ms)))
    assert [row["time_s"] for row in rows if row["face"] == 1] == pytest.approx([ms / 1000 for ms in times_ms])


def test_a_browser_recording_is_counted_and_timed_by_its_packets(tmp_path: Path) -> None:
    clip = timed_clip(tmp_path / "recorded.webm", RECORDED_MS, live=True)
    guessed_fps, guessed_count = opencv_guess(clip)
    assert guessed_fps == 24.0 and guessed_count != len(RECORDED_MS)  # what the analysis used to trust
    info = open_source(clip)
    assert info.packets == info.frame_count == len(RECORDED_MS)
    assert info.fps == pytest.approx(15.0, abs=0.01)
    # The server counts at most its frame limit + 1 of them.
    assert open_source(clip, count_limit=5).packets == 6


def test_a_complete_webm_is_complete_and_its_annotated_video_runs_at_its_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One frame a second for 12 s: OpenCV reads a 24 fps file of about 265 frames, 253 of them
    # "missing", so the file was reported truncated and its outputs marked incomplete.
    clip = timed_clip(tmp_path / "slow.webm", [i * 1000 for i in range(12)])
    assert opencv_guess(clip)[1] > 200
    out = tmp_path / "out"
    assert main([str(clip), "--out", f"{out}/", "--annotate", f"{out}/", "--detector", "haar"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["slow.csv", "slow_annotated.mp4"]
    with (out / "slow.csv").open(newline="") as f:
        times = sorted({float(row["time_s"]) for row in csv.DictReader(f)})
    assert times == [float(i) for i in range(12)]
    fps, count = opencv_guess(out / "slow_annotated.mp4")
    assert fps == pytest.approx(1.0, abs=0.01) and count == 12
    assert "12 frames read" in capsys.readouterr().out


def test_a_webm_that_starts_late_or_has_longer_sound_is_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its duration (12.4 s: it starts at 10 s) is no count of its frames; it read as 24 of 310, truncated.
    # Times count from the stream's start, as a player shows them.
    clip = timed_clip(tmp_path / "late.webm", [10_000 + 100 * i for i in range(24)])
    out = tmp_path / "out"
    assert main([str(clip), "--out", f"{out}/", "--detector", "haar"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["late.csv"]
    with (out / "late.csv").open(newline="") as f:
        times = sorted({float(row["time_s"]) for row in csv.DictReader(f)})
    assert times[0] == 0.0 and times[-1] == pytest.approx(2.3)
