"""Face tracks over a stream of frames: stable ids, time-based smoothing, steady labels.

The shared pipeline (batcher, analyzer) is stateless and answers one frame at a time; what a
person watches is a stream. One `Tracker` per consumer of a stream (a WebSocket connection, an
MJPEG channel, one file in a CLI) turns each frame's faces into `TrackedFace`s:

* Matching: each face is matched to the live track whose box overlaps it most (IoU at least
  `min_iou`), or, failing that, whose centre is nearest within `max_centre_shift` box sides (a
  face that moved fast between two slow frames). A track's box is its last one or, where that
  fits better, the last one moved on at the track's velocity (`predicted_box`): a face crossing
  the picture by more than half its width a frame (a head turning fast, a person walking past a
  webcam that sends 10 frames/s) keeps its id, where matching the last box alone gave it a new
  id on every frame, and a face sweeping back met those stale ids again. Greedy, best pairs
  first. A face left over then takes a track that was seen on the frame before and lost on
  this one, when their centres are within `max_jump` sides, their sizes alike, and the track was
  seen only once or moved `MIN_JUMP_SPEED` sides in a frame within `MAX_PREDICTION_S`: how a
  track with no velocity yet follows a face that set off fast, and a fast one turns back. A face
  at rest does not leap, so a face appearing beside one the detector just missed is someone
  else (it took the missed one's id and smoothed scores, and the missed one a new id when it
  came back). Any other face starts a new track with the next integer id (1, 2, 3 ... per Tracker).
* A track missed for `max_unseen_ms` dies; its id is never reused. That age counts the frames
  processed for the stream, not wall-clock time: each frame adds the time since the one before,
  but at most `MAX_FRAME_STEP_MS`. So a stall (a frozen server, a client that stopped sending:
  seconds without any frame) ages a track by one such step at most, and the same face in the
  same place keeps its id after the pause; at any steady rate it is the time the face was missed.
* Smoothing: an exponential moving average whose weight for the new frame is
  ``1 - exp(-dt / tau)``, dt the time since the track's last update and tau `smoothing_ms`.
  Time-based, so a client sending 5 fps is smoothed over the same span as one sending 30 fps.
  ``smoothing_ms == 0`` turns it off (scores == raw_scores).
* Hysteresis: the shown label changes only when another class leads the shown one by at least
  `switch_margin` in the smoothed scores, so two nearly equal classes do not flicker.

Every consumer builds its Tracker with `tracker_for(settings)`, so the live view, the video
channels, the CLI and the jobs show the same labels for the same frames.

Pure Python + numpy, with its tuned defaults in fer_async.tracker_defaults; no I/O. Not thread-safe:
one Tracker belongs to one task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer_async.config import Settings
from fer_async.labels import EMOTIONS, Box, Face
from fer_async.tracker_defaults import DEFAULT_SMOOTHING_MS, DEFAULT_SWITCH_MARGIN

# A face the detector misses for a few frames (a turn of the head, motion blur) keeps its id.
DEFAULT_MAX_UNSEEN_MS = 1000.0
# The most one frame adds to a missed track's age: the interval of a slow (2 fps) stream. A
# longer gap between two frames is a stall, not time in which the face was looked for.
MAX_FRAME_STEP_MS = 500.0
DEFAULT_MIN_IOU = 0.3
# Centre distance, in units of the larger of the two boxes' sides, still taken as the same face.
DEFAULT_MAX_CENTRE_SHIFT = 0.5
# How far (in box sides) a face may have moved from a track seen on the frame before, when
# nothing else claims either, and by how much their sizes may differ.
DEFAULT_MAX_JUMP = 1.5
MAX_JUMP_SIZE_RATIO = 1.5
# A track jumps only when it was seen once (no velocity yet) or moved at least this many of its
# box sides in one frame within the last MAX_PREDICTION_S (a fast face turning back slows to
# nought on the way): a face at rest does not leap 1.5 sides in one frame, so a face there is
# someone else (a person turning to the camera beside one the detector just missed).
MIN_JUMP_SPEED = 0.25
# A track's velocity follows each new measurement by this weight: one frame's jitter of the
# detector's box does not send the prediction off, and a change of direction is taken in two frames.
VELOCITY_WEIGHT = 0.5
# A velocity is measured over at least this long: a live client's frames can arrive milliseconds
# apart, and a pixel or two of the detector's jitter over 5 ms read as hundreds of px/s.
MIN_VELOCITY_DT_S = 1 / 30
# The longest a track's box is moved on at its velocity: a face missed for longer is looked for
# where it was last seen, not half a picture away on a course it may not have kept.
MAX_PREDICTION_S = 0.25


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is empty."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _centre(box: Box) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


def _alike(a: Box, b: Box) -> bool:
    """Whether two boxes' sizes are within MAX_JUMP_SIZE_RATIO of each other."""
    side_a, side_b = max(a[2], a[3], 1), max(b[2], b[3], 1)
    return max(side_a, side_b) / min(side_a, side_b) <= MAX_JUMP_SIZE_RATIO


def centre_shift(a: Box, b: Box) -> float:
    """Distance between the boxes' centres in units of the larger box side."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    side = max(aw, ah, bw, bh, 1)
    return math.hypot((ax + aw / 2) - (bx + bw / 2), (ay + ah / 2) - (by + bh / 2)) / side


def _scores_json(scores: Sequence[float]) -> dict[str, float]:
    return {name: round(float(p), 4) for name, p in zip(EMOTIONS, scores, strict=True)}


@dataclass(frozen=True)
class TrackedFace:
    """One face of one frame, with its track's id, smoothed scores and shown label."""

    id: int
    box: Box
    scores: tuple[float, ...]  # smoothed along the track (== raw_scores when smoothing is off)
    raw_scores: tuple[float, ...]  # this frame's model output
    emotion: str  # the label to show (after hysteresis)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "box": list(self.box),
            "emotion": self.emotion,
            "scores": _scores_json(self.scores),
            "raw_scores": _scores_json(self.raw_scores),
        }

    def as_face(self) -> Face:
        """The face with its smoothed scores (what drawing code that takes `Face` should show)."""
        return Face(self.box, self.scores)


@dataclass(eq=False)
class _Track:
    id: int
    box: Box
    last_seen_s: float
    scores: np.ndarray  # smoothed, float64
    shown: int  # index into EMOTIONS
    seen: int = field(default=1)
    unseen_s: float = field(default=0.0)  # age since last matched, over the frames processed since
    velocity: tuple[float, float] = (0.0, 0.0)  # of the box's centre, px/s
    fast_s: float = -math.inf  # when it last moved MIN_JUMP_SPEED sides in a frame

    def predicted_box(self, now_s: float) -> Box:
        """The last box moved on at the track's velocity to `now_s` (at most MAX_PREDICTION_S ahead)."""
        ahead = min(max(0.0, now_s - self.last_seen_s), MAX_PREDICTION_S)
        x, y, w, h = self.box
        vx, vy = self.velocity
        return (round(x + vx * ahead), round(y + vy * ahead), w, h)


class Tracker:
    """Tracks the faces of one stream of frames; see the module docstring."""

    def __init__(
        self,
        *,
        smoothing_ms: float = DEFAULT_SMOOTHING_MS,
        switch_margin: float = DEFAULT_SWITCH_MARGIN,
        max_unseen_ms: float = DEFAULT_MAX_UNSEEN_MS,
        min_iou: float = DEFAULT_MIN_IOU,
        max_centre_shift: float = DEFAULT_MAX_CENTRE_SHIFT,
        max_jump: float = DEFAULT_MAX_JUMP,
    ) -> None:
        if not (math.isfinite(smoothing_ms) and smoothing_ms >= 0):
            raise ValueError(f"smoothing_ms must be >= 0, got {smoothing_ms}")
        if not (math.isfinite(switch_margin) and 0 <= switch_margin < 1):
            raise ValueError(f"switch_margin must be in [0, 1), got {switch_margin}")
        if not (math.isfinite(max_unseen_ms) and max_unseen_ms >= 0):
            raise ValueError(f"max_unseen_ms must be >= 0, got {max_unseen_ms}")
        if not 0 < min_iou <= 1:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        if not (math.isfinite(max_centre_shift) and max_centre_shift >= 0):
            raise ValueError(f"max_centre_shift must be >= 0, got {max_centre_shift}")
        if not (math.isfinite(max_jump) and max_jump >= 0):
            raise ValueError(f"max_jump must be >= 0, got {max_jump}")
        self.smoothing_s = smoothing_ms / 1000.0
        self.switch_margin = switch_margin
        self.max_unseen_s = max_unseen_ms / 1000.0
        self.min_iou = min_iou
        self.max_centre_shift = max_centre_shift
        self.max_jump = max_jump
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._last_now_s: float | None = None

    @property
    def live_tracks(self) -> int:
        return len(self._tracks)

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so an old id never names a new face)."""
        self._tracks.clear()
        self._last_now_s = None

    def update(self, faces: Sequence[Face], now_s: float) -> tuple[TrackedFace, ...]:
        """Match this frame's faces to live tracks, smooth, apply hysteresis.

        Returns one TrackedFace per input face, in the input order. `now_s` is the frame's time
        in seconds (a monotonic clock of receipt for live clients, the frame's time in the file
        for files and video channels). A time earlier than the last one (a looping file starting
        over) resets the tracks rather than smoothing across the jump.
        """
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be finite, got {now_s}")
        if self._last_now_s is not None and now_s < self._last_now_s:
            self.reset()
        step = 0.0 if self._last_now_s is None else min(now_s - self._last_now_s, MAX_FRAME_STEP_MS / 1000.0)
        self._last_now_s = now_s
        for live in self._tracks:
            live.unseen_s += step
        self._tracks = [t for t in self._tracks if t.unseen_s <= self.max_unseen_s]
        assignment = self._match(faces, now_s, step)
        out: list[TrackedFace] = []
        for index, face in enumerate(faces):
            raw = np.asarray(face.scores, dtype=np.float64)
            track = assignment.get(index)
            if track is None:
                track = _Track(self._next_id, face.box, now_s, raw.copy(), int(np.argmax(raw)))
                self._next_id += 1
                self._tracks.append(track)
            else:
                self._advance(track, face.box, raw, now_s, step)
            out.append(
                TrackedFace(
                    id=track.id,
                    box=face.box,
                    scores=tuple(float(p) for p in track.scores),
                    raw_scores=tuple(float(p) for p in face.scores),
                    emotion=EMOTIONS[track.shown],
                )
            )
        return tuple(out)

    def _match(self, faces: Sequence[Face], now_s: float, step: float) -> dict[int, _Track]:
        """Greedy matching: highest IoU pairs first, then the nearest centres, then the jumps."""
        pairs: list[tuple[float, float, int, int]] = []  # (-iou, shift, face index, track index)
        boxes = [(track.box, track.predicted_box(now_s)) for track in self._tracks]
        for fi, face in enumerate(faces):
            for ti, (last, predicted) in enumerate(boxes):
                overlap = max(iou(face.box, last), iou(face.box, predicted))
                shift = min(centre_shift(face.box, last), centre_shift(face.box, predicted))
                if overlap >= self.min_iou or shift <= self.max_centre_shift:
                    pairs.append((-overlap, shift, fi, ti))
        pairs.sort()
        assignment: dict[int, _Track] = {}
        taken: set[int] = set()
        for _neg_iou, _shift, fi, ti in pairs:
            if fi in assignment or ti in taken:
                continue
            assignment[fi] = self._tracks[ti]
            taken.add(ti)
        jumps: list[tuple[float, int, int]] = []
        for fi, face in enumerate(faces):
            if fi in assignment:
                continue
            for ti, track in enumerate(self._tracks):
                # unseen_s == step: matched on the frame before this one
                may_jump = track.seen == 1 or now_s - track.fast_s <= MAX_PREDICTION_S
                if ti not in taken and track.unseen_s <= step and may_jump and _alike(face.box, track.box):
                    shift = centre_shift(face.box, track.box)
                    if shift <= self.max_jump:
                        jumps.append((shift, fi, ti))
        for _shift, fi, ti in sorted(jumps):
            if fi in assignment or ti in taken:
                continue
            assignment[fi] = self._tracks[ti]
            taken.add(ti)
        return assignment

    def _advance(self, track: _Track, box: Box, raw: np.ndarray, now_s: float, step: float) -> None:
        dt = max(0.0, now_s - track.last_seen_s)
        if self.smoothing_s <= 0:
            track.scores = raw.copy()
        else:
            weight = 1.0 - math.exp(-dt / self.smoothing_s)
            track.scores = track.scores + weight * (raw - track.scores)
        leader = int(np.argmax(track.scores))
        if leader != track.shown and track.scores[leader] - track.scores[track.shown] >= self.switch_margin:
            track.shown = leader
        if dt > 0:
            (x0, y0), (x1, y1) = _centre(track.box), _centre(box)
            # this frame's share of the move since the track's last frame, against its side
            if math.hypot(x1 - x0, y1 - y0) * min(1.0, step / dt) >= MIN_JUMP_SPEED * max(box[2], box[3], 1):
                track.fast_s = now_s
            vx, vy = track.velocity
            over = max(dt, MIN_VELOCITY_DT_S)
            track.velocity = (
                vx + VELOCITY_WEIGHT * ((x1 - x0) / over - vx),
                vy + VELOCITY_WEIGHT * ((y1 - y0) / over - vy),
            )
        track.box = box
        track.last_seen_s = now_s
        track.unseen_s = 0.0
        track.seen += 1


# The settings a Tracker is built from; `python -m fer_async.analyze` takes them as the server does.
TRACKER_OPTIONS = ("smoothing_ms", "label_margin")


def tracker_for(settings: Settings) -> Tracker:
    """A new Tracker with the settings' --smoothing-ms and --label-margin: the one way every consumer builds one.

    The two options stay independent: `--smoothing-ms 0` turns the moving average off and
    keeps the hysteresis (`--label-margin 0` turns that off too).
    """
    return Tracker(smoothing_ms=settings.smoothing_ms, switch_margin=settings.label_margin)
