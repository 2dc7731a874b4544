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
    from fer_async.config import DEFAULT_WEIGHTS_DIR
    from fer_async.model import FacialExpressionModel

    yield FacialExpressionModel(DEFAULT_WEIGHTS_DIR)
