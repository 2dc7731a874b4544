"""The Open Inference Protocol ("KServe v2") in its HTTP/JSON form: the bodies, not the transport.

What `fer_async.remote` sends to and reads from Triton, KServe or MLServer: the model's
signature from its metadata (`GET /v2/models/NAME`), the body of an infer request for uint8
faces, and the probabilities of its response. Pure functions: tested without a server
(tests/test_remote.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from fer_async.labels import EMOTIONS, FACE_SIZE
from fer_async.predictor import ExecutorUnavailable

_INTEGER_TYPES = ("UINT8", "UINT16", "INT16", "INT32", "INT64")
_FLOAT_TYPES = ("FP16", "FP32", "FP64")


class ExecutorMisconfigured(ExecutorUnavailable, ValueError):
    """The server answers, but its model does not take 48x48 faces or give 7 probabilities.

    A ValueError too: at start-up it is a configuration error, which `python -m fer_async`
    reports as "cannot start" (exit 1) instead of serving frames it can never analyse.
    """


@dataclass(frozen=True)
class ModelSignature:
    """What the served model takes and gives, read from its metadata (`GET /v2/models/NAME`)."""

    input_name: str
    input_datatype: str
    face_shape: tuple[int, ...]  # per face, without the batch dimension: (48, 48) or (48, 48, 1)
    output_name: str


def parse_metadata(metadata: Any) -> ModelSignature:
    """The model's signature, or ExecutorMisconfigured saying why it cannot serve faces."""
    try:
        return _signature(metadata)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # a shape of JSON nobody expected
        if isinstance(exc, ExecutorMisconfigured):
            raise
        raise ExecutorMisconfigured(f"malformed model metadata ({type(exc).__name__}: {exc})") from None


def _signature(metadata: Any) -> ModelSignature:
    if not isinstance(metadata, dict):
        raise ExecutorMisconfigured("model metadata is not a JSON object")
    inputs, outputs = metadata.get("inputs") or [], metadata.get("outputs") or []
    if len(inputs) != 1:
        raise ExecutorMisconfigured(f"the model must declare exactly one input, it declares {len(inputs)}")
    spec = inputs[0]
    shape = tuple(spec.get("shape") or ())
    if shape[1:] not in ((FACE_SIZE, FACE_SIZE), (FACE_SIZE, FACE_SIZE, 1)):
        raise ExecutorMisconfigured(f"input {spec.get('name')!r} has shape {list(shape)}, expected [-1, 48, 48(, 1)]")
    if spec.get("datatype") not in _INTEGER_TYPES + _FLOAT_TYPES:
        raise ExecutorMisconfigured(f"input {spec.get('name')!r} has datatype {spec.get('datatype')}, expected UINT8")
    probs = [o for o in outputs if tuple(o.get("shape") or ())[-1:] == (len(EMOTIONS),)]
    if len(probs) != 1:
        raise ExecutorMisconfigured(f"the model must have one output of shape [-1, {len(EMOTIONS)}], found {outputs}")
    return ModelSignature(str(spec["name"]), str(spec["datatype"]), shape[1:], str(probs[0]["name"]))


# How far a row's sum may be from 1: float32 softmax and JSON's decimal text round a little.
PROBABILITY_SUM_TOLERANCE = 1e-2


def _text_table(template: str) -> np.ndarray:
    """Row v = the JSON text of the number v, padded on the left with spaces, then a comma.

    JSON allows whitespace before a number, so `table[faces].tobytes()` is the body of a JSON
    array written by one numpy gather: ~100x faster than `json.dumps(faces.tolist())`.
    """
    texts = [template.format(v) for v in range(256)]
    width = max(map(len, texts))
    return np.frombuffer("".join(t.rjust(width) + "," for t in texts).encode(), np.uint8).reshape(256, width + 1)


_INTEGER_TEXT = _text_table("{}")
_FLOAT_TEXT = _text_table("{}.0")  # some servers refuse an integer literal for a float tensor


def encode_request(signature: ModelSignature, faces: np.ndarray) -> bytes:
    """The JSON body of an infer request for uint8 faces [n, 48, 48]."""
    table = _INTEGER_TEXT if signature.input_datatype in _INTEGER_TYPES else _FLOAT_TEXT
    header = {
        "name": signature.input_name,
        "shape": [len(faces), *signature.face_shape],
        "datatype": signature.input_datatype,
    }
    head = json.dumps({"inputs": [header]})[:-3]  # cut "}]}" to append the data field
    tail = json.dumps({"outputs": [{"name": signature.output_name}]})[1:]
    data = np.take(table, faces.reshape(-1), axis=0).tobytes()[:-1]  # without the last comma
    return b"".join([head.encode(), b', "data": [', data, b"]}], ", tail.encode()])


def decode_response(signature: ModelSignature, body: Any, rows: int) -> np.ndarray:
    """Probabilities [rows, 7] from an infer response, or ExecutorMisconfigured."""
    outputs = body.get("outputs") if isinstance(body, dict) else None
    named = [o for o in outputs or [] if isinstance(o, dict) and o.get("name") == signature.output_name]
    if not named:
        raise ExecutorMisconfigured(f"the response has no output {signature.output_name!r}")
    try:
        probs = np.asarray(named[0].get("data"), dtype=np.float32)
    except (TypeError, ValueError):
        raise ExecutorMisconfigured("the response's data are not numbers") from None
    if probs.size != rows * len(EMOTIONS):
        raise ExecutorMisconfigured(f"the response has {probs.size} values for {rows} faces")
    probs = probs.reshape(rows, len(EMOTIONS))
    # NaN reached the clients as bare NaN (not JSON), won every argmax and stayed in a track's
    # smoothed scores for good: what is not a probability distribution fails the batch instead.
    sums_off = np.abs(probs.sum(axis=1) - 1) > PROBABILITY_SUM_TOLERANCE
    if not np.isfinite(probs).all() or (probs < 0).any() or sums_off.any():
        raise ExecutorMisconfigured("the response's values are not probabilities (each row in [0, 1], summing to 1)")
    return probs
