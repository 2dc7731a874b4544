"""Where to look for faces in a stream's next frame: the whole frame, or only around the last faces.

Detection on the whole frame (YuNet at 320 px) is the largest cost of a frame. Between two
full detections a face moves little, so each consumer of a stream (a WebSocket connection, a
video channel, a file analysis) hands the pipeline `Hints` with each frame (in its `FramePlan`):
the faces of its previous frame. The detector then searches a small region around each of them
(`detector.YuNetDetector.detect_regions`) instead of the whole frame. The pipeline itself stays
stateless: no hints means a full detection, and it never remembers a face.

`DetectionSchedule` decides, per stream, what the next frame gets:

* a full detection on frame 0 and then on every `every`-th frame (0, N, 2N, ... counted from the
  last `reset()`), so a face that enters the picture is found within N - 1 frames;
* otherwise the boxes the previous frame's detection returned, whatever kind it was.

A live connection shifts its period by an `offset` (its number modulo N): clients that connect
together would otherwise all get their full detections in the same batches, every N-th one.

A face the region search does not find is searched for on the whole of the same frame
(`Search.REGIONS_LOST`; `Analyzer.prepare`), so a track is never left without its face. The
other way round too: a face of the previous frame that a full detection misses is looked for in
its region (`FramePlan.recheck`), and the faces either search finds are kept.

The decision and the hints are a pure function of the frame count since `reset()` (modulo N)
and the previous frame's raw detections: never of a tracker's smoothing or of the clock. Right
after `reset()` there is no previous frame, so that frame's detection depends on nothing before
it. A file analysis resets its schedule at fixed frames (`analyze.chunks.restart_period`), so a run
that starts at one of them (a Ray chunk) produces exactly the raw detections the uninterrupted
run produces from there on, and the chunks together give the boxes of the whole run.

`DETECT_EVERY` (the `--detect-every` default) is chosen by measurement: see the README, "Detect
less, track more" (`python -m fer_async.bench.detect_every`).

The schedule also says which view of its faces a frame's classification gets (`view()`). With
flip TTA every face is classified as seen and mirrored, which doubles the model's work. A stream
need not pay that on every frame: with `alternate_flip` its faces are classified as seen on even
frames and mirrored on odd ones, and the tracker's smoothing averages the two views over
consecutive frames (`--alternate-flip`; measured in docs/benchmarks.md, "Flip TTA across
frames"). Photos and a schedule without it get both views on every frame. The view too is a pure
function of the frame count since `reset()`, so chunks that start at even counts classify as the
uninterrupted run does. Stdlib only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from fer_async.labels import Box

# The --detect-every default, chosen by measurement (see above); the settings read it from here.
DETECT_EVERY = 5
# The --alternate-flip default (see above).
ALTERNATE_FLIP = True
# Frames after which the views repeat: chunks of a file start at multiples of it.
VIEW_PERIOD = 2


class Search(enum.StrEnum):
    """Which detection a frame got (`FrameResult.search`, the `search` label of fer_detections_total)."""

    FULL = "full"  # the whole frame: no hints (the schedule's period, a new stream), or a detector without regions
    REGIONS = "regions"  # only around the hinted faces, and every one of them was found there
    REGIONS_LOST = "regions_lost"  # a hinted face was not found around its box: the whole frame was searched too


class View(enum.StrEnum):
    """Which view of a frame's faces the network classifies, where flip TTA is on (without it: the face as seen)."""

    BOTH = "both"  # as seen and mirrored, averaged: photos, and streams without --alternate-flip
    AS_SEEN = "as_seen"
    MIRRORED = "mirrored"


FULL_SEARCHES = frozenset({Search.FULL, Search.REGIONS_LOST})


def full_share(searches: Mapping[str, float]) -> float | None:
    """The share of frames that got a full detection, from counts by Search (None for no frames)."""
    total = sum(searches.get(search, 0) for search in Search)
    return sum(searches.get(search, 0) for search in FULL_SEARCHES) / total if total else None


@dataclass(frozen=True)
class Hints:
    """Where a frame's faces were: search around `boxes` (x, y, w, h in a `width` x `height` frame's pixels).

    A frame of another size gets a full detection: the boxes would not mean the same places.
    Empty `boxes` (nobody in the last frame) means nothing to search until the next full detection.
    """

    width: int
    height: int
    boxes: tuple[Box, ...]

    def fit(self, width: int, height: int) -> bool:
        return (self.width, self.height) == (width, height)


@dataclass(frozen=True)
class FramePlan:
    """What one frame gets from its stream's schedule: where to search for faces (None: the whole
    frame) and which view of them to classify. The default, `PHOTO`, is a photo's.

    `recheck`, on a frame searched whole, is the previous frame's faces: one the whole-frame search
    misses is looked for around its box too. YuNet at the detection width misses small, dark or
    turned faces that it finds in their regions, and a track would otherwise lose its face until
    the next full detection happened to find it (5 to 10 frames of a dark clip).
    """

    hints: Hints | None = None
    view: View = View.BOTH
    recheck: Hints | None = None


PHOTO = FramePlan()


class DetectionSchedule:
    """Full detection or hints for each frame of ONE stream; see the module docstring. Not thread-safe."""

    def __init__(self, every: int = DETECT_EVERY, *, offset: int = 0, alternate_flip: bool = False) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        # Shifts the period (full detections on frames 0, N - offset, 2N - offset, ...), so that
        # streams that started together do not all search whole frames in the same batch.
        self.offset = offset % every
        self.alternate_flip = alternate_flip
        self._frames = 0  # frames observed since the last reset
        self._last: Hints | None = None

    @property
    def frames(self) -> int:
        """Frames observed since the last `reset()` (or since the schedule was made)."""
        return self._frames

    def hints(self) -> Hints | None:
        """What the next frame gets: None (a full detection) or the previous frame's faces."""
        if (self._frames + self.offset) % self.every == 0:
            return None
        return self._last

    def view(self) -> View:
        """Which view of its faces the next frame's classification gets."""
        if not self.alternate_flip:
            return View.BOTH
        return View.AS_SEEN if self._frames % VIEW_PERIOD == 0 else View.MIRRORED

    def plan(self) -> FramePlan:
        """The next frame's hints (or, on a full detection, the faces to recheck) and view."""
        hints = self.hints()
        recheck = self._last if hints is None and self._last is not None and self._last.boxes else None
        return FramePlan(hints, self.view(), recheck)

    def observe(self, width: int, height: int, boxes: Sequence[Box]) -> None:
        """The raw detections of the frame just analysed (the boxes the detector returned, in its pixels)."""
        self._last = Hints(width, height, tuple(boxes))
        self._frames += 1

    def reset(self) -> None:
        """Force a full detection on the next frame and count the period from it."""
        self._frames = 0
        self._last = None


@dataclass(frozen=True)
class Cadence:
    """What every stream's schedule is made from: --detect-every and --alternate-flip (`Settings.cadence`)."""

    detect_every: int = DETECT_EVERY
    alternate_flip: bool = ALTERNATE_FLIP

    def schedule(self, offset: int = 0) -> DetectionSchedule:
        """A new stream's schedule; `offset` shifts its full detections (see DetectionSchedule)."""
        return DetectionSchedule(self.detect_every, offset=offset, alternate_flip=self.alternate_flip)


DEFAULT_CADENCE = Cadence()
# The settings a schedule is built from; `python -m fer_async.analyze` takes them as the server does.
SCHEDULE_OPTIONS = tuple(f.name for f in fields(Cadence))
