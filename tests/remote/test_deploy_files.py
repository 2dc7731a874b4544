"""deploy/triton and deploy/mlserver describe the model that fer_async talks to: check them against
the ONNX export itself and against the client (no server needed).

Triton cannot run here (the wheel that bundles it has no onnxruntime backend), so its
config.pbtxt is checked field by field against the ONNX graph: the names, types and dims Triton
would compare at load time, and the max batch the client splits its requests by.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fer_async.oip import ModelSignature, parse_metadata
from fer_async.remote import MAX_ROWS_PER_REQUEST

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TRITON_CONFIG = DEPLOY / "triton" / "fernet" / "config.pbtxt"
MLSERVER_SETTINGS = DEPLOY / "mlserver" / "fernet" / "model-settings.json"
ONNX_TYPES = {1: ("TYPE_FP32", "FP32"), 2: ("TYPE_UINT8", "UINT8")}  # onnx.TensorProto numbers


def _triton_tensors(config: str, kind: str) -> list[dict[str, Any]]:
    """The `input [...]` or `output [...]` entries of a config.pbtxt (the subset we write)."""
    block = re.search(rf"^{kind} \[(.*?)^\]", config, re.S | re.M)
    assert block, f"no {kind} block"
    return [
        {
            "name": re.search(r'name: "([^"]+)"', entry)[1],  # type: ignore[index]
            "data_type": re.search(r"data_type: (\w+)", entry)[1],  # type: ignore[index]
            "dims": [int(d) for d in re.search(r"dims: \[([^\]]*)\]", entry)[1].split(",")],  # type: ignore[index]
        }
        for entry in re.findall(r"\{(.*?)\}", block[1], re.S)
    ]


def _onnx_tensors(onnx_file: Path) -> dict[str, list[dict[str, Any]]]:
    import onnx

    graph = onnx.load(str(onnx_file)).graph

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        return {"name": value.name, "type": tensor.elem_type, "dims": [d.dim_value for d in tensor.shape.dim][1:]}

    return {"input": [describe(v) for v in graph.input], "output": [describe(v) for v in graph.output]}


@pytest.fixture(params=["fp32", "int8"])
def served_file(request: pytest.FixtureRequest, fernet_onnx: Path) -> Path:
    """The files the deploy READMEs serve: fp32 on a GPU, int8 on a CPU."""
    if request.param == "fp32":
        return fernet_onnx
    from fer_async.model_choices import DEFAULT_MODEL_NAME, DEFAULT_WEIGHTS_DIR

    return DEFAULT_WEIGHTS_DIR / f"{DEFAULT_MODEL_NAME}.int8.onnx"


def test_triton_config_matches_the_onnx_export(served_file: Path) -> None:
    config = TRITON_CONFIG.read_text()
    exported = _onnx_tensors(served_file)
    for kind in ("input", "output"):
        declared = _triton_tensors(config, kind)
        assert [t["name"] for t in declared] == [t["name"] for t in exported[kind]]
        for mine, theirs in zip(declared, exported[kind], strict=True):
            assert mine["data_type"] == ONNX_TYPES[theirs["type"]][0], (mine, theirs)
            assert mine["dims"] == theirs["dims"], (mine, theirs)
    assert re.search(r'^backend: "onnxruntime"$', config, re.M)
    assert re.search(r"^dynamic_batching \{", config, re.M)
    max_batch = int(re.search(r"^max_batch_size: (\d+)$", config, re.M)[1])  # type: ignore[index]
    assert max_batch == MAX_ROWS_PER_REQUEST  # the client never sends a request Triton would refuse

    # What Triton's metadata endpoint then reports (the batch dimension as -1) suits the client.
    triton_metadata = {
        kind + "s": [
            {"name": t["name"], "datatype": t["data_type"].removeprefix("TYPE_"), "shape": [-1, *t["dims"]]}
            for t in _triton_tensors(config, kind)
        ]
        for kind in ("input", "output")
    }
    assert parse_metadata(triton_metadata) == ModelSignature("faces", "UINT8", (48, 48, 1), "probabilities")


def test_mlserver_settings_match_the_onnx_export(served_file: Path) -> None:
    settings = json.loads(MLSERVER_SETTINGS.read_text())
    exported = _onnx_tensors(served_file)
    for kind in ("input", "output"):
        declared = settings[kind + "s"]
        assert [t["name"] for t in declared] == [t["name"] for t in exported[kind]]
        for mine, theirs in zip(declared, exported[kind], strict=True):
            assert mine["datatype"] == ONNX_TYPES[theirs["type"]][1] and mine["shape"] == [-1, *theirs["dims"]]
    assert settings["max_batch_size"] >= 2 and 0 < settings["max_batch_time"] <= 0.05
    assert parse_metadata(settings).input_name == "faces"


@pytest.mark.parametrize("path", [TRITON_CONFIG, MLSERVER_SETTINGS])
def test_deploy_files_name_the_served_model(path: Path) -> None:
    from fer_async.model_choices import DEFAULT_MODEL_NAME

    assert path.parent.name == DEFAULT_MODEL_NAME  # Triton and MLServer key models by folder / name
    assert f'"{DEFAULT_MODEL_NAME}"' in path.read_text()
