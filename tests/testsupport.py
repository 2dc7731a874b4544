"""Small helpers shared by the test packages (server, hostile, e2e, imaging, training).

`tests/` is on sys.path (pytest inserts the directory of the top-level conftest.py), so test
modules import this as `testsupport`.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fer_async.onnx_session import int8_exact
from fer_async.predictor import Predictor
from fer_async.schedule import View

# What the default precision serves on this CPU: the int8 file, or fp32 on x86 without VNNI
# (fer_async.onnx_session.int8_exact: onnxruntime's int8 kernels saturate there).
SERVED_PRECISION = "int8" if int8_exact() else "fp32"
SERVED_FILE = {"int8": "fernet.int8.onnx", "fp32": "fernet.onnx"}[SERVED_PRECISION]
NEEDS_VNNI = pytest.mark.skipif(
    SERVED_PRECISION != "int8",
    reason="this CPU has no VNNI: onnxruntime's int8 kernels saturate on it, and the int8 file is not served here",
)


class CountingModel:
    """A real model, counting its calls and the faces in each."""

    def __init__(self, model: Predictor) -> None:
        self.model = model
        self.calls: list[int] = []

    def predict(self, faces: np.ndarray) -> np.ndarray:
        self.calls.append(len(faces))
        return self.model.predict(faces)

    def predict_views(self, faces: np.ndarray, views: Sequence[View]) -> np.ndarray:
        self.calls.append(len(faces))
        return self.model.predict_views(faces, views)  # type: ignore[attr-defined]


async def eventually(check: Callable[[], bool], within_s: float = 30.0, what: str = "condition") -> None:
    """Poll `check` every 50 ms until it holds; fail after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within_s:.0f} s")
        await asyncio.sleep(0.05)


async def serve_on_a_taken_port(
    extra_args: list[str], within_s: float, env: Mapping[str, str] | None = None
) -> tuple[int, int | None, str]:
    """Run `python -m fer_async` on a port another socket listens on; (port, exit status, output)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "fer_async", "--host", "127.0.0.1", "--port", str(port), *extra_args],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), within_s)
    return port, proc.returncode, out.decode()


def jpeg_scan_bomb(repeats: int) -> bytes:
    """A flat 1600x1200 progressive JPEG whose last scan is repeated `repeats` more times.

    libjpeg decodes it (with only a warning) at a cost of pixels x scans, and a flat image makes
    each scan a few bytes: a CPU bomb in a small file.
    """
    ok, encoded = cv2.imencode(".jpg", np.full((1200, 1600, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    jpeg = encoded.tobytes()
    last_scan = jpeg[jpeg.rindex(b"\xff\xda") : -2]
    return jpeg[:-2] + last_scan * repeats + b"\xff\xd9"


def run_train(data: Path, out: Path, *extra: str) -> tuple[Path, Path]:
    """training.train on `data` for the tests: batch 32, one warm-up epoch, quiet; returns (run dir, export dir)."""
    from training import train  # TensorFlow loads only for the tests that train

    run_dir, export_dir = out / "run", out / "export"
    train.main(
        [
            "--data",
            str(data),
            "--batch-size",
            "32",
            "--warmup-epochs",
            "1",
            "--verbose",
            "0",
            "--run-dir",
            str(run_dir),
            "--export-dir",
            str(export_dir),
            *extra,
        ]
    )
    return run_dir, export_dir


def first_conv_kernel(weights_h5: Path) -> np.ndarray:
    """The first convolution kernel stored in a Keras weights file, found by shape (3x3x1xC)."""
    import h5py

    found: list[np.ndarray] = []

    def visit(_name: str, node: object) -> None:
        if isinstance(node, h5py.Dataset) and node.ndim == 4 and node.shape[:3] == (3, 3, 1):
            found.append(node[()])

    with h5py.File(weights_h5, "r") as f:
        f.visititems(visit)
    assert len(found) == 1, f"expected one 3x3x1 kernel, found {len(found)}"
    return found[0]


def detected_photo_faces(data: Path, yunet_model: Path) -> np.ndarray:
    """Every face the server's detectors (Haar, and YuNet where its file is there) find in the
    photos of `data`, cropped as the server crops them."""
    from fer_async.detector import HaarDetector, YuNetDetector
    from fer_async.imaging import crop_faces

    detectors: list[Any] = [HaarDetector()]
    if yunet_model.is_file():
        detectors.append(YuNetDetector(yunet_model))
    crops = []
    for photo in sorted(data.glob("*.jpg")):
        image = cv2.imread(str(photo))
        assert image is not None, photo
        for detector in detectors:
            boxes = detector.detect(image)
            if boxes:
                crops.append(crop_faces(image, boxes))
    faces = np.concatenate(crops)
    assert len(faces) >= 3, "the photos hold at least three detectable faces"
    return faces


def write_tiny_votes(path: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Random FER+ votes (seven classes only) for a tiny data set, the first face of each split without votes."""
    from training.ferplus import VOTE_COLUMNS

    rng = np.random.default_rng(seed)

    def votes(n: int) -> np.ndarray:
        counts = np.zeros((n, len(VOTE_COLUMNS)), np.int8)
        for row in counts:
            row[:7] = rng.multinomial(10, np.full(7, 1 / 7))
        counts[0] = -1  # one face without votes
        return counts

    np.savez(path, votes_train=votes(n_train), votes_val=votes(n_val), columns=np.array(VOTE_COLUMNS))
    return path


# The name as the server receives it -> the filename parameter sent. A browser sends a file's name
# as it is, in quotes, with only '"', CR and LF escaped (%22, %0D, %0A: the server keeps them
# so); a client may also send RFC 5987's filename*, which is how a raw carriage return arrives.
FORMULA_NAMES = {
    "=HYPERLINK(%22x%22)+cmd.mp4": 'filename="=HYPERLINK(%22x%22)+cmd.mp4"',  # =HYPERLINK("x")+cmd.mp4
    "+1+1.mp4": 'filename="+1+1.mp4"',
    "-2+3.mp4": 'filename="-2+3.mp4"',
    "@SUM(1).mp4": 'filename="@SUM(1).mp4"',
    "\t=1.mp4": 'filename="\t=1.mp4"',
    "\r=1.mp4": "filename*=UTF-8''%0D%3D1.mp4",
}


def raw_upload(clip: Path, filename_parameter: str) -> tuple[bytes, dict[str, str]]:
    """The multipart body of the page's upload form, written out byte for byte."""
    boundary = "----formula-test-boundary"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="video"; {filename_parameter}\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    )
    body = head.encode() + clip.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
