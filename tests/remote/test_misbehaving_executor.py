"""An inference server that answers, but wrongly: NaN or negative probabilities, a body that is not
JSON, text for numbers, a reply far too large, an HTML page for its metadata during an outage.

MLServer cannot be made to answer so; the server here is a few lines of aiohttp that speak the
Open Inference Protocol's three calls and misbehave on request. Everything else is real: the
RemotePredictor, the whole app and /api/predict on a real photo.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fer_async.config import Settings
from fer_async.labels import EMOTIONS
from fer_async.predictor import ExecutorUnavailable
from fer_async.remote import RemotePredictor
from fer_async.server.app import create_app

METADATA = {
    "name": "fernet",
    "inputs": [{"name": "faces", "datatype": "UINT8", "shape": [-1, 48, 48]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 7]}],
}
RECOVERY_S = 30.0  # the probe retries every 0.5 s; a loaded machine is slower


class Misbehaving:
    """What the server does: `infer` and `metadata` name the fault ("ok" serves well)."""

    def __init__(self) -> None:
        self.infer = "ok"
        self.metadata = "ok"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/models/fernet/ready", self._ready)
        app.router.add_get("/v2/models/fernet", self._metadata)
        app.router.add_post("/v2/models/fernet/infer", self._infer)
        return app

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metadata(self, request: web.Request) -> web.Response:
        if self.metadata == "html":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if self.metadata == "malformed":
            return web.json_response({**METADATA, "inputs": ["faces"]})
        return web.json_response(METADATA)

    async def _infer(self, request: web.Request) -> web.Response:
        rows = (await request.json())["inputs"][0]["shape"][0]
        probs = np.full((rows, len(EMOTIONS)), 1 / len(EMOTIONS))
        probs[:, 3] += 0.3  # happy ahead
        probs /= probs.sum(axis=1, keepdims=True)
        data: Any = probs.ravel().tolist()
        if self.infer == "nan":
            data[0] = float("nan")
        elif self.infer == "negative":
            data[3], data[4] = -0.5, data[4] + 0.5 + data[3]
        elif self.infer == "text":
            data = ["a number"] * len(data)
        elif self.infer == "huge":
            data = data + [0.0] * 5_000_000
        elif self.infer == "not-json":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        body = {
            "model_name": "fernet",
            "outputs": [{"name": "probabilities", "shape": [rows, 7], "datatype": "FP32", "data": data}],
        }
        return web.Response(text=json.dumps(body, allow_nan=True), content_type="application/json")


@pytest.fixture
async def executor() -> AsyncIterator[tuple[Misbehaving, str]]:
    behaviour = Misbehaving()
    server = TestServer(behaviour.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield behaviour, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def recovered(remote: RemotePredictor) -> None:
    async with asyncio.timeout(RECOVERY_S):
        while remote.problem is not None:  # noqa: ASYNC110  (the probe sets no event to wait on)
            await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("nan", "not probabilities"),
        ("negative", "not probabilities"),
        ("text", "not numbers"),
        ("not-json", "is not JSON"),
        ("huge", "bytes"),
    ],
)
async def test_a_reply_that_is_not_probabilities_fails_the_batch_and_the_executor_recovers(
    executor: tuple[Misbehaving, str], fault: str, message: str
) -> None:
    behaviour, url = executor
    remote = RemotePredictor(url, "fernet", flip_tta=False)
    await remote.start()
    try:
        faces = np.zeros((2, 48, 48), np.uint8)
        assert (await remote.infer_async(faces)).argmax(axis=1).tolist() == [3, 3]
        behaviour.infer = fault
        with pytest.raises(ExecutorUnavailable, match=message):
            await remote.infer_async(faces)
        assert remote.problem is not None and message in remote.problem
        behaviour.infer = "ok"
        await recovered(remote)
        assert (await remote.infer_async(faces)).argmax(axis=1).tolist() == [3, 3]
    finally:
        await remote.aclose()


@pytest.mark.parametrize("fault", ["html", "malformed"])
async def test_metadata_that_is_not_a_models_during_an_outage_keeps_the_probe_going(
    executor: tuple[Misbehaving, str], fault: str
) -> None:
    # An outage that served an HTML page for the metadata ended the probe silently: degraded until a restart.
    behaviour, url = executor
    remote = RemotePredictor(url, "fernet", flip_tta=False)
    await remote.start()
    try:
        behaviour.infer, behaviour.metadata = "not-json", fault
        with pytest.raises(ExecutorUnavailable):
            await remote.infer_async(np.zeros((1, 48, 48), np.uint8))
        await asyncio.sleep(1.2)  # a few probes, each reading the metadata again
        assert remote.problem is not None and ("not JSON" in remote.problem or "malformed" in remote.problem)
        assert remote._probe_task is not None and not remote._probe_task.done()
        behaviour.infer, behaviour.metadata = "ok", "ok"
        await recovered(remote)
        assert (await remote.infer_async(np.zeros((1, 48, 48), np.uint8))).shape == (1, 7)
    finally:
        await remote.aclose()


async def test_an_html_page_for_the_metadata_at_start_is_an_outage_not_a_crash(
    executor: tuple[Misbehaving, str],
) -> None:
    behaviour, url = executor
    behaviour.metadata = "html"
    remote = RemotePredictor(url, "fernet", flip_tta=False)
    await remote.start()  # the server starts degraded, as with an unreachable executor
    try:
        assert remote.problem is not None and "is not JSON" in remote.problem
        behaviour.metadata = "ok"
        await recovered(remote)
    finally:
        await remote.aclose()


async def test_nan_from_the_executor_never_reaches_a_client(
    aiohttp_client: Any, executor: tuple[Misbehaving, str], face_jpeg: bytes
) -> None:
    behaviour, url = executor
    settings = Settings(host="127.0.0.1", port=0, max_wait_ms=2.0, executor=url, executor_timeout_s=5.0)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(settings))
    assert (await (await client.get("/healthz")).json())["runtime"] == "remote"
    behaviour.infer = "nan"
    response = await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status == 503
    assert (await response.json())["reason"] == "executor_unavailable"
