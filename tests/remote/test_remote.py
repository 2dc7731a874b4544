"""The remote executor against a real Open Inference Protocol server (MLServer, tests/remote/oipserver.py).

Same probabilities as the in-process model on real faces, batching seen by the server, the
whole app classifying through it, and the faults: the server hung (SIGSTOP) and killed
(SIGKILL) while clients send frames, then back; stopped while photos are posted (503 with
Retry-After, `fer_executor_up` 0), then back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from testsupport import NEEDS_VNNI

from fer_async.config import Settings
from fer_async.detector import create_detector
from fer_async.imaging import crop_faces, decode_image
from fer_async.model import FacialExpressionModel
from fer_async.predictor import ExecutorUnavailable
from fer_async.remote import RemotePredictor
from fer_async.server.app import create_app

from .oipserver import MISDECLARED_MODEL, MLServer, free_port

FER2013 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fer2013" / "fer2013.npz"
PARITY_FACES = 128  # with flip TTA: 256 rows, four requests of 64
PARITY_TOLERANCE = 1e-3
FAULT_TIMEOUT_S = 2.0  # the app's --executor-timeout in the fault test
# A frame's reply may also wait for decoding, detection and a loaded machine besides the deadline.
REPLY_SLACK_S = 8.0
GENEROUS_TIMEOUT_S = 60.0  # parity and batching: the machine may be loaded, speed is not tested
UNAVAILABLE = "inference server unavailable"  # the error of a frame refused during an outage

Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def real_faces(face_jpeg: bytes, two_faces_jpeg: bytes) -> np.ndarray:
    """PARITY_FACES real faces: PublicTest's from ../shared when present, else the three faces of
    the photos in tests/data, repeated (a clone without ../shared runs every test here too)."""
    if FER2013.is_file():
        return np.load(FER2013)["x_val"][:PARITY_FACES]
    detector = create_detector("haar", None)
    crops = []
    for jpeg in (face_jpeg, two_faces_jpeg):
        image = decode_image(jpeg)
        crops.append(crop_faces(image, detector.detect(image)))
    faces = np.concatenate(crops)
    assert len(faces) == 3, f"the test photos hold 3 faces, Haar found {len(faces)}"
    return faces[np.arange(PARITY_FACES) % len(faces)]


async def _predict(url: str, faces: np.ndarray, *, flip_tta: bool) -> np.ndarray:
    remote = RemotePredictor(url, "fernet", flip_tta=flip_tta, timeout_s=GENEROUS_TIMEOUT_S)
    await remote.start()
    try:
        assert remote.problem is None, remote.problem
        # From a thread, as the analyzer calls it.
        return await asyncio.to_thread(remote.predict, faces)
    finally:
        await remote.aclose()


async def test_same_probabilities_as_the_in_process_model(
    mlserver: MLServer, real_fp32_model: Any, real_faces: np.ndarray
) -> None:
    remote = await _predict(mlserver.url, real_faces, flip_tta=True)
    local = real_fp32_model.predict(real_faces)  # flip TTA on, like the server's default; the file MLServer serves
    assert remote.shape == local.shape == (len(real_faces), 7)
    np.testing.assert_allclose(remote, local, atol=PARITY_TOLERANCE, rtol=0)
    assert np.array_equal(remote.argmax(1), local.argmax(1))

    plain = await _predict(mlserver.url, real_faces, flip_tta=False)
    keras_plain = FacialExpressionModel(flip_tta=False, precision="fp32").predict(real_faces)  # the shipped weights
    np.testing.assert_allclose(plain, keras_plain, atol=PARITY_TOLERANCE, rtol=0)
    assert not np.allclose(plain, remote, atol=PARITY_TOLERANCE)  # the mirrored half really was averaged in
    print(f"\n{len(real_faces)} faces: max |remote - in-process| = {np.abs(remote - local).max():.2e} (flip TTA), "
          f"{np.abs(plain - keras_plain).max():.2e} (plain)")  # fmt: skip


@NEEDS_VNNI
async def test_the_int8_file_served_gives_the_in_process_int8_probabilities(
    int8_mlserver: MLServer, real_model: Any, real_faces: np.ndarray
) -> None:
    """A CPU inference server serves NAME.int8.onnx, the file the in-process server runs by default."""
    assert real_model.precision == "int8"
    remote = await _predict(int8_mlserver.url, real_faces, flip_tta=True)
    local = real_model.predict(real_faces)
    np.testing.assert_allclose(remote, local, atol=PARITY_TOLERANCE, rtol=0)
    assert np.array_equal(remote.argmax(1), local.argmax(1))
    print(f"\n{len(real_faces)} faces: max |remote int8 - in-process int8| = {np.abs(remote - local).max():.2e}")


async def test_the_server_merges_concurrent_requests_into_batches(mlserver: MLServer, real_faces: np.ndarray) -> None:
    requests, rows_each = 16, 4
    remote = RemotePredictor(
        mlserver.url, "fernet", flip_tta=False, timeout_s=GENEROUS_TIMEOUT_S, max_in_flight=requests
    )
    await remote.start()
    try:
        # A loaded machine may spread one burst over more than the server's 5 ms batching
        # window; the claim is that the server batches across callers, so a few bursts may try.
        for _burst in range(3):
            calls_before = mlserver.metric("fernet_batch_rows_count")
            rows_before = mlserver.metric("fernet_batch_rows_sum")
            groups = [real_faces[i * rows_each : (i + 1) * rows_each] for i in range(requests)]
            results = await asyncio.gather(*(remote.infer_async(g) for g in groups))
            calls = mlserver.metric("fernet_batch_rows_count") - calls_before
            rows = mlserver.metric("fernet_batch_rows_sum") - rows_before
            assert rows == requests * rows_each  # every face reached the model once
            assert all(r.shape == (rows_each, 7) for r in results)
            if calls < requests:
                break
        assert calls < requests, f"{requests} concurrent requests ran as {calls} model calls: no batching"
        print(f"\n{requests} concurrent requests of {rows_each} faces ran as {calls:.0f} model calls on the server")
    finally:
        await remote.aclose()


async def test_a_model_the_server_does_not_serve_leaves_the_executor_degraded(
    mlserver: MLServer, real_faces: np.ndarray
) -> None:
    remote = RemotePredictor(mlserver.url, "no-such-model", timeout_s=GENEROUS_TIMEOUT_S)
    await remote.start()
    try:
        assert remote.problem is not None and "'no-such-model' not ready" in remote.problem
        with pytest.raises(ExecutorUnavailable, match="not ready"):
            await remote.infer_async(real_faces[:2])
    finally:
        await remote.aclose()


def test_the_server_refuses_to_start_against_a_model_of_another_signature(mlserver: MLServer) -> None:
    command = [sys.executable, "-m", "fer_async", "--port", str(free_port()), "--executor", mlserver.url]
    started = subprocess.run(
        [*command, "--model-name", MISDECLARED_MODEL], capture_output=True, text=True, timeout=GENEROUS_TIMEOUT_S
    )
    assert started.returncode == 1, started.stderr[-2000:]
    assert "cannot start: the model must have one output of shape [-1, 7]" in started.stderr


def _settings(url: str, timeout_s: float) -> Settings:
    return Settings(host="127.0.0.1", port=0, max_wait_ms=2.0, executor=url, executor_timeout_s=timeout_s)


async def test_the_app_classifies_through_the_server(
    aiohttp_client: Any, mlserver: MLServer, real_fp32_model: Any, face_jpeg: bytes
) -> None:
    remote_app: Client = await aiohttp_client(create_app(_settings(mlserver.url, GENEROUS_TIMEOUT_S)))
    local_app: Client = await aiohttp_client(
        create_app(_settings(mlserver.url, GENEROUS_TIMEOUT_S).replace(executor=None), model=real_fp32_model)
    )
    health = await (await remote_app.get("/healthz")).json()
    assert health["status"] == "ok" and health["device"] == f"remote {mlserver.url}"

    answers = []
    for client in (remote_app, local_app):
        response = await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})
        assert response.status == 200, await response.text()
        answers.append((await response.json())["faces"])
    remote_faces, local_faces = answers
    assert len(remote_faces) == len(local_faces) == 1
    assert remote_faces[0]["box"] == local_faces[0]["box"]
    assert remote_faces[0]["emotion"] == local_faces[0]["emotion"]
    for name, score in remote_faces[0]["scores"].items():
        assert abs(score - local_faces[0]["scores"][name]) <= PARITY_TOLERANCE + 1e-4  # JSON rounds to 4 places


@dataclass
class _Reply:
    sent: float
    received: float
    kind: str  # "result" or the error text


@dataclass
class _Load:
    """WebSocket clients sending a face frame, waiting for its reply, again, until stopped."""

    client: Client
    frame: bytes
    replies: list[_Reply] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run_one(self) -> None:
        async with self.client.ws_connect("/ws") as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
            frame_id = 0
            while not self.stop.is_set():
                frame_id += 1
                sent = time.monotonic()
                await ws.send_bytes(self.frame)
                while True:
                    message = await ws.receive(timeout=FAULT_TIMEOUT_S + REPLY_SLACK_S)  # a hang fails here
                    assert message.type == aiohttp.WSMsgType.TEXT, message
                    reply = message.json()
                    if reply.get("frame") == frame_id and reply["type"] in ("result", "error"):
                        break
                kind = "result" if reply["type"] == "result" else reply["error"]
                self.replies.append(_Reply(sent, time.monotonic(), kind))
                await asyncio.sleep(0.05)

    def since(self, moment: float) -> list[str]:
        return [r.kind for r in self.replies if r.sent >= moment]

    async def until(self, what: str, moment: float, within_s: float) -> None:
        """Wait until a frame sent after `moment` got `what` ("result" or an error text)."""
        deadline = time.monotonic() + within_s
        while what not in self.since(moment):
            assert time.monotonic() < deadline, f"no {what!r} within {within_s} s; replies since: {self.since(moment)}"
            await asyncio.sleep(0.05)


async def _health(client: Client) -> dict[str, Any]:
    return dict(await (await client.get("/healthz")).json())


async def _executor_up(client: Client) -> str:
    """The `fer_executor_up` line of /metrics."""
    text = await (await client.get("/metrics")).text()
    (line,) = [line for line in text.splitlines() if line.startswith("fer_executor_up ")]
    return line


async def test_an_executor_outage_is_503_with_retry_after_and_the_gauge_follows(
    aiohttp_client: Any, own_mlserver: MLServer, face_jpeg: bytes
) -> None:
    server = own_mlserver
    client: Client = await aiohttp_client(create_app(_settings(server.url, FAULT_TIMEOUT_S)))

    async def photo() -> aiohttp.ClientResponse:
        return await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})

    served = await photo()
    assert served.status == 200, await served.text()
    assert len((await served.json())["faces"]) == 1  # the face reached the inference server
    assert await _executor_up(client) == "fer_executor_up 1.0"

    await asyncio.to_thread(server.stop)  # SIGTERM: its port closes, connections are refused
    for _attempt in range(3):  # every photo of the outage is refused the same way, at once
        refused = await photo()
        assert refused.status == 503, await refused.text()
        assert refused.headers["Retry-After"] == "1"
        assert await refused.json() == {"error": "inference server unavailable", "reason": "executor_unavailable"}
    health = await _health(client)
    assert health["status"] == "degraded" and server.url in health["reason"], health
    assert await _executor_up(client) == "fer_executor_up 0.0"
    errors = await (await client.get("/metrics")).text()
    assert 'fer_frame_errors_total{reason="executor_unavailable"} 3.0' in errors

    await asyncio.to_thread(server.start)  # back on the same port
    await asyncio.to_thread(server.wait_ready)
    deadline = time.monotonic() + 30  # the probe notices within RETRY_INTERVAL_S; a loaded machine is slower
    while (answer := await photo()).status != 200:
        assert answer.status == 503 and time.monotonic() < deadline, await answer.text()
        await asyncio.sleep(0.2)
    assert len((await answer.json())["faces"]) == 1
    assert await _executor_up(client) == "fer_executor_up 1.0"
    assert (await _health(client))["status"] == "ok"


async def test_server_hung_or_killed_mid_load_fails_frames_in_time_and_recovers(
    aiohttp_client: Any, own_mlserver: MLServer, face_jpeg: bytes
) -> None:
    server = own_mlserver
    client: Client = await aiohttp_client(create_app(_settings(server.url, FAULT_TIMEOUT_S)))
    load = _Load(client, face_jpeg)
    loaders = [asyncio.create_task(load.run_one()) for _ in range(2)]
    try:
        start = time.monotonic()
        await load.until("result", start, 30)
        assert (await _health(client))["status"] == "ok"

        # Hung server: the sockets stay open, nothing answers. The deadline fails the frames.
        frozen = time.monotonic()
        await asyncio.to_thread(server.freeze)
        await load.until(UNAVAILABLE, frozen, FAULT_TIMEOUT_S + REPLY_SLACK_S)
        health = await _health(client)
        assert health["status"] == "degraded" and "deadline" in health["reason"], health
        await asyncio.to_thread(server.thaw)
        thawed = time.monotonic()
        await load.until("result", thawed, 30)
        assert (await _health(client))["status"] == "ok"

        # Killed server: connections refused. Frames fail at once, health says why.
        killed = time.monotonic()
        await asyncio.to_thread(server.kill)
        await load.until(UNAVAILABLE, killed, REPLY_SLACK_S)
        health = await _health(client)
        assert health["status"] == "degraded" and server.url in health["reason"], health

        # Back on the same port: service resumes without touching the app.
        # (the server's own calls block: in a thread, so the clients and the app run meanwhile)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.wait_ready)
        back = time.monotonic()
        await load.until("result", back, 30)
        assert (await _health(client))["status"] == "ok"
    finally:
        load.stop.set()
        await asyncio.gather(*loaders)

    assert all(r.kind in ("result", UNAVAILABLE) for r in load.replies), {r.kind for r in load.replies}
    slowest = max(r.received - r.sent for r in load.replies)
    assert slowest <= FAULT_TIMEOUT_S + REPLY_SLACK_S
    failed = sum(r.kind != "result" for r in load.replies)
    print(f"\n{len(load.replies)} frames answered, {failed} with {UNAVAILABLE!r}, slowest reply {slowest:.2f} s")
