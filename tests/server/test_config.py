"""Settings from argv and FER_* environment variables."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fer_async.config import (
    MODEL_OPTIONS,
    OPTIONS,
    Settings,
    SettingsError,
    add_model_options,
    build_parser,
    command_line,
    options_table,
    resolve_options,
)
from fer_async.image_limits import MAX_PIXELS
from fer_async.model_choices import DEFAULT_WEIGHTS_DIR
from fer_async.paths import REPO_ROOT, STATIC_DIR
from fer_async.tracker_defaults import DEFAULT_SMOOTHING_MS, DEFAULT_SWITCH_MARGIN


def test_defaults() -> None:
    settings = Settings.from_args([], env={})
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.weights == DEFAULT_WEIGHTS_DIR and settings.video_dir == STATIC_DIR / "videos"
    assert (settings.max_batch, settings.max_wait_ms, settings.max_clients) == (16, 5.0, 64)
    assert settings.max_frame_bytes == 2_000_000 and settings.max_pixels == MAX_PIXELS
    assert settings.allow_origins == () and not settings.tls and settings.flip_tta
    assert settings.url == "http://127.0.0.1:8080/"
    assert settings.detector == "yunet" and settings.detector_model is None
    assert settings.smoothing_ms == DEFAULT_SMOOTHING_MS and settings.label_margin == DEFAULT_SWITCH_MARGIN
    assert settings.runtime == "auto" and settings.model_precision == "int8"


def test_model_precision_from_argv_or_environment() -> None:
    assert Settings.from_args(["--model-precision", "fp32"], env={}).model_precision == "fp32"
    assert Settings.from_args([], env={"FER_MODEL_PRECISION": "fp32"}).model_precision == "fp32"
    assert Settings.from_args(["--model-precision=int8"], env={"FER_MODEL_PRECISION": "fp32"}).model_precision == "int8"
    assert "model_precision" in MODEL_OPTIONS  # the tools (evaluate, clip, analyze, bench) take it too
    assert "`--model-precision fp32\\|int8` | `FER_MODEL_PRECISION` | int8 |" in options_table()
    with pytest.raises(SettingsError, match="--model-precision must be one of fp32, int8"):
        Settings(model_precision="int4")


def test_command_line_beats_environment_beats_default() -> None:
    env = {"FER_PORT": "9000", "FER_MAX_BATCH": "4", "FER_FLIP_TTA": "no", "FER_ALLOW_ORIGIN": "https://a.org, *"}
    settings = Settings.from_args(["--port", "9100", "--max-frame-bytes", "1_000_000"], env=env)
    assert settings.port == 9100  # argv
    assert settings.max_batch == 4 and not settings.flip_tta  # env
    assert Settings.from_args(["--flip-tta"], env=env).flip_tta  # argv beats env for flags too
    assert settings.allow_origins == ("https://a.org", "*")
    assert settings.max_frame_bytes == 1_000_000
    assert settings.max_clients == 64  # default
    tracked = Settings.from_args(["--smoothing-ms", "0"], env={"FER_SMOOTHING_MS": "400", "FER_LABEL_MARGIN": "0.2"})
    assert (tracked.smoothing_ms, tracked.label_margin) == (0.0, 0.2)


def test_integers_with_a_leading_zero_are_decimal() -> None:
    settings = Settings.from_args(["--port", "08305"], env={"FER_DETECT_EVERY": "05"})
    assert (settings.port, settings.detect_every) == (8305, 5)


def test_every_option(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    settings = Settings.from_args(
        [
            "--host=0.0.0.0",
            "--port=0",
            f"--weights={tmp_path}",
            "--model-name=other",
            "--no-flip-tta",
            "--model-precision=fp32",
            "--detector=haar",
            f"--video-dir={tmp_path}",
            "--max-batch=32",
            "--max-wait-ms=2.5",
            "--max-queue=10",
            "--max-clients=3",
            "--max-frame-bytes=1000",
            "--max-pixels=640000",
            "--allow-origin=https://a.org",
            "--allow-origin=https://b.org",
            f"--cert={cert}",
            f"--key={key}",
            "--log-level=DEBUG",
        ],
        env={},
    )
    assert settings.weights == tmp_path and settings.model_name == "other" and not settings.flip_tta
    assert settings.model_precision == "fp32"
    assert (settings.max_batch, settings.max_wait_s, settings.max_queue) == (32, 0.0025, 10)
    assert settings.allow_origins == ("https://a.org", "https://b.org")
    assert settings.tls and settings.url == "https://0.0.0.0:0/"
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--cert", "c.pem"], {}, "--cert and --key"),
        (["--key", "k.pem"], {}, "--cert and --key"),
        (["--max-batch", "0"], {}, "--max-batch"),
        ([], {"FER_PORT": "eighty"}, "FER_PORT"),
        ([], {"FER_PORT": "70000"}, "--port"),
        (["--smoothing-ms", "-1"], {}, "--smoothing-ms"),
        ([], {"FER_LABEL_MARGIN": "1.5"}, "--label-margin"),
        (["--detector", "mtcnn"], {}, "invalid choice"),
        ([], {"FER_FLIP_TTA": "maybe"}, "FER_FLIP_TTA"),
        (["--model-precision", "int4"], {}, "invalid choice"),
        ([], {"FER_MODEL_PRECISION": "bf16"}, "--model-precision"),
    ],
)
def test_invalid_settings_exit_with_a_message(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        Settings.from_args(argv, env=env)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 70000}, "--port must be 0..65535, got 70000"),
        ({"max_queue": 0}, "--max-queue must be >= 1, got 0"),
        ({"max_wait_ms": -1.0}, "--max-wait-ms must be >= 0, got -1.0"),
        ({"label_margin": 1.0}, "--label-margin must be in [0, 1), got 1.0"),
        ({"smoothing_ms": float("nan")}, "--smoothing-ms must be 0..10000, got nan"),
        ({"executor_timeout_s": 0.0}, "--executor-timeout must be > 0, got 0.0"),
        ({"workers": 0}, "--workers must be >= 1 or 'auto', got 0"),
        ({"log_level": "loud"}, "--log-level must be one of debug, info, warning, error, critical, got 'loud'"),
        ({"port": 0, "workers": 2}, "--workers > 1 needs a fixed --port: each worker binds it (SO_REUSEPORT)"),
    ],
)
def test_each_option_is_checked_by_its_declaration(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings(**changes)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_command_line_gives_the_settings_to_another_command(tmp_path: Path) -> None:
    settings = Settings(
        port=0,
        flip_tta=False,
        align=False,
        detector_model=tmp_path / "yunet.onnx",
        allow_origins=("https://a.org", "*"),
        max_wait_ms=2.5,
        log_level="debug",
    )
    assert Settings.from_args(command_line(settings, OPTIONS), env={}) == settings
    # An option's word for its special value is what the other command is given.
    assert command_line(settings, ["detect_width"]) == ["--detect-width", "auto"]
    wide = settings.replace(detect_width=640)
    assert Settings.from_args(command_line(wide, OPTIONS), env={}) == wide


def test_direct_construction_validates() -> None:
    with pytest.raises(SettingsError):
        Settings(cert=Path("c.pem"))
    assert Settings().replace(port=1).port == 1


def test_help_documents_every_env_var_and_default() -> None:
    text = build_parser().format_help()
    for env in ["FER_HOST", "FER_PORT", "FER_MAX_BATCH", "FER_ALLOW_ORIGIN", "FER_CERT", "FER_VIDEO_DIR"]:
        assert env in text
    assert "default: 8080" in text and "default: 2000000" in text


def test_options_page_table_is_the_parser() -> None:
    """Every flag, environment variable, default and help text of docs/options.md's table is the parser's."""
    page = (REPO_ROOT / "docs" / "options.md").read_text()
    section = page[page.index("\n| option |") :]
    section = section[: section.index("\n#", 1)]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(rows) == options_table(), "docs/options.md's table differs: paste options_table()"
    parser_flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings[0] != "-h"}
    assert parser_flags == {row.split("`")[1].split()[0] for row in rows[2:]}


def test_importing_config_loads_neither_opencv_nor_numpy() -> None:
    code = "import sys, fer_async.config; print(sorted({'cv2', 'numpy'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


def test_tools_take_the_model_options_with_the_server_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    args = parser.parse_args([])
    assert all(getattr(args, name) is None for name in MODEL_OPTIONS)  # not given, until resolved
    assert resolve_options(parser, args, env={}) == Settings()
    defaults = Settings()
    for name in MODEL_OPTIONS:
        assert getattr(args, name) == getattr(defaults, name), name
    args = parser.parse_args(["--no-flip-tta", "--model-name", "other", "--detector", "yunet"])
    resolve_options(parser, args, env={})
    assert (args.flip_tta, args.model_name, args.detector) == (False, "other", "yunet")
