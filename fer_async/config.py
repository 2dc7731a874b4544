"""Server settings: one frozen dataclass, built from argv with `FER_*` environment fallbacks.

Precedence: command line > environment variable > default; `python -m fer_async --help` shows all.
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

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shipped model. Defined here, not in model.py, so that reading a default does not import
# TensorFlow; model.py, the training scripts and the settings all take it from here.
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
DEFAULT_MODEL_NAME = "fernet"
DEFAULT_VIDEO_DIR = REPO_ROOT / "static" / "videos"

# Defined here rather than in detector.py / imaging.py so that this module stays a stdlib-only
# leaf: reading the settings must not import OpenCV or numpy.
DETECTOR_KINDS = ("haar", "yunet")
# YuNet finds faces Haar misses (sunglasses, turned heads) and draws no boxes on walls; Haar is
# the fallback when YuNet's file cannot be had (fer_async.detector_model).
DEFAULT_DETECTOR = "yunet"
# Face tracks (fer_async.tracker, which re-exports these): chosen by measurement on the real
# clips with `python -m fer_async.replay --sweep` (see the README). 150 ms was the least
# smoothing that removed every label blip there; 250 ms leaves room for footage not seen, and
# with the margin shows a smile 0.23 s (YuNet) after its onset, inside the 0.5 s target.
DEFAULT_SMOOTHING_MS = 250.0
DEFAULT_ALIGN = True  # faces turned upright by YuNet's landmarks (fer_async.alignment)
DEFAULT_LABEL_MARGIN = 0.15
# Full face detection on every N-th frame of a stream, only around the last faces between (fer_async.schedule,
# which explains it); chosen by measurement on the real clips (README, "Detect less, track more").
DEFAULT_DETECT_EVERY = 5
# Decompression bombs: a PNG of a few KB can declare 20000x20000 pixels and make the decoder
# allocate 1.2 GB. imaging reads the size from the header and refuses before decoding. 4 Mpx
# covers every webcam frame up to 2560x1600 with room to spare.
MAX_PIXELS = 4096 * 1024
# A JPEG over MAX_PIXELS is decoded at 1/2 or 1/4 scale (imaging.decode_scaled), never at full
# size. Its pixels are still entropy-decoded, so this many times the budget is the most accepted
# at all: 16 x 4 Mpx lets a 50 MP phone photo in.
MAX_REDUCED_FACTOR = 16
# How the network runs (fer_async.model): "auto" = onnx when weights/<name>.onnx is current, else keras.
RUNTIMES = ("auto", "onnx", "keras")
# Which file of the network onnxruntime serves (fer_async.model): "fp32" = weights/<name>.onnx,
# "int8" = weights/<name>.int8.onnx (statically quantized by `python -m training.export_onnx
# --int8`), which falls back to fp32 (one log line) when it is missing or stale. int8 is the
# default by measurement (weights/fernet.md, "int8"): same PublicTest accuracy within noise,
# about 3x the faces per CPU second on this VNNI CPU.
MODEL_PRECISIONS = ("fp32", "int8")
DEFAULT_MODEL_PRECISION = "int8"
DEVICES = ("auto", "cpu", "cuda")  # where the network runs (fer_async.onnx_session)

ENV_PREFIX = "FER_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(ValueError):
    """An invalid combination or value of settings."""


def _flag(field_name: str) -> str:
    return _OPTIONS[field_name].flag


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


def _cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse_workers(text: str) -> int:
    """A worker count, or 'auto': one per core."""
    return _cpu_cores() if text.strip().lower() == "auto" else _parse_int(text)


def _parse_origins(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_AT_LEAST_ONE = ("max_batch", "max_queue", "max_clients", "max_frame_bytes", "max_photo_bytes", "max_video_bytes")


@dataclass(frozen=True)
class Settings:
    """Every option of the server. Build with `Settings.from_args()` or directly (tests)."""

    host: str = "127.0.0.1"
    port: int = 8080
    weights: Path = DEFAULT_WEIGHTS_DIR
    model_name: str = DEFAULT_MODEL_NAME
    runtime: str = "auto"
    model_precision: str = DEFAULT_MODEL_PRECISION
    flip_tta: bool = True  # +1.5 points on PublicTest (weights/fernet.md); the model is a small part of a frame's cost
    device: str = "auto"
    detector: str = DEFAULT_DETECTOR
    detector_model: Path | None = None
    align: bool = DEFAULT_ALIGN
    detect_every: int = DEFAULT_DETECT_EVERY
    video_dir: Path = DEFAULT_VIDEO_DIR
    results_dir: Path | None = None  # None: a temporary directory of this server and its --workers
    smoothing_ms: float = DEFAULT_SMOOTHING_MS
    label_margin: float = DEFAULT_LABEL_MARGIN
    max_batch: int = 16
    max_wait_ms: float = 5.0
    # Each WebSocket client has at most one frame queued (latest wins) and each video one, so
    # this bound is only reached by /api/predict bursts or more clients than usual.
    max_queue: int = 256
    max_clients: int = 64
    max_frame_bytes: int = 2_000_000
    # Phone photos are 3-20 MB (12-50 MP); webcam frames stay under --max-frame-bytes. At most
    # views.PHOTO_UPLOADS_AT_ONCE photos are buffered at a time, so this bounds memory too.
    max_photo_bytes: int = 32_000_000
    # Video files uploaded to /analyze are streamed to a temporary file, never held in memory.
    max_video_bytes: int = 200 * 1024 * 1024
    max_pixels: int = MAX_PIXELS
    allow_origins: tuple[str, ...] = field(default_factory=tuple)
    cert: Path | None = None
    key: Path | None = None
    log_level: str = "info"
    # An Open Inference Protocol server (Triton, KServe, MLServer) that classifies the faces
    # instead of the in-process model; None = in-process.
    executor: str | None = None
    executor_timeout_s: float = 5.0
    workers: int = 1

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be 0..65535, got {self.port}")
        for name in (*_AT_LEAST_ONE, "max_pixels", "detect_every"):
            if getattr(self, name) < 1:
                problems.append(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1 or 'auto', got {self.workers}")
        elif self.workers > 1 and self.port == 0:
            problems.append("--workers > 1 needs a fixed --port: each worker binds it (SO_REUSEPORT)")
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        for name, option in _OPTIONS.items():  # every choice, as argparse checks it: after the option's type
            choices, value = option.argparse.get("choices"), option.argparse.get("type", str)(getattr(self, name))
            if choices is not None and value not in choices:
                problems.append(f"{option.flag} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not 0 <= self.smoothing_ms <= 10_000:
            problems.append(f"--smoothing-ms must be 0..10000, got {self.smoothing_ms}")
        if not 0 <= self.label_margin < 1:
            problems.append(f"--label-margin must be in [0, 1), got {self.label_margin}")
        if (self.cert is None) != (self.key is None):
            problems.append("--cert and --key must be given together")
        if self.executor is not None and not self.executor.startswith(("http://", "https://")):
            problems.append(f"--executor must be an http:// or https:// URL, got {self.executor!r}")
        if self.executor_timeout_s <= 0:
            problems.append(f"--executor-timeout must be > 0, got {self.executor_timeout_s}")
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
        for name, option in _OPTIONS.items():
            given = getattr(args, name)
            if given is not None and given != []:
                values[name] = tuple(given) if name == "allow_origins" else given
            elif _env_name(name) in env:
                try:
                    values[name] = option.convert(env[_env_name(name)])
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


@dataclass(frozen=True)
class Option:
    """One server option: its flag, how its environment variable is parsed, its help."""

    flag: str
    convert: Callable[[str], Any]
    help: str
    metavar: str | None = None  # None for a switch or a choice
    argparse: Mapping[str, Any] = field(default_factory=dict)  # action/choices; else type=convert

    @property
    def usage(self) -> str:
        """How the option is written, e.g. `--max-batch N`, `--detector haar|yunet`."""
        if "choices" in self.argparse:
            return f"{self.flag} {'|'.join(self.argparse['choices'])}"
        return f"{self.flag} {self.metavar}" if self.metavar else self.flag


# Settings field name -> its option. The ONE declaration of every flag: the server's parser,
# the training tools and the bench (`add_model_options`) and the README's table
# (`options_table`, checked by tests/server/test_config.py) all come from here.
_OPTIONS: dict[str, Option] = {
    "host": Option("--host", str, "interface to listen on", "HOST"),
    "port": Option("--port", _parse_int, "TCP port", "PORT"),
    "weights": Option("--weights", Path, "directory holding NAME.json and NAME.weights.h5 (NAME: --model-name)", "DIR"),
    "model_name": Option("--model-name", str, "model file stem inside --weights", "NAME"),
    "runtime": Option(
        "--runtime",
        str,
        "how the network runs: onnx (onnxruntime, NAME.onnx beside NAME.json), keras (TensorFlow, the [train] extra), "
        "auto (onnx when that file is current, else keras)",
        argparse={"choices": RUNTIMES},
    ),
    "model_precision": Option(
        "--model-precision",
        str,
        "which network file onnxruntime serves: int8 (NAME.int8.onnx, statically quantized; fp32 with one log line "
        "when that file is missing or stale, and always with --runtime keras) or fp32 (NAME.onnx)",
        argparse={"choices": MODEL_PRECISIONS},
    ),
    "flip_tta": Option(
        "--flip-tta",
        _parse_bool,
        "also classify each face mirrored and average, in the same model call (--no-flip-tta: off)",
        argparse={"action": argparse.BooleanOptionalAction},
    ),
    "device": Option(
        "--device",
        str,
        "where the network runs: cuda (onnxruntime-gpu, the [gpu] extra), cpu, or auto (cuda when usable, else cpu)",
        argparse={"choices": DEVICES},
    ),
    "detector": Option(
        "--detector",
        str,
        "face detector; yunet falls back to haar (one log line) when its model file cannot be had",
        argparse={"choices": DETECTOR_KINDS},
    ),
    "detector_model": Option(
        "--detector-model",
        Path,
        "YuNet's face_detection_yunet.onnx; without it: the per-user cache (~/.cache/fer_async), "
        "else one download from OpenCV's model zoo, pinned by sha256",
        "PATH",
    ),
    "align": Option(
        "--align",
        _parse_bool,
        "crop each face upright by its landmarks, eyes and mouth where FER2013 has them (YuNet only; Haar faces "
        "keep the box crop; --no-align: box crops)",
        argparse={"action": argparse.BooleanOptionalAction},
    ),
    "detect_every": Option("--detect-every", _parse_int, "full face detection every N frames of a stream", "N"),
    "video_dir": Option("--video-dir", Path, "directory of video files served as MJPEG under /video/NAME", "DIR"),
    "results_dir": Option("--results-dir", Path, "analysis jobs' state and rows; replicas share one", "DIR"),
    "smoothing_ms": Option(
        "--smoothing-ms",
        float,
        "time constant of the scores' moving average along a face track (/ws, videos); 0 = off",
        "MS",
    ),
    "label_margin": Option(
        "--label-margin",
        float,
        "a tracked face's shown label changes only when another class leads it by this much",
        "P",
    ),
    "max_batch": Option("--max-batch", _parse_int, "most frames analysed in one batch", "N"),
    "max_wait_ms": Option("--max-wait-ms", float, "how long a batch waits for more frames after its first one", "MS"),
    "max_queue": Option(
        "--max-queue", _parse_int, "frames waiting for the model before new ones get 'server busy'", "N"
    ),
    "max_clients": Option("--max-clients", _parse_int, "WebSocket clients at once; more are closed with 1013", "N"),
    "max_frame_bytes": Option(
        "--max-frame-bytes", _parse_int, "largest accepted encoded frame / upload, in bytes", "N"
    ),
    "max_photo_bytes": Option(
        "--max-photo-bytes", _parse_int, "largest image accepted by POST /api/predict, in bytes", "N"
    ),
    "max_video_bytes": Option(
        "--max-video-bytes", _parse_int, "largest video file uploaded to /analyze, in bytes", "N"
    ),
    "max_pixels": Option(
        "--max-pixels",
        _parse_int,
        f"largest decoded frame in pixels (width*height); a JPEG up to {MAX_REDUCED_FACTOR}x this is decoded at "
        "1/2..1/4 scale, anything larger is refused from its header",
        "N",
    ),
    "allow_origins": Option(
        "--allow-origin",
        _parse_origins,
        "extra browser Origin allowed on /ws (repeatable; '*' allows any; env: comma-separated); "
        "same-origin is always allowed",
        "ORIGIN",
        {"action": "append"},
    ),
    "cert": Option("--cert", Path, "TLS certificate (PEM) to serve https/wss; needs --key", "FILE"),
    "key": Option("--key", Path, "TLS private key (PEM)", "FILE"),
    "log_level": Option(
        "--log-level",
        str,
        f"logging level: {', '.join(LOG_LEVELS)}",
        argparse={"choices": LOG_LEVELS, "type": str.lower},
    ),
    "executor": Option(
        "--executor",
        str,
        "URL of an Open Inference Protocol server (Triton, KServe, MLServer) serving the model as "
        "--model-name; faces are classified there instead of in this process",
        "URL",
    ),
    "executor_timeout_s": Option(
        "--executor-timeout",
        float,
        "seconds a batch may take on the --executor server before its frames get 'inference server unavailable'",
        "SECONDS",
    ),
    "workers": Option(
        "--workers",
        _parse_workers,
        "server processes sharing the port (SO_REUSEPORT), each with its own model; 'auto' = one per core",
        "N",
    ),
}

# The options that say which model and detector to run; the training tools and the bench take
# them too, under the same names and with the same defaults as the server.
_FACE_OPTIONS = ("detector", "detector_model", "align")  # how faces are found and cut
MODEL_OPTIONS = ("weights", "model_name", "runtime", "model_precision", "flip_tta", "device", *_FACE_OPTIONS)


def _shown_default(name: str) -> str:
    default = _default(name)
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        default = ",".join(default)
    if isinstance(default, Path) and default.is_relative_to(REPO_ROOT):
        default = default.relative_to(REPO_ROOT)
    return "none" if default in (None, "") else str(default)


def _add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, default: Any, suffix: str
) -> None:
    option = _OPTIONS[name]
    kwargs: dict[str, Any] = {"dest": name, "default": default, "help": option.help + suffix}
    if option.metavar is not None:
        kwargs["metavar"] = option.metavar
    kwargs.update(option.argparse or {"type": option.convert})
    parser.add_argument(option.flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_async",
        description="Real-time facial expression recognition server (aiohttp). "
        "Each option falls back to the environment variable shown, then to the default.",
    )
    for name in _OPTIONS:
        # default None: from_args tells "not given" apart, to fall back to the environment.
        _add_option(parser, name, None, f" [env {_env_name(name)}; default: {_shown_default(name)}]")
    return parser


def add_model_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Sequence[str] = MODEL_OPTIONS,
    *,
    defaults: bool = True,
) -> None:
    """Add the server's `names` options (MODEL_OPTIONS, or any other) to a tool's parser, dest = field name.

    With `defaults` an option left out is the server's default; without, it is None (for tools
    that must tell "not given" apart), and `model_option_defaults` fills it in later.
    """
    for name in names:
        if name not in _OPTIONS:
            raise ValueError(f"{name!r} is not a server option")
        _add_option(parser, name, _default(name) if defaults else None, f" (default: {_shown_default(name)})")


def model_option_defaults(args: argparse.Namespace) -> None:
    """Replace None in the MODEL_OPTIONS attributes of `args` by the server's defaults."""
    for name in MODEL_OPTIONS:
        if getattr(args, name, None) is None:
            setattr(args, name, _default(name))


def options_table() -> str:
    """The README's options table (markdown), made from the declarations above."""
    rows = ["| option | environment | default | meaning |", "|---|---|---|---|"]
    for name, option in _OPTIONS.items():
        usage = option.usage.replace("|", "\\|")
        rows.append(f"| `{usage}` | `{_env_name(name)}` | {_shown_default(name)} | {option.help} |")
    return "\n".join(rows)


def log_level_number(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.log_level.upper()]
