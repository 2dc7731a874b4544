"""A real Open Inference Protocol server for the tests: MLServer in a venv of its own.

MLServer (and the onnxruntime it runs the model with) lives in `.venv-oip/` at the repository
root, not in the project's venv: its pins (fastapi, protobuf, uvloop < 0.22) must not move the
project's. `.ci/run` creates it; `ensure_venv` creates it too when missing (about 30 s and
400 MB, once) and says why when it cannot. FER_OIP_VENV points elsewhere.

The served model repository is deploy/mlserver/ as shipped (the runtime and
model-settings.json), with test ports, loopback only and one process (`parallel_workers: 0`:
a SIGKILL of the server then takes the whole server down, which is the fault the tests want),
plus a copy of the model that declares the wrong output shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("FER_OIP_VENV", REPO / ".venv-oip"))
REQUIREMENTS = REPO / "deploy" / "mlserver" / "requirements.txt"
MODEL_FOLDER = REPO / "deploy" / "mlserver" / "fernet"
INSTALL_TIMEOUT_S = 900
EXPORT_VERSION = b"faces-uint8/probabilities-fp32"  # part of the cache key of our own export
READY_TIMEOUT_S = 90.0
MISDECLARED_MODEL = "fernet-misdeclared"  # MLServer imports fastapi, pydantic, grpc: seconds on a loaded machine


def ensure_venv() -> Path:
    """The venv's python with MLServer importable; raises RuntimeError saying why not."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import mlserver, onnxruntime"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    started = time.monotonic()
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            check=True,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        raise RuntimeError(f"cannot install MLServer into {VENV}: {exc} {detail[-500:]}") from exc
    print(f"installed {REQUIREMENTS.name} into {VENV} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return python


def cached_onnx(weights: Path, model_name: str) -> Path:
    """The ONNX export of the shipped weights: `weights/NAME.onnx` when it is there and fresh,
    else one made here once per weights file (tf2onnx) and kept in the venv folder."""
    sources = [weights / f"{model_name}.json", weights / f"{model_name}.weights.h5"]
    shipped = weights / f"{model_name}.onnx"
    if shipped.is_file() and _made_from(shipped, sources):
        return shipped
    digest = hashlib.sha256(EXPORT_VERSION + b"".join(p.read_bytes() for p in sources)).hexdigest()
    path = VENV / "models" / f"{model_name}-{digest[:16]}.onnx"
    if not path.is_file():
        from training.export_onnx import export_onnx

        partial = export_onnx(weights, model_name, path.with_suffix(".partial"))
        partial.rename(path)
    return path


def _made_from(onnx_file: Path, sources: list[Path]) -> bool:
    """Whether the export records the sha256 of these very .json and .weights.h5 files."""
    import onnx

    recorded = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    wanted = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sources}
    return wanted <= set(recorded.values())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MLServer:
    """One MLServer process serving deploy/mlserver/fernet with `onnx_file` as its model."""

    def __init__(self, python: Path, onnx_file: Path, workdir: Path) -> None:
        self.mlserver = python.parent / "mlserver"
        self.workdir = workdir
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        shutil.copytree(MODEL_FOLDER, workdir / "fernet", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(onnx_file, workdir / "fernet" / "model.onnx")
        # A second model, as a wrong deployment looks to the client: it declares 8 outputs.
        misdeclared = workdir / MISDECLARED_MODEL
        shutil.copytree(workdir / "fernet", misdeclared)
        model_settings = json.loads((misdeclared / "model-settings.json").read_text())
        model_settings["name"] = MISDECLARED_MODEL
        model_settings["outputs"][0]["shape"] = [-1, 8]
        (misdeclared / "model-settings.json").write_text(json.dumps(model_settings))
        settings = {
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "parallel_workers": 0,
            "debug": False,
        }
        (workdir / "settings.json").write_text(json.dumps(settings))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mlserver.log"

    def start(self) -> None:
        environment = {**os.environ, "FERNET_THREADS": "1"}  # share two cores with the app under test
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.mlserver), "start", str(self.workdir)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # its own process group: kill() ends every process it made
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds until the model answers ready; raises with the server's log if it does not."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/fernet/ready", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"MLServer not ready in {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server's process group (a crash: no goodbye on its connections)."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the sockets stay open but nothing answers (a hung server)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self._signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str) -> float:
        """The sum of a Prometheus series (all labels) from the metrics port."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )
