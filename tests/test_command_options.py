"""Every command that takes server options resolves them as the server does: command line > FER_* > default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fer_async.analyze.__main__ import parse_args as analyze_args
from fer_async.bench.cli import _server_args
from fer_async.bench.cli import parse_args as bench_args
from fer_async.bench.detect_every import parse_args as detect_every_args
from fer_async.config import Settings
from fer_async.paths import REPO_ROOT
from fer_async.replay import parse_args as replay_args
from training.clip import parse_args as clip_args
from training.evaluate import parse_args as evaluate_args
from training.photos import parse_args as photos_args

Resolve = Callable[[list[str]], argparse.Namespace | Settings]

# Each command with the arguments it needs anyway, and how it is parsed.
COMMANDS: dict[str, tuple[list[str], Resolve]] = {
    "server": ([], lambda argv: Settings.from_args(argv)),
    "analyze": (["clip.mp4"], lambda argv: analyze_args(argv).settings),
    "bench": ([], lambda argv: bench_args(argv).settings),
    "bench --raw": (["--raw"], lambda argv: bench_args(argv).settings),
    "replay": (["clip.mp4"], lambda argv: replay_args(argv).settings),
    "bench.detect_every": (["clip.mp4"], lambda argv: detect_every_args(argv).settings),
    "training.evaluate": ([], evaluate_args),
    "training.clip": (["clip.mp4"], clip_args),
    "training.photos": (["photos"], photos_args),
}


@pytest.fixture
def server_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    detector_model = tmp_path / "yunet.onnx"
    monkeypatch.setenv("FER_DETECTOR_MODEL", str(detector_model))
    monkeypatch.setenv("FER_MODEL_PRECISION", "fp32")
    monkeypatch.setenv("FER_ALIGN", "off")
    return detector_model


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_reads_the_servers_environment_variables(command: str, server_environment: Path) -> None:
    fixed, parse = COMMANDS[command]
    resolved = parse(fixed)
    assert (resolved.detector_model, resolved.model_precision, resolved.align) == (server_environment, "fp32", False)
    assert (resolved.detector, resolved.flip_tta) == ("yunet", True)  # no variable: the server's default
    # The command line beats the environment.
    replay = command == "replay"
    given = ["--server-arg=--model-precision=int8"] if replay else ["--model-precision", "int8"]
    assert parse([*fixed, *given]).model_precision == "int8"


def test_the_bench_passes_what_it_resolved_to_the_server_it_starts(server_environment: Path) -> None:
    args = _server_args(bench_args(["--max-batch", "8", "--server-arg=--max-queue=9"]))
    assert Settings.from_args(args, env={}) == Settings(
        max_batch=8,
        max_queue=9,
        max_clients=64,
        detector_model=server_environment,
        model_precision="fp32",
        align=False,
    )


@pytest.mark.parametrize("command", ["server", "analyze", "bench", "bench --raw", "replay"])
def test_the_detection_period_is_resolved_by_each_command_that_takes_it(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FER_DETECT_EVERY", "7")
    fixed, parse = COMMANDS[command]
    assert parse(fixed).detect_every == 7
    given = ["--server-arg=--detect-every=3"] if command == "replay" else ["--detect-every", "3"]
    assert parse([*fixed, *given]).detect_every == 3
    # The bench starts its server with the period it resolved (FER_* of the bench, not of the server).
    if command == "bench":
        assert Settings.from_args(_server_args(bench_args([])), env={}).detect_every == 7


def test_a_detection_period_below_one_stops_a_command_as_it_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("server", "analyze", "bench --raw"):
        fixed, parse = COMMANDS[command]
        with pytest.raises(SystemExit) as info:
            parse([*fixed, "--detect-every", "0"])
        assert info.value.code == 2
        assert "--detect-every must be >= 1, got 0" in capsys.readouterr().err, command


@pytest.mark.parametrize("command", ["analyze", "bench", "training.clip"])
def test_a_bad_variable_stops_a_command_as_it_stops_the_server(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FER_MODEL_PRECISION", "bf16")
    fixed, parse = COMMANDS[command]
    with pytest.raises(SystemExit) as info:
        parse(fixed)
    assert info.value.code == 2
    assert "--model-precision must be one of fp32, int8, got 'bf16'" in capsys.readouterr().err


def _usage_line(command: list[str]) -> str:
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    return done.stdout.splitlines()[0]


def test_help_names_the_command_that_was_run() -> None:
    assert _usage_line([sys.executable, "-m", "fer_async"]).startswith("usage: python -m fer_async [-h]")
    installed = Path(sys.executable).with_name("fer-async")  # the console script of `pip install`
    if not installed.is_file():
        pytest.skip(f"no installed fer-async command beside {sys.executable}")
    assert _usage_line([str(installed)]).startswith("usage: fer-async [-h]")
