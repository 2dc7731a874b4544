"""Fixtures for the remote executor: a real MLServer in its own venv, serving the shipped model.

Skips with the reason when MLServer cannot be installed (no network, no pip). The ONNX model is
weights/fernet.onnx when it is fresh, else a copy made once per weights file (tf2onnx) and
cached in the venv folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_async.model_choices import DEFAULT_MODEL_NAME, DEFAULT_WEIGHTS_DIR

from .oipserver import MLServer, cached_onnx, ensure_venv


@pytest.fixture(scope="session")
def oip_python() -> Path:
    try:
        return ensure_venv()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def fernet_onnx() -> Path:
    pytest.importorskip("onnx", reason="onnx reads the export's signature")
    try:
        return cached_onnx(DEFAULT_WEIGHTS_DIR, DEFAULT_MODEL_NAME)
    except ImportError as exc:  # tf2onnx, to make the export when none is shipped or cached
        pytest.skip(f"cannot export the weights to ONNX: {exc}")


def _serve(python: Path, onnx_file: Path, workdir: Path) -> Iterator[MLServer]:
    server = MLServer(python, onnx_file, workdir)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlserver(oip_python: Path, fernet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """One MLServer for the tests of a module that leave it running."""
    yield from _serve(oip_python, fernet_onnx, tmp_path_factory.mktemp("mlserver"))


@pytest.fixture(scope="module")
def int8_mlserver(oip_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """MLServer serving the shipped int8 file, as a CPU deployment should (deploy/mlserver/README.md)."""
    int8_file = DEFAULT_WEIGHTS_DIR / f"{DEFAULT_MODEL_NAME}.int8.onnx"
    if not int8_file.is_file():
        pytest.skip(f"{int8_file} is not shipped")
    yield from _serve(oip_python, int8_file, tmp_path_factory.mktemp("mlserver-int8"))


@pytest.fixture
def own_mlserver(oip_python: Path, fernet_onnx: Path, tmp_path: Path) -> Iterator[MLServer]:
    """An MLServer for one test alone: the fault tests kill and restart it."""
    yield from _serve(oip_python, fernet_onnx, tmp_path / "mlserver")
