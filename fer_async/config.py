"""Server settings: one frozen dataclass, built from argv with `FER_*` environment fallbacks.

Precedence: command line > environment variable > default. Every option is documented in
`python -m fer_async --help`, together with its environment variable and default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_async.detector import DEFAULT_DETECTOR, DETECTOR_KINDS
from fer_async.imaging import MAX_PIXELS
from fer_async.tracker import DEFAULT_SMOOTHING_MS, DEFAULT_SWITCH_MARGIN

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shipped model. Defined here, not in model.py, so that reading a default does not import
# TensorFlow; model.py, the training scripts and the settings all take it from here.
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
DEFAULT_MODEL_NAME = "fernet"
DEFAULT_VIDEO_DIR = REPO_ROOT / "static" / "videos"

ENV_PREFIX = "FER_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(ValueError):
    """An invalid combination or value of settings."""


def _flag(field_name: str) -> str:
    return _OPTIONS[field_name][0]


def _env_name(field_name: str) -> str:
    """FER_ + the option's flag, e.g. --max-batch -> FER_MAX_BATCH, --allow-origin -> FER_ALLOW_ORIGIN."""
    return ENV_PREFIX + _flag(field_name).removeprefix("--").replace("-", "_").upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_int(text: str) -> int:
    return int(text.replace("_", ""), 0)  # accepts 2_000_000 and 0x...


def _parse_origins(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Every option of the server. Build with `Settings.from_args()` or directly (tests)."""

    host: str = "127.0.0.1"
    port: int = 8080
    weights: Path = DEFAULT_WEIGHTS_DIR
    model_name: str = DEFAULT_MODEL_NAME
    flip_tta: bool = True  # +1.5 points on PublicTest (weights/fernet.md); the model is a small part of a frame's cost
    detector: str = DEFAULT_DETECTOR
    detector_model: Path | None = None
    video_dir: Path = DEFAULT_VIDEO_DIR
    smoothing_ms: float = DEFAULT_SMOOTHING_MS
    label_margin: float = DEFAULT_SWITCH_MARGIN
    max_batch: int = 16
    max_wait_ms: float = 5.0
    # Each WebSocket client has at most one frame queued (latest wins) and each video one, so
    # this bound is only reached by /api/predict bursts or more clients than usual.
    max_queue: int = 256
    max_clients: int = 64
    max_frame_bytes: int = 2_000_000
    max_pixels: int = MAX_PIXELS
    allow_origins: tuple[str, ...] = field(default_factory=tuple)
    cert: Path | None = None
    key: Path | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be 0..65535, got {self.port}")
        for name in ("max_batch", "max_queue", "max_clients", "max_frame_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                problems.append(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.detector not in DETECTOR_KINDS:
            problems.append(f"--detector must be one of {', '.join(DETECTOR_KINDS)}, got {self.detector!r}")
        if not 0 <= self.smoothing_ms <= 10_000:
            problems.append(f"--smoothing-ms must be 0..10000, got {self.smoothing_ms}")
        if not 0 <= self.label_margin < 1:
            problems.append(f"--label-margin must be in [0, 1), got {self.label_margin}")
        if (self.cert is None) != (self.key is None):
            problems.append("--cert and --key must be given together")
        if self.log_level.lower() not in LOG_LEVELS:
            problems.append(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Parse argv (default `sys.argv[1:]`); exits with status 2 and a message on bad input."""
        env = os.environ if env is None else env
        parser = build_parser()
        args = parser.parse_args(argv)
        values: dict[str, Any] = {}
        for name, (_flag, convert, _help) in _OPTIONS.items():
            given = getattr(args, name)
            if given is not None and given != []:
                values[name] = tuple(given) if name == "allow_origins" else given
            elif _env_name(name) in env:
                try:
                    values[name] = convert(env[_env_name(name)])
                except ValueError as exc:
                    parser.error(f"{_env_name(name)}: {exc}")
        try:
            return cls(**values)
        except SettingsError as exc:
            parser.error(str(exc))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _default(name: str) -> Any:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(name)


# field name -> (flag, converter for the environment variable, help)
_OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "host": ("--host", str, "interface to listen on"),
    "port": ("--port", _parse_int, "TCP port"),
    "weights": ("--weights", Path, "directory holding <model-name>.json and <model-name>.weights.h5"),
    "model_name": ("--model-name", str, "model file stem inside --weights"),
    "flip_tta": (
        "--flip-tta",
        _parse_bool,
        "also classify each face mirrored and average, in the same model call (--no-flip-tta: off)",
    ),
    "detector": (
        "--detector",
        str,
        f"face detector: {' or '.join(DETECTOR_KINDS)} (yunet falls back to haar when its model file cannot be had)",
    ),
    "detector_model": (
        "--detector-model",
        Path,
        "YuNet ONNX file (face_detection_yunet.onnx); without it: the per-user cache "
        "(~/.cache/fer_async), else one download pinned by sha256",
    ),
    "video_dir": ("--video-dir", Path, "directory of video files served as MJPEG under /video/NAME"),
    "smoothing_ms": (
        "--smoothing-ms",
        float,
        "time constant of the scores' moving average along a face track (/ws and video); 0 = off",
    ),
    "label_margin": (
        "--label-margin",
        float,
        "the shown label of a tracked face changes only when another class leads it by this much",
    ),
    "max_batch": ("--max-batch", _parse_int, "most frames analysed in one batch"),
    "max_wait_ms": ("--max-wait-ms", float, "how long a batch waits for more frames after its first one"),
    "max_queue": ("--max-queue", _parse_int, "frames waiting for the model before new ones get 'server busy'"),
    "max_clients": ("--max-clients", _parse_int, "WebSocket clients at once; more are closed with 1013"),
    "max_frame_bytes": ("--max-frame-bytes", _parse_int, "largest accepted encoded frame / upload, in bytes"),
    "max_pixels": ("--max-pixels", _parse_int, "largest accepted decoded frame, in pixels (width*height)"),
    "allow_origins": (
        "--allow-origin",
        _parse_origins,
        "extra browser Origin allowed on /ws (repeatable; '*' allows any; env: comma-separated); "
        "same-origin is always allowed",
    ),
    "cert": ("--cert", Path, "TLS certificate (PEM) to serve https/wss; needs --key"),
    "key": ("--key", Path, "TLS private key (PEM)"),
    "log_level": ("--log-level", str, f"logging level: {', '.join(LOG_LEVELS)}"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_async",
        description="Real-time facial expression recognition server (aiohttp). "
        "Each option falls back to the environment variable shown, then to the default.",
    )
    for name, (flag, convert, help_text) in _OPTIONS.items():
        default = _default(name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        suffix = f" [env {_env_name(name)}; default: {shown if shown not in (None, '') else 'none'}]"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text + suffix}
        if name == "flip_tta":
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif name == "allow_origins":
            kwargs.update(action="append", metavar="ORIGIN")
        elif name == "detector":
            kwargs.update(choices=DETECTOR_KINDS)
        elif name == "log_level":
            kwargs.update(choices=LOG_LEVELS, type=str.lower)
        else:
            kwargs.update(type=convert, metavar=flag.removeprefix("--").replace("-", "_").upper())
        parser.add_argument(flag, **kwargs)
    return parser


def log_level_number(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.log_level.upper()]
