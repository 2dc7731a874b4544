"""Video files: path safety, paced reading (loop and end), and the shipped demo clip."""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from analyze_clips import timed_clip

from fer_async.demo import render_frames, write_clip
from fer_async.detector import HaarDetector
from fer_async.video import VideoError, VideoReader, _clamp_fps, frame_step_s, list_videos, safe_video_path

DEMO_CLIP = Path(__file__).resolve().parents[1] / "static" / "videos" / "demo.mp4"


def make_clip(path: Path, frames: int, fps: float, size: tuple[int, int] = (160, 120)) -> Path:
    """A small real MJPG clip: a bright square moving over a gradient, frame index in the red channel."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    w, h = size
    for i in range(frames):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        frame[..., 2] = i * 10 % 256
        x = (i * 7) % (w - 20)
        frame[40:60, x : x + 20] = 255
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def video_dir(tmp_path: Path) -> Path:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip(videos / "clip.avi", 4, 10)
    (videos / "Loud.MP4").write_bytes(b"x")  # any bytes: only names and places are checked here
    (videos / "notes.txt").write_text("not a video")
    (videos / ".hidden.mp4").write_bytes(b"x")
    (videos / "folder.mp4").mkdir()
    (videos / "sub").mkdir()
    (videos / "sub" / "inner.mp4").write_bytes(b"x")
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"x")
    (videos / "escape.mp4").symlink_to(secret)
    (videos / "inside.mp4").symlink_to(videos / "clip.avi")
    (videos / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    return videos


@pytest.mark.parametrize("name", ["clip.avi", "Loud.MP4", "inside.mp4"])
def test_safe_names(video_dir: Path, name: str) -> None:
    path = safe_video_path(video_dir, name)
    assert path is not None and path.is_file()
    assert path.is_relative_to(video_dir.resolve())


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../secret.mp4",
        "sub/inner.mp4",
        "sub\\inner.mp4",
        "..\\secret.mp4",
        "/etc/passwd",
        "/tmp/clip.avi",
        ".hidden.mp4",
        "notes.txt",
        "folder.mp4",
        "escape.mp4",  # a symlink out of the directory
        "dangling.mp4",
        "missing.mp4",
        "clip.avi\x00.txt",
        "C:clip.avi",
        "clip",
    ],
)
def test_unsafe_names(video_dir: Path, name: str) -> None:
    assert safe_video_path(video_dir, name) is None


def test_absolute_path_of_a_real_file_is_refused(video_dir: Path) -> None:
    assert safe_video_path(video_dir, str(video_dir / "clip.avi")) is None


def test_symlinked_directory_itself_is_fine(video_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "linked"
    link.symlink_to(video_dir)
    assert safe_video_path(link, "clip.avi") == (video_dir / "clip.avi").resolve()


def test_list_videos(video_dir: Path, tmp_path: Path) -> None:
    assert list_videos(video_dir) == ["Loud.MP4", "clip.avi", "inside.mp4"]
    assert list_videos(tmp_path / "no-such-dir") == []


def test_fps_clamp() -> None:
    assert _clamp_fps(0.0) == 25.0 and _clamp_fps(math.nan) == 25.0 and _clamp_fps(-3) == 25.0
    assert _clamp_fps(1000.0) == 60.0 and _clamp_fps(0.2) == 1.0 and _clamp_fps(29.97) == 29.97


async def test_reads_every_frame_then_ends(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "ten.avi", 10, 20)
    reader = VideoReader(clip, loop=False, max_width=None)
    started = time.monotonic()
    frames = [frame async for frame in reader.frames()]
    elapsed = time.monotonic() - started
    assert reader.fps == 20.0
    assert len(frames) == 10 and frames[0].shape == (120, 160, 3)
    assert [round(int(f[0, 0, 2]) / 10) for f in frames] == list(range(10))  # in order, none skipped
    assert elapsed > 0.3  # 9 intervals of 50 ms: paced, not read as fast as possible


async def test_pacing_is_about_the_file_fps(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "fast.avi", 200, 40)
    reader = VideoReader(clip, loop=False)
    count = 0
    started = time.monotonic()
    async with contextlib.aclosing(reader.frames()) as frames:
        async for _ in frames:
            count += 1
            if time.monotonic() - started >= 1.0:
                break
    # 40 fps for one second; loose bounds, the CPU is shared with other work.
    assert 25 <= count <= 45


def test_a_frame_is_due_its_timestamps_step_after_the_last() -> None:
    assert frame_step_s(None, 40.0, 25.0) == pytest.approx(0.04)  # the first frame of a pass
    assert frame_step_s(0.0, 66.0, 24.0) == pytest.approx(0.066)  # the file's 15 fps, not OpenCV's 24
    assert frame_step_s(100.0, 100.0, 20.0) == pytest.approx(0.05)  # no timestamps: the header's rate
    assert frame_step_s(0.0, 3_600_000.0, 25.0) == 1.0  # a pause is shown, for a second at most
    assert frame_step_s(0.0, 1.0, 25.0) == pytest.approx(1 / 60)


async def test_a_webm_streams_at_its_timestamps_not_opencvs_guess(tmp_path: Path) -> None:
    # Three frames half a second apart in a WebM: OpenCV says 24 fps, so they went by in 0.08 s.
    clip = timed_clip(tmp_path / "slow.webm", [0, 500, 1000], size=(160, 120))
    reader = VideoReader(clip, loop=False)
    started = time.monotonic()
    frames = [frame async for frame in reader.frames()]
    assert len(frames) == 3 and reader.fps == 24.0
    assert time.monotonic() - started >= 0.95


async def test_a_channels_position_is_the_files_time_though_a_pause_is_shown_shorter(tmp_path: Path) -> None:
    # A 3 s pause is shown for 1 s at most, but the tracker is given the file's own times.
    clip = timed_clip(tmp_path / "paused.webm", [0, 100, 3100, 3200], size=(160, 120))
    reader = VideoReader(clip, loop=False)
    positions = []
    async with contextlib.aclosing(reader.frames()) as frames:
        async for _ in frames:
            positions.append(reader.position_s)
    assert positions == pytest.approx([0.0, 0.1, 3.1, 3.2])


async def test_loops_at_the_end(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "short.avi", 5, 50)
    reader = VideoReader(clip, loop=True)
    seen: list[int] = []
    async with contextlib.aclosing(reader.frames()) as frames:
        async for frame in frames:
            seen.append(round(int(frame[0, 0, 2]) / 10))
            if len(seen) == 13:
                break
    assert seen == [0, 1, 2, 3, 4] * 2 + [0, 1, 2]
    assert reader.frames_read == 13


async def test_a_file_swapped_for_a_link_elsewhere_is_not_followed_at_the_next_pass(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    watched = make_clip(tmp_path / "videos" / "watched.avi", 3, 50)
    outside = make_clip(tmp_path / "outside.avi", 3, 50)
    reader = VideoReader(watched, loop=True)
    with pytest.raises(VideoError, match="replaced by a link"):
        async with contextlib.aclosing(reader.frames()) as frames:
            async for _ in frames:
                if reader.frames_read == 1:  # mid-pass: the swap shows when the file is opened again
                    watched.unlink()
                    watched.symlink_to(outside)
    assert reader.frames_read == 3


async def test_max_width_downscales(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "wide.avi", 2, 25, size=(640, 480))
    reader = VideoReader(clip, loop=False, max_width=320)
    frames = [frame async for frame in reader.frames()]
    assert [f.shape for f in frames] == [(240, 320, 3)] * 2


async def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="cannot open"):
        async for _ in VideoReader(tmp_path / "missing.mp4").frames():
            pass
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(os.urandom(2048))
    with pytest.raises(VideoError):
        async for _ in VideoReader(garbage, loop=True).frames():
            pass


def test_demo_clip_renders_two_faces_and_writes(tmp_path: Path) -> None:
    frames = render_frames(seconds=1, fps=4)
    assert len(frames) == 4 and all(f.shape == (480, 640, 3) for f in frames)
    out = tmp_path / "demo.mp4"
    assert write_clip(out, seconds=1, fps=4) == 4
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) == 4
    cap.release()
    with pytest.raises(ValueError, match="unsupported extension"):
        write_clip(tmp_path / "demo.gif")


def test_shipped_demo_clip() -> None:
    assert DEMO_CLIP.is_file(), "run: python -m fer_async.demo static/videos/demo.mp4"
    assert DEMO_CLIP.stat().st_size < 1_500_000
    cap = cv2.VideoCapture(str(DEMO_CLIP))
    fps = cap.get(cv2.CAP_PROP_FPS)
    detector = HaarDetector()
    found = []
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (480, 640, 3)
        if frames % 3 == 0:  # every third frame is plenty and keeps the test quick
            found.append(len(detector.detect(frame)))
        frames += 1
    cap.release()
    assert fps == 15 and 4 <= frames / fps <= 6
    assert sum(n >= 1 for n in found) >= 0.9 * len(found)  # a face in (nearly) every frame
    assert sum(n == 2 for n in found) >= 0.5 * len(found)  # and mostly both of them
