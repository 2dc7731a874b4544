"""YuNet on onnxruntime (fer_async.yunet) gives what OpenCV's own FaceDetectorYN gives, row for row."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_async.yunet import YuNetNetwork

DATA = Path(__file__).resolve().parent / "data"
CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def _images() -> list[np.ndarray]:
    images = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in sorted(DATA.glob("*.jpg"))]
    for clip in ("single_face.mp4", "noface_face.mov"):  # real faces in motion, where the clips are here
        capture = cv2.VideoCapture(str(CLIPS / clip))
        for _ in range(12):
            ok, frame = capture.read()
            if not ok:
                break
            images.append(frame)
        capture.release()
    return [image for image in images if image is not None]


@pytest.mark.parametrize("width", [320, 160, 96])
def test_rows_equal_opencvs(yunet_model: Path, width: int) -> None:
    network = YuNetNetwork(yunet_model)
    compared = 0
    for image in _images():
        height = round(image.shape[0] * width / image.shape[1])
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        opencv = cv2.FaceDetectorYN.create(str(yunet_model), "", (width, height), 0.7, 0.3)
        _, expected = opencv.detect(small)
        expected = np.zeros((0, 15), np.float32) if expected is None else expected
        found = network.detect(small)
        assert found.shape == expected.shape and found.dtype == np.float32
        np.testing.assert_allclose(found, expected, atol=1e-3)
        compared += len(found)
    if width == 320:
        assert compared >= 3  # the test photos' faces at least


def test_not_a_yunet_file_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "yunet.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="could not load YuNet model"):
        YuNetNetwork(broken)
    other_network = Path(__file__).resolve().parents[1] / "weights" / "fernet.onnx"  # a valid ONNX file, not YuNet
    with pytest.raises(ValueError, match="not a YuNet face detector"):
        YuNetNetwork(other_network)
