"""`--device`: the network on onnxruntime's CUDA provider when one is usable, else on the CPU.

These machines have no GPU and the plain onnxruntime package, so the CUDA path is tested as far
as a CPU goes: which providers are asked for, the one log line when CUDA is wanted and cannot be
had (no CUDA provider; a CUDA provider that cannot start, as onnxruntime-gpu on a machine
without a GPU), which network file then serves, and what /healthz reports. deploy/gpu/ measures
the real thing on a GPU machine.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime
import pytest
from testsupport import SERVED_PRECISION

from fer_async import model as model_module
from fer_async.config import Settings, SettingsError
from fer_async.model import FacialExpressionModel
from fer_async.model_choices import DEFAULT_WEIGHTS_DIR
from fer_async.onnx_session import CPU, CUDA, requested_providers

FACES = np.random.default_rng(5).integers(0, 256, size=(3, 48, 48), dtype=np.uint8)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("device", "available", "asked"),
    [
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("cpu", [CUDA, CPU], [CPU]),
        ("auto", ["AzureExecutionProvider", CPU], [CPU]),
        ("cuda", [CPU], [CPU]),
    ],
)
def test_providers_asked_for_each_device(device: str, available: list[str], asked: list[str]) -> None:
    assert requested_providers(device, available) == asked


def test_device_is_an_option_with_its_environment_variable() -> None:
    assert Settings().device == "auto"
    assert Settings.from_args(["--device", "cuda"], env={}).device == "cuda"
    assert Settings.from_args([], env={"FER_DEVICE": "cpu"}).device == "cpu"
    with pytest.raises(SettingsError, match="--device"):
        Settings(device="gpu")
    with pytest.raises(ValueError, match="device"):
        FacialExpressionModel(DEFAULT_WEIGHTS_DIR, device="tpu")


def test_cuda_without_a_cuda_onnxruntime_runs_on_the_cpu_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert CUDA not in onnxruntime.get_available_providers()  # the plain package, as installed by the project
    caplog.set_level(logging.INFO)
    model = FacialExpressionModel(DEFAULT_WEIGHTS_DIR, device="cuda")
    (warning,) = _warnings(caplog)
    assert "--device cuda" in warning and "onnxruntime-gpu" in warning and "CPU" in warning
    assert (model.device, model.providers, model.precision) == ("CPU", [CPU], SERVED_PRECISION)  # as on any CPU
    assert model.predict(FACES).shape == (3, 7)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_auto_and_cpu_run_on_the_cpu_without_a_word(device: str, caplog: pytest.LogCaptureFixture) -> None:
    model = FacialExpressionModel(DEFAULT_WEIGHTS_DIR, device=device)
    assert _warnings(caplog) == []
    assert (model.device, model.providers, model.precision) == ("CPU", [CPU], SERVED_PRECISION)


@pytest.mark.parametrize(("device", "level"), [("cuda", logging.WARNING), ("auto", logging.INFO)])
def test_a_cuda_provider_that_cannot_start_falls_back_to_the_cpu_in_one_line(
    device: str, level: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # onnxruntime-gpu lists its CUDA provider on any machine; without a GPU its sessions run on the CPU.
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    caplog.set_level(logging.INFO)
    model = FacialExpressionModel(DEFAULT_WEIGHTS_DIR, device=device)
    said = [r for r in caplog.records if "CUDA is not usable here" in r.getMessage()]
    assert [r.levelno for r in said] == [level]
    assert "CUDAExecutionProvider" in said[0].getMessage()  # onnxruntime's own reason, in the same line
    assert _warnings(caplog) == ([said[0].getMessage()] if level == logging.WARNING else [])
    assert (model.device, model.providers, model.precision) == ("CPU", [CPU], SERVED_PRECISION)  # the CPU's best file


def test_on_cuda_the_fp32_network_serves(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The int8 file is a CPU speed-up: through CUDA's provider it would add (de)quantizing to fp32 work."""
    monkeypatch.setattr(model_module, "providers_for", lambda device, probe: [CUDA, CPU])  # as if CUDA were usable
    caplog.set_level(logging.INFO)
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):  # this onnxruntime has none: it runs on the CPU
        model = FacialExpressionModel(DEFAULT_WEIGHTS_DIR)
    assert (model.precision, model.model_file) == ("fp32", "fernet.onnx")
    assert any("fernet.int8.onnx is for the CPU" in r.getMessage() for r in caplog.records)
    assert model.device == "CPU" and model.providers == [CPU]  # what the session really runs on is reported
