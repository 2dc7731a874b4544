"""Clients that fail on their side, on a server run as `run_app` runs it: an upload that goes away,
stalls, sends a malformed multipart body or a name that is not UTF-8, or floods the analysis
uploads; a WebSocket handshake reset half-way. Each gets a clear 4xx (where anyone is left to
read it), no ERROR in the log, no file left, and the server serves on."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from analyze_clips import face_clip

from fer_async.config import Settings
from fer_async.server import uploads
from fer_async.server.app import create_app
from fer_async.server.job_routes import ANALYSIS_JOBS
from fer_async.server.jobs import MAX_RUNNING_JOBS

from .helpers import wait_for_job


class Server:
    """The real app behind a runner like `run_app`'s: a client that goes away does not cancel the
    handler, its next read fails instead (the test client's server cancels, and hides that path)."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}"

    def uploads_left(self) -> list[str]:
        return sorted(p.name for p in self.app[ANALYSIS_JOBS].uploads_dir.glob("upload-*"))

    async def send(self, head: bytes, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(head + body)
        await writer.drain()
        return reader, writer

    async def healthy(self) -> bool:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/healthz") as response:
            return response.status == 200


@pytest.fixture
async def server(real_model: Any, base_settings: Settings) -> AsyncIterator[Server]:
    app = create_app(base_settings, model=real_model)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Server(app, runner.addresses[0][1])
    finally:
        await runner.cleanup()


def multipart(field: str, filename: bytes, data: bytes, boundary: bytes = b"b") -> bytes:
    return (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="'
        + field.encode()
        + b'"; filename="'
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )


def request_head(path: str, content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n".encode()


async def until(condition: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(("path", "field"), [("/api/analyses", "video"), ("/api/predict", "image")])
async def test_an_upload_cut_off_by_its_client_is_an_info_line_not_an_error(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str, field: str
) -> None:
    caplog.set_level(logging.INFO, logger="fer_async.server.uploads")
    body = multipart(field, b"face.mp4", face_clip(tmp_path / "face.mp4", frames=24).read_bytes())
    _, writer = await server.send(
        request_head(path, "multipart/form-data; boundary=b", len(body)), body[: len(body) // 2]
    )
    if path == "/api/analyses":
        await until(server.uploads_left)  # the server has the upload's file open
        assert server.uploads_left()
    else:
        await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()
    await until(lambda: "cut off by its client" in caplog.text)
    assert f"POST {path}: the upload was cut off by its client" in caplog.text
    assert errors(caplog) == [] and server.uploads_left() == []
    assert await server.healthy()


@pytest.mark.parametrize("cut", [9, 12], ids=["in-the-body", "in-a-parts-headers"])
@pytest.mark.parametrize(("path", "field"), [("/api/analyses", "video"), ("/api/predict", "image")])
async def test_an_upload_that_stops_arriving_is_dropped_with_408(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, path: str, field: str, cut: int
) -> None:
    # Headers, a few bytes, then silence: it held one of the few upload slots for as long as it liked.
    monkeypatch.setattr(uploads, "UPLOAD_IDLE_S", 0.5)
    body = multipart(field, b"a.mp4", b"abc")[:-cut]  # without its closing boundary, or more
    reader, writer = await server.send(request_head(path, "multipart/form-data; boundary=b", 100_000), body)
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert errors(caplog) == [] and server.uploads_left() == []
    assert await server.healthy()


async def test_a_trickle_of_small_parts_meets_one_deadline_for_the_request(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each junk part used to get a deadline of its own: a byte, a pause under the idle limit, the
    # next part, and a photo slot was held for as long as the client liked.
    monkeypatch.setattr(uploads, "UPLOAD_IDLE_S", 1.0)
    monkeypatch.setattr(uploads, "MIN_UPLOAD_DEADLINE_S", 2.0)
    monkeypatch.setattr(uploads, "MIN_UPLOAD_RATE", 1 << 40)  # the deadline: MIN_UPLOAD_DEADLINE_S
    reader, writer = await server.send(request_head("/api/predict", "multipart/form-data; boundary=b", None), b"")
    status_line = b""
    for _ in range(40):  # 12 s of parts at most; the deadline passes after 2 s
        part = b'--b\r\nContent-Disposition: form-data; name="junk"\r\n\r\nx\r\n'
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        try:
            status_line = await asyncio.wait_for(reader.readline(), 0.3)
            break
        except TimeoutError:
            continue
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert await server.healthy()


async def test_junk_fields_before_the_image_count_against_the_limit(make_client: Any) -> None:
    client = await make_client(max_photo_bytes=100_000)

    async def junk() -> AsyncIterator[bytes]:  # a chunked body: no Content-Length to refuse it by
        yield b'--b\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 65_536

    response = await client.post(
        "/api/predict", data=junk(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status == 413


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", multipart("video", b"a.mp4", b"data")),  # no boundary
        ("multipart/form-data; boundary=elsewhere", multipart("video", b"a.mp4", b"data")),
        ("multipart/form-data; boundary=b", multipart("video", b"a\x00b.mp4", b"data")),  # NUL in the name
        ("multipart/form-data; boundary=b", multipart("video", b"a\nb.mp4", b"data")),  # a line break
    ],
    ids=["no-boundary", "wrong-boundary", "nul-in-name", "lf-in-name"],
)
@pytest.mark.parametrize("path", ["/api/analyses", "/api/predict"])
async def test_a_malformed_multipart_body_is_a_400(
    make_client: Any, caplog: pytest.LogCaptureFixture, path: str, content_type: str, body: bytes
) -> None:
    client = await make_client()
    response = await client.post(path, data=body, headers={"Content-Type": content_type})
    assert response.status == 400, await response.text()
    assert "error" in await response.json()
    assert errors(caplog) == []


async def test_a_json_body_nested_too_deep_is_a_400(make_client: Any) -> None:
    client = await make_client()
    response = await client.post("/api/analyses", data="[" * 5000, headers={"Content-Type": "application/json"})
    assert response.status == 400


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_json_body_too_large_is_a_json_413(make_client: Any, chunked: bool) -> None:
    # aiohttp's own 413 past client_max_size was plain text, unlike every other answer of the API.
    client = await make_client()
    body = b'{"video": "' + b"a" * 3_000_000 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = await client.post(
        "/api/analyses", data=chunks() if chunked else body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert "at most" in (await response.json())["error"]


async def test_a_name_that_is_not_utf8_is_kept_readable(make_client: Any, tmp_path: Path) -> None:
    # Latin-1 "café" from an old client: the job wrote its CSV in UTF-8 and failed on the name.
    client = await make_client()
    body = multipart("video", b"caf\xe9.mp4", face_clip(tmp_path / "face.mp4", frames=6).read_bytes())
    response = await client.post(
        "/api/analyses", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status == 202, await response.text()
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert (job["state"], job["name"]) == ("done", "caf\ufffd.mp4")
    response = await client.get(job["csv_url"])
    assert response.status == 200
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert {row["file"] for row in rows} == {"caf\ufffd.mp4"}


async def test_uploads_on_their_way_hold_the_analysis_places(server: Server) -> None:
    # Each upload reserves one of the MAX_RUNNING_JOBS places until it ends: before, any number
    # streamed to disk at once (N x --max-video-bytes) and were refused once they had arrived.
    held = []
    for _ in range(MAX_RUNNING_JOBS):
        held.append(await server.send(request_head("/api/analyses", "multipart/form-data; boundary=b", None), b""))
        _, writer = held[-1]
        part = multipart("video", b"a.mp4", b"x" * 1000)[:-12]
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
    await until(lambda: len(server.uploads_left()) == MAX_RUNNING_JOBS)
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("video", b"x" * 1000, filename="b.mp4", content_type="video/mp4")
        async with session.post(f"{server.url}/api/analyses", data=form) as response:
            assert response.status == 503
            assert "already running or uploading" in (await response.json())["error"]
    for _, writer in held:
        writer.close()
    await until(lambda: not server.uploads_left())
    assert server.uploads_left() == []


async def test_a_websocket_handshake_reset_half_way_is_not_a_server_error(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    def reset_after_upgrade() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(upgrade)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST

    for _ in range(30):
        await asyncio.to_thread(reset_after_upgrade)
    await asyncio.sleep(0.5)
    assert errors(caplog) == []
    assert await server.healthy()
