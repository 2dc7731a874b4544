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
CLI calls the Analyzer's two stages directly, the server goes through its pipeline and
batcher; both hand `FileAnalysis` the two `Stages`. Frames are analysed at their own size
(`ANALYSIS_MAX_WIDTH`; `max_width=VIDEO_MAX_WIDTH` shrinks them as the MJPEG stream does).

Detection follows the raw stage's own `DetectionSchedule` (fer_async.schedule), restarted every
`chunks.restart_period` frames: a full detection every `cadence.detect_every` analysed frames, only the
regions around the last faces between. So frame i+1's detection needs frame i's boxes: frames
are prepared in order on one thread, while the file is decoded on the caller's thread and the
faces of the frames prepared before are classified in one model call per batch on a third.

Memory stays flat: frames are decoded, classified in batches and dropped; only the per-track
counters (and, when asked for, a compact timeline) grow with the file.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fer_async.analyze.chunks import FRAMES_PER_CALL as FRAMES_PER_CALL  # re-exported: the CLI's batch
from fer_async.analyze.chunks import batch_span, restart_period
from fer_async.analyze.source import FrameReader
from fer_async.analyze.source import InputError as InputError  # re-exported: the jobs and the API name it here
from fer_async.analyze.source import SourceInfo as SourceInfo
from fer_async.analyze.source import open_source as open_source
from fer_async.analyze.stages import Batch, Stages
from fer_async.labels import EMOTIONS, Box, Face
from fer_async.schedule import DEFAULT_CADENCE, Cadence, DetectionSchedule
from fer_async.tracker import TrackedFace, Tracker
from fer_async.video import DEFAULT_FPS, shrink_to_width

if TYPE_CHECKING:
    from fer_async.recognition import Prepared

logger = logging.getLogger(__name__)

# Frames are analysed at their own size: a full detection searches a shrunk copy anyway, and only
# faces and their regions are cut from the frame. Shrinking every frame to the stream's 640 px
# first cost more than detecting (INTER_AREA 960 -> 640: 3.4 ms) and changed no label on the
# 144 faces of ../shared's 960x540 clips (README, "Detect less, track more").
ANALYSIS_MAX_WIDTH: int | None = None
# Decoded full-size frames waiting for their face search (decoding can outrun a 4K full detection).
MAX_AWAITING_DETECTION = 8

BASE_COLUMNS: tuple[str, ...] = ("file", "frame", "time_s", "face", "x", "y", "w", "h", "emotion")
SMOOTHED_PREFIX = "smoothed_"

# A container's frame count is an estimate (no_face.mp4 announces 98 frames and has 95). Decoding
# that ends short of it by at least this much time AND this share of the file is called cut short.
CUT_SHORT_MIN_S = 0.5
CUT_SHORT_MIN_SHARE = 0.02


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
    search: str | None = None  # the face search it got (schedule.Search); None: not analysed
    ms: float = 0.0  # the frame's timestamp in the container (FrameReader.frames)


class RawSource(Protocol):
    """Raw frames in frame order, and how far decoding got (what `FileAnalysis.ending` judges)."""

    @property
    def frames_read(self) -> int: ...

    @property
    def decode_failed(self) -> bool: ...

    def __iter__(self) -> Iterator[RawFrame]: ...


@dataclass
class RawStage:
    """Decode, detect, crop and classify the frames `reader` yields: RawFrames in order.

    Every `every`-th frame (by index in the file, frame 0 first) is analysed. Its faces are
    searched for in frame order on a thread of their own, as this stage's `schedule` says (reset
    at multiples of `restart_every`, by default `chunks.restart_period`); they are classified in
    batches that `batch_span` fixes by frame index, on another thread. So a chunk that starts at
    such a multiple detects and classifies exactly as the plain run does there. `stages` reach the Analyzer
    (`analyzer_stages` for one in this process); frames are shrunk to `max_width` first.
    """

    reader: FrameReader
    stages: Stages
    every: int = 1
    max_width: int | None = ANALYSIS_MAX_WIDTH
    frames_per_call: int = FRAMES_PER_CALL
    keep_images: bool = False
    cadence: Cadence = DEFAULT_CADENCE
    restart_every: int | None = None
    schedule: DetectionSchedule = field(init=False, repr=False)
    frames_read: int = field(default=0, init=False)  # frames handed out so far (decoding runs ahead)

    def __post_init__(self) -> None:
        self.schedule = self.cadence.schedule()

    @property
    def decode_failed(self) -> bool:
        return self.reader.decode_failed

    def __iter__(self) -> Iterator[RawFrame]:
        span = batch_span(self.every, self.frames_per_call)
        period = self.restart_every or restart_period(self.every, self.cadence)
        self.schedule.reset()
        detect = ThreadPoolExecutor(1, thread_name_prefix="fer-file-detect")
        classify = ThreadPoolExecutor(1, thread_name_prefix="fer-file-classify")
        started: deque[Batch] = deque()  # batches whose classification was started, oldest first
        awaiting: deque[Future[Prepared]] = deque()  # frames waiting for their face search
        batch = Batch()
        try:
            for index, frame, ms in self.reader.frames(lambda i: self.keep_images or i % self.every == 0):
                prepared = None
                if frame is not None and index % self.every == 0:
                    while awaiting and (awaiting[0].done() or len(awaiting) >= MAX_AWAITING_DETECTION):
                        awaiting.popleft().result()
                    prepared = detect.submit(self._prepare, frame, index % period == 0)
                    awaiting.append(prepared)
                batch.frames.append((index, frame if self.keep_images else None, prepared))
                batch.widths[index] = 0 if frame is None else frame.shape[1]
                batch.times[index] = ms
                if (index + 1) % span == 0:
                    started.append(batch.classify_on(classify, self.stages.classify))
                    batch = Batch()
                    # One batch classified while the next is prepared and the one after decoded.
                    while len(started) > 1:
                        yield from self._deliver(started.popleft())
            if batch.frames:
                started.append(batch.classify_on(classify, self.stages.classify))
            while started:
                yield from self._deliver(started.popleft())
        finally:
            detect.shutdown(wait=True, cancel_futures=True)
            classify.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, frame: np.ndarray, reset: bool) -> Prepared:
        """Detect and crop one frame with the schedule's hints (on the detection thread, in frame order)."""
        schedule = self.schedule
        if reset:  # where a chunk of a Ray run would start
            schedule.reset()
        prepared = self.stages.prepare(shrink_to_width(frame, self.max_width), schedule.plan())
        schedule.observe(prepared.width, prepared.height, prepared.boxes)
        return prepared

    def _deliver(self, batch: Batch) -> Iterator[RawFrame]:
        results = batch.results()
        for index, image, prepared in batch.frames:
            self.frames_read = index + 1
            ms = batch.times[index]
            if prepared is None:
                yield RawFrame(index, None, image=image, ms=ms)
            else:
                result = results[index]
                yield RawFrame(index, result.faces, batch.widths[index] / result.width, image, result.search, ms)


def _scaled(box: Box, scale: float) -> Box:
    if scale == 1.0:
        return box
    x, y, w, h = box
    return (round(x * scale), round(y * scale), round(w * scale), round(h * scale))


@dataclass
class FileAnalysis:
    """Analyse `info.path` with `run` (or iterate it); `ending` and `describe_ending` say how it ended.

    `stages` reach the Analyzer (`analyzer_stages` for one in this process); frames are shrunk
    to `max_width`. Every `every`-th frame is analysed (frame 0 first), with a full face
    detection on every `cadence.detect_every`-th analysed frame and the regions around the last
    faces between (`RawStage`). `tracker` (build it with `tracker.tracker_for(settings)`, as every
    other consumer does) gets each analysed frame's time (`frame_time`). `raw` replaces the raw
    stage this builds from `stages` (then None) with raw frames analysed elsewhere: the chunks of
    a Ray run. `searches` counts the analysed frames by the face search they got (schedule.Search).
    `restart_every`: `RawStage`'s (a Ray run's chunk length, `chunks.restart_period`).
    """

    info: SourceInfo
    stages: Stages | None
    tracker: Tracker
    every: int = 1
    max_width: int | None = ANALYSIS_MAX_WIDTH
    frames_per_call: int = FRAMES_PER_CALL
    keep_images: bool = False
    cadence: Cadence = DEFAULT_CADENCE
    raw: RawSource | None = None
    restart_every: int | None = None
    frames_analysed: int = field(default=0, init=False)
    searches: Counter[str] = field(default_factory=Counter, init=False)
    _last_faces: tuple[TrackedFace, ...] = field(default=(), init=False, repr=False)
    _last_time: tuple[int, float] | None = field(default=None, init=False, repr=False)  # (index, time_s)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be at least 1, got {self.every}")
        if self.frames_per_call < 1:
            raise ValueError(f"frames_per_call must be at least 1, got {self.frames_per_call}")
        if (self.raw is None) == (self.stages is None):
            raise ValueError("give FileAnalysis either stages or raw")
        if self.raw is None and self.stages is not None:
            reader = FrameReader(self.info)
            self.raw = RawStage(
                reader,
                self.stages,
                self.every,
                self.max_width,
                self.frames_per_call,
                self.keep_images,
                self.cadence,
                self.restart_every,
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

    def frame_time(self, raw: RawFrame) -> float:
        """The frame's time in s: its timestamp in the container, which a variable frame rate or a
        WebM's rate (OpenCV guesses one) makes differ from index / fps. Where the container has
        none, or it does not move forward, the time goes on from the last one at the header's fps."""
        if self.info.kind != "video":
            return 0.0
        seconds = raw.ms / 1000.0
        last = self._last_time
        if last is None:
            time_s = seconds if math.isfinite(seconds) and seconds >= 0 else raw.index / (self.info.fps or DEFAULT_FPS)
        elif math.isfinite(seconds) and seconds > last[1]:
            time_s = seconds
        else:
            time_s = last[1] + (raw.index - last[0]) / (self.info.fps or DEFAULT_FPS)
        self._last_time = (raw.index, time_s)
        return time_s

    def __iter__(self) -> Iterator[AnalysedFrame]:
        """The tracking stage: each raw frame, in order, through the one Tracker of this file."""
        assert self.raw is not None
        for raw in self.raw:
            time_s = self.frame_time(raw)
            if raw.faces is not None:
                if raw.search is not None:
                    self.searches[raw.search] += 1
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
