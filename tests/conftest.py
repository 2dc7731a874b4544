"""Shared fixtures: real photos (no dataset images) and the real model.

tests/data holds small real fixtures, made once with OpenCV from scikit-image's photos:

* astronaut_640x480.jpg: `skimage.data.astronaut()` (512x512) resized to 640x640 with
  INTER_AREA, top 480 rows kept, JPEG quality 85. One face, Haar box about (218, 80, 122, 122).
* two_faces_640x480.jpg: frame 0 of `fer_async.demo.render_frames()`, quality 85: the
  portrait plus a mirrored picture-in-picture close-up (second face near (478, 298, 94, 94)).
* coffee_640x480.jpg: `skimage.data.coffee()` centre-cropped to 4:3, resized to 640x480
  (INTER_CUBIC), quality 85. A real photo with no face in it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from fer_async.labels import Box

if TYPE_CHECKING:  # importing TensorFlow costs seconds: only the tests that use the model pay it
    from fer_async.model import FacialExpressionModel

DATA = Path(__file__).resolve().parent / "data"
YUNET_MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "face_detection_yunet.onnx"


def _isolate_detector_model_cache() -> None:
    """No test touches the network or the user's cache for the YuNet file (subprocesses inherit this).

    The cache is a fresh directory holding ../shared's copy when there is one, so the default
    detector is YuNet exactly as on a user's machine after its first start; without it the
    server falls back to Haar, as offline. Downloads go to a port nothing listens on.
    """
    from fer_async.detector_model import URL_ENV, cached_model_path

    cache = tempfile.mkdtemp(prefix="fer-test-cache-")
    atexit.register(shutil.rmtree, cache, True)
    os.environ["XDG_CACHE_HOME"] = cache
    if YUNET_MODEL.is_file():
        target = cached_model_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(YUNET_MODEL, target)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ[URL_ENV] = f"http://127.0.0.1:{s.getsockname()[1]}/unreachable.onnx"


_isolate_detector_model_cache()


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """scikit-image's astronaut portrait (512x512), as OpenCV BGR."""
    from skimage import data

    return cv2.cvtColor(np.asarray(data.astronaut()), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def face_jpeg() -> bytes:
    """A 640x480 JPEG with one face (the astronaut's), from tests/data."""
    return (DATA / "astronaut_640x480.jpg").read_bytes()


@pytest.fixture(scope="session")
def face_box_region() -> Box:
    """Where the face is in `face_jpeg` (x, y, w, h); Haar and YuNet boxes both overlap it by IoU > 0.8."""
    return (214, 76, 134, 134)


@pytest.fixture(scope="session")
def two_faces_jpeg() -> bytes:
    """A 640x480 JPEG with two faces of different sizes, from tests/data."""
    return (DATA / "two_faces_640x480.jpg").read_bytes()


@pytest.fixture(scope="session")
def no_face_jpeg() -> bytes:
    """A 640x480 JPEG of a real photo without any face (a cup of coffee), from tests/data."""
    return (DATA / "coffee_640x480.jpg").read_bytes()


@pytest.fixture(scope="session")
def yunet_model() -> Path:
    """The YuNet ONNX file from ../shared/models; tests that need it skip when it is absent."""
    if not YUNET_MODEL.is_file():
        pytest.skip(f"YuNet model not found at {YUNET_MODEL}")
    return YUNET_MODEL


@pytest.fixture(scope="session")
def real_model() -> Iterator[FacialExpressionModel]:
    """The trained FacialExpressionModel shipped in weights/."""
    from fer_async.model import FacialExpressionModel
    from fer_async.model_choices import DEFAULT_WEIGHTS_DIR

    yield FacialExpressionModel(DEFAULT_WEIGHTS_DIR)


@pytest.fixture(scope="session")
def real_fp32_model() -> Iterator[FacialExpressionModel]:
    """The shipped weights' fp32 network (weights/fernet.onnx), what a GPU inference server serves."""
    from fer_async.model import FacialExpressionModel
    from fer_async.model_choices import DEFAULT_WEIGHTS_DIR

    yield FacialExpressionModel(DEFAULT_WEIGHTS_DIR, precision="fp32")
