"""Where a file's analysis may be cut, and where its face search starts afresh.

A file analysed as Ray chunks (fer_async.analyze.distributed) must give the rows of the plain
run. Two things make a frame's result depend on the frames before it: the model's batches (fixed
by frame index, `batch_span`) and the detection schedule (a full detection every
`cadence.detect_every` analysed frames, the regions around the last faces between, and on a full
detection a recheck of the last frame's faces in their regions: `schedule.FramePlan.recheck`).
Chunks start at multiples of `chunk_unit`, where batches and full detections fall as in the
plain run, and every run restarts its schedule every `restart_period` frames: the length of a
chunk, where a chunk cannot know the frames before it. So a face that only its region finds
(too small or too dark for the whole-frame search) is dropped there, once every
`CHUNK_FRAMES` frames or so (about 40 s at 25 fps), in the plain run and on Ray alike.
"""

from __future__ import annotations

import math

from fer_async.schedule import VIEW_PERIOD, Cadence

FRAMES_PER_CALL = 16  # frames per Analyzer call in the CLI: the model's batch, as the server's max_batch
# With --every N and --annotate the skipped frames wait for their batch too; bound that buffer.
MAX_BUFFERED_FRAMES = 64
CHUNK_FRAMES = 1024  # --chunk-frames: about this many frames per chunk (a Ray task), rounded up


def batch_span(every: int, frames_per_call: int) -> int:
    """Frames per classify call: batches are [k * span, (k + 1) * span), the same in every chunk."""
    return min(frames_per_call * every, MAX_BUFFERED_FRAMES)


def chunk_unit(every: int, frames_per_call: int, cadence: Cadence) -> int:
    """Chunk boundaries are multiples of this: batches and detection schedules fall as in the plain run.

    `cadence.detect_every` counts analysed frames (a full detection every that many, counted from
    the schedule's reset), so in frame indices a schedule restarts every `every * detect_every`
    frames. A chunk that starts there, its schedule reset, gets the plain run's full detection on
    its first frame and the same region searches after it, and, with `alternate_flip`, at an even
    count (VIEW_PERIOD), the same views of its faces.
    """
    view_period = VIEW_PERIOD if cadence.alternate_flip else 1
    return math.lcm(batch_span(every, frames_per_call), every * cadence.detect_every, every * view_period)


def restart_period(every: int, cadence: Cadence, chunk_frames: int = CHUNK_FRAMES) -> int:
    """Frames from one restart of a file's detection schedule to the next: a chunk's length,
    `chunk_frames` rounded up to whole `chunk_unit`s of the CLI's batches (whatever batches a run uses)."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
    unit = chunk_unit(every, FRAMES_PER_CALL, cadence)
    return max(unit, math.ceil(chunk_frames / unit) * unit)
