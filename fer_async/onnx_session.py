"""onnxruntime sessions for the network: on which execution providers (CPU, CUDA) it runs.

`--device` (DEVICES) chooses: "cpu" always runs on the CPU; "cuda" and "auto" run on
the first GPU through the CUDA execution provider when this onnxruntime has one (the
`onnxruntime-gpu` package: the `[gpu]` extra) and a session can really use it, else on the CPU.
"cuda" says so in one warning line, "auto" in one info line. Whether CUDA is usable is known only
from a session: onnxruntime-gpu lists its CUDA provider on any machine, and falls back to the
CPU by itself (with lines of its own on stderr) where the GPU, the driver or CUDA's libraries
are missing. So `providers_for` opens one probe session and reads back what it runs on.

Face detection stays on the CPU: YuNet runs on OpenCV's `cv2.dnn`, whose PyPI builds have no
CUDA backend, and it runs per frame as frames arrive, where batching (the GPU's strength) does
not reach. See deploy/gpu/README.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fer_async.native_stderr import captured_stderr, release

logger = logging.getLogger(__name__)

# --device. This module imports onnxruntime only when it opens a session, so the settings read
# this without loading it.
DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Batch sizes follow the traffic (1..max-batch frames of faces, doubled by flip TTA); cuDNN's
# default exhaustive search would benchmark every new size on live frames first.
CUDA_OPTIONS = {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOAD_ERROR = re.compile(r"with error: (.+)")


# The x86 instructions with which onnxruntime's U8S8 kernels (the int8 file's) add products in 32
# bits. Without them (AVX2 alone: AMD Zen 1-3, Intel before Ice Lake and Alder Lake) pairs of
# products are summed in 16 bits first and saturate with full-range weights: on such an AMD EPYC
# the int8 file agreed with fp32 on 81 % of PublicTest (64.1 % accurate against 68.7 %).
INT8_EXACT_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags (Linux), None where the system does not say."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def int8_exact(machine: str | None = None, flags: Iterable[str] | None = None) -> bool:
    """Whether onnxruntime's int8 kernels compute the int8 file as exported on this CPU.

    False on x86 without VNNI; True elsewhere (ARM's dot-product kernels do not saturate) and
    where the flags cannot be read (a system without /proc/cpuinfo: its users check with
    `training.evaluate --compare-precision`, docs/training.md).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        return True
    known = cpu_flags() if flags is None else frozenset(flags)
    return known is None or bool(INT8_EXACT_FLAGS & known)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def requested_providers(device: str, available: list[str]) -> list[str]:
    """The providers to ask for on `device`, given those this onnxruntime has (CPU last)."""
    if device != "cpu" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def create_session(onnx_path: Path, threads: int, providers: list[str]) -> Any:
    """An InferenceSession of `onnx_path` on `providers` (see `session.get_providers()` for those in use)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle model threads must not spin on the cores that decode and detect the next frames.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    with_options = [(name, CUDA_OPTIONS) if name == CUDA else name for name in providers]
    return ort.InferenceSession(str(onnx_path), options, providers=with_options)


def _from_onnxruntime(line: str) -> bool:
    """Whether a captured stderr line is onnxruntime's (its messages end in a colour reset of their own)."""
    return "onnxruntime" in line or "CUDA" in line or not _ANSI.sub("", line).strip()


def _cuda_problem(onnx_path: Path) -> str | None:
    """Why a session of `onnx_path` does not run on CUDA (None when it does)."""
    import onnxruntime as ort

    said = io.StringIO()  # preload_dlls and the session's own fallback print to stdout
    failure: list[str] = []
    with captured_stderr() as native, warnings.catch_warnings(record=True) as warned, contextlib.redirect_stdout(said):
        warnings.simplefilter("always")
        try:
            # CUDA's and cuDNN's libraries from NVIDIA's pip packages (onnxruntime-gpu[cuda,cudnn])
            # are not on the loader's path: onnxruntime finds them when asked to.
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            in_use = create_session(onnx_path, 1, [CUDA, CPU]).get_providers()
        except Exception as exc:  # a broken CUDA install must not stop a server that can run on the CPU
            in_use, failure = [CPU], [f"with error: {exc}"]
    ours = [line for line in native if _from_onnxruntime(line)] + failure
    release([line for line in native if line not in ours])  # another thread's stderr, not onnxruntime's
    if CUDA in in_use:
        return None
    logger.debug("CUDA probe output: %s", "".join(ours).strip() or said.getvalue().strip())
    for line in ours:
        if found := _LOAD_ERROR.search(_ANSI.sub("", line)):
            return found.group(1).strip()
    if warned:
        return str(warned[0].message)
    return "onnxruntime could not create its CUDA provider (no GPU or driver?)"


def providers_for(device: str, onnx_path: Path) -> list[str]:
    """The providers the network runs on for `--device`, probed with `onnx_path`; one log line
    when CUDA was wanted and cannot be had."""
    import onnxruntime as ort

    wanted = requested_providers(device, ort.get_available_providers())
    if CUDA not in wanted:
        if device == "cuda":
            logger.warning(
                "--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu, the [gpu] extra); "
                "the network runs on the CPU"
            )
        return wanted
    problem = _cuda_problem(onnx_path)
    if problem is None:
        return wanted
    log = logger.warning if device == "cuda" else logger.info
    log("--device %s: CUDA is not usable here (%s); the network runs on the CPU", device, problem)
    return [CPU]
