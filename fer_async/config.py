"""Server settings: one frozen dataclass, built from argv with `FER_*` environment fallbacks.

Precedence: command line > environment variable > default, for every command: the server
(`Settings.from_args`) and each tool that takes server options (`add_model_options`, then
`resolve_options`) resolve them in the same function. `python -m fer_async --help` shows all.

Each option is written once: a field of `Settings` made by `option(...)` (fer_async.options),
holding its default, flag, help and, where it has them, its choices and range. From those
fields come the checks (`__post_init__`: each field's own, plus the few rules that join two
options), the server's parser, the tools' options and the options page docs/options.md (`options_table`).

This module holds configuration only, and stays a standard-library leaf: reading the settings
imports neither numpy nor OpenCV (tests/server/test_config.py checks). A value that belongs to
a domain (the decode limits, the detectors, the runtimes and precisions, the tracker's tuned
defaults, the detection period) is defined, with its reason, in a stdlib-only module of that
domain (image_limits, detector_model, model_choices, onnx_session, tracker_defaults, schedule);
here it is only an option's default or choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_async.detector_model import (
    AUTO_DETECT_WIDTH,
    DEFAULT_ALIGN,
    DEFAULT_DETECT_WIDTH,
    DEFAULT_DETECTOR,
    DETECTOR_KINDS,
)
from fer_async.image_limits import MAX_PIXELS, MAX_REDUCED_FACTOR
from fer_async.model_choices import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_PRECISION,
    DEFAULT_WEIGHTS_DIR,
    MODEL_PRECISIONS,
    RUNTIMES,
)
from fer_async.onnx_session import DEVICES
from fer_async.options import Option, Range, option, options_of, parse_int
from fer_async.paths import STATIC_DIR
from fer_async.schedule import ALTERNATE_FLIP, DETECT_EVERY, Cadence
from fer_async.tracker_defaults import DEFAULT_SMOOTHING_MS, DEFAULT_SWITCH_MARGIN

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(ValueError):
    """An invalid combination or value of settings."""


def _cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse_workers(text: str) -> int:
    """A worker count, or 'auto': one per core."""
    return _cpu_cores() if text.strip().lower() == "auto" else parse_int(text)


# At 64 px YuNet still finds a face a fifth of the frame wide (the astronaut photo); at 48, not.
MIN_FIXED_DETECT_WIDTH = 64


def _parse_detect_width(text: str) -> int:
    return AUTO_DETECT_WIDTH if text.strip().lower() == "auto" else parse_int(text)


def _parse_origins(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Every option of the server. Build with `Settings.from_args()` or directly (tests)."""

    host: str = option("127.0.0.1", "--host", "interface to listen on", "HOST")
    port: int = option(8080, "--port", "TCP port", "PORT", range=Range(0, 65535))
    weights: Path = option(
        DEFAULT_WEIGHTS_DIR, "--weights", "directory holding NAME.json and NAME.weights.h5 (NAME: --model-name)", "DIR"
    )
    model_name: str = option(DEFAULT_MODEL_NAME, "--model-name", "model file stem inside --weights", "NAME")
    runtime: str = option(
        "auto",
        "--runtime",
        "how the network runs: onnx (onnxruntime, NAME.onnx beside NAME.json), keras (TensorFlow, the [train] extra), "
        "auto (onnx when that file is current, else keras)",
        choices=RUNTIMES,
    )
    model_precision: str = option(
        DEFAULT_MODEL_PRECISION,
        "--model-precision",
        "which network file onnxruntime serves: int8 (NAME.int8.onnx, statically quantized; fp32 with one log line "
        "when that file is missing or stale, on x86 CPUs without VNNI, and always with --runtime keras) "
        "or fp32 (NAME.onnx)",
        choices=MODEL_PRECISIONS,
    )
    # On by default: +1.5 points on PublicTest (docs/training.md); the model is a small part of a frame's cost.
    flip_tta: bool = option(
        True, "--flip-tta", "also classify each face mirrored and average, in the same model call (--no-flip-tta: off)"
    )
    device: str = option(
        "auto",
        "--device",
        "where the network runs: cuda (onnxruntime-gpu, the [gpu] extra), cpu, or auto (cuda when usable, else cpu)",
        choices=DEVICES,
    )
    detector: str = option(
        DEFAULT_DETECTOR,
        "--detector",
        "face detector; yunet falls back to haar (one log line) when its model file cannot be had",
        choices=DETECTOR_KINDS,
    )
    detector_model: Path | None = option(
        None,
        "--detector-model",
        "YuNet's face_detection_yunet.onnx; without it: the per-user cache ($XDG_CACHE_HOME/fer_async, "
        "by default ~/.cache/fer_async), "
        "else one download from OpenCV's model zoo, pinned by sha256",
        "PATH",
        parse=Path,
    )
    align: bool = option(
        DEFAULT_ALIGN,
        "--align",
        "crop each face upright by its landmarks, eyes and mouth where FER2013 has them (YuNet only; Haar faces "
        "keep the box crop; --no-align: box crops)",
    )
    detect_width: int = option(
        DEFAULT_DETECT_WIDTH,
        "--detect-width",
        "width frames are shrunk to for full face detection, which misses faces under about 13 px there; "
        "'auto': a third of the frame's width within 320..960 (320 for a webcam, 640 for 1080p; Haar: 320)",
        "PX|auto",
        parse=_parse_detect_width,
        range=Range(MIN_FIXED_DETECT_WIDTH, 7680, alternative="'auto'"),
        alias=("auto", AUTO_DETECT_WIDTH),
    )
    detect_every: int = option(
        DETECT_EVERY,
        "--detect-every",
        "full face detection every N frames of a stream (webcam, video, file), only around the last faces between",
        "N",
        range=Range(1),
    )
    alternate_flip: bool = option(
        ALTERNATE_FLIP,
        "--alternate-flip",
        "with flip TTA, classify a stream's faces (webcam, video, file) as seen on even frames and mirrored on odd "
        "ones, which the tracker's smoothing averages: half the network's work; photos always get both views "
        "(--no-alternate-flip: both views on every frame)",
    )
    video_dir: Path = option(
        STATIC_DIR / "videos", "--video-dir", "directory of video files served as MJPEG under /video/NAME", "DIR"
    )
    # None: a temporary directory of this server and its --workers.
    results_dir: Path | None = option(
        None, "--results-dir", "analysis jobs' state and rows; replicas share one", "DIR", parse=Path
    )
    smoothing_ms: float = option(
        DEFAULT_SMOOTHING_MS,
        "--smoothing-ms",
        "time constant of the scores' moving average along a face track (/ws, videos); 0 = off",
        "MS",
        range=Range(0, 10_000),
    )
    label_margin: float = option(
        DEFAULT_SWITCH_MARGIN,
        "--label-margin",
        "a tracked face's shown label changes only when another class leads it by this much",
        "P",
        range=Range(0, 1, high_open=True),
    )
    max_batch: int = option(16, "--max-batch", "most frames analysed in one batch", "N", range=Range(1))
    max_wait_ms: float = option(
        5.0, "--max-wait-ms", "how long a batch waits for more frames after its first one", "MS", range=Range(0)
    )
    # Each WebSocket client has at most one frame queued (latest wins) and each video one, so
    # this bound is only reached by /api/predict bursts or more clients than usual.
    max_queue: int = option(
        256, "--max-queue", "frames waiting for the model before new ones get 'server busy'", "N", range=Range(1)
    )
    max_clients: int = option(
        64, "--max-clients", "WebSocket clients at once; more are closed with 1013", "N", range=Range(1)
    )
    max_frame_bytes: int = option(
        2_000_000, "--max-frame-bytes", "largest accepted encoded frame / upload, in bytes", "N", range=Range(1)
    )
    # Phone photos are 3-20 MB (12-50 MP); webcam frames stay under --max-frame-bytes. At most
    # views.PHOTO_UPLOADS_AT_ONCE photos are buffered at a time, so this bounds memory too.
    max_photo_bytes: int = option(
        32_000_000, "--max-photo-bytes", "largest image accepted by POST /api/predict, in bytes", "N", range=Range(1)
    )
    # Video files uploaded to /analyze are streamed to a temporary file, never held in memory.
    max_video_bytes: int = option(
        200 * 1024 * 1024,
        "--max-video-bytes",
        "largest video file uploaded to /analyze, in bytes",
        "N",
        range=Range(1),
    )
    # A 2 MB file of tiny frames holds 100,000 of them (45 s of a job and a 4.7 MB CSV each): the
    # upload's size does not bound an analysis' work, its frame count does.
    max_video_frames: int = option(
        108_000,
        "--max-video-frames",
        "most frames an analysis job reads (an hour at 30 frames/s); python -m fer_async.analyze has no limit",
        "N",
        range=Range(1),
    )
    max_pixels: int = option(
        MAX_PIXELS,
        "--max-pixels",
        f"largest decoded frame in pixels (width*height); a JPEG up to {MAX_REDUCED_FACTOR}x this is decoded at "
        "1/2..1/4 scale, anything larger is refused from its header",
        "N",
        range=Range(1),
    )
    allow_origins: tuple[str, ...] = option(
        (),
        "--allow-origin",
        "extra browser Origin allowed on /ws (repeatable; '*' allows any; env: comma-separated); "
        "same-origin is always allowed",
        "ORIGIN",
        parse=_parse_origins,
        repeatable=True,
    )
    cert: Path | None = option(
        None, "--cert", "TLS certificate (PEM) to serve https/wss; needs --key", "FILE", parse=Path
    )
    key: Path | None = option(None, "--key", "TLS private key (PEM)", "FILE", parse=Path)
    log_level: str = option(
        "info", "--log-level", f"logging level: {', '.join(LOG_LEVELS)}", parse=str.lower, choices=LOG_LEVELS
    )
    # An Open Inference Protocol server (Triton, KServe, MLServer) that classifies the faces
    # instead of the in-process model; None = in-process.
    executor: str | None = option(
        None,
        "--executor",
        "URL of an Open Inference Protocol server (Triton, KServe, MLServer) serving the model as "
        "--model-name; faces are classified there instead of in this process",
        "URL",
        parse=str,
    )
    executor_timeout_s: float = option(
        5.0,
        "--executor-timeout",
        "seconds a batch may take on the --executor server before its frames get 'inference server unavailable'",
        "SECONDS",
        range=Range(0, low_open=True),
    )
    workers: int = option(
        1,
        "--workers",
        "server processes sharing the port (SO_REUSEPORT), each with its own model; 'auto' = one per core",
        "N",
        parse=_parse_workers,
        range=Range(1, alternative="'auto'"),
    )

    def __post_init__(self) -> None:
        problems = [p for name, o in _OPTIONS.items() if (p := o.problem(getattr(self, name))) is not None]
        # The rules that join two options, or look at a value's form.
        if self.workers > 1 and self.port == 0:
            problems.append("--workers > 1 needs a fixed --port: each worker binds it (SO_REUSEPORT)")
        if (self.cert is None) != (self.key is None):
            problems.append("--cert and --key must be given together")
        if self.executor is not None and not self.executor.startswith(("http://", "https://")):
            problems.append(f"--executor must be an http:// or https:// URL, got {self.executor!r}")
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def cadence(self) -> Cadence:
        return Cadence(self.detect_every, self.alternate_flip)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, *, prog: str | None = None
    ) -> Settings:
        """Parse argv (default `sys.argv[1:]`); exits with status 2 and a message on bad input."""
        parser = build_parser(prog)
        return resolve_options(parser, parser.parse_args(argv), OPTIONS, env)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# Every option, in the order of --help and docs/options.md.
_OPTIONS = options_of(Settings)
OPTIONS = tuple(_OPTIONS)
# The options that say which model and detector to run; the training tools and the bench take
# them too, under the same names and with the same defaults as the server.
_FACE_OPTIONS = ("detector", "detector_model", "detect_width", "align")  # how faces are found and cut
MODEL_OPTIONS = ("weights", "model_name", "runtime", "model_precision", "flip_tta", "device", *_FACE_OPTIONS)


def _option(name: str) -> Option:
    if name not in _OPTIONS:
        raise ValueError(f"{name!r} is not a server option")
    return _OPTIONS[name]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m fer_async",
        description="Real-time facial expression recognition server (aiohttp). "
        "Each option falls back to the environment variable shown, then to the default.",
    )
    add_model_options(parser, OPTIONS)
    return parser


def add_model_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Sequence[str] = MODEL_OPTIONS
) -> None:
    """Add the server's `names` options (MODEL_OPTIONS, or any other) to a parser, dest = field name.

    An option left out parses to None; `resolve_options` then gives it its environment
    variable's value or its default, as the server does.
    """
    for name in names:
        _option(name).add_to(parser, name)


def resolve_options(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    names: Sequence[str] = MODEL_OPTIONS,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Each of `names`: its value in `args` (None: not given), else its FER_* variable in `env`, else its default.

    Checked as the server checks them: a bad value exits through `parser.error` (status 2, the
    same message as the server's). The resolved values are set on `args`, and returned as
    Settings (the options not in `names` at their defaults). `env` defaults to os.environ.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in names:
        declared = _option(name)
        given = getattr(args, name)
        if given is not None:
            # A repeatable option's values, each read as its environment variable is (a tuple).
            values[name] = tuple(item for each in given for item in each) if declared.repeatable else given
        elif declared.env in env:
            try:
                values[name] = declared.parse(env[declared.env])
            except ValueError as exc:
                parser.error(f"{declared.env}: {exc}")
    try:
        settings = Settings(**values)
    except SettingsError as exc:
        parser.error(str(exc))
    for name in names:
        setattr(args, name, getattr(settings, name))
    return settings


def command_line(settings: Settings, names: Sequence[str]) -> list[str]:
    """The flags that give another command (a started `python -m fer_async`) these settings' `names`."""
    flags: list[str] = []
    for name in names:
        declared = _option(name)
        value, flag = getattr(settings, name), declared.flag
        if declared.alias is not None and value == declared.alias[1]:
            flags += [flag, declared.alias[0]]
        elif isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, tuple):
            flags += [part for item in value for part in (flag, item)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def options_table() -> str:
    """The options table of docs/options.md (markdown), made from the declarations above."""
    rows = ["| option | environment | default | meaning |", "|---|---|---|---|"]
    for declared in _OPTIONS.values():
        usage = declared.usage.replace("|", "\\|")
        rows.append(f"| `{usage}` | `{declared.env}` | {declared.shown_default} | {declared.help} |")
    return "\n".join(rows)


def log_level_number(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.log_level.upper()]
