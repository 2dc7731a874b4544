"""Requests that are not valid HTTP, against the real server on a real socket; a canary stays served.

aiohttp answers them itself (400, before any handler runs), and logged each at ERROR with a
traceback: any client could fill the server's log with tracebacks that say nothing is wrong
with the server. They are the client's mistake, as a cut-off upload is: one INFO line each.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from .conftest import Canary, LiveServer
from .rawws import open_socket, read_head

# Each is refused by aiohttp's parser, each with a different HttpProcessingError.
MALFORMED = {
    "bad-chunk-size": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "length-and-chunked": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "negative-length": b"POST /api/analyses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: -5\r\n\r\n",
    "length-overflow": b"POST /api/analyses HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n",
    "header-without-colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "header-too-long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 20_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_is_a_400_and_one_info_line_not_an_error(
    server: LiveServer, canary: Canary, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.INFO)
    conn = await open_socket("127.0.0.1", server.port)
    try:
        conn.writer.write(request_bytes)
        await conn.writer.drain()
        status, head = await read_head(conn.reader)
    finally:
        conn.writer.close()
    assert status == 400, head
    await asyncio.sleep(0.1)  # the log line is written as the response goes
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == []
    lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]
    assert "\n" not in lines[0].getMessage() and "127.0.0.1" in lines[0].getMessage()
    await canary.roundtrip()


async def test_a_quiet_server_logs_no_line_for_them(
    server: LiveServer, canary: Canary, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # --log-level warning: what was an ERROR becomes nothing
    conn = await open_socket("127.0.0.1", server.port)
    try:
        conn.writer.write(MALFORMED["bad-chunk-size"])
        await conn.writer.drain()
        status, _ = await read_head(conn.reader)
    finally:
        conn.writer.close()
    assert status == 400
    await asyncio.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"] == []
    await canary.roundtrip()


async def _head_after_expect(server: LiveServer, target: str, content_type: str, length: int) -> tuple[int, bytes, Any]:
    """The first answer to a POST's headers with `Expect: 100-continue` (curl's for bodies over 1 MB), no body sent."""
    conn = await open_socket("127.0.0.1", server.port)
    conn.writer.write(
        f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\n\r\n".encode("ascii")
    )
    await conn.writer.drain()
    status, head = await read_head(conn.reader)
    return status, head, conn


TOO_LARGE_AFTER_EXPECT = {
    "photo": ("/api/predict", "image/jpeg", 300_000_000),
    "video": ("/api/analyses", "multipart/form-data; boundary=b", 300_000_000),
    "json": ("/api/analyses", "application/json", 100_000),
}


@pytest.mark.parametrize("request_line", TOO_LARGE_AFTER_EXPECT.values(), ids=TOO_LARGE_AFTER_EXPECT.keys())
async def test_a_body_too_large_is_refused_before_100_continue(
    server: LiveServer, canary: Canary, request_line: tuple[str, str, int]
) -> None:
    status, head, conn = await _head_after_expect(server, *request_line)
    try:
        assert status == 413, head
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split()[1]
        )
        body = json.loads(await asyncio.wait_for(conn.reader.readexactly(length), 10))
        assert "larger than" in body["error"] or "at most" in body["error"], body
    finally:
        conn.writer.close()
    await canary.roundtrip()


async def test_a_photo_within_the_limits_gets_100_continue_then_its_faces(server: LiveServer, face_jpeg: bytes) -> None:
    status, head, conn = await _head_after_expect(server, "/api/predict", "image/jpeg", len(face_jpeg))
    try:
        assert status == 100, head
        conn.writer.write(face_jpeg)
        await conn.writer.drain()
        status, head = await read_head(conn.reader)
        assert status == 200, head
    finally:
        conn.writer.close()
