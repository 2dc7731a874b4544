"""MJPEG viewers that stop reading, against the real server on a real socket.

The stream drops a viewer whose connection has not taken a part for VIEWER_WRITE_TIMEOUT_S.
Dropping it with `transport.close()` waited for the unsent parts to drain, which for a viewer
that reads nothing is never: the socket stayed open, megabytes queued, for as long as the
viewer liked (no limit on viewers bounds how many). Now the connection is reset.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from testsupport import eventually

from fer_async.server import mjpeg
from fer_async.synthetic import write_video

from .conftest import Canary, serve

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").is_file(), reason="reads the server's sockets from Linux's /proc/net/tcp"
)

NOISE = "noise.avi"  # incompressible frames: large parts, the socket's buffers fill in a few of them
STALL_TIMEOUT_S = 1.0  # instead of VIEWER_WRITE_TIMEOUT_S, so the test waits seconds, not tens


def _established_on(port: int) -> int:
    """Server-side TCP connections of 127.0.0.1:`port` in state ESTABLISHED (Linux /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.split(":")[1], 16) == port and state == "01":
            count += 1
    return count


@pytest.fixture
def noise_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(60)]
    write_video(tmp_path / NOISE, frames, 30)
    return tmp_path


@pytest.mark.parametrize("loop", ["1", "0"])
async def test_a_viewer_that_stops_reading_is_disconnected(
    hostile_settings: Any,
    real_model: Any,
    noise_dir: Path,
    face_jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
    loop: str,
) -> None:
    monkeypatch.setattr(mjpeg, "VIEWER_WRITE_TIMEOUT_S", STALL_TIMEOUT_S)
    async with serve(hostile_settings.replace(video_dir=noise_dir), real_model) as server:
        viewer = socket.socket()
        viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        viewer.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(viewer, ("127.0.0.1", server.port))
            viewer.send(f"GET /video/{NOISE}?loop={loop} HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii"))
            await eventually(lambda: _established_on(server.port) == 1, what="the viewer's connection")
            # It reads nothing: once the socket's buffers are full the server must let it go.
            await eventually(lambda: _established_on(server.port) == 0, what="the stalled viewer to be dropped")
            async with aiohttp.ClientSession() as session:  # the others are served meanwhile
                canary = Canary(server, session, face_jpeg)
                await canary.connect()
                await canary.roundtrip()
        finally:
            viewer.close()
