"""Per-frame emotion results of video files, for research: a CLI and a Python API.

    python -m fer_async.analyze clip.mp4 --out clip.csv --annotate clip_annotated.mp4 --plot clip.png

From Python (rows as dicts, ready for pandas)::

    import pandas as pd
    from fer_async.analyze import analyze_video, load_analyzer

    analyzer = load_analyzer()              # loads the model once; reuse it for many files
    df = pd.DataFrame(analyze_video("clip.mp4", analyzer=analyzer))

`analyze_video("long.mp4", ray="auto")` runs it in chunks as tasks of a Ray cluster (the
[cluster] extra; "local": a Ray of this machine), with the same rows (`distributed`).

The frames go through the server's own `Analyzer` (detect, crop, one model call per 16
frames) and a `Tracker` per file, so a clip gets the labels the server shows for it. See
`core.columns` for the row keys.
Model, detector and tracker are built from `Settings` as the server builds them
(`fer_async.loading`, `tracker.tracker_for`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fer_async.analyze.chunks import CHUNK_FRAMES, restart_period
from fer_async.analyze.core import (
    ANALYSIS_MAX_WIDTH,
    AnalysedFrame,
    Ending,
    FileAnalysis,
    FileSummary,
    InputError,
    SourceInfo,
    columns,
    frame_rows,
    open_source,
)
from fer_async.analyze.stages import Stages, analyzer_stages
from fer_async.config import Settings
from fer_async.schedule import ALTERNATE_FLIP, DETECT_EVERY, Cadence
from fer_async.tracker import tracker_for
from fer_async.tracker_defaults import DEFAULT_SMOOTHING_MS, DEFAULT_SWITCH_MARGIN

if TYPE_CHECKING:
    from fer_async.recognition import Analyzer

__all__ = [
    "ANALYSIS_MAX_WIDTH",
    "CHUNK_FRAMES",
    "DEFAULT_SMOOTHING_MS",
    "AnalysedFrame",
    "Ending",
    "FileAnalysis",
    "FileSummary",
    "IncompleteVideoWarning",
    "InputError",
    "SourceInfo",
    "Stages",
    "analyze_video",
    "analyzer_stages",
    "columns",
    "frame_rows",
    "load_analyzer",
    "open_source",
]

logger = logging.getLogger(__name__)


class IncompleteVideoWarning(UserWarning):
    """Decoding stopped well before the end the file's header announces, or failed (truncated or corrupt)."""


def load_analyzer(
    *,
    detector: str | None = None,
    detector_model: str | Path | None = None,
    detect_width: int | None = None,
    weights: str | Path | None = None,
    model_name: str | None = None,
    runtime: str | None = None,
    flip_tta: bool | None = None,
    precision: str | None = None,
    align: bool | None = None,
) -> Analyzer:
    """The server's Analyzer: its model and detector built as the server builds them, from its `Settings`.

    Each argument left out is the server's default (`python -m fer_async --help`); `precision`
    is --model-precision, `detect_width` 0 its `auto`. The detector is resolved as the server
    resolves it (YuNet from its file, cache or one pinned download, else Haar);
    `analyzer.detector.name` says which runs.
    Close it (`with load_analyzer() as a:` or `.close()`) to stop its detection threads.
    Raises `config.SettingsError` (a ValueError) for a value the server would refuse.
    """
    from fer_async.loading import load_analyzer as load

    given = {
        "detector": detector,
        "detector_model": detector_model,
        "detect_width": detect_width,
        "weights": weights,
        "model_name": model_name,
        "runtime": runtime,
        "flip_tta": flip_tta,
        "precision": precision,
        "align": align,
    }
    return load(_settings(given))


def _settings(options: Mapping[str, Any]) -> Settings:
    """The server's Settings with load_analyzer's keyword arguments (those not None) in them."""
    allowed = (
        "detector",
        "detector_model",
        "detect_width",
        "weights",
        "model_name",
        "runtime",
        "flip_tta",
        "precision",
        "align",
    )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"not an argument of load_analyzer: {', '.join(unknown)}")
    given = {("model_precision" if name == "precision" else name): value for name, value in options.items()}
    for name in ("detector_model", "weights"):
        if given.get(name) is not None:
            given[name] = Path(given[name])
    return Settings().replace(**{name: value for name, value in given.items() if value is not None})


def analyze_video(
    path: str | Path,
    *,
    analyzer: Analyzer | None = None,
    every: int = 1,
    smoothing_ms: float = DEFAULT_SMOOTHING_MS,
    label_margin: float = DEFAULT_SWITCH_MARGIN,
    max_width: int | None = ANALYSIS_MAX_WIDTH,
    detect_every: int = DETECT_EVERY,
    alternate_flip: bool = ALTERNATE_FLIP,
    ray: str | None = None,
    chunk_frames: int = CHUNK_FRAMES,
    options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of `path` (a video or a JPEG/PNG image), one per face per analysed frame, as they come.

    Keys (`columns(smoothing_ms > 0)`): file, frame, time_s, face (track id, None on a frame
    without faces), x, y, w, h (the file's own pixels), emotion (the label shown, after the
    hysteresis), one raw probability per emotion, and with smoothing on `smoothed_<emotion>`
    per emotion. `smoothing_ms` and `label_margin` are the server's --smoothing-ms and
    --label-margin (both 0: raw scores, label = their argmax). Every `every`-th frame is
    analysed. `max_width` shrinks frames before detection (640: as the server's video stream
    does; None, the default: the file's own size). `detect_every` is the server's
    --detect-every: the whole frame is searched for faces on every `detect_every`-th analysed
    frame, only around the last faces between. `alternate_flip` is --alternate-flip: with flip
    TTA, faces as seen on even analysed frames and mirrored on odd ones (False: both on every frame).

    `ray` runs the file in chunks of about `chunk_frames` frames as Ray tasks (the [cluster]
    extra), with the same rows: "local" starts a Ray on this machine for this call, "auto" or
    an address joins a cluster; a Ray this process already joined (`ray.init`) is used as it
    is. The workers load the analyzer `options` describes (load_analyzer's keyword arguments;
    `analyzer` is for a run in this process). With or without `ray`, the face search restarts
    at each chunk's first frame (`chunks.restart_period`), so both give the same rows.

    Raises InputError (one line) for a missing file, a non-video, a video without frames. A
    video cut short (a decoding error, or decoding ending well before the end its header
    announces) yields what decodes and then warns with IncompleteVideoWarning. Without
    `analyzer` one is loaded (and closed) for this call.
    """
    info = open_source(path)
    tracker = tracker_for(Settings(smoothing_ms=smoothing_ms, label_margin=label_margin))
    with contextlib.ExitStack() as stack:
        if ray is not None:
            if analyzer is not None:
                raise ValueError("with ray the workers load their own analyzer: describe it with options=")
            from fer_async.analyze.distributed import RayRun, ray_session
            from fer_async.loading import load_detector

            settings = _settings(options or {}).replace(detect_every=detect_every, alternate_flip=alternate_flip)
            settings = settings.replace(detector=load_detector(settings)[1])  # what every worker must run
            stack.enter_context(ray_session(ray))
            run = RayRun([info], settings, every=every, max_width=max_width, chunk_frames=chunk_frames)
            stack.callback(run.close)
            analysis = run.analysis(0, tracker)
        else:
            active = analyzer if analyzer is not None else stack.enter_context(load_analyzer(**(options or {})))
            stages = analyzer_stages(active)
            analysis = FileAnalysis(
                info,
                stages,
                tracker,
                every=every,
                max_width=max_width,
                cadence=Cadence(detect_every, alternate_flip),
                restart_every=restart_period(every, Cadence(detect_every, alternate_flip), chunk_frames),
            )
        name = str(info.path)
        for frame in analysis:
            if frame.analysed:
                yield from frame_rows(name, frame, analysis.smoothed)
        ending = analysis.ending
        if ending is Ending.NO_FRAMES:
            raise InputError(f"{info.path}: {analysis.describe_ending(ending)}")
        if ending is Ending.CUT_SHORT:
            warnings.warn(f"{info.path}: {analysis.describe_ending(ending)}", IncompleteVideoWarning, stacklevel=2)
