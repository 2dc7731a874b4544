"""The container image: deploy/Dockerfile and the deploy/image scripts that build and run it.

The fast tests check that the Dockerfile builds the wheel from everything the wheel is made of
and installs it as a non-root command, and that the scripts parse. Building the image takes
minutes (a Debian base by debootstrap the first time, then the dependencies from PyPI) and
needs root, buildah and debootstrap: the tests that build and run it are opt-in,
`FER_TEST_IMAGE=1 .venv/bin/python -m pytest tests/deploy/test_image.py -s`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_async.bench.harness import free_port
from fer_async.detector_model import URL_ENV

from .procs import (
    REPO_ROOT,
    STOP_TIMEOUT_S,
    check_serves_the_page_and_a_photo,
    server_process,
    tail,
    wait_until_serving,
)

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
BUILD = REPO_ROOT / "deploy" / "image" / "build.sh"
RUN = REPO_ROOT / "deploy" / "image" / "run.sh"
OPT_IN = "FER_TEST_IMAGE"
# Its own tag, removed at the end: a vfs image is a full copy on disk (hundreds of MB).
TEST_IMAGE = "localhost/fer-async:test"
BUILD_TIMEOUT_S = 1800
# Inside the image, where the mounted YuNet file appears.
MOUNTED_YUNET = "/models/yunet.onnx"


def _stages(dockerfile: str) -> list[str]:
    return re.split(r"(?m)^(?=FROM )", dockerfile)[1:]


def test_the_image_builds_the_wheel_from_all_it_is_made_of() -> None:
    """The wheel stage copies every path pyproject.toml builds the wheel from: a folder mapped into
    the package later (or a new top-level package) must be copied too, or the image lacks it."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    needed = {"pyproject.toml", project["project"]["readme"], *mapped.values()}
    needed |= {package.split(".")[0] for package in setuptools["packages"] if package not in mapped}
    wheel_stage = next(stage for stage in _stages(DOCKERFILE.read_text()) if stage.startswith("FROM python AS wheel"))
    copied = {source for line in re.findall(r"(?m)^COPY (.+) \S+$", wheel_stage) for source in line.split()}
    assert needed <= copied, f"not copied into the wheel stage: {sorted(needed - copied)}"
    assert "pip wheel --no-deps" in wheel_stage


def test_the_image_installs_the_wheel_as_a_non_root_command() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"(?m)^ARG BASE=\S+:bookworm-slim$", dockerfile)  # the base build.sh makes from Debian
    final = _stages(dockerfile)[-1]
    assert re.search(r"pip install /tmp/wheels/\*\.whl", final) and "pip install -e" not in dockerfile
    assert re.search(r"(?m)^USER 10001$", final)
    assert re.search(r'(?m)^CMD \["fer-async"\]$', final)


@pytest.mark.parametrize("script", [BUILD, RUN], ids=lambda path: path.name)
def test_the_image_scripts_parse(script: Path) -> None:
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _buildah(*args: str) -> str:
    return subprocess.run(
        ["buildah", "--storage-driver", "vfs", *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"building the image takes minutes: opt in with {OPT_IN}=1")
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    assert not missing and os.geteuid() == 0, f"{OPT_IN}=1 needs root, buildah and debootstrap (missing: {missing})"
    started = time.monotonic()
    result = subprocess.run([BUILD, TEST_IMAGE], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, f"{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    size = _buildah("images", "--format", "{{.Size}}", TEST_IMAGE).strip()
    print(f"image {TEST_IMAGE}: built in {time.monotonic() - started:.0f} s, {size}")
    yield TEST_IMAGE
    _buildah("rmi", TEST_IMAGE)


def _containers() -> set[str]:
    return set(_buildah("containers", "--quiet").split())


async def _serve_the_image(
    image: str, tmp_path: Path, face_jpeg: bytes, *options: str
) -> tuple[dict[str, object], str]:
    """run.sh IMAGE with buildah-run OPTIONS, on a free port: its /healthz and its log, after it
    served the page and a photo and stopped cleanly on SIGTERM with its working container removed."""
    before = _containers()
    port, log = free_port(), tmp_path / "image.log"
    base = f"http://127.0.0.1:{port}"
    # server_process appends --host/--port: after "--" they go to fer-async in the container.
    program = [str(RUN), *options, "--", "fer-async"]
    env = {"IMAGE": image}
    started = time.monotonic()
    async with server_process([], log, port, program=program, env=env) as proc:
        health = await wait_until_serving(base, proc, log)
        print(f"{image} {' '.join(options)}: /healthz after {time.monotonic() - started:.1f} s: {health}")
        await check_serves_the_page_and_a_photo(base, REPO_ROOT / "static", face_jpeg)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    text = log.read_text(errors="replace")
    assert code == 0 and "stopped" in text, tail(log)
    assert _containers() == before
    return health, text


async def test_the_image_serves_with_yunet_mounted(
    image: str, yunet_model: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    health, _ = await _serve_the_image(
        image,
        tmp_path,
        face_jpeg,
        "--volume",
        f"{yunet_model}:{MOUNTED_YUNET}:ro",
        "--env",
        f"FER_DETECTOR_MODEL={MOUNTED_YUNET}",
    )
    assert health["status"] == "ok" and health["detector"] == "yunet" and health["runtime"] == "onnx", health


async def test_the_image_falls_back_to_haar_without_the_yunet_file(
    image: str, tmp_path: Path, face_jpeg: bytes
) -> None:
    # Offline, as here: the download goes to a port nothing listens on (set by tests/conftest.py).
    health, text = await _serve_the_image(image, tmp_path, face_jpeg, "--env", f"{URL_ENV}={os.environ[URL_ENV]}")
    assert health["status"] == "ok" and health["detector"] == "haar", health
    assert "YuNet face detector unavailable" in text, text[-3000:]
