"""One file through the server's pipeline in two stages: raw (decode, detect, classify) then tracking.

The raw stage (`RawStage`) turns frames into `RawFrame`s: each frame's faces, boxes and raw
scores, through the `Analyzer`. It depends on nothing before its first frame, so any process can
run it for any chunk of a file (`fer_async.analyze.distributed` runs chunks as Ray tasks). The
tracking stage (`FileAnalysis`) feeds those in frame order to one `Tracker` (ids, smoothing,
hysteresis) and decides how the file ended. The plain run chains the two in one process; a Ray run
gives `FileAnalysis` the chunks' raw frames stitched in order, so both share this code and give
the same rows.

Used by the CLI and Python API (`fer_async.analyze`) and by the server's upload jobs
(`fer_async.server.jobs`). Only *how frames reach the Analyzer* differs between them: the
CLI calls `Analyzer.analyze` directly, the server goes through its batcher; both hand
`FileAnalysis` a `classify` function. Frames are shrunk exactly as the MJPEG stream shrinks
them (`video.shrink_to_width`, `VIDEO_MAX_WIDTH`), so the same clip gets the same labels.

Memory stays flat: frames are decoded, classified in batches and dropped; only the per-track
counters (and, when asked for, a compact timeline) grow with the file.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fer_async.analyze.source import FrameReader
from fer_async.analyze.source import InputError as InputError  # re-exported: the jobs and the API name it here
from fer_async.analyze.source import SourceInfo as SourceInfo
from fer_async.analyze.source import open_source as open_source
from fer_async.labels import EMOTIONS, Box, Face, FrameResult
from fer_async.tracker import TrackedFace, Tracker
from fer_async.video import DEFAULT_FPS, VIDEO_MAX_WIDTH, shrink_to_width

logger = logging.getLogger(__name__)

# The width the MJPEG stream analyses its frames at: the same frames give the same labels.
ANALYSIS_MAX_WIDTH = VIDEO_MAX_WIDTH
FRAMES_PER_CALL = 16  # frames per Analyzer call in the CLI: the model's batch, as the server's max_batch
# With --every N and --annotate the skipped frames wait for their batch too; bound that buffer.
MAX_BUFFERED_FRAMES = 64
# Frames from one full-frame detection to the next. A detection schedule (full detections every
# this many frames, region searches between them, decided only from the detections since the last
# full one) restarts with each RawStage; chunks of a file start at multiples of it, so each chunk
# starts with the full detection the plain run makes there. 1: every frame is a full detection.
DETECTION_PERIOD = 1

BASE_COLUMNS: tuple[str, ...] = ("file", "frame", "time_s", "face", "x", "y", "w", "h", "emotion")
SMOOTHED_PREFIX = "smoothed_"

# A container's frame count is an estimate (no_face.mp4 announces 98 frames and has 95). Decoding
# that ends short of it by at least this much time AND this share of the file is called cut short.
CUT_SHORT_MIN_S = 0.5
CUT_SHORT_MIN_SHARE = 0.02

Classify = Callable[[list[np.ndarray]], Sequence[FrameResult]]


class Ending(enum.StrEnum):
    """How the analysis of one file ended: decided here once; the CLI, the API and the jobs only map it."""

    DONE = "done"  # decoded to its end
    STOPPED = "stopped"  # asked to stop (Ctrl-C, the page's Stop, DELETE /api/analyses/{id})
    CUT_SHORT = "cut_short"  # a decoding error, or decoding ended well before the header's end
    NO_FRAMES = "no_frames"  # not one frame decoded


def columns(smoothed: bool) -> tuple[str, ...]:
    """The row keys, in order: raw scores per emotion, then smoothed ones when smoothing is on."""
    smoothed_columns = tuple(SMOOTHED_PREFIX + name for name in EMOTIONS) if smoothed else ()
    return BASE_COLUMNS + EMOTIONS + smoothed_columns


@dataclass(frozen=True)
class AnalysedFrame:
    """One frame of the file; `faces` carry track ids and boxes in the file's own pixels."""

    index: int
    time_s: float
    analysed: bool  # False for frames skipped by `every` (their faces: the last analysed ones)
    faces: tuple[TrackedFace, ...]
    image: np.ndarray | None  # the decoded frame at full size, only when `keep_images`


@dataclass(frozen=True, slots=True)
class RawFrame:
    """What the raw stage found in one frame: small (no pixels unless `image`), so chunks travel cheaply."""

    index: int
    faces: tuple[Face, ...] | None  # boxes in the analysed (shrunk) frame's pixels; None: not analysed
    scale: float = 1.0  # from the analysed frame's pixels to the file's
    image: np.ndarray | None = None  # the decoded frame at full size, only when kept


class RawSource(Protocol):
    """Raw frames in frame order, and how far decoding got (what `FileAnalysis.ending` judges)."""

    @property
    def frames_read(self) -> int: ...

    @property
    def decode_failed(self) -> bool: ...

    def __iter__(self) -> Iterator[RawFrame]: ...


def batch_span(every: int, frames_per_call: int) -> int:
    """Frames per classify call: batches are [k * span, (k + 1) * span), the same in every chunk."""
    return min(frames_per_call * every, MAX_BUFFERED_FRAMES)


def chunk_unit(every: int, frames_per_call: int, detection_period: int = DETECTION_PERIOD) -> int:
    """Chunk boundaries are multiples of this: batches and detection schedules fall as in the plain run.

    `detection_period` counts analysed frames (full detections every that many), so in frame
    indices a schedule restarts every `every * detection_period` frames.
    """
    return math.lcm(batch_span(every, frames_per_call), every * detection_period)


@dataclass
class RawStage:
    """Decode, detect, crop and classify the frames `reader` yields: RawFrames in order.

    Every `every`-th frame (by index in the file, frame 0 first) is classified, in batches
    that `batch_span` fixes by frame index, so a chunk that starts at a multiple of
    `chunk_unit` classifies exactly the batches the plain run does.
    """

    reader: FrameReader
    classify: Classify
    every: int = 1
    max_width: int | None = ANALYSIS_MAX_WIDTH
    frames_per_call: int = FRAMES_PER_CALL
    keep_images: bool = False

    @property
    def frames_read(self) -> int:
        return self.reader.frames_read

    @property
    def decode_failed(self) -> bool:
        return self.reader.decode_failed

    def __iter__(self) -> Iterator[RawFrame]:
        span = batch_span(self.every, self.frames_per_call)
        pending: list[tuple[int, np.ndarray | None]] = []
        for index, frame in self.reader.frames(lambda i: self.keep_images or i % self.every == 0):
            pending.append((index, frame))
            if (index + 1) % span == 0:
                yield from self._flush(pending)
                pending = []
        if pending:
            yield from self._flush(pending)

    def _flush(self, pending: list[tuple[int, np.ndarray | None]]) -> Iterator[RawFrame]:
        to_classify = [(i, f) for i, f in pending if i % self.every == 0 and f is not None]
        shrunk = [shrink_to_width(f, self.max_width) for _, f in to_classify]
        results = list(self.classify(shrunk)) if shrunk else []
        if len(results) != len(shrunk):
            raise RuntimeError(f"classify returned {len(results)} results for {len(shrunk)} frames")
        found = {i: RawFrame(i, r.faces, f.shape[1] / r.width) for (i, f), r in zip(to_classify, results, strict=True)}
        for index, frame in pending:
            raw = found.get(index) or RawFrame(index, None)
            yield dataclasses.replace(raw, image=frame) if self.keep_images else raw


def _scaled(box: Box, scale: float) -> Box:
    if scale == 1.0:
        return box
    x, y, w, h = box
    return (round(x * scale), round(y * scale), round(w * scale), round(h * scale))


@dataclass
class FileAnalysis:
    """Analyse `info.path` with `run` (or iterate it); `ending` and `describe_ending` say how it ended.

    `classify` gets a list of BGR frames (shrunk to `max_width`) and returns one FrameResult
    each, in order. Every `every`-th frame is analysed (frame 0 first). `tracker` (build it with
    `tracker.tracker_for(settings)`, as every other consumer does) gets each analysed frame's
    time, index / fps. `raw` replaces the raw stage this builds from `classify` (then None) with
    raw frames classified elsewhere: the chunks of a Ray run.
    """

    info: SourceInfo
    classify: Classify | None
    tracker: Tracker
    every: int = 1
    max_width: int | None = ANALYSIS_MAX_WIDTH
    frames_per_call: int = FRAMES_PER_CALL
    keep_images: bool = False
    raw: RawSource | None = None
    frames_analysed: int = field(default=0, init=False)
    _last_faces: tuple[TrackedFace, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be at least 1, got {self.every}")
        if self.frames_per_call < 1:
            raise ValueError(f"frames_per_call must be at least 1, got {self.frames_per_call}")
        if (self.raw is None) == (self.classify is None):
            raise ValueError("give FileAnalysis either classify or raw")
        if self.raw is None and self.classify is not None:
            reader = FrameReader(self.info)
            self.raw = RawStage(
                reader, self.classify, self.every, self.max_width, self.frames_per_call, self.keep_images
            )

    @property
    def frames_read(self) -> int:
        assert self.raw is not None
        return self.raw.frames_read

    @property
    def decode_failed(self) -> bool:
        assert self.raw is not None
        return self.raw.decode_failed

    @property
    def smoothed(self) -> bool:
        """Whether the tracker smooths scores (then the rows carry `smoothed_<emotion>` columns)."""
        return self.tracker.smoothing_s > 0

    def run(self, on_frame: Callable[[AnalysedFrame], None], should_stop: Callable[[], bool] = lambda: False) -> Ending:
        """Analyse the file, each frame to `on_frame`, until its end or until `should_stop()` after a frame."""
        for frame in self:
            on_frame(frame)
            if should_stop():
                return Ending.STOPPED
        return self.ending

    @property
    def ending(self) -> Ending:
        """How a decode that went as far as it could ended (`run` adds STOPPED)."""
        if self.frames_read == 0:
            return Ending.NO_FRAMES
        if self.decode_failed:
            return Ending.CUT_SHORT
        missing = self.info.frame_count - self.frames_read
        if missing <= 0 or self.info.kind != "video":
            return Ending.DONE
        large = missing / self.info.fps >= CUT_SHORT_MIN_S and missing / self.info.frame_count >= CUT_SHORT_MIN_SHARE
        return Ending.CUT_SHORT if large else Ending.DONE

    def describe_ending(self, ending: Ending) -> str:
        """The ending in one line without the file's name, for the CLI, the API's warning and the jobs."""
        if ending is Ending.NO_FRAMES:
            return "the video has no frames"
        if ending is Ending.STOPPED:
            return f"stopped at frame {self.frames_read}"
        if ending is Ending.CUT_SHORT:
            if self.decode_failed:
                return f"a frame could not be decoded after frame {self.frames_read}: corrupt"
            return (
                f"decoding stopped at frame {self.frames_read} of the {self.info.frame_count} its header announces "
                f"({self.frames_read / self.info.fps:.2f} s of {self.info.duration_s:.2f} s): truncated or corrupt"
            )
        return f"{self.frames_read} frames"

    def __iter__(self) -> Iterator[AnalysedFrame]:
        """The tracking stage: each raw frame, in order, through the one Tracker of this file."""
        assert self.raw is not None
        fps = self.info.fps or DEFAULT_FPS
        for raw in self.raw:
            time_s = raw.index / fps if self.info.kind == "video" else 0.0
            if raw.faces is not None:
                tracked = self.tracker.update(raw.faces, time_s)
                self._last_faces = tuple(dataclasses.replace(t, box=_scaled(t.box, raw.scale)) for t in tracked)
                self.frames_analysed += 1
            yield AnalysedFrame(raw.index, time_s, raw.faces is not None, self._last_faces, raw.image)


def frame_rows(file: str, frame: AnalysedFrame, smoothed: bool) -> list[dict[str, Any]]:
    """The rows of one analysed frame: one per face, or one with empty face fields when none."""
    base: dict[str, Any] = {"file": file, "frame": frame.index, "time_s": round(frame.time_s, 4)}
    if not frame.faces:
        return [dict.fromkeys(columns(smoothed)) | base]
    rows = []
    for face in frame.faces:
        x, y, w, h = face.box
        row = base | {"face": face.id, "x": x, "y": y, "w": w, "h": h, "emotion": face.emotion}
        row |= {name: round(p, 4) for name, p in zip(EMOTIONS, face.raw_scores, strict=True)}
        if smoothed:
            row |= {SMOOTHED_PREFIX + name: round(p, 4) for name, p in zip(EMOTIONS, face.scores, strict=True)}
        rows.append(row)
    return rows


@dataclass
class TrackStats:
    """What one track showed: its frames, first and last time, and how often each label."""

    frames: int = 0
    first_s: float = 0.0
    last_s: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    # Compact timeline (time, then one array per emotion): 8 bytes per value, only when wanted.
    times: array[float] = field(default_factory=lambda: array("d"))
    scores: list[array[float]] = field(default_factory=lambda: [array("d") for _ in EMOTIONS])

    def shares(self) -> dict[str, float]:
        return {name: self.labels[name] / self.frames for name in EMOTIONS if self.labels[name]}


@dataclass
class FileSummary:
    """Per-track figures of one file, fed frame by frame; `keep_timeline` for plots and charts."""

    keep_timeline: bool = False
    frames_analysed: int = 0
    frames_with_faces: int = 0
    rows: int = 0
    tracks: dict[int, TrackStats] = field(default_factory=dict)

    def add(self, frame: AnalysedFrame, rows: int) -> None:
        if not frame.analysed:
            return
        self.frames_analysed += 1
        self.rows += rows
        self.frames_with_faces += bool(frame.faces)
        for face in frame.faces:
            stats = self.tracks.get(face.id)
            if stats is None:
                stats = self.tracks[face.id] = TrackStats(first_s=frame.time_s)
            stats.frames += 1
            stats.last_s = frame.time_s
            stats.labels[face.emotion] += 1
            if self.keep_timeline:
                stats.times.append(frame.time_s)
                for values, p in zip(stats.scores, face.scores, strict=True):
                    values.append(p)

    def main_tracks(self, limit: int, min_frames: int = 3) -> list[tuple[int, TrackStats]]:
        """The `limit` longest tracks seen in at least `min_frames` frames, by id."""
        kept = [(i, s) for i, s in self.tracks.items() if s.frames >= min_frames]
        longest = sorted(kept, key=lambda item: item[1].frames, reverse=True)[:limit]
        return sorted(longest, key=lambda item: item[0])

    def lines(self) -> list[str]:
        """Human-readable per-track lines: time seen and share of it per label."""
        out = []
        for track_id, stats in sorted(self.tracks.items()):
            shares = sorted(stats.shares().items(), key=lambda kv: kv[1], reverse=True)
            text = ", ".join(f"{name} {share:.0%}" for name, share in shares)
            out.append(f"  face {track_id}: {stats.first_s:.2f}-{stats.last_s:.2f} s, {stats.frames} frames: {text}")
        return out

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "face": track_id,
                "frames": stats.frames,
                "first_s": round(stats.first_s, 3),
                "last_s": round(stats.last_s, 3),
                "shares": {k: round(v, 4) for k, v in stats.shares().items()},
            }
            for track_id, stats in sorted(self.tracks.items())
        ]


def analyzer_classify(analyzer: Any) -> Classify:
    """`classify` for FileAnalysis that calls `Analyzer.analyze` directly (the CLI, the API)."""

    def classify(frames: list[np.ndarray]) -> list[FrameResult]:
        results = analyzer.analyze(frames)
        for result in results:
            if not isinstance(result, FrameResult):  # decoded frames cannot fail to decode
                raise RuntimeError(f"analysis failed on a decoded frame: {result}")
        return list(results)

    return classify
