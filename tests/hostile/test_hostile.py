"""Hostile input against the real server on a real socket; a canary client must stay served.

Every test runs a fresh real app (real model, real OpenCV) on 127.0.0.1 with small limits
(`max_frame_bytes` 200,000, `max_clients` 4), abuses it one way, then checks that:

* the abuse got the documented answer (an error message, a close code, a status),
* a well-behaved "canary" client connected the whole time still gets a correct result,
* nothing a client received contains a traceback or a 500 (`LiveServer.assert_no_leaks`),
* no file appeared in the repository, the video directory or temp (`no_disk_writes`).

No assertion is about speed. Waits are bounded and generous (the CPU may be shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import WSCloseCode
from testsupport import eventually, jpeg_scan_bomb

from fer_async.labels import EMOTIONS
from fer_async.server.connection import Connection
from fer_async.server.keys import METRICS, VIDEO_HUB, WEBSOCKETS

from .conftest import (
    MAX_CLIENTS,
    MAX_FRAME_BYTES,
    REPLY_TIMEOUT_S,
    VIDEO_NAME,
    Canary,
    LiveServer,
    lying_png,
    png_bomb,
    read_status_kb,
    reset_peak_rss,
    serve,
    small_face_jpeg,
)
from .rawws import OP_BINARY, OP_CLOSE, OP_TEXT, http_get_raw, open_socket, read_head, ws_connect_raw, ws_frame


async def connect(live: LiveServer, http: aiohttp.ClientSession, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(live.ws_url, origin=live.base_url, **kwargs)
    hello = await receive_json(live, ws)
    assert hello["type"] == "hello" and hello["emotions"] == list(EMOTIONS)
    return ws


async def receive_json(live: LiveServer, ws: aiohttp.ClientWebSocketResponse, within_s: float = REPLY_TIMEOUT_S) -> Any:
    msg = await ws.receive(timeout=within_s)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text message, got {msg.type!r} {msg.data!r}"
    live.record(msg.data)
    return json.loads(msg.data)


async def reply_for(live: LiveServer, ws: aiohttp.ClientWebSocketResponse, frame_id: int) -> dict[str, Any]:
    """The result/error of `frame_id`, skipping other messages."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while True:
        reply = await receive_json(live, ws, max(0.1, deadline - time.monotonic()))
        if reply.get("frame") == frame_id and reply["type"] in ("result", "error"):
            return dict(reply)


async def expect_close(live: LiveServer, ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; returns the close code (the reason goes to the transcript)."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type == aiohttp.WSMsgType.CLOSE:
            live.record(str(msg.extra or ""))
            live.close_reasons.append(str(msg.extra or ""))
            return ws.close_code
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code
        if msg.type == aiohttp.WSMsgType.TEXT:
            live.record(msg.data)


def open_sockets(live: LiveServer) -> int:
    return len(live.app[WEBSOCKETS])


def metric_value(live: LiveServer, name: str, **labels: str) -> float:
    value = live.app[METRICS].registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else float(value)


# ------------------------------------------------------------------------- bad frames


@pytest.mark.parametrize("size", [1, 17, 5_000, 150_000])
async def test_random_bytes(server: LiveServer, http: aiohttp.ClientSession, canary: Canary, size: int) -> None:
    ws = await connect(server, http)
    junk = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    await ws.send_bytes(junk)
    reply = await reply_for(server, ws, 1)
    assert reply["type"] == "error" and "JPEG or PNG" in reply["error"], reply
    await ws.send_bytes(canary.frame)  # the same connection still works afterwards
    assert (await reply_for(server, ws, 2))["type"] == "result"
    await canary.roundtrip()
    await ws.close()


def _corrupt_variants(jpeg: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    sos = jpeg.index(b"\xff\xda")
    garbage = rng.integers(0, 256, len(jpeg) - sos - 200, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    return {
        "empty": b"",
        "soi only": jpeg[:3],
        "header only": jpeg[:sos],
        "cut in half": jpeg[: len(jpeg) // 2],
        "cut before EOI": jpeg[:-2],
        # A valid header (SOI, tables, SOF, SOS) then random entropy-coded data, then EOI.
        "garbage body": jpeg[: sos + 14] + garbage + b"\xff\xd9",
        # Header claims 65535x65535: caught by the pixel limit before any decoding.
        "huge SOF": _patch_sof(jpeg, 65535, 65535),
        "zero SOF": _patch_sof(jpeg, 0, 0),
        "png magic, jpeg body": b"\x89PNG\r\n\x1a\n" + jpeg[3:],
    }


def _patch_sof(jpeg: bytes, width: int, height: int) -> bytes:
    pos = jpeg.index(b"\xff\xc0") + 5  # marker, length (2), precision (1): then height, width
    return jpeg[:pos] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[pos + 4 :]


async def test_truncated_and_corrupt_jpegs(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary, face_jpeg: bytes
) -> None:
    ws = await connect(server, http)
    frame_id = 0
    for name, data in _corrupt_variants(face_jpeg).items():
        await ws.send_bytes(data)
        frame_id += 1
        reply = await reply_for(server, ws, frame_id)
        if name == "garbage body":
            # libjpeg may decode noise into some picture; what matters is a clean answer.
            assert reply["type"] in ("error", "result"), (name, reply)
        else:
            assert reply["type"] == "error", (name, reply)
            assert isinstance(reply["error"], str) and reply["error"], (name, reply)
        await canary.roundtrip()
    await ws.send_bytes(face_jpeg)
    assert (await reply_for(server, ws, frame_id + 1))["type"] == "result"
    await ws.close()


@pytest.mark.parametrize("bomb", ["genuine", "lying header"])
async def test_png_bomb_is_refused_without_allocating(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary, bomb: str
) -> None:
    data = png_bomb() if bomb == "genuine" else lying_png()
    assert len(data) < MAX_FRAME_BYTES  # it is the pixel count that must stop it, not the byte size
    ws = await connect(server, http)
    can_measure = reset_peak_rss()
    rss_before = read_status_kb("VmRSS")
    await ws.send_bytes(data)
    reply = await reply_for(server, ws, 1)
    assert reply["type"] == "error", reply
    assert "20000x20000" in reply["error"] and "limit" in reply["error"], reply
    await canary.roundtrip()
    peak = read_status_kb("VmHWM")
    if can_measure and rss_before is not None and peak is not None:
        # Decoding would take 400 MB (grey) to 1.2 GB (BGR); the refusal must cost next to nothing.
        assert peak - rss_before < 200 * 1024, f"peak RSS rose by {(peak - rss_before) / 1024:.0f} MB"
    await ws.close()


async def test_jpeg_scan_bomb_is_refused_before_decoding(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary
) -> None:
    """A progressive JPEG that repeats its last scan thousands of times: small, valid to
    libjpeg, and decoded at a cost of pixels x scans. It must be refused from its markers."""
    bomb = jpeg_scan_bomb(3000)
    assert len(bomb) < MAX_FRAME_BYTES
    ws = await connect(server, http)
    await ws.send_bytes(bomb)
    reply = await reply_for(server, ws, 1)
    assert reply["type"] == "error" and "scans" in reply["error"], reply
    await canary.roundtrip()
    async with http.post(f"{server.base_url}/api/predict", data=bomb, headers={"Content-Type": "image/jpeg"}) as resp:
        body = await resp.text()
        server.record(body)
        assert resp.status == 400 and "scans" in body, (resp.status, body)
    await ws.close()


async def test_frame_just_over_the_limit_gets_an_error(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary, face_jpeg: bytes
) -> None:
    """Up to twice max_frame_bytes: a JSON error for that frame, the connection stays open."""
    ws = await connect(server, http)
    padded = face_jpeg + b"\x00" * (MAX_FRAME_BYTES + 1 - len(face_jpeg))  # bytes after EOI: still a JPEG
    assert len(padded) == MAX_FRAME_BYTES + 1
    await ws.send_bytes(padded)
    reply = await reply_for(server, ws, 1)
    assert reply["type"] == "error" and str(MAX_FRAME_BYTES) in reply["error"], reply
    await ws.send_bytes(face_jpeg)
    assert (await reply_for(server, ws, 2))["type"] == "result"
    await canary.roundtrip()
    await ws.close()


@pytest.mark.parametrize("factor", [3, 20])
async def test_frame_far_over_the_limit_closes_1009(server: LiveServer, canary: Canary, factor: int) -> None:
    """Over twice max_frame_bytes: refused from the frame header, before buffering: close 1009."""
    conn = await ws_connect_raw(server.host, server.port, origin=server.base_url)
    assert conn.status == 101
    opcode, hello = await conn.read_frame()
    assert opcode == OP_TEXT and json.loads(hello)["type"] == "hello"
    conn.writer.write(ws_frame(OP_BINARY, os.urandom(MAX_FRAME_BYTES * factor)))
    code = None
    try:
        while code is None:
            opcode, payload = await asyncio.wait_for(conn.read_frame(), REPLY_TIMEOUT_S)
            server.record(payload)
            if opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the server may hang up hard while our bytes are still arriving
    finally:
        conn.close_now()
    assert code in (WSCloseCode.MESSAGE_TOO_BIG, None), code
    if factor == 3:
        assert code == WSCloseCode.MESSAGE_TOO_BIG  # small enough that the close frame always arrives first
    await eventually(lambda: open_sockets(server) == 1, what="the oversize client's socket to be released")
    await canary.roundtrip()


# --------------------------------------------------------------------------- junk text


JUNK_TEXT = [
    "hello",
    "{",
    "{'type': 'ping'}",
    "\x00\x01\x02",
    "null",
    "42",
    '"ping"',
    "[1, 2, 3]",
    "{}",
    '{"type": 5}',
    '{"type": null}',
    '{"type": ["ping"]}',
    '{"type": "frame", "id": -1}',
    '{"type": "frame", "id": "7"}',
    '{"type": "frame", "id": 1e308}',
    '{"type": "frame", "id": 99999999999999999999999}',
    '{"type": "result", "frame": 1}',
    '{"type": "' + "x" * 900 + '"}',
    json.dumps({"type": "ping", "pad": "y" * 5_000}),  # over the text limit
    "[" * 100_000,  # deeply nested: must not reach the JSON parser's recursion
    json.dumps({"type": "frame", "junk": list(range(30_000))}),
]


async def test_junk_text_messages(server: LiveServer, http: aiohttp.ClientSession, canary: Canary) -> None:
    ws = await connect(server, http)
    for text in JUNK_TEXT:
        await ws.send_str(text)
        reply = await receive_json(server, ws)
        assert reply["type"] == "error" and isinstance(reply["error"], str), (text[:60], reply)
        assert "frame" not in reply, (text[:60], reply)
        assert len(reply["error"]) < 300, reply  # never echoes a huge input back
    await ws.send_str('{"type": "ping"}')
    assert (await receive_json(server, ws)) == {"type": "pong"}
    await ws.send_bytes(canary.frame)  # frame ids still count binary messages from 1
    assert (await reply_for(server, ws, 1))["type"] == "result"
    await canary.roundtrip()
    await ws.close()


async def test_text_over_the_message_limit_closes_1009(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary
) -> None:
    ws = await connect(server, http)
    await ws.send_str("z" * (MAX_FRAME_BYTES * 3))
    assert await expect_close(server, ws) == WSCloseCode.MESSAGE_TOO_BIG
    await canary.roundtrip()


# ------------------------------------------------------------------------------ flooding


async def test_flood_1000_frames_per_second(server: LiveServer, http: aiohttp.ClientSession, canary: Canary) -> None:
    """Latest wins: frames pile into one slot, never into a queue; every frame is accounted for."""
    frame = small_face_jpeg()
    ws = await connect(server, http)
    results: list[dict[str, Any]] = []
    notices: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []

    async def read() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            server.record(msg.data)
            reply = json.loads(msg.data)
            {"result": results, "dropped": notices, "error": errors}[reply["type"]].append(reply)

    reader = asyncio.create_task(read())
    sent = 0
    started = time.monotonic()
    canary_task = None
    while (elapsed := time.monotonic() - started) < 3.0:
        # Pace at 1,000 frames/s; sleep(0) when behind, so the loop always yields.
        await asyncio.sleep(max(0.0, sent / 1000.0 - elapsed))
        await ws.send_bytes(frame)
        sent += 1
        if canary_task is None and elapsed > 1.0:
            canary_task = asyncio.create_task(canary.roundtrip())  # served in the middle of the flood
    flood_seconds = time.monotonic() - started
    assert canary_task is not None
    await canary_task
    # The newest frame is never replaced, so its result comes; then nothing more is pending.
    await eventually(lambda: any(r["frame"] == sent for r in results), REPLY_TIMEOUT_S, "the last frame's result")
    await asyncio.sleep(1.0)
    await ws.close()
    await asyncio.wait_for(reader, 10.0)

    assert not errors, errors[:3]
    final_dropped = max(r["dropped"] for r in results)
    assert len(results) + final_dropped == sent, (len(results), final_dropped, sent)  # each frame: result or dropped
    assert len({r["frame"] for r in results}) == len(results)  # no frame answered twice
    assert all(n["frame"] not in {r["frame"] for r in results} for n in notices)
    assert results[-1]["frame"] == sent  # the freshest frame was the one analysed last
    # No backlog: far fewer results than frames. Analysing a frame takes milliseconds at the very
    # least, so at ~1,000 frames/s most of them must have been replaced unanalysed.
    if sent >= 500:
        assert len(results) <= sent // 2, (len(results), sent)
    assert final_dropped > 0
    print(f"flood: sent {sent} in {flood_seconds:.1f} s, {len(results)} results, {final_dropped} dropped")
    await canary.roundtrip()


async def test_more_clients_than_max_clients_get_1013(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary
) -> None:
    others = [await connect(server, http) for _ in range(MAX_CLIENTS - 1)]  # + the canary = full
    assert open_sockets(server) == MAX_CLIENTS
    extra = await http.ws_connect(server.ws_url, origin=server.base_url)
    code = await expect_close(server, extra)
    assert code == WSCloseCode.TRY_AGAIN_LATER, code
    assert "full" in server.close_reasons[-1], server.close_reasons  # the reason tells the user why
    await canary.roundtrip()
    # Leaving frees a slot for a new client.
    await others.pop().close()
    await eventually(lambda: open_sockets(server) == MAX_CLIENTS - 1, what="a slot to free up")
    late = await connect(server, http)
    await late.send_bytes(canary.frame)
    assert (await reply_for(server, late, 1))["type"] == "result"
    for ws in [*others, late]:
        await ws.close()
    await canary.roundtrip()


FILL_LIMIT_S = 90.0  # bound on filling the socket buffers of a client that never reads


def _server_side(server: LiveServer) -> list[Connection]:
    connections = server.app[WEBSOCKETS]
    return list(connections)


def _write_buffer(connection: Connection) -> int:
    transport = connection.transport
    return 0 if transport is None else int(transport.get_write_buffer_size())


async def test_client_that_never_reads_stays_bounded(server: LiveServer, canary: Canary, face_jpeg: bytes) -> None:
    """A client sends real frames (and pings) for 15 s and never reads a byte of the replies.

    The canary keeps being served, the server holds at most one waiting frame for it (the
    mailbox), and what queues up for it in the server's user space stays small: the kernel's
    socket buffers absorb the unread replies, and once they are full the server stops writing.
    """
    conn = await ws_connect_raw(server.host, server.port, origin=server.base_url, rcvbuf=4096, limit=1024)
    assert conn.status == 101
    message = ws_frame(OP_BINARY, face_jpeg) + ws_frame(OP_TEXT, b'{"type":"ping"}') * 50
    started = time.monotonic()
    rss_before = read_status_kb("VmRSS") or 0
    peak_buffer = 0
    next_canary = started
    try:
        while time.monotonic() - started < 15.0:
            conn.writer.write(message)
            with contextlib.suppress(TimeoutError):  # the server stopped reading us: its right
                await asyncio.wait_for(conn.writer.drain(), 1.0)
            for ws in _server_side(server):
                peak_buffer = max(peak_buffer, _write_buffer(ws))
            if time.monotonic() >= next_canary:
                await canary.roundtrip()
                next_canary = time.monotonic() + 3.0
            await asyncio.sleep(0.1)
        assert len(_server_side(server)) <= 2
        await canary.roundtrip()
    finally:
        conn.close_now()
    rss_after = read_status_kb("VmRSS") or 0
    assert peak_buffer < 2 * 2**20, f"{peak_buffer} bytes queued in user space for a client that never reads"
    assert rss_after - rss_before < 150 * 1024, f"RSS grew by {(rss_after - rss_before) / 1024:.0f} MB"
    await eventually(
        lambda: len(_server_side(server)) == 1, what="the non-reader's socket to be released after it left"
    )
    await canary.roundtrip()


async def test_client_that_never_reads_is_evicted(server: LiveServer, canary: Canary) -> None:
    """The documented close: a client whose replies cannot be sent for SEND_TIMEOUT_S is closed
    (1008), its slot is freed, and its connection is really dropped, even though it never
    completes the closing handshake (it cannot: it reads nothing).

    Tiny junk frames get ~60-byte error replies each, the cheapest way to fill the socket
    buffers. "Really dropped" is seen from this side: once the server aborts the connection,
    our own writes fail with a reset; a socket the server merely stopped reading just blocks.
    """
    conn = await ws_connect_raw(server.host, server.port, origin=server.base_url, rcvbuf=4096, limit=1024)
    assert conn.status == 101
    junk = ws_frame(OP_BINARY, b"x") * 2000
    started = time.monotonic()
    released_at: float | None = None
    reset = False
    try:
        while time.monotonic() - started < FILL_LIMIT_S:
            try:
                conn.writer.write(junk)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.writer.drain(), 1.0)
            except ConnectionError:
                reset = True
                break
            if released_at is None and len(_server_side(server)) == 1:  # only the canary is left
                released_at = time.monotonic()
                print(f"the server released the non-reader's slot after {released_at - started:.0f} s")
                await canary.roundtrip()
            if released_at is not None and time.monotonic() - released_at > 20.0:
                break
            await asyncio.sleep(0.02)
    finally:
        conn.close_now()
    assert reset or released_at is not None, f"the server kept a client that read nothing for {FILL_LIMIT_S:.0f} s"
    await eventually(lambda: len(_server_side(server)) == 1, what="the slot to be free")
    assert metric_value(server, "fer_connected_clients") == 1.0
    await canary.roundtrip()
    assert reset, "the slot was freed but the connection was not: it lingers with its buffers (no reset in 20 s)"


async def test_disconnect_mid_frame(server: LiveServer, canary: Canary, face_jpeg: bytes) -> None:
    """TCP closed half-way through a binary message, and through the handshake itself."""
    for how in ("abort", "close"):
        conn = await ws_connect_raw(server.host, server.port, origin=server.base_url)
        assert conn.status == 101
        await conn.read_frame()  # hello
        whole = ws_frame(OP_BINARY, face_jpeg)
        conn.writer.write(whole[: len(whole) // 2])
        await conn.writer.drain()
        await eventually(lambda: open_sockets(server) == 2, what="the raw client to register")
        if how == "abort":
            conn.close_now()
        else:
            conn.writer.close()
        await eventually(lambda: open_sockets(server) == 1, what=f"the half-sent socket ({how}) to be released")
        await canary.roundtrip()
    # Half a handshake.
    raw = await open_socket(server.host, server.port)
    raw.writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConn")
    await raw.writer.drain()
    raw.close_now()
    # A frame, then a close frame in the middle of a fragmented message.
    conn = await ws_connect_raw(server.host, server.port, origin=server.base_url)
    conn.writer.write(ws_frame(OP_BINARY, face_jpeg[:100], fin=False) + ws_frame(OP_CLOSE, b"\x03\xe8"))
    await conn.writer.drain()
    await asyncio.sleep(0.5)
    conn.close_now()
    await eventually(lambda: open_sockets(server) == 1, what="sockets to be released")
    await canary.roundtrip()


async def test_disconnect_mid_mjpeg(server: LiveServer, canary: Canary) -> None:
    hub = server.app[VIDEO_HUB]
    for how in ("abort", "close"):
        conn = await open_socket(server.host, server.port)
        conn.writer.write(f"GET /video/{VIDEO_NAME} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await conn.writer.drain()
        status, head = await read_head(conn.reader)
        assert status == 200, head
        assert b"multipart/x-mixed-replace" in head and b"boundary=frame" in head
        # Read into the first part (its JPEG), then vanish.
        got = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT_S)
        assert b"--frame" in got and b"image/jpeg" in got
        await asyncio.wait_for(conn.reader.readexactly(100), REPLY_TIMEOUT_S)
        assert hub.viewers == 1
        if how == "abort":
            conn.close_now()
        else:
            conn.writer.close()
        await eventually(lambda: hub.viewers == 0 and hub.producers == 0, what=f"the MJPEG viewer ({how}) to go")
        await canary.roundtrip()
    assert metric_value(server, "fer_video_viewers") == 0.0


# ------------------------------------------------------------------------------- HTTP edges


TRAVERSAL_TARGETS = [
    "/video/../fer_async/config.py",
    "/video/../../../../etc/passwd",
    "/video/..%2f..%2f..%2fetc%2fpasswd",
    "/video/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/video/%2e%2e/%2e%2e/etc/passwd",
    "/video/%2E%2E%2Fdemo.mp4",
    "/video/..%5c..%5cwindows%5cwin.ini",
    "/video//etc/passwd",
    "/video/%2fetc%2fpasswd",
    "/video/%2Fproc%2Fself%2Fenviron",
    "/video/.demo.mp4",
    "/video/demo.mp4%00.txt",
    "/video/demo.mp4/",
    "/video/nonexistent.mp4",
    "/video/C:%5cwindows%5cwin.ini",
]


async def test_video_path_traversal_is_404(server: LiveServer, canary: Canary) -> None:
    for target in TRAVERSAL_TARGETS:
        status, response = await http_get_raw(server.host, server.port, target)
        server.record(response)
        assert status == 404, (target, status, response[:300])
        assert b"root:" not in response and b"FER_" not in response
    status, response = await http_get_raw(server.host, server.port, "/videos")
    assert status == 200 and VIDEO_NAME.encode() in response
    await canary.roundtrip()


async def test_foreign_origin_is_403(server: LiveServer, http: aiohttp.ClientSession, canary: Canary) -> None:
    for origin in ("http://evil.example", "http://127.0.0.1:1", "null", "https://127.0.0.1.evil.example"):
        conn = await ws_connect_raw(server.host, server.port, origin=origin)
        server.record(conn.head)
        assert conn.status == 403, (origin, conn.head)
        conn.close_now()
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(server.ws_url, origin=origin)
        assert info.value.status == 403
    assert open_sockets(server) == 1
    await canary.roundtrip()


# ------------------------------------------------------------------------ a failing model


class RaisingWrapper:
    """The real model, except that it raises on the calls a test asks it to."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.fail_calls = 0
        self.calls = 0

    def predict(self, faces: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_calls > 0:
            self.fail_calls -= 1
            raise RuntimeError("secret internal failure /opt/model/weights.h5 line 42")
        return np.asarray(self.model.predict(faces))

    def predict_views(self, faces: np.ndarray, views: Any) -> np.ndarray:
        return self.predict(faces)  # the views do not matter here: each call may raise

    def __getattr__(self, name: str) -> Any:  # device, flip_tta, ... whatever the app reads
        return getattr(self.model, name)


async def test_model_that_raises(hostile_settings: Any, real_model: Any, face_jpeg: bytes) -> None:
    wrapper = RaisingWrapper(real_model)
    async with serve(hostile_settings, wrapper) as live, aiohttp.ClientSession() as http:
        canary = Canary(live, http, face_jpeg)
        await canary.connect()
        await canary.roundtrip()
        ws = await connect(live, http)
        for frame_id in (1, 2, 3):
            wrapper.fail_calls = 1 if frame_id != 2 else 0
            await ws.send_bytes(face_jpeg)
            reply = await reply_for(live, ws, frame_id)
            if frame_id == 2:
                assert reply["type"] == "result" and reply["faces"], reply
            else:
                assert reply["type"] == "error" and reply["error"] == "analysis failed", reply
                assert "secret" not in json.dumps(reply)
        wrapper.fail_calls = 0
        await ws.send_bytes(face_jpeg)
        assert (await reply_for(live, ws, 4))["type"] == "result"
        await canary.roundtrip()
        # HTTP too: a failing model is a clean 5xx/JSON error, never a traceback.
        wrapper.fail_calls = 1
        async with http.post(
            f"{live.base_url}/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"}
        ) as resp:
            body = await resp.text()
            live.record(body)
            assert resp.status in (500, 503), (resp.status, body)
            assert "secret" not in body
        wrapper.fail_calls = 0
        await canary.roundtrip()
        await ws.close()
        assert canary.ws is not None
        await canary.ws.close()
        live.assert_no_leaks()


async def test_metrics_and_health_survive(server: LiveServer, http: aiohttp.ClientSession, canary: Canary) -> None:
    """After a burst of mixed abuse the service still reports healthy and renders metrics."""
    ws = await connect(server, http)
    for data in (b"", os.urandom(100), png_bomb(), lying_png()):
        await ws.send_bytes(data)
    await ws.send_str("junk")
    await ws.close()
    async with http.get(f"{server.base_url}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{server.base_url}/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200 and "fer_frame_errors" in text
    await canary.roundtrip()


async def test_shutdown_closes_clients_with_1001(hostile_settings: Any, real_model: Any, face_jpeg: bytes) -> None:
    """Stopping the server says goodbye (1001) to WebSocket clients, ends MJPEG streams, and
    finishes in bounded time even with a frame in flight and a viewer attached."""
    async with aiohttp.ClientSession() as http:
        async with serve(hostile_settings, real_model) as live:
            ws = await connect(live, http)
            await ws.send_bytes(face_jpeg)
            assert (await reply_for(live, ws, 1))["type"] == "result"
            viewer = await open_socket(live.host, live.port)
            viewer.writer.write(f"GET /video/{VIDEO_NAME} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status, _ = await read_head(viewer.reader)
            assert status == 200

            async def read_until_closed() -> list[aiohttp.WSMessage]:
                # A real client keeps reading, so it can answer the server's close frame.
                seen = []
                while True:
                    msg = await ws.receive(timeout=REPLY_TIMEOUT_S)
                    seen.append(msg)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return seen

            reader = asyncio.create_task(read_until_closed())
            await ws.send_bytes(face_jpeg)  # in flight while the server stops
            stopping = time.monotonic()
        # serve() has run runner.cleanup(): on_shutdown closed the sockets, the contexts closed.
        assert time.monotonic() - stopping < 30.0
        seen = await asyncio.wait_for(reader, REPLY_TIMEOUT_S)
        for msg in seen:
            if msg.type == aiohttp.WSMsgType.TEXT:
                live.record(msg.data)
                assert json.loads(msg.data)["type"] in ("result", "error"), msg.data
        assert seen[-1].type == aiohttp.WSMsgType.CLOSE, seen
        assert ws.close_code == WSCloseCode.GOING_AWAY, seen
        rest = await asyncio.wait_for(viewer.reader.read(), REPLY_TIMEOUT_S)  # the stream ended: EOF
        viewer.close_now()
        assert b"Traceback" not in rest
        live.assert_no_leaks()
