"""The /ws protocol end to end: real app, real model, real OpenCV, real sockets.

No assertion is about speed; waits are bounded and generous (the CPU may be shared).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import zlib
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestServer
from testsupport import eventually

from fer_async.labels import EMOTIONS, Box, FrameResult
from fer_async.recognition import Analyzer
from fer_async.schedule import DetectionSchedule
from fer_async.server.app import create_app
from fer_async.server.keys import ANALYZER, METRICS, SETTINGS, WEBSOCKETS

from .helpers import (
    REPLY_TIMEOUT_S,
    Client,
    MakeClient,
    connect,
    iou,
    make_frame_jpeg,
    receive_json,
    reply_for,
)


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose IHDR declares width x height; the body is a token zlib stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def check_result_shape(reply: dict[str, Any]) -> None:
    assert reply["type"] == "result"
    assert {"frame", "width", "height", "faces", "timings", "dropped"} <= set(reply)
    assert set(reply["timings"]) == {"decode", "detect", "model", "queue", "total"}
    for face in reply["faces"]:
        assert len(face["box"]) == 4
        assert face["emotion"] in EMOTIONS
        assert list(face["scores"]) == list(EMOTIONS) and list(face["raw_scores"]) == list(EMOTIONS)
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=0.01)
        assert sum(face["raw_scores"].values()) == pytest.approx(1.0, abs=0.01)
        assert isinstance(face["id"], int) and face["id"] >= 1


async def test_round_trip_with_a_real_face(client: Client, face_jpeg: bytes, face_box_region: Box) -> None:
    ws = await client.ws_connect("/ws")
    hello = await receive_json(ws)
    assert hello == {"type": "hello", "emotions": list(EMOTIONS), "max_frame_bytes": 2_000_000}
    await ws.send_bytes(face_jpeg)
    reply = await reply_for(ws, 1)
    check_result_shape(reply)
    assert (reply["width"], reply["height"]) == (640, 480)
    assert reply["dropped"] == 0
    assert len(reply["faces"]) == 1
    assert iou(reply["faces"][0]["box"], face_box_region) > 0.5, reply["faces"]
    await ws.close()


async def test_frame_ids_count_binary_messages_and_can_be_set(client: Client, face_jpeg: bytes) -> None:
    ws = await connect(client)
    await ws.send_bytes(face_jpeg)
    assert (await reply_for(ws, 1))["type"] == "result"
    await ws.send_str(json.dumps({"type": "frame", "id": 4242}))
    await ws.send_bytes(face_jpeg)
    assert (await reply_for(ws, 4242))["type"] == "result"
    await ws.send_bytes(face_jpeg)  # the count went on: this is the third binary message
    assert (await reply_for(ws, 3))["type"] == "result"
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}
    await ws.close()


async def test_eight_concurrent_clients_each_get_their_own_results(
    make_client: MakeClient, astronaut_bgr: np.ndarray, real_model: Any
) -> None:
    client = await make_client(max_batch=8, max_wait_ms=20.0)
    # The server's own detector (YuNet when ../shared has it) and decode path give the expected boxes.
    reference = Analyzer(real_model, client.app[ANALYZER].detector, detect_threads=1)
    # Each client's face sits somewhere else, at another size: its boxes are its fingerprint. Its
    # 2nd and 3rd frames are searched around the 1st one's face or in whole, as the connection's
    # own schedule says (its period shifted by an offset the server picks): one of these sequences.
    every = client.app[SETTINGS].detect_every
    plans: list[tuple[bytes, list[list[list[Box]]]]] = []
    for i in range(8):
        side = 330 + 20 * (i % 4)
        jpeg = make_frame_jpeg(astronaut_bgr, 10 + 30 * i, 10 + 20 * (i % 3), side)
        sequences = []
        for offset in range(every):
            schedule, boxes = DetectionSchedule(every, offset=offset), []
            for _ in range(3):
                (result,) = reference.analyze([jpeg], [schedule.plan()])
                assert isinstance(result, FrameResult), result
                boxes.append([face.box for face in result.faces])
                schedule.observe(result.width, result.height, boxes[-1])
            assert [len(b) for b in boxes] == [1, 1, 1], f"client {i}: the reference detector should see one face"
            sequences.append(boxes)
        plans.append((jpeg, sequences))
    assert len({tuple(sequences[0][0][0]) for _, sequences in plans}) == 8

    async def run(i: int) -> None:
        jpeg, sequences = plans[i]
        ws = await connect(client)
        got = []
        try:
            for n in range(1, 4):
                await ws.send_str(json.dumps({"type": "frame", "id": 1000 * i + n}))
                await ws.send_bytes(jpeg)
                reply = await reply_for(ws, 1000 * i + n)
                check_result_shape(reply)
                got.append([tuple(f["box"]) for f in reply["faces"]])
        finally:
            await ws.close()
        assert got in sequences, (i, got, sequences)

    reference.close()
    await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(8))), 4 * REPLY_TIMEOUT_S)
    batches = client.app[METRICS].registry.get_sample_value("fer_batch_size_count")
    assert batches is not None and batches >= 1


async def test_flood_keeps_no_backlog_and_others_are_served(make_client: MakeClient, face_jpeg: bytes) -> None:
    client = await make_client()
    flooder = await connect(client)
    other = await connect(client)
    sent = 300
    for _ in range(sent):  # as fast as the socket takes them, never waiting for a reply
        await flooder.send_bytes(face_jpeg)

    # Another client's round trip completes while the flood is being worked off.
    await other.send_bytes(face_jpeg)
    other_reply = await asyncio.wait_for(reply_for(other, 1), REPLY_TIMEOUT_S)
    assert other_reply["type"] == "result" and other_reply["faces"]

    results: list[dict[str, Any]] = []
    notices: list[dict[str, Any]] = []
    while True:  # the newest frame is never replaced: its result is the last one to come
        reply = await receive_json(flooder)
        if reply["type"] == "result":
            results.append(reply)
            if reply["frame"] == sent:
                break
        elif reply["type"] == "dropped":
            notices.append(reply)
        else:
            pytest.fail(f"unexpected reply during a flood: {reply}")
    dropped = results[-1]["dropped"]
    assert len(results) + dropped == sent, (len(results), dropped)  # every frame: analysed or replaced
    assert len(results) < sent // 2, len(results)  # no backlog: most frames were replaced
    assert len({r["frame"] for r in results}) == len(results)
    assert not {n["frame"] for n in notices} & {r["frame"] for r in results}
    metric = client.app[METRICS].registry.get_sample_value("fer_frames_dropped_total", {"source": "ws"})
    assert metric == dropped
    await flooder.close()
    await other.close()


async def test_every_bad_input_gets_its_error_and_the_connection_keeps_working(
    make_client: MakeClient, face_jpeg: bytes
) -> None:
    limit = 100_000
    assert len(face_jpeg) < limit
    client = await make_client(max_frame_bytes=limit)
    ws = await connect(client)
    bad_frames = [
        (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "JPEG or PNG"),
        (face_jpeg[: len(face_jpeg) // 2], "truncated"),
        (png_header_bomb(), "100000x100000"),
        (b"", "empty"),
        (face_jpeg + b"\0" * (limit + 1 - len(face_jpeg)), str(limit)),  # over max_frame_bytes
    ]
    for frame_id, (data, expected) in enumerate(bad_frames, start=1):
        await ws.send_bytes(data)
        reply = await reply_for(ws, frame_id)
        assert reply["type"] == "error" and expected in reply["error"], (frame_id, reply)

    junk = ["hello", "[1, 2]", '{"type": "nope"}', '{"no": "type"}', '{"type": "frame", "id": -1}', "x" * 5000]
    for text in [*junk, "[" * 1000]:  # nested deeper than json's recursion: RecursionError, not ValueError
        await ws.send_str(text)
        reply = await receive_json(ws)
        assert reply["type"] == "error" and "frame" not in reply, (text[:40], reply)
        assert len(reply["error"]) < 200

    await ws.send_bytes(face_jpeg)
    reply = await reply_for(ws, len(bad_frames) + 1)
    assert reply["type"] == "result" and reply["faces"], reply
    errors = client.app[METRICS].registry.get_sample_value("fer_frame_errors_total", {"reason": "bad_image"})
    too_large = client.app[METRICS].registry.get_sample_value("fer_frame_errors_total", {"reason": "too_large"})
    assert (errors, too_large) == (3, 2)  # the pixel bomb and the frame over max_frame_bytes
    await ws.close()


async def test_message_far_over_the_limit_closes_1009_and_others_are_unaffected(
    make_client: MakeClient, face_jpeg: bytes
) -> None:
    client = await make_client(max_frame_bytes=100_000)
    bystander = await connect(client)
    ws = await connect(client)
    await ws.send_bytes(b"\xff" * 300_000)  # beyond twice the limit: refused before buffering
    msg = await ws.receive(timeout=REPLY_TIMEOUT_S)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
    assert ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
    await bystander.send_bytes(face_jpeg)
    assert (await reply_for(bystander, 1))["type"] == "result"
    await bystander.close()
    # Counted as what it is: the close code was not set yet when the error arrived ("protocol").
    registry = client.app[METRICS].registry
    assert registry.get_sample_value("fer_frame_errors_total", {"reason": "too_large"}) == 1.0
    assert registry.get_sample_value("fer_frame_errors_total", {"reason": "protocol"}) in (None, 0.0)


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:1", "null", "https://127.0.0.1"])
async def test_foreign_origin_is_refused_with_403(client: Client, origin: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", origin=origin)
    assert info.value.status == 403
    assert len(client.app[WEBSOCKETS]) == 0


async def test_same_origin_allowed_origins_and_wildcard(make_client: MakeClient) -> None:
    client = await make_client()
    ws = await connect(client, origin=f"http://{client.host}:{client.port}")  # same origin
    await ws.close()
    ws = await connect(client)  # no Origin at all: not a browser
    await ws.close()

    listed = await make_client(allow_origins=("https://app.example.org",))
    ws = await connect(listed, origin="https://APP.example.org:443")
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await listed.ws_connect("/ws", origin="https://other.example.org")

    anyone = await make_client(allow_origins=("*",))
    ws = await connect(anyone, origin="http://evil.example")
    await ws.close()


async def test_max_clients_closes_the_extra_one_with_1013(make_client: MakeClient, face_jpeg: bytes) -> None:
    client = await make_client(max_clients=2)
    first = await connect(client)
    second = await connect(client)
    extra = await client.ws_connect("/ws")
    msg = await extra.receive(timeout=REPLY_TIMEOUT_S)
    assert msg.type == WSMsgType.CLOSE, msg
    assert msg.data == WSCloseCode.TRY_AGAIN_LATER
    assert msg.extra == "server full (2 clients)"
    await first.close()
    await eventually(lambda: len(client.app[WEBSOCKETS]) == 1, what="the first client to be released")
    late = await connect(client)
    await late.send_bytes(face_jpeg)
    assert (await reply_for(late, 1))["type"] == "result"
    await second.close()
    await late.close()


class FlakyModel:
    """The real model, made to raise on demand (and to say something secret when it does)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.fail = False

    def predict(self, faces: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("secret internal detail /etc/shadow")
        return np.asarray(self.model.predict(faces))


async def test_model_that_raises_fails_only_those_frames(
    make_client: MakeClient, real_model: Any, face_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    model = FlakyModel(real_model)
    client = await make_client(model=model)
    ws = await connect(client)
    model.fail = True
    with caplog.at_level(logging.ERROR, logger="fer_async"):
        await ws.send_bytes(face_jpeg)
        reply = await reply_for(ws, 1)
    assert reply == {"type": "error", "frame": 1, "error": "analysis failed"}
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)
    model.fail = False
    await ws.send_bytes(face_jpeg)
    reply = await reply_for(ws, 2)
    assert reply["type"] == "result" and reply["faces"]
    await ws.close()


class GatedModel:
    """The real model, held at a gate so the queue behind it can be filled on purpose."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.entered = threading.Event()
        self.gate = threading.Event()

    def predict(self, faces: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(REPLY_TIMEOUT_S)
        return np.asarray(self.model.predict(faces))


async def test_overloaded_batcher_answers_server_busy(
    make_client: MakeClient, real_model: Any, face_jpeg: bytes
) -> None:
    model = GatedModel(real_model)
    client = await make_client(model=model, max_batch=1, max_queue=1)
    a, b, c = [await connect(client) for _ in range(3)]
    try:
        await a.send_bytes(face_jpeg)  # taken into a batch, held at the gate
        assert await asyncio.to_thread(model.entered.wait, REPLY_TIMEOUT_S)
        await b.send_bytes(face_jpeg)  # fills the one queue slot
        await asyncio.sleep(0.5)
        await c.send_bytes(face_jpeg)  # finds the queue full
        assert await reply_for(c, 1) == {"type": "error", "frame": 1, "error": "server busy"}
    finally:
        model.gate.set()
    assert (await reply_for(a, 1))["type"] == "result"
    assert (await reply_for(b, 1))["type"] == "result"
    await c.send_bytes(face_jpeg)
    assert (await reply_for(c, 2))["type"] == "result"
    for ws in (a, b, c):
        await ws.close()


async def test_shutdown_with_clients_connected_sends_1001_and_finishes(
    base_settings: Any, real_model: Any, face_jpeg: bytes
) -> None:
    app: web.Application = create_app(base_settings, model=real_model)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        sockets = [await session.ws_connect(server.make_url("/ws")) for _ in range(3)]
        for ws in sockets:
            assert (await receive_json(ws))["type"] == "hello"
        await sockets[0].send_bytes(face_jpeg)  # one with a frame in flight
        await eventually(lambda: len(app[WEBSOCKETS]) == 3, what="3 clients registered")

        async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
            """The code of the close frame received (see test_main: not the client's close_code)."""
            while True:
                msg = await ws.receive(timeout=REPLY_TIMEOUT_S)
                if msg.type is WSMsgType.CLOSE:
                    return int(msg.data)
                if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                    return None  # no close frame: the connection was dropped

        waiters = [asyncio.create_task(close_code(ws)) for ws in sockets]
        await asyncio.wait_for(server.close(), 30.0)  # runs on_shutdown and every cleanup context
        codes = await asyncio.wait_for(asyncio.gather(*waiters), 10.0)
        assert codes == [WSCloseCode.GOING_AWAY] * 3
    finally:
        await session.close()
