"""Per-frame emotion results of video files, for research: a CLI and a Python API.

    python -m fer_async.analyze clip.mp4 --out clip.csv --annotate clip_annotated.mp4 --plot clip.png

From Python (rows as dicts, ready for pandas)::

    import pandas as pd
    from fer_async.analyze import analyze_video, load_analyzer

    analyzer = load_analyzer()              # loads the model once; reuse it for many files
    df = pd.DataFrame(analyze_video("clip.mp4", analyzer=analyzer))

The frames go through the server's own `Analyzer` (detect, crop, one model call per 16
frames) and a `Tracker` per file, shrunk as the MJPEG stream shrinks them, so a clip gets the
labels the server shows for it. See `core.columns` for the row keys.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fer_async.analyze.core import (
    ANALYSIS_MAX_WIDTH,
    AnalysedFrame,
    FileAnalysis,
    FileSummary,
    InputError,
    SourceInfo,
    analyzer_classify,
    columns,
    frame_rows,
    open_source,
)
from fer_async.tracker import DEFAULT_SMOOTHING_MS, DEFAULT_SWITCH_MARGIN

if TYPE_CHECKING:
    from fer_async.analyzer import Analyzer

__all__ = [
    "ANALYSIS_MAX_WIDTH",
    "DEFAULT_SMOOTHING_MS",
    "AnalysedFrame",
    "FileAnalysis",
    "FileSummary",
    "IncompleteVideoWarning",
    "InputError",
    "SourceInfo",
    "analyze_video",
    "columns",
    "frame_rows",
    "load_analyzer",
    "open_source",
]

logger = logging.getLogger(__name__)


class IncompleteVideoWarning(UserWarning):
    """Decoding stopped before the end the file's header announces (truncated or corrupt)."""


def load_analyzer(
    *,
    detector: str | None = None,
    detector_model: str | Path | None = None,
    weights: str | Path | None = None,
    model_name: str | None = None,
    flip_tta: bool | None = None,
    precision: str | None = None,
) -> Analyzer:
    """The server's Analyzer with the server's defaults (`Settings`: weights, detector, flip TTA, precision).

    The detector is resolved as the server resolves it (YuNet from its file, cache or one
    pinned download, else Haar); `analyzer.detector.name` says which runs. Loading imports
    TensorFlow (seconds). Close it (`with load_analyzer() as a:` or `.close()`) to stop its
    detection threads.
    """
    from fer_async.analyzer import Analyzer
    from fer_async.config import Settings
    from fer_async.detector import create_detector_for

    defaults = Settings()
    found_detector, _ = create_detector_for(detector or defaults.detector, detector_model)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_async.model import FacialExpressionModel  # TensorFlow: only once the cheap checks passed

    model = FacialExpressionModel(
        Path(weights) if weights is not None else defaults.weights,
        model_name or defaults.model_name,
        flip_tta=defaults.flip_tta if flip_tta is None else flip_tta,
        precision=precision or defaults.model_precision,
    )
    return Analyzer(model, found_detector)


def analyze_video(
    path: str | Path,
    *,
    analyzer: Analyzer | None = None,
    every: int = 1,
    smoothing_ms: float = DEFAULT_SMOOTHING_MS,
    label_margin: float = DEFAULT_SWITCH_MARGIN,
    max_width: int | None = ANALYSIS_MAX_WIDTH,
) -> Iterator[dict[str, Any]]:
    """Rows of `path` (a video or a JPEG/PNG image), one per face per analysed frame, as they come.

    Keys (`columns(smoothing_ms > 0)`): file, frame, time_s, face (track id, None on a frame
    without faces), x, y, w, h (the file's own pixels), emotion (the label shown: smoothed, with
    hysteresis, when smoothing is on), one raw probability per emotion, and with smoothing on
    `smoothed_<emotion>` per emotion. `smoothing_ms` and `label_margin` are the server's
    --smoothing-ms and --label-margin (smoothing 0: raw scores, label = their argmax). Every
    `every`-th frame is analysed. `max_width` shrinks
    frames before detection as the server's video stream does (None: full size).

    Raises InputError (one line) for a missing file, a non-video, a video without frames. A
    video that stops decoding before the frame count its header announces yields what decodes
    and then warns with IncompleteVideoWarning. Without `analyzer` one is loaded (and closed)
    for this call.
    """
    info = open_source(path)
    own = analyzer is None
    active = load_analyzer() if analyzer is None else analyzer
    try:
        analysis = FileAnalysis(
            info,
            analyzer_classify(active),
            every=every,
            smoothing_ms=smoothing_ms,
            label_margin=label_margin,
            max_width=max_width,
        )
        name = str(info.path)
        for frame in analysis:
            if frame.analysed:
                yield from frame_rows(name, frame, analysis.smoothed)
        if analysis.frames_read == 0:
            raise InputError(f"{info.path}: the video has no frames")
        if analysis.stopped_early:
            warnings.warn(
                f"{info.path}: decoding stopped at frame {analysis.frames_read} of the "
                f"{info.frame_count} its header announces (truncated or corrupt)",
                IncompleteVideoWarning,
                stacklevel=2,
            )
    finally:
        if own:
            active.close()
