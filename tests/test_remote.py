"""The remote executor's own logic, without an inference server (tests/remote/ has the real one).

The request body is written by hand for speed, so it is checked here by a JSON parser; the
metadata check decides whether the app starts; an unreachable server degrades at once.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from fer_async.config import Settings, SettingsError
from fer_async.oip import ExecutorMisconfigured, ModelSignature, decode_response, encode_request, parse_metadata
from fer_async.predictor import ExecutorUnavailable
from fer_async.remote import RemotePredictor

TRITON_METADATA = {  # what Triton answers for deploy/triton/fernet (max_batch_size > 0 adds the -1)
    "name": "fernet",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "faces", "datatype": "UINT8", "shape": [-1, 48, 48, 1]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 7]}],
}
FACES = np.random.default_rng(0).integers(0, 256, size=(3, 48, 48), dtype=np.uint8)


def test_metadata_of_the_deployed_model_is_accepted() -> None:
    assert parse_metadata(TRITON_METADATA) == ModelSignature("faces", "UINT8", (48, 48, 1), "probabilities")
    float_export = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 48, 48]}],
        "outputs": [{"name": "logits_unused", "datatype": "FP32", "shape": [-1, 128]}, {"name": "p", "shape": [-1, 7]}],
    }
    assert parse_metadata(float_export) == ModelSignature("x", "FP32", (48, 48), "p")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"inputs": []}, "exactly one input"),
        ({"inputs": [{"name": "faces", "datatype": "UINT8", "shape": [-1, 64, 64, 1]}]}, "shape"),
        ({"inputs": [{"name": "faces", "datatype": "BYTES", "shape": [-1, 48, 48, 1]}]}, "datatype"),
        ({"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 8]}]}, "output"),
    ],
)
def test_metadata_of_another_model_is_refused(change: dict[str, object], complaint: str) -> None:
    with pytest.raises(ExecutorMisconfigured, match=complaint) as refused:
        parse_metadata({**TRITON_METADATA, **change})
    assert isinstance(refused.value, ValueError)  # `python -m fer_async` then says "cannot start", exit 1


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_request_body_is_the_json_a_server_expects(datatype: str) -> None:
    signature = ModelSignature("faces", datatype, (48, 48, 1), "probabilities")
    body = json.loads(encode_request(signature, FACES))
    (tensor,) = body["inputs"]
    assert tensor["name"] == "faces" and tensor["datatype"] == datatype and tensor["shape"] == [3, 48, 48, 1]
    assert np.array_equal(np.asarray(tensor["data"]), FACES.reshape(-1))
    assert all(isinstance(v, int if datatype == "UINT8" else float) for v in tensor["data"][:50])
    assert body["outputs"] == [{"name": "probabilities"}]


def test_response_is_checked_against_the_signature() -> None:
    signature = parse_metadata(TRITON_METADATA)
    scores = np.random.default_rng(1).random((3, 7)).astype(np.float32)
    probs = scores / scores.sum(axis=1, keepdims=True)  # a softmax's rows, as the served network gives
    answer = {
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [3, 7], "data": probs.ravel().tolist()}]
    }
    np.testing.assert_array_equal(decode_response(signature, answer, 3), probs)
    answer["outputs"][0]["data"] = scores.ravel().tolist()  # rows that are not distributions
    with pytest.raises(ExecutorMisconfigured, match="not probabilities"):
        decode_response(signature, answer, 3)
    with pytest.raises(ExecutorMisconfigured, match="6 values"):
        decode_response(signature, {"outputs": [{"name": "probabilities", "data": [0.0] * 6}]}, 3)
    with pytest.raises(ExecutorMisconfigured, match="no output"):
        decode_response(signature, {"outputs": []}, 3)


async def test_unreachable_server_degrades_at_start_and_fails_batches_at_once(unused_tcp_port: int) -> None:
    remote = RemotePredictor(f"http://127.0.0.1:{unused_tcp_port}", "fernet", timeout_s=5.0)
    await remote.start()  # a front end may start before its inference server: it only degrades
    try:
        assert remote.problem is not None and str(unused_tcp_port) in remote.problem
        started = time.monotonic()
        with pytest.raises(ExecutorUnavailable, match="unavailable"):
            await asyncio.to_thread(remote.predict, FACES)
        assert time.monotonic() - started < 1.0  # no wait for a server known to be down
        with pytest.raises(RuntimeError, match="block the event loop"):
            remote.predict(FACES)  # on the loop itself it would deadlock
    finally:
        await remote.aclose()


def test_executor_settings_are_validated() -> None:
    settings = Settings.from_args(["--executor", "http://gpu-pool:8000", "--executor-timeout", "2.5"], env={})
    assert settings.executor == "http://gpu-pool:8000" and settings.executor_timeout_s == 2.5
    assert Settings.from_args([], env={"FER_EXECUTOR": "https://triton.example:8000"}).executor is not None
    assert Settings().executor is None  # in-process by default
    with pytest.raises(SettingsError, match="--executor"):
        Settings(executor="gpu-pool:8000")
    with pytest.raises(SettingsError, match="--executor-timeout"):
        Settings(executor_timeout_s=0)
