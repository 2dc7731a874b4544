"""The in-process model, the face detector and the Analyzer, built from `Settings` in one way.

The server (`fer_async.server.app`), the CLI and the Python API (`fer_async.analyze`) all build
them here, so `--runtime`, `--model-precision`, `--flip-tta`, `--align` and the detector
options mean the same for every command. Blocking (file reads, TensorFlow's import with `--runtime keras`, at
most one bounded download of YuNet's file): call these off the event loop.
"""

from __future__ import annotations

import logging
import os

from fer_async.config import Settings
from fer_async.detector import FaceDetector, create_detector_for
from fer_async.predictor import Predictor
from fer_async.recognition import Analyzer

logger = logging.getLogger(__name__)

# Frame decoding and face detection, each frame as it arrives; two matches the two cores we deploy on,
# and OpenCV releases the GIL so they really run side by side.
DETECT_THREADS = 2


def load_model(settings: Settings) -> Predictor:
    """The network the settings name (weights, name, runtime, precision, device, flip TTA), loaded and warmed up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # only matters with --runtime keras
    # Imported here: with --runtime keras this imports TensorFlow (seconds), which a caller that
    # fails its cheap checks first should never pay.
    from fer_async.model import FacialExpressionModel

    return FacialExpressionModel.from_options(settings)


def load_detector(settings: Settings) -> tuple[FaceDetector, str]:
    """The face detector the settings name, and the name of the one that runs ("yunet" or "haar")."""
    return create_detector_for(settings.detector, settings.detector_model, detect_width=settings.detect_width)


def new_analyzer(settings: Settings, model: Predictor, detector: FaceDetector) -> Analyzer:
    """The Analyzer around `model` and `detector` with the settings' limits, alignment and the server's threads."""
    return Analyzer(
        model, detector, detect_threads=DETECT_THREADS, max_pixels=settings.max_pixels, align=settings.align
    )


def load_analyzer(settings: Settings) -> Analyzer:
    """Detector (the cheap part, and its errors) first, then the model: the whole stack, in this thread."""
    detector, name = load_detector(settings)
    logger.info("face detector: %s", name)
    return new_analyzer(settings, load_model(settings), detector)
