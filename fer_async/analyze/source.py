"""What a file is, and its frames from any frame on, exactly as decoding it from its start gives them.

`open_source` checks a path and reads its header. `FrameReader` decodes frames `start` to `stop`:
from the first frame (the plain run), or, for one chunk of a long file, after a seek. OpenCV seeks
by time, `frame / average fps`, which misses frames in variable-frame-rate files (the .mov clips in
../shared land 2 to 8 frames off). So a chunk is found by its first frame's timestamp: the
timestamps of every frame come from one pass over the packets (`frame_times`, no decoding: about
100 000 packets/s), the reader seeks a little before that time and decodes forward to the frame
that carries it. Each chunk reports a marker (timestamp and digest of the decoded pixels) of its
first frame and of the frame after its end, so the caller checks that the chunks meet exactly and
decodes a chunk from the file's start where they do not (`sequential`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from fer_async.image_limits import MAX_VIDEO_PIXELS
from fer_async.imaging import ImageError, decode_image
from fer_async.video import DEFAULT_FPS, VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
# A seek for a chunk's first frame asks for this many frames before it, then decodes forward; when
# it lands after the frame (a file whose rate varies a lot), it asks again SEEK_BACKOFF times as early.
SEEK_MARGIN_FRAMES = 16
SEEK_BACKOFF = 4


class InputError(ValueError):
    """A file that cannot be analysed; the message is one line, fit for a terminal."""


@dataclass(frozen=True)
class SourceInfo:
    path: Path
    kind: str  # "video" or "image"
    fps: float  # the container's (DEFAULT_FPS when it does not say); 0 for an image
    # Frames the header announces (0 when unknown), or, where the container keeps no count
    # (Matroska/WebM), the packets counted (`packets`); 1 for an image.
    frame_count: int
    width: int
    height: int
    packets: int | None = None  # frames counted in the packets (up to open_source's count_limit + 1)

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(12)
    except OSError:
        return b""


def _counts_frames(head: bytes) -> bool:
    """Whether the container keeps a frame count (mp4/mov: its index; AVI: its header). Matroska/WebM,
    MPEG-TS and the rest keep none, and OpenCV's count for them is a guess: duration x a guessed rate."""
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip") or (
        head[:4] == b"RIFF" and head[8:12] == b"AVI "
    )


def _looks_like_video(head: bytes) -> bool:
    """Whether the first bytes are a video container's (mp4/mov, AVI, Matroska/WebM)."""
    return _counts_frames(head) or head[:4] == b"\x1a\x45\xdf\xa3"


def open_source(path: str | Path, count_limit: int | None = None) -> SourceInfo:
    """What `path` is, or an InputError saying in one line why it cannot be analysed.

    A container without a frame count has its packets counted, up to `count_limit` + 1 of them."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        image = read_image(path)
        return SourceInfo(path, "image", 0.0, 1, image.shape[1], image.shape[0])
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            if _looks_like_video(_head(path)):
                raise InputError(f"{path}: a video container OpenCV cannot open: no frames, truncated or corrupt")
            raise InputError(f"{path}: not a video or image OpenCV can read")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = float(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if width * height > MAX_VIDEO_PIXELS:
        raise InputError(
            f"{path}: {width}x{height} frames, over the {MAX_VIDEO_PIXELS / 1e6:.1f} Mpx a frame analysed "
            "(8K UHD, 7680x4320): scale the video down first"
        )
    fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    frame_count = int(count) if math.isfinite(count) and count > 0 else 0
    if _counts_frames(_head(path)):
        return SourceInfo(path, "video", fps, frame_count, width, height)
    return _counted(SourceInfo(path, "video", fps, frame_count, width, height), count_limit)


def _counted(info: SourceInfo, limit: int | None) -> SourceInfo:
    """`info` of a container without a frame count, its frames counted and its rate measured in the packets.

    OpenCV's count for such a file is its duration (where the header has one) times a rate it
    guesses (24 fps for a WebM with millisecond timestamps, whatever it holds). Nor does that
    duration announce the video's frames: it spans a start offset and a longer audio track too
    (a complete WebM starting at 10 s read as 60 of 310 frames). So the packets are the count.
    """
    times = packet_times(info.path, None if limit is None else limit + 1)
    if times is None:
        return info
    fps = info.fps
    if len(times) >= 2 and (span := max(times) - min(times)) > 0:
        fps = (len(times) - 1) / (span / 1000.0)
    return dataclasses.replace(info, fps=fps, frame_count=len(times), packets=len(times))


def read_image(path: Path) -> np.ndarray:
    try:
        return decode_image(path.read_bytes())  # the server's decoder, with its limits
    except ImageError as exc:
        raise InputError(f"{path}: {exc}") from None


def video_files(path: Path) -> list[Path]:
    """`path` itself, or the videos and images directly inside it when it is a directory."""
    if not path.is_dir():
        return [path]
    suffixes = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    return sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def frame_times(path: Path) -> array[float] | None:
    """Every frame's timestamp (ms) in display order, read from the packets without decoding; None if unusable.

    Decoding yields these times in this order (the display order is the sorted decode order);
    a decoder may drop the last packets (no_face.mp4: 98 packets, 95 frames). None when OpenCV
    cannot hand out packets or two frames share a time: then chunks seek by frame number.
    """
    times = packet_times(path)
    if times is None:
        return None
    ordered = array("d", sorted(times))
    if not ordered or any(b <= a for a, b in itertools.pairwise(ordered)):
        return None
    return ordered


def packet_times(path: Path, limit: int | None = None) -> array[float] | None:
    """The video packets' timestamps (ms) in file order, at most `limit` of them; None where OpenCV
    cannot hand out packets."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened() or not capture.set(cv2.CAP_PROP_FORMAT, -1):
            return None
        times = array("d")
        while (limit is None or len(times) < limit) and capture.grab():
            times.append(capture.get(cv2.CAP_PROP_POS_MSEC))
        return times
    finally:
        capture.release()


class FrameMarker(NamedTuple):
    """One decoded frame, recognisable: its timestamp and a digest of its pixels."""

    ms: float
    digest: bytes


def _marker(capture: cv2.VideoCapture, frame: np.ndarray) -> FrameMarker:
    digest = hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).digest()
    return FrameMarker(capture.get(cv2.CAP_PROP_POS_MSEC), digest)


@dataclass
class FrameReader:
    """Frames `start` to `stop` (None: the end) of `info`, as decoding from the first frame gives them.

    `start_ms` (from `frame_times`) finds frame `start` by its time after a seek; without it
    the seek is by frame number, `sequential` decodes from the first frame (exact, and slow
    for a late start). `first` and `after` are the markers of frame `start` (when the reader
    sought) and of frame `stop`; `after_state` says whether frame `stop` came ("ok"), the file
    ended ("end") or it did not decode ("undecodable"). `frames_read` counts from frame 0.
    """

    info: SourceInfo
    start: int = 0
    stop: int | None = None
    start_ms: float | None = None
    sequential: bool = False
    frames_read: int = field(default=0, init=False)
    decode_failed: bool = field(default=False, init=False)
    first: FrameMarker | None = field(default=None, init=False)
    after: FrameMarker | None = field(default=None, init=False)
    after_state: str = field(default="end", init=False)

    @property
    def sought(self) -> bool:
        return self.start > 0 and not self.sequential

    def frames(self, wanted: Callable[[int], bool]) -> Iterator[tuple[int, np.ndarray | None, float]]:
        """(index, frame, its timestamp in ms) for every frame; the frame is None where `wanted(index)`
        is false. The timestamp is the container's (0 where it has none: `FileAnalysis` judges)."""
        if self.info.kind == "image":
            self.frames_read = 1
            yield 0, read_image(self.info.path), 0.0
            return
        capture = cv2.VideoCapture(str(self.info.path))
        try:
            grabbed = self._grab_first(capture)
            index = self.start
            while grabbed and (self.stop is None or index < self.stop):
                # grab() without retrieve() skips the colour conversion of frames nobody looks at.
                frame = None
                if wanted(index) or (index == self.start and self.sought):
                    ok, frame = capture.retrieve()
                    # A frame over the limit lies about the header's size (open_source checked that).
                    if not ok or frame is None or frame.shape[0] * frame.shape[1] > MAX_VIDEO_PIXELS:
                        if wanted(index):
                            self.decode_failed = True
                            return
                        frame = None
                    elif index == self.start and self.sought:
                        self.first = _marker(capture, frame)
                self.frames_read = index + 1
                yield index, frame if wanted(index) else None, capture.get(cv2.CAP_PROP_POS_MSEC)
                index += 1
                grabbed = capture.grab()
            if grabbed and self.stop is not None:
                ok, frame = capture.retrieve()
                self.after_state = "ok" if ok and frame is not None else "undecodable"
                self.after = _marker(capture, frame) if self.after_state == "ok" else None
        finally:
            capture.release()

    def _grab_first(self, capture: cv2.VideoCapture) -> bool:
        """Grab frame `start`; False when the file ends before it."""
        if self.start == 0 or self.sequential:
            return all(capture.grab() for _ in range(self.start + 1))
        if self.start_ms is None:
            capture.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            return capture.grab()
        fps = capture.get(cv2.CAP_PROP_FPS)  # what OpenCV turns a frame number into a time with
        margin = SEEK_MARGIN_FRAMES
        while True:
            ask = max(0, math.floor(self.start_ms / 1000 * fps) - margin) if fps > 0 else 0
            capture.set(cv2.CAP_PROP_POS_FRAMES, ask)
            while capture.grab():
                ms = capture.get(cv2.CAP_PROP_POS_MSEC)
                if ms == self.start_ms:
                    return True
                if ms > self.start_ms:
                    break  # landed after it
            else:
                return False
            if ask == 0:  # no decoded frame has that time: decode from the start
                self.sequential = True
                capture.open(str(self.info.path))
                return self._grab_first(capture)
            margin *= SEEK_BACKOFF
