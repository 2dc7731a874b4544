"""Video files for the MJPEG demo: safe name lookup and a paced, threaded frame reader."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v"})
# Browsers' <img> elements show an MJPEG stream at a fraction of the webcam's resolution;
# 640 px wide keeps decode, detection and JPEG encoding cheap. training.clip reads at this width too.
VIDEO_MAX_WIDTH = 640
DEFAULT_FPS = 25.0  # when the container does not say (some AVI/webm files report 0 or NaN)
MIN_FPS, MAX_FPS = 1.0, 60.0  # beyond 60 fps nobody sees the difference; below 1 it is a slide show
# A consumer that stalls (a paused viewer, a slow batch) must not get a burst of catch-up
# frames afterwards: if we fall this far behind the schedule we re-anchor it to now.
MAX_LAG_S = 0.5


class VideoError(RuntimeError):
    """The file cannot be opened or yields no frames."""


def safe_video_path(video_dir: Path, name: str) -> Path | None:
    """The file `name` inside `video_dir`, or None unless it is a plain, visible video file there.

    `name` comes from a URL, so it must be a bare file name (no separators, no "..", not hidden,
    a video extension) and its real path, symlinks followed, must stay inside the directory.
    """
    if (
        not name
        or "/" in name
        or "\\" in name
        or ".." in name
        or ":" in name  # drive letters and NTFS streams
        or name.startswith(".")
        or any(ord(c) < 32 for c in name)
        or Path(name).suffix.lower() not in VIDEO_EXTENSIONS
    ):
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (its bytes arrive as lone surrogates): no URL names it
        return None
    try:
        base = Path(video_dir).resolve(strict=True)
        path = (base / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def list_videos(video_dir: Path) -> list[str]:
    """Sorted names of the files `safe_video_path` accepts in `video_dir` ([] if it is missing)."""
    try:
        entries = list(Path(video_dir).iterdir())
    except OSError:
        return []
    return sorted(entry.name for entry in entries if safe_video_path(video_dir, entry.name) is not None)


def _clamp_fps(fps: float) -> float:
    if not math.isfinite(fps) or fps <= 0:
        return DEFAULT_FPS
    return min(MAX_FPS, max(MIN_FPS, fps))


def has_frames(path: Path) -> bool:
    """Whether OpenCV opens `path` and decodes a first frame (blocking: a few ms)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return cap.isOpened() and cap.read()[0]
    finally:
        cap.release()


def file_step_s(previous_ms: float | None, ms: float, fps: float) -> float:
    """Seconds from one frame to the next in the file: their timestamps' difference; 1 / fps where
    the file has no timestamps or they do not move forward."""
    if previous_ms is None or not math.isfinite(ms) or ms <= previous_ms:
        return 1.0 / fps
    return (ms - previous_ms) / 1000.0


def frame_step_s(previous_ms: float | None, ms: float, fps: float) -> float:
    """Seconds from showing one frame to showing the next: `file_step_s` within the frame rates the
    stream keeps to (1..60 fps: a pause in a recording is shown, up to a second)."""
    return min(1.0 / MIN_FPS, max(1.0 / MAX_FPS, file_step_s(previous_ms, ms, fps)))


def shrink_to_width(frame: np.ndarray, max_width: int | None) -> np.ndarray:
    """`frame` scaled down (aspect kept) to at most `max_width` pixels wide; narrower frames as is."""
    if max_width is None or frame.shape[1] <= max_width:
        return frame
    height = max(1, round(frame.shape[0] * max_width / frame.shape[1]))
    return cv2.resize(frame, (max_width, height), interpolation=cv2.INTER_AREA)


class VideoReader:
    """Frames of a video file as BGR arrays, delivered at the file's frame rate.

    Decoding blocks, so every `cap.read()` runs in a worker thread (`asyncio.to_thread`);
    the event loop only sleeps until each frame is due. A frame is due its timestamp's step
    after the one before it (`frame_step_s`: a variable frame rate, a WebM whose rate OpenCV
    guesses), counted from the start on the monotonic clock, so per-frame jitter never
    accumulates into drift. With `loop=True` the file restarts at its end; otherwise the
    iterator ends.

    One reader is one decoder: share its frames between viewers rather than opening a reader
    per viewer.
    """

    def __init__(self, path: str | Path, *, loop: bool = True, max_width: int | None = 640) -> None:
        if max_width is not None and max_width < 16:
            raise ValueError(f"max_width must be at least 16, got {max_width}")
        self.path = Path(path)
        self.loop = loop
        self.max_width = max_width
        self.fps = DEFAULT_FPS  # set from the file when frames() opens it
        self.frames_read = 0
        # The last frame's time in the file, from 0 at each pass: what a tracker is given, so a
        # looping file starting over resets the tracks, and labels are smoothed as the CLI does.
        self.position_s = 0.0
        self._real_path: Path | None = None

    def _open(self) -> cv2.VideoCapture:
        # Each pass reopens the path: a file swapped meanwhile for a link to another place (out of
        # --video-dir) must not be followed.
        real = self.path.resolve()
        if self._real_path is None:
            self._real_path = real
        elif real != self._real_path:
            raise VideoError(f"video {self.path.name} was replaced by a link to another file")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise VideoError(f"cannot open video {self.path.name}")
        self.fps = _clamp_fps(float(cap.get(cv2.CAP_PROP_FPS)))
        return cap

    def _read(self, cap: cv2.VideoCapture, lock: threading.Lock) -> tuple[np.ndarray, float] | None:
        """The next frame and its timestamp (ms), or None at the end."""
        with lock:
            ok, frame = cap.read()
            ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        if not ok or frame is None:
            return None
        return shrink_to_width(np.asarray(frame), self.max_width), ms

    async def frames(self) -> AsyncGenerator[np.ndarray, None]:
        """Paced frames; close it (`contextlib.aclosing`) when you stop early to free the decoder."""
        cap = await asyncio.to_thread(self._open)
        # Cancelling the await does not stop a read already running in its thread; the lock
        # makes release() wait for it instead of freeing the decoder under its feet.
        lock = threading.Lock()
        try:
            start = time.monotonic()
            due = 0.0  # seconds after start
            previous_ms: float | None = None
            read_since_open = 0
            yielded = False
            while True:
                read = await asyncio.to_thread(self._read, cap, lock)
                if read is None:
                    if not self.loop:
                        return
                    if read_since_open == 0:
                        raise VideoError(f"video {self.path.name} has no readable frames")
                    # Reopening is the one rewind that works for every container and codec;
                    # CAP_PROP_POS_FRAMES seeks are inexact for inter-frame codecs.
                    cap.release()
                    cap = await asyncio.to_thread(self._open)
                    read_since_open, previous_ms = 0, None
                    continue
                frame, ms = read
                if yielded:  # the first frame after a rewind: 1 / fps after the last one
                    due += frame_step_s(previous_ms, ms, self.fps)
                yielded = True
                self.position_s = self.position_s + file_step_s(previous_ms, ms, self.fps) if read_since_open else 0.0
                read_since_open += 1
                self.frames_read += 1
                previous_ms = ms
                delay = start + due - time.monotonic()
                if delay < -MAX_LAG_S:
                    start, due = time.monotonic(), 0.0
                elif delay > 0:
                    await asyncio.sleep(delay)
                yield frame
        finally:
            with lock:
                cap.release()
