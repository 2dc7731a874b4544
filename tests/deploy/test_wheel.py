"""The wheel route: `pip wheel .` installed into a fresh venv serves the page from any directory.

The module's fixture copies the checkout's files (tracked and not ignored, as a clone would
have them plus work in progress) to a temporary directory, builds the wheel there with a fresh
venv's pip and installs it into that venv: nothing of the checkout is on the installed server's
path. Most of its time is pip unpacking the dependencies from its cache (which CI has just filled
by installing `.[dev]`); the durations are printed (`pytest -s`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fer_async.bench.harness import free_port

from .procs import REPO_ROOT, check_serves_the_page_and_a_photo, installed_env, server_process, wait_until_serving

# The folders pyproject.toml maps into the package, and the weights files it takes by pattern.
MAPPED_FOLDERS = ("static", "templates", "weights")
WEIGHTS_SUFFIXES = (".json", ".weights.h5", ".onnx", ".md", ".png")
# Building with setuptools in its isolated environment, and pip installing the dependencies.
PIP_TIMEOUT_S = 900


def _checkout_files() -> list[Path]:
    """The checkout's files a clone would have, plus new ones not ignored (relative paths)."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the wheel is built from the checkout's git listing, which is not available: {exc}")
    paths = [Path(name) for name in listing.decode().split("\0") if name]
    return [path for path in paths if (REPO_ROOT / path).is_file()]  # tracked but deleted ones are not


def _run(args: list[str | Path], cwd: Path | None = None, timeout: float = PIP_TIMEOUT_S) -> str:
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=installed_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@dataclass(frozen=True)
class Installed:
    source: Path  # the copy of the checkout the wheel was built from
    wheel: Path
    venv: Path

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "fer-async"

    @property
    def site_packages(self) -> Path:
        python = self.venv / "bin" / "python"
        return Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    source, dist, venv = root / "source", root / "dist", root / "venv"
    for path in _checkout_files():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / path, source / path)
    durations: dict[str, float] = {}
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", venv])
    durations["venv"] = time.monotonic() - started
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "--no-input", "--disable-pip-version-check"]
    started = time.monotonic()
    _run([*pip, "wheel", "--no-deps", "--wheel-dir", dist, source])
    durations["pip wheel"] = time.monotonic() - started
    (wheel,) = dist.glob("fer_async-*.whl")
    started = time.monotonic()
    _run([*pip, "install", wheel])
    durations["pip install"] = time.monotonic() - started
    print("wheel route:", ", ".join(f"{step} {seconds:.1f} s" for step, seconds in durations.items()))
    yield Installed(source, wheel, venv)
    shutil.rmtree(root, ignore_errors=True)  # a venv with onnxruntime and OpenCV: hundreds of MB


def test_pyproject_names_every_package() -> None:
    """Mapping folders into the package rules out `packages.find`: a new package must be listed by hand."""
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("fer_async", "training")
        for init in (REPO_ROOT / top).rglob("__init__.py")
    }
    mapped = {f"fer_async.{folder}": folder for folder in MAPPED_FOLDERS}
    assert sorted(setuptools["packages"]) == sorted(code | set(mapped))
    assert setuptools["package-dir"] == mapped


def test_the_wheel_carries_the_page_and_the_model(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    pages = {
        path.relative_to(installed.source).as_posix()
        for folder in ("static", "templates")
        for path in (installed.source / folder).rglob("*")
        if path.is_file()
    }
    weights = {
        f"weights/{path.name}"
        for path in (installed.source / "weights").iterdir()
        if path.is_file() and path.name.endswith(WEIGHTS_SUFFIXES)
    }
    # The shipped network in every form the server loads, and its card.
    assert {f"weights/fernet{suffix}" for suffix in (".json", ".weights.h5", ".onnx", ".int8.onnx", ".md")} <= weights
    assert "static/app.js" in pages and "templates/index.html" in pages
    missing = {f"fer_async/{name}" for name in pages | weights} - names
    assert not missing, f"not in {installed.wheel.name}: {sorted(missing)}"


def test_the_installed_command_has_help(installed: Installed, tmp_path: Path) -> None:
    env = {**installed_env(), "COLUMNS": "1000"}  # one line per option: argparse would break a long path
    result = subprocess.run(
        [installed.command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--detector-model" in result.stdout and "--weights" in result.stdout
    shipped = installed.site_packages / "fer_async"
    assert f"default: {shipped / 'weights'}]" in result.stdout, result.stdout
    assert f"default: {shipped / 'static' / 'videos'}]" in result.stdout, result.stdout


async def test_the_installed_command_serves_from_another_directory(
    installed: Installed, tmp_path: Path, face_jpeg: bytes
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port, log = free_port(), tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    async with server_process([], log, port, program=[str(installed.command)], cwd=elsewhere) as proc:
        health = await wait_until_serving(base, proc, log)
        assert health["status"] == "ok" and health["runtime"] == "onnx", health
        await check_serves_the_page_and_a_photo(base, installed.source / "static", face_jpeg)
    assert not any(elsewhere.iterdir())  # nothing written where it was started
