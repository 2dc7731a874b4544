"""fer_async.analyze when the output disk fills up midway: no output claims to be complete, none hides.

A real CLI run in a subprocess whose files may not grow past a few kilobytes (RLIMIT_FSIZE: the
writes fail with EFBIG, as they fail with ENOSPC on a full disk, and without needing root to mount
a small filesystem).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from analyze_clips import face_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_clip(tmp_path_factory.mktemp("clips") / "face.mp4", frames=30)


def run_with_file_limit(args: list[str], max_bytes: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "fer_async.analyze", *args, "--detector", "haar"]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, preexec_fn=limit, timeout=300)


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_an_annotated_video_the_disk_had_no_room_for_is_not_reported_written(clip: Path, tmp_path: Path) -> None:
    """The rows fit, the video does not: OpenCV only logs its failed writes, and the run said
    `wrote face_annotated.mp4` with exit status 0 for a file no player opens (no moov atom)."""
    done = run_with_file_limit([str(clip), "--out", "rows/", "--annotate", "video/"], 48_000, tmp_path)
    assert done.returncode != 0, done.stdout
    assert "face_annotated.mp4" in done.stderr
    assert "wrote video/" not in done.stdout
    assert files_under(tmp_path) == ["rows/face.csv"]  # no unplayable video, no hidden temporary
    assert len((tmp_path / "rows" / "face.csv").read_text().splitlines()) > 30


def test_rows_cut_off_by_a_full_disk_are_kept_as_incomplete_and_no_temporary_is_left(
    clip: Path, tmp_path: Path
) -> None:
    """The hidden `.face.partPID.csv` and `.face_annotated.partPID.mp4` stayed on the full disk,
    taking its room, and the message was a bare `[Errno 27] File too large` naming no file."""
    done = run_with_file_limit([str(clip), "--out", "out/", "--annotate", "out/"], 2_000, tmp_path)
    assert done.returncode != 0
    assert "out/face.csv" in done.stderr
    assert files_under(tmp_path) == ["out/face.incomplete.csv"]
    lines = (tmp_path / "out" / "face.incomplete.csv").read_text().splitlines()
    assert lines[0].startswith("file,frame,time_s,face,")
    assert 1 < len(lines) < 31
    # Whole rows only: the write the disk refused had taken part of one.
    assert {line.count(",") for line in lines} == {lines[0].count(",")}, lines[-1]


def test_the_annotated_video_is_still_checked_when_the_disk_had_room(clip: Path, tmp_path: Path) -> None:
    done = run_with_file_limit([str(clip), "--out", "out/", "--annotate", "out/"], 50_000_000, tmp_path)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path) == ["out/face.csv", "out/face_annotated.mp4"]
    capture = cv2.VideoCapture(str(tmp_path / "out" / "face_annotated.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 30
    capture.release()


def test_an_input_with_a_long_name_gets_its_outputs(tmp_path: Path) -> None:
    """A 240-character stem (names generated from a study's metadata): `STEM_annotated.mp4` and
    `STEM.csv` fit the 255 bytes a name may have, but the hidden temporary beside them did not,
    and the run failed with 'OpenCV cannot write a video there (use .mp4)' for an .mp4; a file
    cut short lost its rows, `STEM.incomplete.csv` being too long to rename to."""
    from analyze_clips import truncated_clip

    face = face_clip(tmp_path / ("x" * 240 + ".mp4"), frames=3)
    cut = truncated_clip(tmp_path / ("y" * 245 + ".avi"))
    done = run_with_file_limit([str(face), "--out", "out/", "--annotate", "out/"], 50_000_000, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / ("x" * 240 + "_annotated.mp4")).stat().st_size > 0
    assert (tmp_path / "out" / ("x" * 240 + ".csv")).stat().st_size > 0
    done = run_with_file_limit([str(cut), "--out", "cut/"], 50_000_000, tmp_path)
    assert done.returncode == 1, done.stderr
    (kept,) = (tmp_path / "cut").iterdir()
    assert kept.name.endswith(".incomplete.csv") and kept.name.startswith("y" * 200)
    assert len(kept.read_text().splitlines()) > 1


def test_a_timeline_that_cannot_be_written_fails_before_the_analysis(clip: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the timeline's folder should be")
    done = run_with_file_limit([str(clip), "--out", "out/", "--plot", "taken/face.png"], max_bytes=2**30, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "taken/face.png: cannot be written" in done.stderr
    assert files_under(tmp_path) == ["taken"]  # no CSV of a run that was going to fail


def test_an_annotated_video_in_a_folder_that_cannot_be_made_says_why(clip: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the video's folder should be")
    done = run_with_file_limit([str(clip), "--annotate", "taken/face.mp4"], max_bytes=2**30, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "taken/face.mp4: cannot be written" in done.stderr and "use .mp4" not in done.stderr
