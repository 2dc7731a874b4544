"""Fixtures for the hostile-input tests: a real server on a real TCP port, a canary client.

The server is the real app (`create_app`) on an `AppRunner` bound to 127.0.0.1 in the test's
own event loop, with small limits so the edges are cheap to reach. It shares the session's
real model (tests/conftest.py `real_model`); each test gets a fresh app, so one test's abuse
(a full client table, a raising model) cannot leak into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from fer_async.bench import harness
from fer_async.bench.harness import free_port
from fer_async.labels import EMOTIONS
from fer_async.synthetic import astronaut_bgr, compose_frame, drifting_face_frames, jpeg, write_video

REPO = Path(__file__).resolve().parents[2]
MAX_FRAME_BYTES = 200_000
MAX_CLIENTS = 4
REPLY_TIMEOUT_S = 60.0  # generous: the CPU may be shared with a training run
VIDEO_NAME = "demo.mp4"
# Directories whose contents change for reasons that have nothing to do with the server.
# (runs/ is where a background training run writes its checkpoints.)
SNAPSHOT_SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "runs"}


@dataclass
class LiveServer(harness.LiveServer):
    """The shared harness's server, plus what the clients saw, to check nothing leaked."""

    transcript: list[str] = field(default_factory=list)  # every text the clients got back
    close_reasons: list[str] = field(default_factory=list)

    def record(self, text: str | bytes) -> None:
        self.transcript.append(text if isinstance(text, str) else text.decode("utf-8", "replace"))

    def assert_no_leaks(self) -> None:
        """No traceback, no internal exception text, no 500 ever reached a client."""
        for text in self.transcript:
            assert "Traceback" not in text, text[:500]
            assert 'File "' not in text, text[:500]
            assert "HTTP/1.1 500" not in text, text[:500]


def write_demo_video(path: Path, frames: int = 30, fps: int = 15) -> Path:
    """A small real-face video (mp4v) for the MJPEG endpoint."""
    clip = drifting_face_frames(frames, width=320, height=240, side=200, start=(40, 20), step=(2, 0))
    return write_video(path, clip, fps)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("videos")
    write_demo_video(directory / VIDEO_NAME)
    return directory


@pytest.fixture
def hostile_settings(video_dir: Path) -> Any:
    from fer_async.config import Settings

    return Settings(
        host="127.0.0.1",
        port=free_port(),
        max_frame_bytes=MAX_FRAME_BYTES,
        max_clients=MAX_CLIENTS,
        max_batch=4,
        max_wait_ms=5.0,
        video_dir=video_dir,
    )


@contextlib.asynccontextmanager
async def serve(settings: Any, model: Any) -> AsyncIterator[LiveServer]:
    """The real app on a real TCP port of 127.0.0.1 until the block ends."""
    async with harness.serve_in_process(settings, model) as live:
        yield LiveServer(live.app, live.port)


@pytest.fixture
async def server(hostile_settings: Any, real_model: Any) -> AsyncIterator[LiveServer]:
    async with serve(hostile_settings, real_model) as live:
        yield live
        live.assert_no_leaks()


class Canary:
    """A well-behaved client that stays connected through the abuse and must keep being served."""

    def __init__(self, live: LiveServer, session: aiohttp.ClientSession, frame: bytes) -> None:
        self.live = live
        self.session = session
        self.frame = frame
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sent = 0
        self.results = 0

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect(self.live.ws_url, origin=self.live.base_url)
        hello = await self.ws.receive_json(timeout=REPLY_TIMEOUT_S)
        assert hello["type"] == "hello"

    async def roundtrip(self) -> dict[str, Any]:
        """Send the face frame; its result must come back with a face and a valid emotion."""
        assert self.ws is not None and not self.ws.closed, "the canary's connection was closed"
        await self.ws.send_bytes(self.frame)
        self.sent += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_TIMEOUT_S
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - loop.time()))
            assert msg.type == aiohttp.WSMsgType.TEXT, f"canary got {msg.type!r} {msg.data!r}"
            self.live.record(msg.data)
            reply = json.loads(msg.data)
            if reply.get("frame") == self.sent:
                break
        assert reply["type"] == "result", reply
        assert reply["faces"], reply
        assert reply["faces"][0]["emotion"] in EMOTIONS
        assert set(reply["faces"][0]["scores"]) == set(EMOTIONS)
        self.results += 1
        return dict(reply)


@pytest.fixture
async def http(server: LiveServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
async def canary(server: LiveServer, http: aiohttp.ClientSession, face_jpeg: bytes) -> AsyncIterator[Canary]:
    bird = Canary(server, http, face_jpeg)
    await bird.connect()
    await bird.roundtrip()  # alive before the abuse
    yield bird
    if bird.ws is not None:
        await bird.ws.close()


# ------------------------------------------------------------------------- no disk writes


def _listing(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SNAPSHOT_SKIP_DIRS]
        for name in filenames:
            if name.startswith(".nfs"):
                continue
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


@pytest.fixture(autouse=True)
def no_disk_writes(tmp_path_factory: pytest.TempPathFactory, video_dir: Path) -> Iterator[None]:
    """Nothing the server does may create files: in the repository, the video dir, or temp.

    Python's `tempfile` is pointed at an empty directory for the test, so anything the server
    would write through it lands there and is seen.
    """
    temp = tmp_path_factory.mktemp("server-tmp")
    saved = tempfile.tempdir
    tempfile.tempdir = str(temp)
    roots = [REPO, video_dir, temp]
    before = {root: _listing(root) for root in roots}
    try:
        yield
    finally:
        tempfile.tempdir = saved
    for root in roots:
        created = _listing(root) - before[root]
        assert not created, f"files appeared under {root}: {sorted(created)[:10]}"


# ------------------------------------------------------------------------------ helpers


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A genuine, valid PNG of width x height black pixels, 1 bit deep: ~50 KB on the wire.

    Decoded to 8-bit BGR it would need width * height * 3 bytes (1.2 GB for 20000^2).
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((width + 7) // 8)  # filter type 0 + the packed bits of one row
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def lying_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose IHDR claims width x height but whose pixel data is a tiny zlib stream."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def small_face_jpeg(width: int = 320, height: int = 240, quality: int = 70) -> bytes:
    """A small real-face JPEG (a few KB), for flooding cheaply."""
    return jpeg(compose_frame(astronaut_bgr(), 60, 20, width=width, height=height, side=200, seed=3), quality)


def decodes(data: bytes) -> bool:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


def read_status_kb(field_name: str) -> int | None:
    """VmRSS / VmHWM of this process, in kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
