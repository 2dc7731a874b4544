"""`python -m fer_async.bench.detect_every CLIP...`: what searching the whole frame only every N frames costs in faces.

    python -m fer_async.bench.detect_every ../shared/data/videos/* --entering 10 --detector-model Y.onnx

Each clip is analysed as `python -m fer_async.analyze` analyses it (`FileAnalysis`, the server's
Analyzer and tracker), once per N of `--every` (`--detect-every`: a full detection on every N-th
frame, YuNet only around the last faces between; fer_async.schedule), and each frame's faces are
compared with those of N = 1, a full detection on every frame (today's reference):

* missed: reference faces with no face of the run over them (IoU >= 0.3), over all frames;
* extra: faces of the run over no reference face;
* late: per reference track, the frames from its first face to the run's first face over it
  (a face that appears is found at the next full detection: at most N - 1 frames), the worst;
* ids: the run's track ids (the reference's in brackets); label: the share of matched faces
  shown with the reference's label; full: the share of frames that got a full detection.

`--entering K` adds K clips composed from the first clip: a real photo's face (scikit-image's
astronaut, cut around her face) slides in from the right edge, entering one frame later in each
clip, so the K delays cover every phase of the schedule. `--save DIR` keeps them as files.
Frames per second are printed too: wall time on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fer_async.analyze.core import AnalysedFrame, FileAnalysis, open_source
from fer_async.analyze.stages import analyzer_stages
from fer_async.config import MODEL_OPTIONS, Settings, add_model_options, resolve_options
from fer_async.loading import load_analyzer
from fer_async.recognition import Analyzer
from fer_async.schedule import Cadence, full_share
from fer_async.synthetic import astronaut_bgr, paste, write_video
from fer_async.tracker import iou, tracker_for
from fer_async.video import VIDEO_MAX_WIDTH, shrink_to_width

MATCH_IOU = 0.3
DEFAULT_EVERY = (1, 2, 3, 5, 8, 10, 15)
# The entering face: the astronaut photo cut around her face (which fills about half of it),
# scaled to this many pixels, sliding in from the right at this speed from ENTER_AT on.
ENTERING_CROP = (slice(20, 210), slice(130, 320))
ENTERING_SIDE, ENTERING_STEP, ENTERING_TOP, ENTER_AT = 110, 4, 60, 12


@dataclass(frozen=True)
class Run:
    every: int
    frames: list[AnalysedFrame]
    full_share: float | None
    fps: float


def analyse(analyzer: Analyzer, path: Path, every: int) -> Run:
    stages = analyzer_stages(analyzer)
    analysis = FileAnalysis(open_source(path), stages, tracker_for(Settings()), cadence=Cadence(every))
    started = time.perf_counter()
    frames = list(analysis)
    elapsed = time.perf_counter() - started
    return Run(every, frames, full_share(analysis.searches), len(frames) / elapsed if elapsed > 0 else 0.0)


def compare(reference: Run, run: Run, fps: float) -> dict[str, Any]:
    missed = extra = matched = same_label = 0
    first_seen: dict[int, int] = {}  # reference track id -> its first frame
    found_at: dict[int, int] = {}  # reference track id -> the run's first frame with a face over it
    run_ids: set[int] = set()
    for ref, got in zip(reference.frames, run.frames, strict=True):
        run_ids |= {face.id for face in got.faces}
        taken: set[int] = set()
        for face in ref.faces:
            first_seen.setdefault(face.id, ref.index)
            overlaps = [(iou(face.box, other.box), i) for i, other in enumerate(got.faces) if i not in taken]
            best = max(overlaps, default=(0.0, -1))
            if best[0] < MATCH_IOU:
                missed += 1
                continue
            taken.add(best[1])
            found_at.setdefault(face.id, ref.index)
            matched += 1
            same_label += got.faces[best[1]].emotion == face.emotion
        extra += len(got.faces) - len(taken)
    late = [found_at.get(track, len(reference.frames)) - first for track, first in first_seen.items()]
    worst = max(late, default=0)
    return {
        "every": run.every,
        "full_pct": None if run.full_share is None else round(100 * run.full_share, 1),
        "missed": missed,
        "extra": extra,
        "late_frames": worst,
        "late_s": round(worst / fps, 3),
        "ids": len(run_ids),
        "reference_ids": len(first_seen),
        "label_pct": round(100 * same_label / matched, 1) if matched else None,
        "fps": round(run.fps, 1),
    }


def entering_clips(base: Path, count: int, directory: Path) -> list[Path]:
    """`count` copies of `base` (shrunk to 640 px) with a second face entering from the right, one frame later each."""
    capture = cv2.VideoCapture(str(base))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(shrink_to_width(frame, VIDEO_MAX_WIDTH))
    capture.release()
    face = astronaut_bgr()[ENTERING_CROP]
    clips = []
    for delay in range(count):
        composed = []
        for index, frame in enumerate(frames):
            moved = max(0, index - ENTER_AT - delay) * ENTERING_STEP
            x = max(frame.shape[1] - ENTERING_SIDE - 20, frame.shape[1] - moved)
            composed.append(paste(frame.copy(), face, x, ENTERING_TOP, ENTERING_SIDE))
        clips.append(write_video(directory / f"{base.stem}_entering_{delay}.mp4", composed, fps))
    return clips


def table(rows: Sequence[dict[str, Any]]) -> str:
    keys = ("clip", "every", "full_pct", "missed", "extra", "late_frames", "late_s", "ids", "label_pct", "fps")
    lines = ["  ".join(f"{key:>12}" for key in keys)]
    lines += ["  ".join(f"{row.get(key, '')!s:>12}"[-12:] for key in keys) for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fer_async.bench.detect_every",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("clips", nargs="+", type=Path, help="video files")
    p.add_argument("--every", default=",".join(map(str, DEFAULT_EVERY)), help="values of N, comma-separated")
    p.add_argument("--entering", type=int, default=0, metavar="K", help="also K clips with a second face entering")
    p.add_argument("--save", type=Path, metavar="DIR", help="keep the composed clips in DIR")
    add_model_options(p, MODEL_OPTIONS)
    ns = p.parse_args(argv)
    ns.settings = resolve_options(p, ns, MODEL_OPTIONS)  # command line > FER_* > default, as the server
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    values = sorted({int(part) for part in ns.every.split(",") if part.strip()} | {1})
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch, load_analyzer(ns.settings) as analyzer:
        directory = ns.save or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        clips = list(ns.clips) + (entering_clips(ns.clips[0], ns.entering, directory) if ns.entering else [])
        for clip in clips:
            fps = open_source(clip).fps
            runs = [analyse(analyzer, clip, every) for every in values]
            for run in runs:
                rows.append({"clip": clip.name, **compare(runs[0], run, fps)})
            print(table(rows[-len(runs) :]), flush=True)
    print("\nworst over all clips, per N:")
    for every in values:
        mine = [row for row in rows if row["every"] == every]
        worst = {key: max(int(row[key] or 0) for row in mine) for key in ("missed", "extra", "late_frames")}
        labels = [float(row["label_pct"]) for row in mine if row["label_pct"] is not None]
        print(
            f"  N={every}: missed {sum(int(row['missed'] or 0) for row in mine)} face-frames, extra "
            f"{sum(int(row['extra'] or 0) for row in mine)}, latest new face {worst['late_frames']} frames, "
            f"labels as the reference's {min(labels, default=100.0):.1f}-100 %, "
            f"full detection on {np.mean([float(row['full_pct'] or 0) for row in mine]):.1f} % of frames"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
